"""The bad-input catalogue: every mistake a user can make gets the right ``DistillError`` subclass,
a message naming the field, the value and the fix, and leaves the run store and the alias
registry exactly as they were.

Each case runs against a workdir that already holds a finished run (``keep``: prompts, samples,
judgments, metrics) and a registry that holds an alias, because the damage that matters is to
work already done: a typo in a re-run must not mark a finished run failed, replace its config,
or wipe an alias. Pipeline cases re-use the finished run's name for exactly that reason.
``pytest.raises(case.error)`` also proves no bare ``KeyError``/``TypeError`` escapes.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import jupyter_distill as jd
from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.errors import (
    AliasError,
    ConfigError,
    DatasetError,
    DistillError,
    ExportError,
    JudgeError,
    PolicyError,
    ReviewError,
    TeacherError,
    TrainingError,
)
from jupyter_distill.core.store import JudgmentRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.evaluation.heldout import evaluate
from jupyter_distill.export.gguf import export_gguf, validate_quantize
from jupyter_distill.export.merge import merge_lora
from jupyter_distill.judging.llm_judge import LLMJudge, load_judge
from jupyter_distill.judging.review import ReviewSession
from jupyter_distill.judging.verifiers import exact_match, json_valid, regex, verifier
from jupyter_distill.serving.registry import get_alias, set_alias, unset_alias
from jupyter_distill.teachers import load_teacher
from jupyter_distill.train.student import load_student
from jupyter_distill.train.trainer import TrainSettings

RUN = "keep"
# How messages state the fix: "Fix: ...", or the valid choices / the expected form of the value.
FIX = re.compile(r"\bfix\b|valid:|must look like|\bneeds\b|\buse\b|\bpass\b", re.IGNORECASE)
UNREACHABLE = "openai-compatible:http://127.0.0.1:9/v1#m"  # never contacted: input is checked first


@dataclass
class Env:
    """The workdir, registry home and ids a case may refer to."""

    workdir: Path
    home: Path
    tmp: Path
    prompt_hash: str
    sample_key: str


@dataclass
class Case:
    """One bad input: what to call, the error class, the ``field`` it names, and text the message
    must contain (the field as the user wrote it and the offending value)."""

    id: str
    call: Callable[[Env], Any]
    error: type[DistillError]
    field: str
    mentions: tuple[str, ...]


def run(env: Env, **options: Any) -> Any:
    """``distill`` over the finished run ``keep`` with one option made bad."""
    base: dict[str, Any] = dict(
        dataset=[{"prompt": "Repeat 1", "expected": "1"}],
        teacher=UNREACHABLE,
        judge=exact_match("expected"),
        n_samples=2,
        top_k=1,
        workdir=str(env.workdir),
        name=RUN,
        on_progress=lambda event: None,
    )
    base.update(options)
    return jd.distill(**base)


def write(env: Env, name: str, text: str) -> str:
    path = env.tmp / name
    path.write_text(text)
    return str(path)


def raising() -> list[dict[str, str]]:
    raise OSError("the database is down")


def not_a_score(row: dict[str, Any], response: str) -> str:
    return "yes"


def nan_score(row: dict[str, Any], response: str) -> float:
    return math.nan


class FakeTeacher:
    """Enough of a Teacher for LLMJudge's constructor checks."""

    spec = "fake:teacher"

    async def sample(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


def prompt_record() -> PromptRecord:
    return PromptRecord(hash="p-eval", messages=[{"role": "user", "content": "hi"}], row={})


def _export_dir(env: Env) -> Path:
    folder = env.tmp / "not-a-model"
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("no weights here")
    return folder


def _adapter(env: Env, *, base_ok: bool) -> Path:
    """An adapter folder with only pickled weights, on a base that is (or is not) an HF folder."""
    base = env.tmp / "base"
    base.mkdir(exist_ok=True)
    if base_ok:
        (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (base / "model.safetensors").write_bytes(b"")
    folder = env.tmp / "adapter"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    return folder


def _messages(env: Env, messages: Any) -> Any:
    return run(env, dataset=[{"messages": messages}])


CASES: list[Case] = [
    # ---------------------------------------------------------------- config (kwargs and YAML)
    Case("n_samples=0", lambda e: run(e, n_samples=0), ConfigError, "n_samples", ("n_samples", "0")),
    Case("top_k>n", lambda e: run(e, n_samples=2, top_k=3), ConfigError, "top_k", ("top_k", "3")),
    Case("typo n_sample", lambda e: run(e, n_sample=4), ConfigError, "n_sample", ("n_sample", "n_samples")),
    Case("temperature 3.5", lambda e: run(e, temperature=3.5), ConfigError, "temperature", ("temperature", "3.5")),
    Case("quantize q3", lambda e: run(e, quantize="q3_weird"), ConfigError, "quantize", ("quantize", "q3_weird")),
    Case("name ../evil", lambda e: run(e, name="../evil"), ConfigError, "name", ("name", "../evil")),
    Case("alias a/b", lambda e: run(e, alias="a/b"), ConfigError, "alias", ("alias", "a/b")),
    Case("device tpu", lambda e: run(e, device="tpu"), ConfigError, "device", ("device", "tpu")),
    Case("heldout 1.0", lambda e: run(e, heldout_fraction=1.0), ConfigError, "heldout_fraction", ("1.0",)),
    Case("steps text", lambda e: run(e, steps="many"), ConfigError, "steps", ("steps", "many")),
    Case("lr 0", lambda e: run(e, learning_rate=0), ConfigError, "learning_rate", ("learning_rate", "0")),
    Case("policy lenient", lambda e: run(e, policy="lenient"), ConfigError, "policy", ("policy", "lenient")),
    Case("max_cost -1", lambda e: run(e, max_cost=-1), ConfigError, "max_cost", ("max_cost", "-1")),
    Case(
        "yaml syntax",
        lambda e: DistillConfig.from_yaml("teacher: local:x\nsteps: [10\n"),
        ConfigError,
        "yaml",
        ("line",),
    ),
    Case(
        "yaml unknown key",
        lambda e: DistillConfig.from_yaml("teacher: local:x\nn_sampels: 4\n"),
        ConfigError,
        "n_sampels",
        ("n_sampels", "line 2", "n_samples"),
    ),
    Case("yaml list", lambda e: DistillConfig.from_yaml("- a\n- b\n"), ConfigError, "yaml", ("mapping", "list")),
    Case(
        "yaml bad value",
        lambda e: DistillConfig.from_yaml("steps: -3\n"),
        ConfigError,
        "steps",
        ("steps", "-3", "line 1"),
    ),
    # ---------------------------------------------------------------- dataset
    Case("dataset None", lambda e: run(e, dataset=None), DatasetError, "dataset", ("dataset",)),
    Case("file missing", lambda e: run(e, dataset=str(e.tmp / "nope.jsonl")), DatasetError, "dataset", ("nope.jsonl",)),
    Case(
        "jsonl bad line",
        lambda e: run(e, dataset=write(e, "bad.jsonl", '{"prompt": "a"}\n{"prompt": \n')),
        DatasetError,
        "dataset",
        ("bad.jsonl", "line 2"),
    ),
    Case("file .txt", lambda e: run(e, dataset=write(e, "d.txt", "hi")), DatasetError, "dataset", (".txt",)),
    Case(
        "json not list",
        lambda e: run(e, dataset=write(e, "d.json", '{"prompt": "x"}')),
        DatasetError,
        "dataset",
        ("d.json", "dict"),
    ),
    Case("no prompt field", lambda e: run(e, dataset=[{"text": "x"}]), DatasetError, "prompt", ("prompt", "text")),
    Case("empty prompt", lambda e: run(e, dataset=[{"prompt": "  "}]), DatasetError, "prompt", ("prompt", "row 1")),
    Case("prompt int", lambda e: run(e, dataset=[{"prompt": 5}]), DatasetError, "prompt", ("prompt", "int")),
    Case("no rows", lambda e: run(e, dataset=[]), DatasetError, "dataset", ("no rows",)),
    Case("single dict", lambda e: run(e, dataset={"prompt": "x"}), DatasetError, "dataset", ("dict",)),
    Case("dataset int", lambda e: run(e, dataset=42), DatasetError, "dataset", ("int",)),
    Case("callable raises", lambda e: run(e, dataset=raising), DatasetError, "dataset", ("raising", "OSError")),
    Case(
        "bad role",
        lambda e: _messages(e, [{"role": "wizard", "content": "x"}]),
        DatasetError,
        "messages",
        ("wizard",),
    ),
    Case(
        "ends with assistant",
        lambda e: _messages(e, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
        DatasetError,
        "messages",
        ("assistant",),
    ),
    Case("prompt_field typo", lambda e: run(e, prompt_field="promt"), DatasetError, "promt", ("promt",)),
    # ---------------------------------------------------------------- teacher specs
    Case("no scheme", lambda e: run(e, teacher="gpt-4o"), TeacherError, "teacher", ("gpt-4o", "local:")),
    Case("unknown scheme", lambda e: run(e, teacher="foo:bar"), TeacherError, "teacher", ("foo", "openrouter:")),
    Case("no model", lambda e: run(e, teacher="openrouter:"), TeacherError, "teacher", ("openrouter:",)),
    Case(
        "compat no #model",
        lambda e: run(e, teacher="openai-compatible:http://127.0.0.1:9/v1"),
        TeacherError,
        "teacher",
        ("#MODEL", "127.0.0.1:9"),
    ),
    Case(
        "compat ftp",
        lambda e: run(e, teacher="openai-compatible:ftp://127.0.0.1/v1#m"),
        TeacherError,
        "teacher",
        ("ftp://",),
    ),
    Case("closed API", lambda e: run(e, teacher="openai:gpt-4o-mini"), PolicyError, "teacher", ("gpt-4o-mini",)),
    Case(
        "missing key",
        lambda e: run(e, teacher="openrouter:meta-llama/llama-3.3-70b-instruct"),
        TeacherError,
        "api_key",
        ("OPENROUTER_API_KEY",),
    ),
    Case("teacher object", lambda e: run(e, teacher=object()), TeacherError, "teacher", ("object", "spec")),
    Case(
        "teacher option",
        lambda e: load_teacher(UNREACHABLE, temprature=0.1),
        TeacherError,
        "temprature",
        ("temprature",),
    ),
    # ---------------------------------------------------------------- judges and judge output
    Case("judge int", lambda e: run(e, judge=42), JudgeError, "judge", ("42",)),
    Case("judge empty", lambda e: run(e, judge=" "), JudgeError, "judge", ("empty",)),
    Case("regex broken", lambda e: regex("(unclosed"), JudgeError, "judge", ("(unclosed",)),
    Case("schema type", lambda e: json_valid(schema={"a": set}), JudgeError, "schema", ("'a'", "set")),
    Case("schema name", lambda e: json_valid(schema={"type": "strin"}), JudgeError, "schema", ("strin",)),
    Case("verifier says yes", lambda e: verifier(not_a_score)({}, "r"), JudgeError, "judge", ("'yes'", "not_a_score")),
    Case("verifier NaN", lambda e: verifier(nan_score)({}, "r"), JudgeError, "judge", ("NaN", "nan_score")),
    Case(
        "reference missing",
        lambda e: exact_match("answer")({"expected": "1"}, "1"),
        JudgeError,
        "judge",
        ("'answer'", "expected"),
    ),
    Case("rubric empty", lambda e: LLMJudge(FakeTeacher(), rubric="  "), JudgeError, "rubric", ("rubric",)),
    Case(
        "judge max_tokens",
        lambda e: LLMJudge(FakeTeacher(), max_tokens=4),
        JudgeError,
        "max_tokens",
        ("max_tokens", "4"),
    ),
    Case("judge None no teacher", lambda e: load_judge(None), JudgeError, "judge", ("judge=None",)),
    Case(
        "eval score 1.5",
        lambda e: evaluate(None, "r", [prompt_record()], lambda messages: "a", lambda p, r: 1.5, "after"),
        TrainingError,
        "judge",
        ("1.5",),
    ),
    # ---------------------------------------------------------------- review actions
    Case("review no run", lambda e: ReviewSession(RunStore(e.workdir), "ghost"), ReviewError, "run", ("ghost",)),
    Case(
        "review bad prompt",
        lambda e: ReviewSession(RunStore(e.workdir), RUN).choose_best("nohash", e.sample_key),
        ReviewError,
        "prompt_hash",
        ("nohash",),
    ),
    Case(
        "review bad sample",
        lambda e: ReviewSession(RunStore(e.workdir), RUN).accept(e.prompt_hash, "nokey"),
        ReviewError,
        "sample_key",
        ("nokey",),
    ),
    Case(
        "review empty edit",
        lambda e: ReviewSession(RunStore(e.workdir), RUN).edit(e.prompt_hash, e.sample_key, "  "),
        ReviewError,
        "text",
        ("empty",),
    ),
    Case(
        "review order",
        lambda e: ReviewSession(RunStore(e.workdir), RUN).items(order="random"),  # type: ignore[arg-type]
        ReviewError,
        "order",
        ("random",),
    ),
    # ---------------------------------------------------------------- export options
    Case("quantize q2", lambda e: validate_quantize("q2_xs"), ExportError, "quantize", ("q2_xs", "q4_k_m")),
    Case(
        "export bogus quant",
        lambda e: export_gguf(_export_dir(e), e.tmp / "out", quantize="bogus"),
        ExportError,
        "quantize",
        ("bogus",),
    ),
    Case(
        "export not a model",
        lambda e: export_gguf(_export_dir(e), e.tmp / "out2", quantize="f16"),
        ExportError,
        "merged_or_adapter",
        ("not-a-model",),
    ),
    Case(
        "merge base missing",
        lambda e: merge_lora(_adapter(e, base_ok=False), e.tmp / "merged"),
        ExportError,
        "base_folder",
        ("base_folder",),
    ),
    Case(
        "merge pickle adapter",
        lambda e: merge_lora(_adapter(e, base_ok=True), e.tmp / "merged"),
        ExportError,
        "adapter_dir",
        ("adapter_model.safetensors", "adapter"),
    ),
    # ---------------------------------------------------------------- alias names and entries
    Case("alias ../x", lambda e: set_alias("../x", model_path=e.tmp / "m.gguf"), AliasError, "name", ("'../x'",)),
    Case("alias space", lambda e: set_alias("a b", model_path=e.tmp / "m.gguf"), AliasError, "name", ("'a b'",)),
    Case("alias empty", lambda e: set_alias("", model_path=e.tmp / "m.gguf"), AliasError, "name", ("''",)),
    Case("alias dotdot", lambda e: set_alias("..", model_path=e.tmp / "m.gguf"), AliasError, "name", ("'..'",)),
    Case("alias long", lambda e: set_alias("x" * 200, model_path=e.tmp / "m.gguf"), AliasError, "name", ("x" * 200,)),
    Case("alias int", lambda e: set_alias(7, model_path=e.tmp / "m.gguf"), AliasError, "name", ("7",)),  # type: ignore[arg-type]
    Case("backend onnx", lambda e: set_alias("ok", backend="onnx"), AliasError, "backend", ("onnx", "gguf")),
    Case(
        "gguf not gguf",
        lambda e: set_alias("ok", model_path=write(e, "fake.gguf", "not a gguf")),
        AliasError,
        "model_path",
        ("fake.gguf",),
    ),
    Case("gguf no path", lambda e: set_alias("ok", backend="gguf"), AliasError, "model_path", ("model_path",)),
    Case(
        "base_url ftp",
        lambda e: set_alias("ok", backend="openai-compatible", base_url="ftp://x", model="m"),
        AliasError,
        "base_url",
        ("ftp://x",),
    ),
    Case("unknown alias", lambda e: get_alias("ghost"), AliasError, "model", ("ghost", "keep")),
    Case("unset a/b", lambda e: unset_alias("a/b"), AliasError, "name", ("'a/b'",)),
    Case(
        "completion unknown",
        lambda e: jd.completion(model="ghost", messages=[{"role": "user", "content": "hi"}]),
        AliasError,
        "model",
        ("ghost",),
    ),
    Case(
        "completion messages",
        lambda e: jd.completion(model="keep", messages=[{"content": "no role"}]),
        ConfigError,
        "messages[0]",
        ("role",),
    ),
    # ---------------------------------------------------------------- training
    Case("lora_r 0", lambda e: TrainSettings(lora_r=0), TrainingError, "lora_r", ("lora_r", "0")),
    Case("student unknown", lambda e: load_student("no-such-student"), TrainingError, "student", ("no-such-student",)),
]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    """A workdir with a finished run and a registry with one alias (the things bad input must not touch)."""
    home, workdir, scratch = tmp_path / "home", tmp_path / "wd", tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(home))
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (scratch / "m.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    set_alias("keep", backend="gguf", model_path=scratch / "m.gguf")
    store = RunStore(workdir)
    store.create_run(RUN, {"teacher": "openai-compatible:http://127.0.0.1:9/v1#m", "n_samples": 2})
    prompts = [
        PromptRecord(
            hash=f"p{i}", messages=[{"role": "user", "content": f"q{i}"}], row={"expected": str(i)}, position=i
        )
        for i in range(2)
    ]
    store.put_prompts(RUN, prompts)
    samples = [
        SampleRecord(key=f"s{i}{j}", prompt_hash=f"p{i}", teacher="t", params={}, sample_index=j, text=f"a{i}{j}")
        for i in range(2)
        for j in range(2)
    ]
    store.put_samples(samples)
    store.put_judgments(JudgmentRecord(key=f"j{s.key}", sample_key=s.key, judge="v", score=1.0) for s in samples)
    store.put_metrics(RUN, 1, {"loss": 1.0})
    store.update_run(RUN, status="done", phase="done", summary={"teacher": "t", "pairs": 2})
    store.close()
    return Env(workdir=workdir, home=home, tmp=scratch, prompt_hash="p0", sample_key="s00")


def snapshot(env: Env) -> dict[str, Any]:
    """Every row of every table, the registry's bytes and the file listing (SQLite's own files aside)."""
    conn = sqlite3.connect(env.workdir / "runs.db")
    try:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        state: dict[str, Any] = {t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}"))) for t in tables}
    finally:
        conn.close()
    state["aliases.json"] = (env.home / "aliases.json").read_bytes()
    state["files"] = sorted(
        str(p.relative_to(root))
        for root in (env.workdir, env.home)
        for p in root.rglob("*")
        if not p.name.startswith("runs.db") and not p.name.endswith(".lock")
    )
    return state


def test_the_catalogue_is_large_and_covers_every_area() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    kinds = {c.error for c in CASES}
    assert {
        ConfigError,
        DatasetError,
        TeacherError,
        PolicyError,
        JudgeError,
        ReviewError,
        ExportError,
        AliasError,
    } <= kinds


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(case: Case, env: Env) -> None:
    before = snapshot(env)
    with pytest.raises(case.error) as info:
        case.call(env)
    error = info.value
    message = str(error)
    assert error.field == case.field, f"field {error.field!r} != {case.field!r}: {message}"
    missing = [m for m in case.mentions if m not in message]
    assert not missing, f"message does not mention {missing}: {message}"
    assert FIX.search(message) or error.fix, f"message names no fix: {message}"
    assert snapshot(env) == before, "the store or the registry changed"
