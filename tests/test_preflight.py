"""Everything that can be checked without a teacher is checked before the first paid request.

Each case points ``distill`` at a request-counting OpenAI-compatible server on 127.0.0.1 with one
thing wrong that only a later phase (training, export, the alias) used to notice, after the
sampling phase had been paid for. Each must raise its ``DistillError`` with zero requests sent and
no run created in the store. No case loads weights: the students here are folders and files with
the right metadata and placeholder weights.
"""

from __future__ import annotations

import json
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
    DistillError,
    ExportError,
    JudgeError,
    TeacherError,
    TrainingError,
)
from jupyter_distill.core.store import RunStore
from jupyter_distill.export.gguf import check_exportable
from jupyter_distill.judging.llm_judge import load_judge
from jupyter_distill.judging.verifiers import exact_match
from jupyter_distill.pipeline.run import validate_before_requests

CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def hf_folder(root: Path, model_type: str, *, weights: bool = True, template: bool = True) -> Path:
    """An HF folder's metadata with an empty safetensors file: enough for every check, no weights."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["X"]}))
    tokenizer_config: dict[str, Any] = {"eos_token": "<|im_end|>"}
    if template:
        tokenizer_config["chat_template"] = CHATML
    (root / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (root / "tokenizer.json").write_text("{}")
    if weights:
        (root / "model.safetensors").write_bytes(b"")
    return root


def gguf_file(path: Path, architecture: str, *, template: bool = True) -> Path:
    """A real GGUF (header and metadata, no tensors) written by the gguf package."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    if template:
        writer.add_chat_template(CHATML)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def wrong_arity(response: str) -> float:
    return 1.0


@dataclass
class Case:
    id: str
    options: Callable[[Path], dict[str, Any]]
    error: type[DistillError]
    field: str


CASES = [
    # the headline: a student that trains but cannot be exported once sampling was paid; every map
    # key exports now (tests/test_architectures.py), so an architecture the converter lacks stands in
    Case("opt folder + quantize", lambda t: {"student": str(hf_folder(t / "opt", "opt")), "quantize": "q8_0"},
         ExportError, "architecture"),
    Case("folder missing", lambda t: {"student": str(t / "no-such-folder")}, TrainingError, "student"),
    Case("gguf missing", lambda t: {"student": str(t / "gone.gguf")}, TrainingError, "student"),
    Case("gguf not a gguf", lambda t: {"student": _write(t / "fake.gguf", b"not a gguf at all" * 10)},
         TrainingError, "student"),
    Case("gguf arch transformers cannot train", lambda t: {"student": str(gguf_file(t / "x.gguf", "rwkv6")),
                                                            "quantize": None}, TrainingError, "student"),
    # no template and no family default (a llama vocabulary without a family's marker tokens)
    Case("gguf without chat template", lambda t: {"student": str(gguf_file(t / "b.gguf", "llama", template=False))},
         ConfigError, "chat_template"),
    Case("folder without config.json", lambda t: {"student": _mkdir(t / "empty")}, TrainingError, "student"),
    Case("folder with only .bin weights", lambda t: {"student": str(hf_folder(t / "bin", "llama", weights=False))},
         TrainingError, "student"),
    Case("folder unknown architecture", lambda t: {"student": str(hf_folder(t / "u", "no-such-arch")),
                                                    "quantize": None}, TrainingError, "student"),
    Case("folder without chat template", lambda t: {"student": str(hf_folder(t / "base", "llama", template=False))},
         ConfigError, "chat_template"),
    Case("alias with a slash", lambda t: {"alias": "team/model"}, ConfigError, "alias"),
    Case("alias '..'", lambda t: {"alias": ".."}, AliasError, "name"),
    Case("judge not callable", lambda t: {"judge": 42}, JudgeError, "judge"),
    Case("judge unknown spec", lambda t: {"judge": "nosuch:model"}, TeacherError, "teacher"),
    Case("verifier with the wrong arity", lambda t: {"judge": wrong_arity}, JudgeError, "judge"),
    Case("workdir/runs is a file", lambda t: {"workdir": _runs_is_a_file(t / "wd-file")}, ConfigError, "workdir"),
    Case("workdir is a file", lambda t: {"workdir": _write(t / "wd.txt", b"x")}, DistillError, "workdir"),
    Case("onpolicy with a text-only teacher", lambda t: {"loss": "onpolicy"}, ConfigError, "loss"),
    Case("jbond on the fast engine", lambda t: {"loss": "jbond", "engine": "fast"}, TrainingError, "engine"),
]  # fmt: skip


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _mkdir(path: Path) -> str:
    path.mkdir()
    return str(path)


def _runs_is_a_file(workdir: Path) -> str:
    workdir.mkdir()
    (workdir / "runs").write_text("not a folder")
    return str(workdir)


@pytest.fixture
def good_student(tmp_path: Path) -> Path:
    return hf_folder(tmp_path / "good-llama", "llama")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_student_export_alias_judge_or_workdir_fails_with_zero_requests(
    case: Case, tmp_path: Path, openai_server: Any, good_student: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    options: dict[str, Any] = dict(
        dataset=[{"prompt": f"Repeat {i}", "expected": str(i)} for i in range(4)],
        teacher=openai_server.spec("m"),
        student=str(good_student),
        judge=exact_match("expected"),
        n_samples=2,
        top_k=1,
        steps=1,
        quantize="f16",
        workdir=str(tmp_path / "wd"),
        name="paid",
    )
    options.update(case.options(tmp_path))
    with pytest.raises(case.error) as info:
        jd.distill(on_progress=lambda event: None, **options)
    assert info.value.field == case.field, str(info.value)
    assert openai_server.requests_total == 0
    workdir = Path(options["workdir"])
    if workdir.is_dir() and (workdir / "runs.db").exists():
        assert RunStore(workdir).get_run("paid") is None  # nothing was started


def test_good_students_pass_without_loading_weights(tmp_path: Path, good_student: Path) -> None:
    """The checks refuse only what would fail: placeholder weights pass, since nothing is loaded."""
    judge = load_judge(exact_match("expected"))
    for student, quantize in [
        (str(good_student), "q4_k_m"),
        (str(hf_folder(tmp_path / "qwen3", "qwen3")), "q8_0"),
        (str(hf_folder(tmp_path / "gemma", "gemma3_text")), "q4_k_m"),  # exported by llama.cpp's converter
        (str(hf_folder(tmp_path / "opt", "opt")), None),  # trainable; only its export would be refused
        (str(gguf_file(tmp_path / "ok.gguf", "llama")), "f16"),
    ]:
        config = DistillConfig(student=student, quantize=quantize, workdir=str(tmp_path / "wd"), alias="ok-1")
        validate_before_requests(config, "run", judge)
    assert not (tmp_path / "wd" / "runs").exists()  # checking writes nothing


def test_check_exportable_is_the_one_place_that_knows_the_writer() -> None:
    for architecture in ("llama", "qwen2", "qwen3", "gemma3_text", "Gemma3ForCausalLM"):
        check_exportable(architecture, "q4_k_m")
    check_exportable("opt", None)  # no export, nothing to check
    with pytest.raises(ExportError) as info:
        check_exportable("opt", "q4_k_m")
    assert "quantize=None" in str(info.value) and info.value.value == "opt"
    with pytest.raises(ExportError):
        check_exportable("llama", "q3_weird")


def test_a_device_that_is_not_here_fails_before_requests(
    tmp_path: Path, openai_server: Any, good_student: Path
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingError) as info:
        jd.distill(
            dataset=[{"prompt": "Repeat 1", "expected": "1"}], teacher=openai_server.spec("m"),
            student=str(good_student), judge=exact_match("expected"), n_samples=2, top_k=1, device="cuda",
            workdir=str(tmp_path / "wd"), on_progress=lambda event: None,
        )  # fmt: skip
    assert info.value.field == "device"
    assert openai_server.requests_total == 0
