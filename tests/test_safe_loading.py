"""Safe loading: weights only from safetensors or GGUF, never remote code, alias paths checked.

A pickle can run any code when it is loaded, and a model folder's ``auto_map`` names Python files
that ``trust_remote_code`` would import. The tests plant both as traps: a ``pytorch_model.bin``
and a training checkpoint whose unpickling touches a marker file, and ``configuration_*.py`` /
``modeling_*.py`` files that touch a marker when imported. Every loader jupyter-distill has
(student, ``hf:`` teacher, peft alias, export merge, training resume) must refuse or ignore them,
and the markers must never appear. Unauthenticated calls to the server extension are covered by
``tests/test_server.py::test_every_route_needs_the_token``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import jupyter_distill as jd
from jupyter_distill.core.errors import AliasError, ExportError, TeacherError, TrainingError
from jupyter_distill.export.merge import merge_lora
from jupyter_distill.serving.registry import get_alias, set_alias
from jupyter_distill.teachers import load_teacher
from jupyter_distill.train.student import load_student
from jupyter_distill.train.trainer import BondTrainer, TrainPair, TrainSettings

PACKAGE = Path(__file__).resolve().parent.parent / "jupyter_distill"


class Trap:
    """Unpickling this touches ``marker``: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def remote_code(folder: Path, marker: Path, model_type: str) -> None:
    """Add ``auto_map`` to the folder's config, pointing at files that touch ``marker`` on import."""
    trap = f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
    (folder / "configuration_evil.py").write_text(trap + "from transformers import LlamaConfig as EvilConfig\n")
    (folder / "modeling_evil.py").write_text(trap + "from transformers import LlamaForCausalLM as EvilModel\n")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
    }
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture
def tiny(tiny_llama_student: Path) -> Path:
    return tiny_llama_student


@pytest.fixture
def pickled_only(tiny: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A model folder whose only weights are a booby-trapped ``pytorch_model.bin``; and the marker."""
    folder = tmp_path / "pickled"
    shutil.copytree(tiny, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "PICKLE-EXECUTED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Trap(marker)))
    return folder, marker


def test_no_loader_turns_on_remote_code_or_unsafe_unpickling() -> None:
    """Every ``trust_remote_code=`` in the package is False; every torch.load is weights_only."""
    offending = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"trust_remote_code\s*=\s*(\w+)", text):
            if match.group(1) != "False":
                offending.append(f"{path.name}: {match.group(0)}")
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                offending.append(f"{path.name}: {match.group(0)}")
        offending += [f"{path.name}: pickle.load" for _ in re.finditer(r"\bpickle\.loads?\(", text)]
    assert offending == []


def test_student_with_only_pickled_weights_is_refused(pickled_only: tuple[Path, Path]) -> None:
    folder, marker = pickled_only
    with pytest.raises(TrainingError, match="safetensors") as info:
        load_student(str(folder), device="cpu")
    assert info.value.field == "student" and "Fix:" in str(info.value)
    assert not marker.exists()


def test_hf_teacher_with_only_pickled_weights_is_refused(pickled_only: tuple[Path, Path]) -> None:
    folder, marker = pickled_only
    with pytest.raises(TeacherError, match="safetensors") as info:
        load_teacher(f"hf:{folder}")
    assert info.value.field == "teacher"
    assert not marker.exists()


def test_peft_alias_with_only_pickled_weights_is_refused_at_use(
    pickled_only: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    folder, marker = pickled_only
    set_alias("pickled", backend="peft", model_path=folder)
    with pytest.raises(AliasError, match="safetensors"):
        jd.completion(model="pickled", messages="hi", max_tokens=2)
    assert not marker.exists()


def test_pickled_adapter_is_not_merged(tiny: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    marker = tmp_path / "PICKLE-EXECUTED"
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny)}))
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(Trap(marker)))
    with pytest.raises(ExportError, match=r"adapter_model\.safetensors"):
        merge_lora(adapter, tmp_path / "merged")
    assert not marker.exists()


def test_a_booby_trapped_training_checkpoint_is_refused_not_executed(tiny: Path, tmp_path: Path) -> None:
    """``trainer_state.pt`` is a pickle in the workdir: resume reads it with weights_only=True."""
    marker = tmp_path / "PICKLE-EXECUTED"
    output = tmp_path / "train"
    (output / "checkpoint").mkdir(parents=True)
    torch.save({"step": 1, "evil": Trap(marker)}, output / "checkpoint" / "trainer_state.pt")
    pairs = [TrainPair(messages=[{"role": "user", "content": "q"}], chosen="a", rejected="b")]
    trainer = BondTrainer(load_student(str(tiny), device="cpu"), pairs, TrainSettings(steps=1), output_dir=output)
    with pytest.raises(TrainingError, match="cannot be read") as info:
        trainer.train(resume=True)
    assert info.value.field == "resume"
    assert not marker.exists()


def test_auto_map_never_runs_remote_code(tiny: Path, tmp_path: Path) -> None:
    """A known architecture with an ``auto_map`` loads with the library's own code; an unknown one
    is refused. The planted modules are never imported either way."""
    marker = tmp_path / "REMOTE-CODE-RAN"
    known = tmp_path / "known"
    shutil.copytree(tiny, known)
    remote_code(known, marker, model_type="llama")
    student = load_student(str(known), device="cpu")
    assert type(student.model).__name__ == "LlamaForCausalLM"
    assert not marker.exists()

    custom = tmp_path / "custom"
    shutil.copytree(tiny, custom)
    remote_code(custom, marker, model_type="evil_llm")
    with pytest.raises(TrainingError, match="trust_remote_code") as info:
        load_student(str(custom), device="cpu")
    assert info.value.field == "student"
    teacher = load_teacher(f"hf:{custom}")  # the hf: teacher loads lazily, on its first sample
    with pytest.raises(TeacherError, match="cannot load"):
        asyncio.run(teacher.sample([{"role": "user", "content": "hi"}], n=1, max_tokens=2))
    assert not marker.exists()


def test_alias_paths_are_resolved_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    real = tmp_path / "models" / "m.gguf"
    real.parent.mkdir()
    real.write_bytes(b"GGUF" + b"\0" * 60)
    os.symlink(real, tmp_path / "link.gguf")

    relative = set_alias("rel", backend="gguf", model_path="models/../models/m.gguf")
    assert relative["model_path"] == str(real.resolve())  # absolute, normalised: no cwd dependence later
    linked = set_alias("link", backend="gguf", model_path="link.gguf")
    assert linked["model_path"] == str(real.resolve())  # symlinks resolved to what is actually loaded

    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    for bad in (tmp_path / "missing.gguf", text, tmp_path / "models"):
        with pytest.raises(AliasError) as info:
            set_alias("bad", backend="gguf", model_path=bad)
        assert info.value.field == "model_path" and "Fix:" in str(info.value)
    assert "bad" not in jd.list_aliases()

    real.unlink()  # the file disappears after the alias was made: a clear error at use, naming it
    with pytest.raises(ExportError, match="does not exist") as gone:
        jd.completion(model="rel", messages="hi", max_tokens=2)
    assert str(real.resolve()) in str(gone.value)
    assert get_alias("rel")["model_path"] == str(real.resolve())  # the alias itself is kept
