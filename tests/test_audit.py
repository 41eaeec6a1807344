"""The rights ledger: per-teacher terms, the chain to files and aliases, and a verdict changed by newer terms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import jupyter_distill as jd
from jupyter_distill.core import policy
from jupyter_distill.core.errors import ConfigError
from jupyter_distill.core.ledger import LEDGER_FORMAT, redecide
from jupyter_distill.core.store import PairRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.serving import registry


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _provenance(teacher: str, provider: str, model: str, when: str, **extra: object) -> dict:
    decision = policy.decide(provider, model, licence="apache-2.0")
    return {
        "teacher": teacher,
        "model": model,
        "provider": provider,
        "endpoint": extra.pop("endpoint", None),
        "time": when,
        "policy": decision.to_dict(),
        "terms_version": decision.terms_version,
        "licence": decision.licence,
        **extra,
    }


def _run(workdir: Path, name: str = "aud") -> tuple[RunStore, Path]:
    store = RunStore(workdir)
    store.create_run(name, {"teacher": "local:smollm2-135m", "student": "smollm2-135m"})
    store.update_run(name, summary={"teacher": "local:smollm2-135m"})
    prompts = [PromptRecord(f"p{i}", [{"role": "user", "content": f"q{i}"}], {}, i) for i in range(3)]
    store.put_prompts(name, prompts)
    samples = []
    for i in range(3):
        for j in range(2):
            prov = _provenance("local:smollm2-135m", "local", "smollm2-135m", f"2026-11-0{i + 2}T00:00:0{j}Z")
            samples.append(
                SampleRecord(f"p{i}-s{j}", f"p{i}", "local:smollm2-135m", {}, j, f"a{i}{j}", provenance=prov)
            )
    # another teacher sampled the same prompts for another run: not this run's data
    other = _provenance("openai-compatible:http://h/v1#m", "openai-compatible", "m", "2026-11-05T00:00:00Z")
    samples.append(SampleRecord("p0-other", "p0", "openai-compatible:http://h/v1#m", {}, 0, "o", provenance=other))
    store.put_samples(samples)
    store.put_pairs(
        name,
        [
            PairRecord("p0", 0, "a00", "a01", "p0-s0", "p0-s1"),
            PairRecord("p1", 0, "a10", None, "p1-s0", None),
        ],
    )
    gguf = workdir / "runs" / name / "export" / "model.q8_0.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    store.put_artifact(name, "gguf", gguf, sha256="ab" * 32, size=64)
    registry.set_alias("support-bot", backend="gguf", model_path=gguf, run=name, workdir=str(workdir))
    registry.set_alias("unrelated", backend="openai-compatible", base_url="http://127.0.0.1:9/v1", model="x")
    return store, gguf


def test_the_ledger_walks_samples_terms_student_files_and_aliases(tmp_path: Path) -> None:
    _run(tmp_path / "wd")
    ledger = jd.audit("aud", workdir=tmp_path / "wd")
    assert ledger.ok and ledger.runs == ["aud"] and ledger.aliases == ["support-bot"]
    (row,) = ledger.teachers  # only the run's own teacher
    assert (row.teacher, row.provider, row.verdict, row.terms_version) == (
        "local:smollm2-135m", "local", "allowed", policy.TERMS_VERSION,
    )  # fmt: skip
    assert row.sampled == 6 and row.trained_on == 3  # p0: chosen + rejected, p1: chosen
    assert row.first_time == "2026-11-02T00:00:00Z" and row.last_time == "2026-11-04T00:00:01Z"
    assert ledger.students == [{"run": "aud", "student": "smollm2-135m", "licence": "apache-2.0"}]
    assert [f["kind"] for f in ledger.files] == ["gguf"]
    data = json.loads(ledger.to_json())
    assert data["format"] == LEDGER_FORMAT and data["ok"] is True and data["teachers"][0]["trained_on"] == 3
    assert "3 trained on / 6 sampled" in repr(ledger) and "no terms changed" in ledger._repr_html_()
    # the same ledger through the alias
    assert jd.audit("support-bot").teachers == ledger.teachers


def test_a_verdict_changed_by_newer_terms_names_what_it_reaches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, gguf = _run(tmp_path / "wd")
    terms = dict(policy.TERMS)
    terms["local"] = policy.ProviderTerms("local", "prohibited", "Outputs may no longer train models.", "new terms")
    monkeypatch.setattr(policy, "TERMS", terms)
    monkeypatch.setattr(policy, "TERMS_VERSION", "2027-01-01")
    ledger = jd.audit("support-bot")
    assert not ledger.ok and ledger.terms_version == "2027-01-01"
    (change,) = ledger.changes
    assert (change.teacher, change.recorded_verdict, change.current_verdict) == (
        "local:smollm2-135m", "allowed", "prohibited",
    )  # fmt: skip
    assert change.recorded_terms == "2026-11-01" and change.current_terms == "2027-01-01"
    assert sorted(change.samples) == [f"p{i}-s{j}" for i in range(3) for j in range(2)]
    assert sorted(change.trained_on) == ["p0-s0", "p0-s1", "p1-s0"]
    assert change.runs == ["aud"] and change.files == [str(gguf)] and change.aliases == ["support-bot"]
    assert "CHANGED local:smollm2-135m" in repr(ledger)
    assert json.loads(ledger.to_json())["changes"][0]["aliases"] == ["support-bot"]


def test_same_verdict_under_newer_terms_and_unknown_subjects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(tmp_path / "wd")
    monkeypatch.setattr(policy, "TERMS_VERSION", "2027-01-01")  # newer table, same verdicts
    assert jd.audit("aud", workdir=tmp_path / "wd").ok
    prov = _provenance("local:x", "local", "x", "t")
    assert redecide(prov) == ("allowed", "2027-01-01")
    with pytest.raises(ConfigError, match="no run named"):
        jd.audit("nothing-here", workdir=tmp_path / "wd")
    with pytest.raises(ConfigError, match="no run recorded making"):
        jd.audit("unrelated", workdir=tmp_path / "wd")


def test_the_run_hands_its_ledger_to_the_export_card_and_survives_a_broken_registry(tmp_path: Path, home: Path) -> None:
    from jupyter_distill.core.config import DistillConfig
    from jupyter_distill.pipeline.run import Run

    _run(tmp_path / "wd")
    run = Run(DistillConfig.from_kwargs(dataset=[{"prompt": "q"}], name="aud", workdir=str(tmp_path / "wd")))
    card = run.rights_ledger()
    assert card["format"] == LEDGER_FORMAT and card["teachers"][0]["trained_on"] == 3 and card["notes"] == []
    json.dumps(card)
    assert jd.audit(run).teachers == jd.audit("aud", workdir=tmp_path / "wd").teachers
    student = jd.Student(tmp_path / "wd" / "runs" / "aud" / "export" / "model.q8_0.gguf", name="aud")
    assert jd.audit(student).runs == ["aud"]  # found through its file under <workdir>/runs/aud/
    (home / "aliases.json").write_text("{not json", encoding="utf-8")
    broken = run.rights_ledger()
    assert broken["aliases"] == [] and "aliases not read" in broken["notes"][0]
    assert broken["teachers"] == card["teachers"]
