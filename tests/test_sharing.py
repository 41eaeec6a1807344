"""Shareable runs: the rights ledger travels in the model card, the GGUF header and the dataset card;
the curated pairs export as a Hub-ready folder and train again without a teacher call."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from tiny_models import CHECK_PROMPTS, build_tiny_llama

import jupyter_distill as jd
from jupyter_distill.core import policy, runtime
from jupyter_distill.core.curated import COLUMNS
from jupyter_distill.core.data import load_dataset
from jupyter_distill.core.errors import DistillError, ExportError, ReviewError
from jupyter_distill.core.hashing import file_sha256
from jupyter_distill.core.store import PairRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.export.card import LEDGER_KEY, dataset_hash
from jupyter_distill.judging.verifiers import exact_match

TEACHER = "openai-compatible:http://127.0.0.1:9/v1#m"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    runtime.release_all()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _store(workdir: Path, name: str = "shared") -> RunStore:
    """A run whose pairs come from one HTTP teacher, sampled under the installed terms."""
    store = RunStore(workdir)
    store.create_run(name, {"teacher": TEACHER, "student": "smollm2-135m", "dataset": "tickets.jsonl"})
    store.update_run(name, summary={"teacher": TEACHER, "judge": "verifier:exact"})
    store.put_prompts(name, [PromptRecord(f"p{i}", [{"role": "user", "content": f"q{i}"}], {"expected": str(i)}, i)
                             for i in range(2)])  # fmt: skip
    decision = policy.decide("openai-compatible", "m", licence="apache-2.0")
    samples = []
    for i in range(2):
        for j in range(2):
            prov = {
                "teacher": TEACHER, "provider": "openai-compatible", "endpoint": "http://127.0.0.1:9/v1",
                "model": "m", "time": f"2026-11-0{i + 1}T00:00:0{j}Z", "policy": decision.to_dict(),
                "terms_version": decision.terms_version, "licence": decision.licence,
            }  # fmt: skip
            samples.append(SampleRecord(f"p{i}-s{j}", f"p{i}", TEACHER, {}, j, f"a{i}{j}", provenance=prov))
    store.put_samples(samples)
    store.put_pairs(
        name, [PairRecord("p0", 0, "a00", "a01", "p0-s0", "p0-s1"), PairRecord("p1", 0, "a10", None, "p1-s0")]
    )
    return store


def _header(path: Path) -> dict:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    return json.loads(fields[LEDGER_KEY].contents())


def test_the_ledger_travels_in_the_model_card_and_every_gguf(tiny_llama: Path, tmp_path: Path) -> None:
    from jupyter_distill.export.gguf import export_gguf

    store = _store(tmp_path / "wd")
    ledger = jd.audit("shared", workdir=tmp_path / "wd").to_dict()
    result = export_gguf(
        tiny_llama, tmp_path / "wd" / "runs" / "shared" / "export", quantize="q8_0", check_prompts=CHECK_PROMPTS[:1],
        store=store, run_id="shared", card={"rights_ledger": ledger}, check_tokens=4,
    )  # fmt: skip
    f16, q8 = _header(result.f16_gguf), _header(result.gguf)
    assert f16 == q8  # llama.cpp's quantizer keeps the header key
    (row,) = f16["teachers"]
    verdict = policy.decide("openai-compatible", "m", licence="apache-2.0").verdict
    assert (row["teacher"], row["provider"], row["endpoint"], row["verdict"]) == (
        TEACHER, "openai-compatible", "http://127.0.0.1:9/v1", verdict,
    )  # fmt: skip
    assert row["terms_version"] == policy.TERMS_VERSION and (row["sampled"], row["trained_on"]) == (4, 3)
    assert f16["students"] == [{"run": "shared", "student": "smollm2-135m", "licence": "apache-2.0"}]
    assert f16["run_id"] == "shared" and f16["dataset_hash"] == dataset_hash(store, "shared")
    assert f16["format"] == ledger["format"] and f16["ok"] is True
    card = result.card.read_text()
    assert "## Rights ledger" in card and f"| `{TEACHER}` | openai-compatible | http://127.0.0.1:9/v1 |" in card
    block = re.search(r"## Rights ledger.*?```json\n(.*?)\n```", card, re.S)
    assert block is not None and json.loads(block.group(1)) == f16  # one ledger, three places
    assert str(tmp_path) not in json.dumps(f16)  # files are named, not located on the exporter's disk


def _run_with_review(tmp_path: Path, openai_server, student: Path) -> tuple[jd.Student, str]:
    """A real run (HTTP teacher on 127.0.0.1, verifier judge, tiny llama) where a human edits one pair."""

    def answer(body, index):
        number = body["messages"][-1]["content"].rsplit(" ", 1)[-1]
        return number if index % 2 == 0 else f"maybe {number}"

    openai_server.responder = answer
    edited: list[str] = []

    def review(run) -> None:  # a human picks an edited answer for the first training prompt
        prompt = run.store.get_prompts(run.name, split="train")[0]
        sample = run.store.samples_for_prompt(prompt.hash)[1]
        run.store.add_review(run.name, prompt.hash, "edit", sample.key, "edited answer")
        edited.append(prompt.hash)
        run.continue_after_review()

    trained = jd.distill(
        dataset=[{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(8)],
        teacher=openai_server.spec("test-model"), student=str(student), judge=exact_match("expected"),
        n_samples=2, top_k=1, steps=2, batch_size=2, max_tokens=8, quantize=None, review=True,
        review_handler=review, workdir=str(tmp_path / "wd"), name="numbers", on_progress=lambda e: None,
    )  # fmt: skip
    return trained, edited[0]


def test_export_dataset_round_trips_without_a_teacher_call(tmp_path: Path, openai_server, tiny_llama: Path) -> None:
    student, edited = _run_with_review(tmp_path, openai_server, tiny_llama)
    store = RunStore(tmp_path / "wd")
    data = jd.export_dataset(student, tmp_path / "share", "jsonl")  # the Student distill() returned
    assert data == tmp_path / "share" / "data" / "train.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    pairs = store.get_pairs("numbers")
    assert len(rows) == len(pairs) == 6 and set(COLUMNS) <= set(rows[0])
    assert [r["chosen"] for r in rows] == [p.chosen_text for p in pairs]
    first = next(r for r in rows if r["prompt_hash"] == edited)
    assert first["chosen"] == "edited answer" and first["human_decision"] == "edited" and first["source"] == "human"
    assert first["chosen_score"] is None  # the judge scored the text before the edit, not this one
    plain = next(r for r in rows if r["prompt_hash"] != edited)
    assert plain["human_decision"] is None and plain["chosen_score"] == 1.0 and plain["rejected_score"] == 0.0
    assert plain["prompt"][-1]["role"] == "user" and plain["expected"] in plain["chosen"]
    made = store.get_samples([plain["chosen_sample"]])[plain["chosen_sample"]].provenance
    assert plain["teacher"] == openai_server.spec("test-model") and plain["sampled_at"] == made["time"]
    assert plain["terms_verdict"] == made["policy"]["verdict"] and plain["terms_version"] == policy.TERMS_VERSION

    # the dataset card: front matter the Hub's own parser reads, counts, judge and the ledger
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(tmp_path / "share" / "README.md")
    assert card.data.configs == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train.jsonl"}]}
    ]
    assert card.data.task_categories == ["text-generation"] and card.data.license
    assert "- pairs: 6" in card.text and "- human decisions: 1" in card.text and file_sha256(data) in card.text
    ledger = json.loads(re.search(r"```json\n(.*?)\n```", card.text, re.S).group(1))
    assert ledger["run_id"] == "numbers" and ledger["teachers"][0]["trained_on"] == 12  # both sides of 6 pairs
    assert ledger["dataset_hash"] == dataset_hash(store, "numbers")

    # Parquet holds the same rows; by name, from the run folder
    parquet = jd.export_dataset("numbers", tmp_path / "share-pq", format="parquet", workdir=tmp_path / "wd")
    found_jsonl: dict = {}
    found_parquet: dict = {}
    assert [p.hash for p in load_dataset(data, pairs=found_jsonl)] == [
        p.hash for p in load_dataset(parquet, pairs=found_parquet)
    ]
    assert found_jsonl == found_parquet and sum(map(len, found_jsonl.values())) == 6

    # round trip: the exported file trains a new run; the teacher named is neither loaded nor called
    sent = openai_server.requests_total
    again = jd.distill(
        dataset=str(data), teacher=openai_server.spec("test-model"), student=str(tiny_llama),
        judge=exact_match("expected"), steps=2, batch_size=2, max_tokens=8, quantize=None,
        heldout_fraction=0.25, workdir=str(tmp_path / "wd"), name="again",
        on_progress=lambda e: None,
    )  # fmt: skip
    assert openai_server.requests_total == sent and isinstance(again("Repeat the number 1"), str)
    summary = store.get_run("again")["summary"]
    assert summary["teacher_requests"] == 0 and summary["curated_pairs"] == 6
    train = {p.hash for p in store.get_prompts("again", split="train")}
    reimported = store.get_pairs("again")
    assert {(p.prompt_hash, p.chosen_text) for p in reimported} == {
        (r["prompt_hash"], r["chosen"]) for r in rows if r["prompt_hash"] in train
    }
    assert any(p.source == "human" and p.chosen_text == "edited answer" for p in reimported) == (edited in train)
    # the ledger of the new run still names the teacher and terms the texts were made under
    (row,) = jd.audit("again", workdir=tmp_path / "wd").teachers
    assert (row.teacher, row.verdict, row.provider) == (
        openai_server.spec("test-model"), plain["terms_verdict"], "openai-compatible",
    )  # fmt: skip
    assert row.terms_version == plain["terms_version"] and row.endpoint == plain["endpoint"]
    # a curated dataset cannot be reviewed again, and says so before anything runs
    with pytest.raises(ReviewError, match="curated pairs"):
        jd.distill(dataset=str(data), student=str(tiny_llama), judge=exact_match("expected"), review=True,
                   workdir=str(tmp_path / "wd"), name="again2", on_progress=lambda e: None)  # fmt: skip


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_to_hub_is_refused_without_token_or_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    _store(tmp_path / "wd")
    folder = jd.export_dataset("shared", tmp_path / "ds", workdir=tmp_path / "wd").parent.parent
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(DistillError, match="HF_TOKEN") as no_token:
        jd.push_to_hub(folder, "me/shared")
    assert no_token.value.field == "token"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DistillError, match="offline"):
        jd.push_to_hub(folder, "me/shared", token="hf_test")
    with pytest.raises(DistillError, match="owner/name"):
        jd.push_to_hub(folder, "shared", token="hf_test")
    # a Hub that cannot be reached (nothing listens on the port): said, and nothing else is touched
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(DistillError, match="cannot be reached"):
        jd.push_to_hub("shared", "me/shared", token="hf_test", workdir=tmp_path / "wd")
    # pushing a run exports its dataset folder first, in the run's folder
    assert (tmp_path / "wd" / "runs" / "shared" / "dataset" / "data" / "train.jsonl").is_file()
    with pytest.raises(ExportError, match="not a dataset folder"):
        jd.push_to_hub(tmp_path / "wd", "me/shared", token="hf_test")


def test_dataset_export_refuses_unknown_formats_and_empty_runs(tmp_path: Path) -> None:
    store = _store(tmp_path / "wd")
    with pytest.raises(ExportError, match="format='jsonl'"):
        jd.export_dataset("shared", tmp_path / "x", format="csv", workdir=tmp_path / "wd")
    store.create_run("empty", {"student": "smollm2-135m"})
    with pytest.raises(ExportError, match="no training pairs"):
        jd.export_dataset("empty", tmp_path / "y", workdir=tmp_path / "wd")
    # re-exporting in the other format leaves one data file, which the card's configs name
    jd.export_dataset("shared", tmp_path / "z", workdir=tmp_path / "wd")
    jd.export_dataset("shared", tmp_path / "z", format="parquet", workdir=tmp_path / "wd")
    assert sorted(p.name for p in (tmp_path / "z" / "data").iterdir()) == ["train.parquet"]
    assert "data/train.parquet" in (tmp_path / "z" / "README.md").read_text()
    # one known teacher licence becomes the dataset's licence
    assert "license: apache-2.0" in (tmp_path / "z" / "README.md").read_text()


def test_curated_pairs_pass_the_terms_gate_and_need_a_judge_for_held_out(tmp_path: Path, tiny_llama: Path) -> None:
    from jupyter_distill.core.errors import ConfigError, PolicyError

    def rows(provider: str, model: str) -> Path:
        path = tmp_path / f"{provider}.jsonl"
        lines = [
            {"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": f"a{i}", "rejected": None,
             "teacher": f"{provider}:{model}", "provider": provider, "model": model, "expected": f"a{i}"}
            for i in range(4)
        ]  # fmt: skip
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
        return path

    base = dict(student=str(tiny_llama), workdir=str(tmp_path / "wd"), on_progress=lambda e: None)
    # pairs made by a teacher whose terms forbid training on its outputs are refused like its samples
    with pytest.raises(PolicyError, match="4 curated pair"):
        jd.distill(dataset=str(rows("openai", "gpt-4o-mini")), judge=exact_match("expected"), **base)
    # no teacher is called, so the teacher cannot be the judge of the held-out answers
    with pytest.raises(ConfigError, match="judge=None") as no_judge:
        jd.distill(dataset=str(rows("local", "smollm2-135m")), **base)
    assert no_judge.value.field == "judge"
    # onpolicy needs a live teacher scoring the student's tokens; curated pairs call none
    with pytest.raises(ConfigError, match="curated pairs calls no teacher") as no_scorer:
        jd.distill(dataset=str(rows("local", "smollm2-135m")), judge=exact_match("expected"), loss="onpolicy", **base)
    assert no_scorer.value.field == "loss"
    assert RunStore(tmp_path / "wd").list_runs() == []  # refused before the store was written


def test_parquet_keeps_reference_fields_of_mixed_types(tmp_path: Path) -> None:
    from jupyter_distill.export.dataset import write_dataset

    rows = [
        {"prompt": [{"role": "user", "content": "q0"}], "chosen": "a", "expected": 3},
        {"prompt": [{"role": "user", "content": "q1"}], "chosen": "b", "expected": "three"},
    ]
    data = write_dataset(rows, tmp_path / "mixed", format="parquet", name="mixed", ledger=None, judge=None, counts={})
    found: dict = {}
    prompts = load_dataset(data, pairs=found)
    assert [p.row["expected"] for p in prompts] == ["3", "three"] and len(found) == 2
    assert "Not recorded" in (tmp_path / "mixed" / "README.md").read_text()
