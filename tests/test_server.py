"""The server extension's REST API through a real Jupyter server (pytest-jupyter's ``jp_fetch``).

A fixture store holds one finished and one live run, written with RunStore exactly as the
pipeline writes them; aliases live in a temporary registry (``JUPYTER_DISTILL_HOME``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from distill_server_fixtures import build_fixture_store
from tornado.httpclient import HTTPClientError

from jupyter_distill.core.store import RunStore
from jupyter_distill.serving import registry

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def distill_workdir(tmp_path: Path) -> Path:
    return tmp_path / "workdir"


@pytest.fixture
def alias_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "alias-home"
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(home))
    return home


@pytest.fixture
def jp_server_config(distill_workdir: Path, alias_home: Path) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_distill": True}},
        "DistillServer": {"workdir": str(distill_workdir)},
    }


@pytest.fixture
def fixture_store(distill_workdir: Path) -> RunStore:
    return build_fixture_store(distill_workdir)


@pytest.fixture
def fake_gguf(tmp_path: Path) -> Path:
    """The registry checks the GGUF magic only; list/delete never load the model."""
    path = tmp_path / "student.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


async def get_json(jp_fetch: Any, *parts: str, **kwargs: Any) -> Any:
    response = await jp_fetch(*parts, **kwargs)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def expect_error(jp_fetch: Any, status: int, *parts: str, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(*parts, **kwargs)
    assert info.value.code == status
    body = info.value.response.body.decode()
    assert "Traceback" not in body
    return json.loads(body)


async def test_runs_list_summarises_each_run(jp_fetch: Any, fixture_store: RunStore, distill_workdir: Path) -> None:
    data = await get_json(jp_fetch, "jupyter-distill", "runs")
    assert data["workdir"] == str(distill_workdir.resolve())
    assert data["poll_interval"] == 2.0
    runs = {run["id"]: run for run in data["runs"]}
    assert set(runs) == {"tickets", "live"}

    done = runs["tickets"]
    assert done["status"] == "done" and done["live"] is False
    assert done["progress"]["overall"] == 1.0
    assert done["cost"] == 0.75  # the summary's figure once the run is over
    assert done["loss"][0] == [1.0, 2.0] and done["loss"][-1] == [10.0, 0.2]
    assert done["pass_rates"]["student_before"] == {"n": 1, "pass_rate": 0.0, "mean_score": 0.0}
    assert done["pass_rates"]["student_after"]["pass_rate"] == 1.0
    assert done["pass_rates"]["teacher_best_of_n"]["pass_rate"] == 1.0
    assert done["alias"] == "ticket-classifier"

    live = runs["live"]
    assert live["live"] is True and live["phase"] == "training"
    assert live["progress"]["fraction"] == 0.4  # step 4 of 10
    assert live["progress"]["current"] == 4.0 and live["progress"]["total"] == 10.0
    assert 3 / 7 < live["progress"]["overall"] < 4 / 7  # training is the 4th of 7 phases
    assert live["cost"] == 0.75  # live runs count stored samples: 6 x $0.125 for its prompts
    assert [p[1] for p in live["loss"]] == [2.5, 2.0, 1.5, 1.0]


async def test_sampling_progress_counts_stored_candidates(jp_fetch: Any, fixture_store: RunStore) -> None:
    fixture_store.update_run("live", phase="sampling")
    data = await get_json(jp_fetch, "jupyter-distill", "runs")
    live = next(run for run in data["runs"] if run["id"] == "live")
    # 3 train prompts x 2 samples wanted; the fixture stored 2 for each.
    assert live["progress"]["current"] == 6.0 and live["progress"]["total"] == 6.0
    assert live["progress"]["fraction"] == 1.0


async def test_long_loss_series_is_downsampled_in_the_list(jp_fetch: Any, fixture_store: RunStore) -> None:
    for step in range(5, 300):
        fixture_store.put_metrics("live", step, {"loss": 1.0 / step})
    data = await get_json(jp_fetch, "jupyter-distill", "runs")
    loss = next(run for run in data["runs"] if run["id"] == "live")["loss"]
    assert len(loss) == 64
    assert loss[0][0] == 1.0 and loss[-1][0] == 299.0
    detail = await get_json(jp_fetch, "jupyter-distill", "runs", "live")
    assert len(detail["loss"]) == 299  # the detail keeps every point


async def test_run_detail(jp_fetch: Any, fixture_store: RunStore) -> None:
    data = await get_json(jp_fetch, "jupyter-distill", "runs", "tickets")
    assert data["id"] == "tickets"
    assert data["config"]["steps"] == 10
    assert data["summary"]["teacher_cost"] == 0.75
    assert data["prompts"] == 4 and data["heldout"] == 1
    assert data["artifacts"]["gguf"]["size"] == 123
    assert [event["kind"] for event in data["events"]] == ["run_end"]
    assert data["events"][0]["data"] == {"status": "done"}


async def test_run_metrics_by_name_and_after_step(jp_fetch: Any, fixture_store: RunStore) -> None:
    data = await get_json(jp_fetch, "jupyter-distill", "runs", "tickets", "metrics")
    assert set(data["metrics"]) == {"loss", "lr"}
    assert len(data["metrics"]["loss"]) == 10
    data = await get_json(
        jp_fetch, "jupyter-distill", "runs", "tickets", "metrics", params={"name": "loss", "after": "8"}
    )
    assert data == {"run": "tickets", "metrics": {"loss": [[9, 2.0 / 9], [10, 0.2]]}}


async def test_unknown_run_is_404_json(jp_fetch: Any, fixture_store: RunStore) -> None:
    body = await expect_error(jp_fetch, 404, "jupyter-distill", "runs", "nope")
    assert "no run 'nope'" in body["message"]
    await expect_error(jp_fetch, 404, "jupyter-distill", "runs", "nope", "metrics")


async def test_bad_run_id_and_params_are_400_json(jp_fetch: Any, fixture_store: RunStore) -> None:
    for bad in ("..", "-x", "a b", "x" * 65, "a;drop"):
        body = await expect_error(jp_fetch, 400, "jupyter-distill", "runs", bad)
        assert "invalid run id" in body["message"]
    body = await expect_error(jp_fetch, 400, "jupyter-distill", "runs", "tickets", "metrics", params={"after": "soon"})
    assert "not an integer" in body["message"]


async def test_empty_workdir_lists_nothing_and_creates_nothing(jp_fetch: Any, distill_workdir: Path) -> None:
    data = await get_json(jp_fetch, "jupyter-distill", "runs")
    assert data["runs"] == []
    assert not distill_workdir.exists()
    await expect_error(jp_fetch, 404, "jupyter-distill", "runs", "tickets")


async def test_broken_store_is_a_json_500_without_traceback(jp_fetch: Any, distill_workdir: Path) -> None:
    distill_workdir.mkdir(parents=True)
    (distill_workdir / "runs.db").write_bytes(b"this is not sqlite" * 100)
    body = await expect_error(jp_fetch, 500, "jupyter-distill", "runs")
    assert "runs.db" in body["message"]


async def test_aliases_list_and_delete(jp_fetch: Any, fake_gguf: Path, alias_home: Path) -> None:
    assert (await get_json(jp_fetch, "jupyter-distill", "aliases")) == {"aliases": []}
    registry.set_alias("ticket-classifier", backend="gguf", model_path=fake_gguf)
    registry.set_alias("other", backend="gguf", model_path=fake_gguf)
    data = await get_json(jp_fetch, "jupyter-distill", "aliases")
    assert [row["name"] for row in data["aliases"]] == ["other", "ticket-classifier"]
    assert data["aliases"][1]["backend"] == "gguf"
    assert data["aliases"][1]["model_path"] == str(fake_gguf.resolve())

    response = await jp_fetch("jupyter-distill", "aliases", "ticket-classifier", method="DELETE")
    assert response.code == 204
    assert list(registry.list_aliases()) == ["other"]
    assert fake_gguf.exists()  # unsetting never deletes the model

    body = await expect_error(jp_fetch, 404, "jupyter-distill", "aliases", "ticket-classifier", method="DELETE")
    assert "no alias 'ticket-classifier'" in body["message"]
    body = await expect_error(jp_fetch, 400, "jupyter-distill", "aliases", "bad name!", method="DELETE")
    assert "invalid alias name" in body["message"]
    assert list(registry.list_aliases()) == ["other"]


async def test_models_list_is_openai_shaped(jp_fetch: Any, fake_gguf: Path, alias_home: Path) -> None:
    registry.set_alias("tiny", backend="gguf", model_path=fake_gguf)
    data = await get_json(jp_fetch, "jupyter-distill", "v1", "models")
    assert data["object"] == "list"
    assert [(m["id"], m["object"]) for m in data["data"]] == [("tiny", "model")]


async def test_every_route_needs_the_token(jp_fetch: Any, fixture_store: RunStore, alias_home: Path) -> None:
    no_token = {"Authorization": ""}
    for parts, method, body in [
        (("runs",), "GET", None),
        (("runs", "tickets"), "GET", None),
        (("runs", "tickets", "metrics"), "GET", None),
        (("aliases",), "GET", None),
        (("aliases", "x"), "DELETE", None),
        (("v1", "models"), "GET", None),
        (("v1", "chat", "completions"), "POST", json.dumps({"model": "x", "messages": []})),
    ]:
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("jupyter-distill", *parts, method=method, body=body, headers=dict(no_token))
        assert info.value.code == 403, (parts, info.value.code)
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("jupyter-distill", "runs", headers={"Authorization": "token wrong"})
    assert info.value.code == 403


async def chat_error(jp_fetch: Any, status: int, payload: Any) -> dict[str, Any]:
    raw = payload if isinstance(payload, str) else json.dumps(payload)
    body = await expect_error(jp_fetch, status, "jupyter-distill", "v1", "chat", "completions", method="POST", body=raw)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


async def test_chat_completions_rejects_bad_requests(jp_fetch: Any, fake_gguf: Path, alias_home: Path) -> None:
    registry.set_alias("tiny", backend="gguf", model_path=fake_gguf)
    user = [{"role": "user", "content": "hi"}]
    assert "not valid JSON" in (await chat_error(jp_fetch, 400, "{nope"))["message"]
    assert (await chat_error(jp_fetch, 400, ["a list"]))["message"] == "the request body must be a JSON object"
    assert (await chat_error(jp_fetch, 400, {"messages": user}))["param"] == "model"
    assert (await chat_error(jp_fetch, 400, {"model": "tiny", "messages": []}))["param"] == "messages"
    bad_role = await chat_error(jp_fetch, 400, {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]})
    assert bad_role["param"] == "messages[0].role"
    bad_content = await chat_error(jp_fetch, 400, {"model": "tiny", "messages": [{"role": "user", "content": 3}]})
    assert bad_content["param"] == "messages[0].content"
    assert (await chat_error(jp_fetch, 400, {"model": "tiny", "messages": user, "max_tokens": 0}))["param"] == (
        "max_tokens"
    )
    assert (await chat_error(jp_fetch, 400, {"model": "tiny", "messages": user, "temperature": 5}))["param"] == (
        "temperature"
    )
    assert (await chat_error(jp_fetch, 400, {"model": "tiny", "messages": user, "n": 3}))["param"] == "n"
    missing = await chat_error(jp_fetch, 404, {"model": "missing", "messages": user})
    assert missing["code"] == "model_not_found" and "tiny" in missing["message"]


async def test_a_model_that_fails_to_load_is_a_json_error_streaming_or_not(
    jp_fetch: Any, fake_gguf: Path, alias_home: Path
) -> None:
    """The fake GGUF passes the registry's magic check but llama.cpp cannot load it."""
    registry.set_alias("broken", backend="gguf", model_path=fake_gguf)
    payload = {"model": "broken", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    for stream in (False, True):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch(
                "jupyter-distill",
                "v1",
                "chat",
                "completions",
                method="POST",
                body=json.dumps({**payload, "stream": stream}),
            )
        assert info.value.code == 400  # a DistillError from the model stack: the user's to fix
        body = json.loads(info.value.response.body)
        assert "student.gguf" in body["error"]["message"]
        assert "Traceback" not in info.value.response.body.decode()
