"""Crash windows of training checkpoints: the swap's two renames, and a resume on another device.

The crash is simulated by leaving the filesystem exactly as a kill between the two renames of
``_replace_dir`` leaves it; the device change by a checkpoint whose reference log-probs were
recorded on another device (the fingerprint of the same model on the ``meta`` device).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from test_trainer import pairs, settings, tiny_student

from jupyter_distill.core.events import Event
from jupyter_distill.train.engines import PlainEngine, TokenizedPair
from jupyter_distill.train.trainer import BondTrainer, recover_dir, reference_fingerprint

STATE = "trainer_state.pt"


class Recording:
    """The plain engine, recording how many examples each reference pass had to compute."""

    name = "plain"

    def __init__(self, pad_token_id: int):
        self.inner = PlainEngine(gamma=0.1, pad_token_id=pad_token_id)
        self.prepared: list[int] = []

    def prepare(self, model: Any, examples: list[TokenizedPair]) -> None:
        self.prepared.append(len(examples))
        self.inner.prepare(model, examples)

    def loss(self, model: Any, examples: list[TokenizedPair]) -> Any:
        return self.inner.loss(model, examples)


def train(output_dir: Path, stop_at_step: int | None = None) -> tuple[Any, list[int], Recording]:
    """Train 4 steps (checkpoint every step), pressing stop after ``stop_at_step``; returns the
    result, the steps this call trained, and the engine."""
    student = tiny_student()
    stop = threading.Event()
    steps: list[int] = []

    def emit(event: Event) -> None:
        if event.kind == "metric":
            steps.append(int(event.step or 0))
            if event.step == stop_at_step:
                stop.set()

    engine = Recording(student.tokenizer.pad_token_id)
    trainer = BondTrainer(
        student, pairs(), settings(steps=4, checkpoint_every=1), output_dir=output_dir, emit=emit, stop=stop,
        engine=engine,
    )  # fmt: skip
    return trainer.train(), steps, engine


def test_a_crash_between_the_renames_resumes_from_the_surviving_checkpoint(tmp_path: Path) -> None:
    """Killed after ``checkpoint -> .checkpoint.old`` and before ``.checkpoint.tmp -> checkpoint``."""
    out = tmp_path / "train"
    _, first, _ = train(out, stop_at_step=2)
    assert first == [1, 2]
    (out / "checkpoint").rename(out / ".checkpoint.old")  # the first rename happened, the second did not
    (out / ".checkpoint.tmp" / "adapter").mkdir(parents=True)  # beside it, a folder not known to be whole
    result, resumed, _ = train(out)
    assert resumed == [3, 4] and result.steps_done == 4  # not from step 0


def test_the_complete_new_checkpoint_wins_over_the_old_one(tmp_path: Path) -> None:
    """The same window when the new folder was complete: it is the newer state, so it is used."""
    out = tmp_path / "train"
    train(out, stop_at_step=1)
    shutil.copytree(out / "checkpoint", tmp_path / "step1")
    train(out, stop_at_step=2)
    (out / "checkpoint").rename(out / ".checkpoint.tmp")
    (out / ".checkpoint.tmp" / ".complete").write_bytes(b"")  # written last before the renames
    shutil.copytree(tmp_path / "step1", out / ".checkpoint.old")
    _, resumed, _ = train(out)
    assert resumed == [3, 4]


def test_recover_dir_never_promotes_a_half_written_folder(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint"
    (tmp_path / ".checkpoint.tmp").mkdir()  # a save killed mid-write: no completion mark
    recover_dir(target)
    assert not target.exists()
    (tmp_path / ".checkpoint.old").mkdir()
    (tmp_path / ".checkpoint.old" / "x").write_text("old")
    recover_dir(target)
    assert (target / "x").read_text() == "old"
    recover_dir(target)  # an existing folder is left alone
    assert (target / "x").read_text() == "old"


def test_the_reference_fingerprint_names_the_device() -> None:
    model = tiny_student().model
    on_cpu = reference_fingerprint(model)
    assert on_cpu == reference_fingerprint(model)
    assert on_cpu != reference_fingerprint(model.to("meta"))
    assert on_cpu != reference_fingerprint(tiny_student().model.to(torch.float64))


def test_a_resume_on_another_device_recomputes_the_reference(tmp_path: Path) -> None:
    out = tmp_path / "train"
    _, _, first = train(out, stop_at_step=1)
    assert first.prepared and sum(first.prepared) == len(pairs())  # all references computed once
    state = torch.load(out / "checkpoint" / STATE, weights_only=True)
    fresh = list(state["reference"])
    # the checkpoint as another machine would have written it: other device, other numbers
    state["reference"] = [(123.0, None if r is None else 456.0) for _, r in fresh]
    state["reference_fingerprint"] = reference_fingerprint(tiny_student().model.to("meta"))
    torch.save(state, out / "checkpoint" / STATE)

    _, resumed, engine = train(out)
    assert resumed == [2, 3, 4]  # the training state itself is resumed
    assert sum(engine.prepared) == len(pairs())  # every reference log-prob recomputed here
    final = torch.load(out / "checkpoint" / STATE, weights_only=True)["reference"]
    for (chosen, rejected), (chosen0, rejected0) in zip(final, fresh, strict=True):  # this device's numbers
        assert chosen == pytest.approx(chosen0, rel=1e-5)
        assert (rejected is None and rejected0 is None) or rejected == pytest.approx(rejected0, rel=1e-5)


def test_a_resume_on_the_same_device_reuses_the_reference(tmp_path: Path) -> None:
    out = tmp_path / "train"
    train(out, stop_at_step=1)
    _, resumed, engine = train(out)
    assert resumed == [2, 3, 4] and sum(engine.prepared) == 0
