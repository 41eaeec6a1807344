"""On-policy distillation in the trainer: a tiny random-init Llama with SmolLM2's tokenizer, scored by
the real SmolLM2 GGUF teacher through llama.cpp; metrics, the reverse KL going down, and resume."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from test_trainer import _adapter, pairs, settings, tiny_student

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.core.events import Event
from jupyter_distill.teachers import load_teacher
from jupyter_distill.train.teacher_logprobs import TeacherLogprobs
from jupyter_distill.train.trainer import BondTrainer


@pytest.fixture(scope="module")
def teacher() -> Any:
    return load_teacher("local:smollm2-135m", n_threads=1)


def onpolicy_settings(**kw: Any) -> Any:
    base = {"loss": "onpolicy", "jbond_n": 2, "jbond_max_new_tokens": 5, "jbond_anchor_decay": 0.5, "lr": 5e-3}
    base.update(kw)
    return settings(**base)


def run(teacher: Any, out: Path, *, steps: int = 4, stop_at: int | None = None, **kw: Any) -> tuple[Any, Any]:
    stop = threading.Event()

    def emit(event: Event) -> None:
        if event.kind == "metric" and event.step == stop_at:
            stop.set()

    trainer = BondTrainer(
        tiny_student(), pairs(6), onpolicy_settings(steps=steps, checkpoint_every=1, **kw), output_dir=out,
        emit=emit, stop=stop, teacher_logprobs=TeacherLogprobs(teacher),
    )  # fmt: skip
    return trainer.train(), trainer


def test_onpolicy_trains_and_records_the_reverse_kl(teacher: Any, tmp_path: Path) -> None:
    result, trainer = run(teacher, tmp_path / "train", steps=3)
    assert result.steps_done == 3 and result.engine == "plain-onpolicy"
    for row in result.history:
        for name in ("loss", "pg", "reverse_kl", "kl_anchor", "sample_len", "teacher_calls"):
            assert name in row, (name, row)
        assert row["reverse_kl"] > 0.0  # a random student is far from the teacher
    assert result.history[0]["kl_anchor"] == pytest.approx(0.0, abs=1e-6)  # the anchor starts at the policy
    scores = trainer.teacher_logprobs
    assert scores.calls == sum(row["teacher_calls"] for row in result.history) and scores.cost == 0.0
    assert scores.tokens > 0


def test_a_resumed_onpolicy_run_equals_an_uninterrupted_one(teacher: Any, tmp_path: Path) -> None:
    whole, whole_trainer = run(teacher, tmp_path / "whole")
    first, _ = run(teacher, tmp_path / "split", stop_at=2)
    assert first.stopped and first.steps_done == 2
    resumed, resumed_trainer = run(teacher, tmp_path / "split")
    assert resumed.steps_done == 4
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    assert [h["reverse_kl"] for h in resumed.history] == [h["reverse_kl"] for h in whole.history]
    a, b = _adapter(whole_trainer.model), _adapter(resumed_trainer.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    anchors = whole_trainer._onpolicy.anchor, resumed_trainer._onpolicy.anchor
    assert all(torch.equal(anchors[0][k], anchors[1][k]) for k in anchors[0])
    # the cached teacher log-probs came back with the checkpoint: the resumed half scored only what was new
    assert resumed_trainer.teacher_logprobs.calls == whole_trainer.teacher_logprobs.calls


def test_onpolicy_needs_a_scoring_teacher_and_refuses_the_fast_engine(teacher: Any, tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as info:
        BondTrainer(tiny_student(), pairs(4), onpolicy_settings(steps=1), output_dir=tmp_path / "a").train()
    assert info.value.field == "teacher_logprobs" and "jbond" in str(info.value)
    with pytest.raises(TrainingError) as info:
        BondTrainer(
            tiny_student(), pairs(4), onpolicy_settings(steps=1), output_dir=tmp_path / "b", engine="fast",
            teacher_logprobs=TeacherLogprobs(teacher),
        ).train()  # fmt: skip
    assert info.value.field == "engine" and "plain" in info.value.fix
