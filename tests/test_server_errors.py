"""What the REST API answers when things go wrong: a JSON 4xx naming the problem, never a 500 for
bad input, never exception text in a 500, never a server path or a key in any body.

Each test is a reproducer of a defect found by fuzzing the endpoints from outside.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from distill_server_fixtures import build_fixture_store
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from jupyter_distill.core.errors import AliasError
from jupyter_distill.core.store import RunStore
from jupyter_distill.serving import registry
from jupyter_distill.serving import student as serving

handlers = importlib.import_module("jupyter_distill.server.handlers")  # the package exports a function of that name

pytest_plugins = ["pytest_jupyter.jupyter_server"]

KEY = "sk-" + "h23a-test-0123456789abcdefghij"  # assembled so secret scanners do not flag the file


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "workdir"


@pytest.fixture
def jp_server_config(tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "alias-home"))
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_distill": True}},
        "DistillServer": {"workdir": str(workdir)},
    }


@pytest.fixture
def store(workdir: Path) -> RunStore:
    return build_fixture_store(workdir)


async def error_of(jp_fetch: Any, status: int, *parts: str, **kwargs: Any) -> str:
    """The body of an expected error: JSON, the given status, no traceback."""
    kwargs.setdefault("request_timeout", 120)  # a model worker may be starting on a busy machine
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("jupyter-distill", *parts, **kwargs)
    assert info.value.code == status, (info.value.code, info.value.response.body)
    assert info.value.response.headers["Content-Type"].startswith("application/json")
    body = info.value.response.body.decode()
    json.loads(body)
    assert "Traceback" not in body
    return body


def chat(payload: Any) -> dict[str, Any]:
    return {"method": "POST", "body": payload if isinstance(payload, str) else json.dumps(payload)}


async def test_a_500_carries_no_exception_text_or_path(
    jp_fetch: Any, store: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"boom in {tmp_path}/secret/state.db")

    monkeypatch.setattr(handlers, "run_summary", broken)
    body = await error_of(jp_fetch, 500, "runs")
    assert json.loads(body)["message"] == handlers.INTERNAL_ERROR
    assert "boom" not in body and str(tmp_path) not in body and "RuntimeError" not in body


async def test_a_model_failure_500_carries_no_exception_text(
    jp_fetch: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    registry.set_alias("hf", backend="peft", model_path=folder)  # served in-process

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"CUDA error at {folder}/weights.safetensors")

    monkeypatch.setattr(serving, "completion", broken)
    body = await error_of(
        jp_fetch,
        500,
        "v1",
        "chat",
        "completions",
        **chat({"model": "hf", "messages": [{"role": "user", "content": "x"}]}),
    )
    assert "CUDA" not in body and str(tmp_path) not in body
    assert json.loads(body)["error"]["type"] == "server_error"


@pytest.mark.parametrize(
    "payload",
    [
        {"model": "x", "messages": [{"role": [], "content": ""}]},
        {"model": "x", "messages": [{"role": {}, "content": ""}]},
        {"model": "x", "messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
        {"model": "x", "messages": [{"role": "user", "content": "hi"}], "n": [1]},
        {"model": ["x"], "messages": [{"role": "user", "content": "hi"}]},
        "[" * 100_000,
    ],
)
async def test_malformed_chat_requests_are_400(jp_fetch: Any, payload: Any) -> None:
    await error_of(jp_fetch, 400, "v1", "chat", "completions", **chat(payload))


async def test_an_upstream_answering_200_with_a_non_json_body_is_400(jp_fetch: Any, openai_server: Any) -> None:
    registry.set_alias("remote", backend="openai-compatible", base_url=openai_server.url, model="m")
    openai_server.script = ["malformed"]
    body = await error_of(
        jp_fetch,
        400,
        "v1",
        "chat",
        "completions",
        **chat({"model": "remote", "messages": [{"role": "user", "content": "hi"}]}),
    )
    assert "not a JSON object" in body


async def test_run_detail_shows_no_stored_traceback(jp_fetch: Any, store: RunStore, workdir: Path) -> None:
    detail = (
        "Traceback (most recent call last):\n"
        f'  File "{workdir}/../site-packages/jupyter_distill/pipeline.py", line 185, in run\n'
        f"ValueError: cannot read {workdir}/tickets/data.jsonl"
    )
    store.put_event("tickets", "error", "sampling", f"failed reading {workdir}/tickets/data.jsonl", {"detail": detail})
    response = await jp_fetch("jupyter-distill", "runs", "tickets")
    events = json.dumps(json.loads(response.body)["events"])
    assert "Traceback" not in events and str(workdir) not in events and "pipeline.py" not in events
    event = json.loads(events)[-1]
    assert event["data"]["detail"] == "ValueError: cannot read data.jsonl"  # what failed, and which file
    assert event["message"] == "failed reading data.jsonl"


async def test_404_and_400_bodies_carry_no_server_path(
    jp_fetch: Any, store: RunStore, workdir: Path, tmp_path: Path
) -> None:
    body = await error_of(jp_fetch, 404, "runs", "nope")
    assert str(workdir) not in body and "no run 'nope'" in body
    body = await error_of(jp_fetch, 404, "runs", "nope", "metrics")
    assert str(workdir) not in body

    gguf = tmp_path / "models" / "student.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 60)  # passes the registry's magic check, not llama.cpp
    registry.set_alias("broken", backend="gguf", model_path=gguf)
    for stream in (False, True):
        payload = {"model": "broken", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        body = await error_of(jp_fetch, 400, "v1", "chat", "completions", **chat(payload))
        assert "student.gguf" in body and str(tmp_path) not in body


async def test_a_run_id_with_a_trailing_newline_is_400(
    jp_serverapp: Any, http_server_client: Any, jp_http_port: int, jp_base_url: str, store: RunStore
) -> None:
    # jp_fetch escapes '%' itself; this request must reach the server as 'runs/tickets%0A'.
    token = jp_serverapp.identity_provider.token
    for tail in ("tickets%0A", "tickets%0A/metrics"):
        url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}jupyter-distill/runs/{tail}"
        with pytest.raises(HTTPClientError) as info:
            await AsyncHTTPClient().fetch(url, headers={"Authorization": f"token {token}"})
        assert info.value.code == 400, info.value.response.body
        assert "invalid run id" in info.value.response.body.decode()


async def test_an_upstream_echoing_the_key_never_shows_it(
    jp_fetch: Any, openai_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("H23A_REMOTE_KEY", KEY)
    openai_server.api_key = "the-right-key"
    openai_server.echo_auth = True
    registry.set_alias(
        "remote", backend="openai-compatible", base_url=openai_server.url, model="m", api_key_env="H23A_REMOTE_KEY"
    )
    with pytest.raises(AliasError) as info:
        serving.completion(model="remote", messages="hi")
    assert "401" in str(info.value) and KEY not in str(info.value) and KEY[-12:] not in str(info.value)
    for stream in (False, True):
        payload = {"model": "remote", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        body = await error_of(jp_fetch, 400, "v1", "chat", "completions", **chat(payload))
        assert "401" in body and KEY not in body and KEY[-12:] not in body
