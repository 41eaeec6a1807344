"""What the lab panel asks the server beyond runs and aliases, through a real Jupyter server.

Per alias: its target, its recorded versions and its audit verdict; per run: the notebooks that
start it and its sample sizes; the run folder, which the panel may switch to another existing
folder under the server root (or an allowed one) and back.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from distill_server_fixtures import build_fixture_store
from tornado.httpclient import HTTPClientError

from jupyter_distill.core import policy
from jupyter_distill.core.runfolder import RUN_FOLDER_ENV
from jupyter_distill.core.store import PairRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.server.aliasinfo import AuditCache
from jupyter_distill.server.handlers import DistillContext, DistillServer
from jupyter_distill.serving import registry

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def alias_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "alias-home"
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(home))
    monkeypatch.setenv(RUN_FOLDER_ENV, "")  # restored after the test: a switch exports the folder
    return home


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder with a run store, outside the server's root."""
    folder = tmp_path / "outside"
    build_fixture_store(folder)
    return folder


@pytest.fixture
def jp_server_config(jp_root_dir: Path, alias_home: Path, tmp_path: Path) -> dict[str, Any]:
    build_fixture_store(jp_root_dir / ".distill")
    (tmp_path / "allowed").mkdir()
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_distill": True}},
        "DistillServer": {"model_workers": 0, "allowed_workdirs": [str(tmp_path / "allowed")]},
    }


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


def _gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def _audited_run(workdir: Path, name: str = "aud") -> Path:
    """A run whose six samples recorded the policy decision they were made under; three trained on."""
    store = RunStore(workdir)
    store.create_run(name, {"teacher": "local:smollm2-135m", "student": "smollm2-135m"})
    store.update_run(name, status="done", phase="done", summary={"teacher": "local:smollm2-135m"})
    store.put_prompts(name, [PromptRecord(f"p{i}", [{"role": "user", "content": f"q{i}"}], {}, i) for i in range(3)])
    decision = policy.decide("local", "smollm2-135m", licence="apache-2.0")
    provenance = {
        "teacher": "local:smollm2-135m",
        "model": "smollm2-135m",
        "provider": "local",
        "time": "2026-11-02T00:00:00Z",
        "policy": decision.to_dict(),
        "terms_version": decision.terms_version,
        "licence": decision.licence,
    }
    store.put_samples(
        SampleRecord(f"p{i}-s{j}", f"p{i}", "local:smollm2-135m", {}, j, f"a{i}{j}", provenance=provenance)
        for i in range(3)
        for j in range(2)
    )
    store.put_pairs(
        name,
        [PairRecord("p0", 0, "a00", "a01", "p0-s0", "p0-s1"), PairRecord("p1", 0, "a10", None, "p1-s0", None)],
    )
    gguf = _gguf(workdir / "runs" / name / "export" / "model.q8_0.gguf")
    store.put_artifact(name, "gguf", gguf, sha256="ab" * 32, size=64)
    store.close()
    return gguf


async def test_alias_detail_shows_target_versions_and_audit_verdict(
    jp_fetch: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "runs-wd"
    gguf = _audited_run(workdir)
    other = _gguf(tmp_path / "other.gguf")
    registry.set_alias("bot", backend="gguf", model_path=gguf, run="aud", workdir=str(workdir))
    registry.set_alias("bot", backend="gguf", model_path=other)
    registry.rollback_alias("bot")

    data = await get_json(jp_fetch, "jupyter-distill", "aliases", "bot")
    assert data["name"] == "bot" and data["version"] == 3
    assert data["current"]["model_path"] == str(gguf.resolve()) and data["current"]["run"] == "aud"
    assert [v["action"] for v in data["history"]] == ["rollback", "set", "set"]  # newest first
    assert data["history"][0]["restores"] == 1 and data["history"][1]["entry"]["model_path"] == str(other.resolve())
    audit = data["audit"]
    assert audit["status"] == "ok" and audit["runs"] == ["aud"] and audit["changes"] == []
    assert audit["teachers"] == [
        {
            "teacher": "local:smollm2-135m",
            "provider": "local",
            "verdict": "allowed",
            "terms_version": policy.TERMS_VERSION,
            "sampled": 6,
            "trained_on": 3,
        }
    ]
    assert "3 of 6 samples trained on" in audit["message"]

    # Newer terms prohibit the teacher: the verdict is audited again (the terms version is part of the key).
    terms = dict(policy.TERMS)
    terms["local"] = policy.ProviderTerms("local", "prohibited", "Outputs may no longer train models.", "new terms")
    monkeypatch.setattr(policy, "TERMS", terms)
    monkeypatch.setattr(policy, "TERMS_VERSION", "2027-01-01")
    audit = (await get_json(jp_fetch, "jupyter-distill", "aliases", "bot"))["audit"]
    assert audit["status"] == "changed" and audit["terms_version"] == "2027-01-01"
    assert audit["changes"] == [
        {
            "teacher": "local:smollm2-135m",
            "recorded_verdict": "allowed",
            "current_verdict": "prohibited",
            "recorded_terms": "2026-11-01",
            "current_terms": "2027-01-01",
            "samples": 6,
            "trained_on": 3,
        }
    ]
    assert "allowed under 2026-11-01 -> prohibited under 2027-01-01" in audit["message"]


async def test_alias_audit_unavailable_says_why_without_server_paths(jp_fetch: Any, tmp_path: Path) -> None:
    registry.set_alias("remote", backend="openai-compatible", base_url="http://127.0.0.1:9/v1", model="m")
    registry.set_alias("lost", backend="gguf", model_path=_gguf(tmp_path / "x.gguf"), run="gone",
                       workdir=str(tmp_path / "nowhere"))  # fmt: skip
    remote = (await get_json(jp_fetch, "jupyter-distill", "aliases", "remote"))["audit"]
    assert remote["status"] == "unavailable" and "no run recorded making" in remote["message"]
    body = await jp_fetch("jupyter-distill", "aliases", "lost")
    lost = json.loads(body.body)["audit"]
    assert lost["status"] == "unavailable" and "no run named 'gone'" in lost["message"]
    assert str(tmp_path) not in lost["message"] and "nowhere" in lost["message"]


async def test_unset_unknown_and_invalid_aliases(jp_fetch: Any, tmp_path: Path) -> None:
    registry.set_alias("gone", backend="gguf", model_path=_gguf(tmp_path / "g.gguf"))
    registry.unset_alias("gone")
    data = await get_json(jp_fetch, "jupyter-distill", "aliases", "gone")
    assert data["current"] is None and data["audit"] is None
    assert [v["action"] for v in data["history"]] == ["unset", "set"]
    body = await expect_error(jp_fetch, 404, "jupyter-distill", "aliases", "never")
    assert "no alias 'never'" in body["message"]
    body = await expect_error(jp_fetch, 400, "jupyter-distill", "aliases", "bad name!")
    assert "invalid alias name" in body["message"]


async def test_runs_list_counts_heldout_prompts_and_training_pairs(jp_fetch: Any, jp_root_dir: Path) -> None:
    store = RunStore(jp_root_dir / ".distill")
    heldout = store.get_prompts("tickets", split="heldout")[0].hash
    train = [p.hash for p in store.get_prompts("tickets", split="train")]
    store.put_pairs("tickets", [PairRecord(h, 0, "c", "r", None, None) for h in train])
    store.close()
    data = await get_json(jp_fetch, "jupyter-distill", "runs")
    assert data["counts"]["tickets"] == {"train": 3, "heldout": 1, "pairs": 3}
    assert data["counts"]["live"] == {"train": 3, "heldout": 1, "pairs": 0}
    assert heldout  # the held-out prompt is the one the pass rates were measured on
    assert data["workdir"] == str((jp_root_dir / ".distill").resolve()) and data["switched"] is False


def _notebook(path: Path, *sources: str, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = [{"cell_type": "code", "source": s.splitlines(keepends=True), "metadata": {}} for s in sources]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    os.utime(path, (mtime, mtime))


async def test_run_notebooks_are_the_ones_that_start_the_run(jp_fetch: Any, jp_root_dir: Path) -> None:
    _notebook(jp_root_dir / "first.ipynb", "%load_ext jupyter_distill", "%%distill tickets --steps 3\nsteps: 2",
              mtime=1_000)  # fmt: skip
    _notebook(jp_root_dir / "sub" / "script.ipynb", 'run = jd.distill(rows, name="tickets")', mtime=2_000)
    _notebook(jp_root_dir / "other.ipynb", "%%distill live\nsteps: 2", "# %%distill tickets", mtime=3_000)
    _notebook(jp_root_dir / ".ipynb_checkpoints" / "first-checkpoint.ipynb", "%%distill tickets", mtime=4_000)
    (jp_root_dir / "broken.ipynb").write_text("{not json")
    data = await get_json(jp_fetch, "jupyter-distill", "runs", "tickets", "notebooks")
    assert data["notebooks"] == ["sub/script.ipynb", "first.ipynb"]  # newest first, checkpoints skipped
    assert data["complete"] is True and data["searched"] == 4
    data = await get_json(jp_fetch, "jupyter-distill", "runs", "nobody", "notebooks")
    assert data["notebooks"] == []
    await expect_error(jp_fetch, 400, "jupyter-distill", "runs", "..", "notebooks")


async def test_the_panel_switches_the_run_folder_within_the_root_and_back(
    jp_fetch: Any, jp_root_dir: Path, tmp_path: Path, outside: Path
) -> None:
    configured = str((jp_root_dir / ".distill").resolve())
    state = await get_json(jp_fetch, "jupyter-distill", "workdir")
    assert state == {"workdir": configured, "configured": configured, "switched": False}

    demo = jp_root_dir / ".demo" / "distill"
    RunStore(demo).create_run("demo-run", {})
    state = await get_json(
        jp_fetch, "jupyter-distill", "workdir", method="PUT", body=json.dumps({"path": ".demo/distill"})
    )
    assert state["workdir"] == str(demo.resolve()) and state["switched"] is True
    assert os.environ[RUN_FOLDER_ENV] == str(demo.resolve())  # kernels started now write there
    runs = await get_json(jp_fetch, "jupyter-distill", "runs")
    assert [r["id"] for r in runs["runs"]] == ["demo-run"] and runs["workdir"] == str(demo.resolve())

    # An allowed folder outside the root (c.DistillServer.allowed_workdirs), given as an absolute path.
    allowed = tmp_path / "allowed" / "team"
    allowed.mkdir()
    state = await get_json(
        jp_fetch, "jupyter-distill", "workdir", method="PUT", body=json.dumps({"path": str(allowed)})
    )
    assert state["workdir"] == str(allowed.resolve())

    state = await get_json(jp_fetch, "jupyter-distill", "workdir", method="DELETE")
    assert state == {"workdir": configured, "configured": configured, "switched": False}
    assert os.environ[RUN_FOLDER_ENV] == configured
    assert {r["id"] for r in (await get_json(jp_fetch, "jupyter-distill", "runs"))["runs"]} == {"tickets", "live"}


async def test_a_bad_run_folder_is_refused_with_a_clear_error_and_changes_nothing(
    jp_fetch: Any, jp_root_dir: Path, tmp_path: Path, outside: Path
) -> None:
    (jp_root_dir / "notes.txt").write_text("x")
    (jp_root_dir / "escape").symlink_to(outside, target_is_directory=True)
    cases = [
        ({"path": "missing/folder"}, "run folder 'missing/folder' does not exist"),
        ({"path": "notes.txt"}, "is a file, not a folder"),
        ({"path": str(outside)}, "is outside the server's root folder"),
        ({"path": "escape"}, "is outside the server's root folder"),  # a link inside the root leading out
        ({"path": "../outside"}, "is outside the server's root folder"),
        ({"path": ""}, "'path' must be a non-empty string"),
        ({"path": 3}, "'path' must be a non-empty string"),
        ({"folder": "x"}, 'the request body must be {"path"'),
    ]
    for payload, expected in cases:
        body = await expect_error(jp_fetch, 400, "jupyter-distill", "workdir", method="PUT", body=json.dumps(payload))
        assert expected in body["message"], (payload, body["message"])
        assert str(tmp_path) not in body["message"]  # no server path in an error
    body = await expect_error(jp_fetch, 400, "jupyter-distill", "workdir", method="PUT", body="{nope")
    assert "must be JSON" in body["message"]
    state = await get_json(jp_fetch, "jupyter-distill", "workdir")
    assert state["switched"] is False


async def test_new_routes_need_the_token(jp_fetch: Any) -> None:
    for parts, method, body in [
        (("aliases", "bot"), "GET", None),
        (("runs", "tickets", "notebooks"), "GET", None),
        (("workdir",), "GET", None),
        (("workdir",), "PUT", json.dumps({"path": ".distill"})),
        (("workdir",), "DELETE", None),
    ]:
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("jupyter-distill", *parts, method=method, body=body, headers={"Authorization": ""})
        assert info.value.code == 403, (parts, info.value.code)


def test_switching_the_folder_from_many_threads_keeps_state_and_environment_in_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RUN_FOLDER_ENV, "")
    folders = [tmp_path / f"f{i}" for i in range(4)]
    for folder in folders:
        folder.mkdir()
    context = DistillContext(DistillServer(workdir=".distill", model_workers=0), tmp_path)
    valid = {str(f.resolve()) for f in folders} | {str((tmp_path / ".distill").resolve())}
    errors: list[BaseException] = []

    def hammer(i: int) -> None:
        try:
            for j in range(200):
                pick = (i + j) % 5
                context.switch_workdir(None if pick == 4 else f"f{pick}")
                state = context.workdir_state()
                assert state["workdir"] in valid and str(context.workdir) in valid
                assert state["switched"] is (state["workdir"] != state["configured"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert os.environ[RUN_FOLDER_ENV] == context.workdir_state()["workdir"]


def test_the_audit_cache_is_shared_safely_by_request_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    gguf = _audited_run(tmp_path / "wd")
    entry = {"backend": "gguf", "model_path": str(gguf), "run": "aud", "workdir": str(tmp_path / "wd")}
    cache = AuditCache(size=3)
    results: list[str] = []
    errors: list[BaseException] = []

    def hammer(i: int) -> None:
        try:
            for j in range(20):
                verdict = cache.verdict(f"a{(i + j) % 5}", entry, tmp_path)
                results.append(verdict["status"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and set(results) == {"ok"} and len(results) == 160
    assert len(cache._entries) <= 3  # bounded however many aliases ask
