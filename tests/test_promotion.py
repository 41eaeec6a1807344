"""Gated promotion: a real tiny exported GGUF against an alias served by a real local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import jupyter_distill as jd
from jupyter_distill.core.errors import AliasError
from jupyter_distill.core.store import PromptRecord, RunStore
from jupyter_distill.pipeline.promote import PromotionReport, percentile
from jupyter_distill.serving import hf_backend, registry
from jupyter_distill.serving import student as serving


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    hf_backend.release_all()


@pytest.fixture
def gguf(tiny_adapter_export: dict[str, Any]) -> Path:
    return tiny_adapter_export["export"].gguf


def _run(workdir: Path, gguf: Path, name: str = "prom") -> RunStore:
    store = RunStore(workdir)
    store.create_run(name, {"teacher": "t"})
    prompts = [
        PromptRecord(f"q{i}", [{"role": "user", "content": f"question {i}"}], {}, i, "heldout") for i in range(3)
    ]
    store.put_prompts(name, prompts)
    store.put_artifact(name, "gguf", gguf)
    return store


def _serve_current(server) -> dict:
    return registry.set_alias("prod", backend="openai-compatible", base_url=server.url, model="teacher-model")


def _from_server(row: dict, response: str) -> float:
    return 1.0 if response.startswith("answer ") else 0.0


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([float(i) for i in range(1, 21)], 95) == 19.0
    assert percentile([], 95) == 0.0


def test_a_failed_promotion_changes_nothing(tmp_path: Path, gguf: Path, openai_server, home: Path) -> None:
    _run(tmp_path / "wd", gguf)
    _serve_current(openai_server)
    before = (home / "aliases.json").read_bytes()
    report = jd.promote("prom", "prod", min_pass_rate=0.5, judge=_from_server, workdir=tmp_path / "wd")
    assert isinstance(report, PromotionReport) and not report.promoted and report.version is None
    cand, cur = report.sides
    assert cand.pass_rate == 0.0 and cur.pass_rate == 1.0 and cur.n == cand.n == 3
    assert cand.cost_per_1k == 0.0 and cur.cost_per_1k is None  # a local model is free; the server reports none
    assert [g.name for g in report.gates if not g.passed] == ["min_pass_rate", "min_gain"]
    assert (home / "aliases.json").read_bytes() == before
    assert "FAIL min_pass_rate" in repr(report) and "unchanged" in repr(report)
    assert "<table>" in report._repr_html_() and "p95 ms" in report._repr_html_()
    json.dumps(report.to_dict())
    # a latency gate no model can meet refuses too, whatever the pass rates
    refused = jd.promote(
        "prom", "prod", max_latency_ms=1e-6, min_gain=None, judge=lambda row, r: 1.0, workdir=tmp_path / "wd"
    )
    assert not refused.promoted and (home / "aliases.json").read_bytes() == before


def test_promote_rollback_and_history(tmp_path: Path, gguf: Path, openai_server) -> None:
    store = _run(tmp_path / "wd", gguf)
    old = _serve_current(openai_server)
    report = jd.promote("prom", "prod", min_pass_rate=0.5, judge=lambda row, r: 1.0, workdir=store.workdir)
    assert report.promoted and report.version is not None
    now = registry.get_alias("prod")
    assert now["backend"] == "gguf" and now["model_path"] == str(gguf.resolve()) and now["run"] == "prom"
    history = jd.alias_history("prod")
    assert [v["action"] for v in history] == ["set", "promote"]
    assert history[1]["previous"] == history[0]["version"] and history[1]["report"]["candidate"]["pass_rate"] == 1.0
    back = jd.rollback("prod")
    assert back["restores"] == 1 and registry.get_alias("prod")["base_url"] == old["base_url"]
    assert [v["action"] for v in jd.alias_history("prod")] == ["set", "promote", "rollback"]
    with pytest.raises(AliasError) as info:
        jd.rollback("prod")  # version 1 had no earlier target
    assert info.value.field == "alias"
    assert registry.get_alias("prod")["backend"] == "openai-compatible"
    # the Student a run returned promotes the same way (its run found through its metadata)
    student = serving.Student(gguf, name="prom", metadata={"run": {"name": "prom", "workdir": str(store.workdir)}})
    again = jd.promote(student, "prod", judge=lambda row, r: 1.0)
    assert again.promoted and again.version["version"] == 4 and again.version["previous"] == 3
    assert registry.get_alias("prod")["model_path"] == str(gguf.resolve())


def test_a_swap_is_refused_when_the_alias_changed_meanwhile(tmp_path: Path, gguf: Path) -> None:
    registry.set_alias("prod", backend="gguf", model_path=gguf, note="first")
    seen = registry.list_aliases()["prod"]
    registry.set_alias("prod", backend="gguf", model_path=gguf, note="second")
    with pytest.raises(AliasError, match="changed while"):
        registry.promote_alias("prod", {"backend": "gguf", "model_path": str(gguf)}, expected=seen)
    assert registry.get_alias("prod")["note"] == "second" and len(registry.alias_history("prod")) == 2


def test_history_stays_consistent_under_eight_threads(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        path = tmp_path / f"m{i}.gguf"
        path.write_bytes(b"GGUF" + bytes([i]) * 60)
        files.append(path)
    registry.set_alias("busy", backend="gguf", model_path=files[0])
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for j in range(6):
                if (k + j) % 3 == 0:
                    current = registry.list_aliases()["busy"]
                    try:
                        registry.promote_alias(
                            "busy", {"backend": "gguf", "model_path": str(files[(k + j) % 3])}, expected=current
                        )
                    except AliasError as exc:  # another thread swapped first: refused, nothing written
                        assert "changed while" in str(exc)
                elif (k + j) % 3 == 1:
                    try:
                        registry.rollback_alias("busy")
                    except AliasError as exc:
                        assert "no earlier target" in str(exc)
                else:
                    registry.alias_history("busy")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    history = registry.alias_history("busy")
    numbers = [v["version"] for v in history]
    assert numbers == list(range(1, len(numbers) + 1))  # no lost or duplicated version
    actions = {v["action"] for v in history}
    assert "promote" in actions and actions <= {"set", "promote", "rollback"}  # nothing observed: every write recorded
    assert history[-1]["entry"] == registry.list_aliases()["busy"]
    for v in history:
        assert v["previous"] is None or v["previous"] < v["version"]
        if v["action"] == "rollback":
            restored = next(x for x in history if x["version"] == v["restores"])
            assert {k: restored["entry"][k] for k in ("backend", "model_path")} == {
                k: v["entry"][k] for k in ("backend", "model_path")
            }


def test_a_registry_written_before_versions_is_read_and_rolled_back(tmp_path: Path, home: Path) -> None:
    files = [tmp_path / "a.gguf", tmp_path / "b.gguf"]
    for f in files:
        f.write_bytes(b"GGUF" + b"\0" * 60)
    old_entry = {"backend": "gguf", "model_path": str(files[0].resolve()), "created_at": 1.0, "updated_at": 1.0}
    home.mkdir(parents=True)
    (home / "aliases.json").write_text(json.dumps({"schema_version": 1, "aliases": {"prod": old_entry}}))
    assert [(v["version"], v["action"], v["entry"]) for v in registry.alias_history("prod")] == [
        (1, "existing", old_entry)
    ]
    registry.promote_alias("prod", {"backend": "gguf", "model_path": str(files[1])}, expected=old_entry)
    doc = json.loads((home / "aliases.json").read_text())
    assert doc["schema_version"] == 1 and [v["action"] for v in doc["history"]["prod"]] == ["existing", "promote"]
    # an older jupyter-distill rewrites the alias without a version: the next change records what it saw
    doc["aliases"]["prod"] = {**old_entry, "note": "hand edit"}
    (home / "aliases.json").write_text(json.dumps(doc))
    assert [v["action"] for v in registry.alias_history("prod")] == ["existing", "promote", "observed"]
    back = registry.rollback_alias("prod")
    assert back["restores"] == 2 and registry.get_alias("prod")["model_path"] == str(files[1].resolve())
    # a history that is not version lists is a corrupt file: kept, never overwritten
    (home / "aliases.json").write_text(json.dumps({"schema_version": 1, "aliases": {}, "history": []}))
    with pytest.raises(AliasError, match="history"):
        registry.list_aliases()
