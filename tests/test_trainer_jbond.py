"""J-BOND in the trainer on a tiny random-init Llama: on-policy metrics, the anchor, and resume."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from test_trainer import _adapter, pairs, settings, tiny_student

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.core.events import Event
from jupyter_distill.core.store import RunStore
from jupyter_distill.judging.llm_judge import load_judge
from jupyter_distill.train.rewards import OnPolicyRewards
from jupyter_distill.train.trainer import BondTrainer, TrainPair, _prompt_record


def length_score(row: dict, response: str) -> float:
    """Longer answers score higher, up to 1: varied enough on a random model to give advantages."""
    return min(1.0, len(response) / 30)


def jbond_settings(**kw: Any) -> Any:
    base = {"loss": "jbond", "jbond_n": 2, "jbond_max_new_tokens": 6, "jbond_anchor_decay": 0.5, "lr": 5e-3}
    base.update(kw)
    return settings(**base)


def make_rewards(train_pairs: list[TrainPair]) -> OnPolicyRewards:
    teacher = {_prompt_record(p.messages).hash: [0.1, 0.4, 0.7] for p in train_pairs}
    return OnPolicyRewards(load_judge(length_score), teacher)


def run(out: Path, *, steps: int = 4, stop_at: int | None = None, store: RunStore | None = None) -> tuple[Any, Any]:
    student = tiny_student()
    train_pairs = pairs(6)
    stop = threading.Event()

    def emit(event: Event) -> None:
        if event.kind == "metric" and event.step == stop_at:
            stop.set()

    trainer = BondTrainer(
        student, train_pairs, jbond_settings(steps=steps, checkpoint_every=1), output_dir=out, emit=emit, stop=stop,
        store=store, run_id="r" if store is not None else None, rewards=make_rewards(train_pairs),
    )  # fmt: skip
    return trainer.train(), trainer


def test_jbond_trains_and_records_on_policy_metrics(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "store")
    store.create_run("r", {})
    result, trainer = run(tmp_path / "train", steps=3, store=store)
    assert result.steps_done == 3 and result.engine == "plain-jbond"
    for row in result.history:
        for name in ("loss", "fwd", "pg", "kl_anchor", "reward", "win_rate", "sample_len"):
            assert name in row, (name, row)
        assert 0.0 <= row["win_rate"] <= 1.0 and row["reward"] < 0.0
    assert result.history[0]["kl_anchor"] == pytest.approx(0.0, abs=1e-6)  # the anchor starts at the policy
    assert result.history[-1]["kl_anchor"] > 0.0
    names = {m["name"] for m in store.get_metrics("r")}
    assert {"loss", "reward", "win_rate", "kl_anchor", "pg", "judge_calls"} <= names
    engine = trainer._onpolicy
    assert trainer.rewards.calls >= 1 and trainer.rewards.calls + trainer.rewards.hits == 3 * 2 * 2
    adapter = {k: p for k, p in trainer.model.named_parameters() if p.requires_grad}
    moved = [k for k in adapter if not torch.equal(engine.anchor[k], adapter[k].detach().float())]
    assert moved  # with decay 0.5 the anchor trails the adapter
    store.close()


def test_a_resumed_jbond_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    whole, whole_trainer = run(tmp_path / "whole", steps=4)
    first, _ = run(tmp_path / "split", steps=4, stop_at=2)
    assert first.stopped and first.steps_done == 2
    resumed, resumed_trainer = run(tmp_path / "split", steps=4)
    assert resumed.steps_done == 4
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    assert [h["reward"] for h in resumed.history] == [h["reward"] for h in whole.history]
    a, b = _adapter(whole_trainer.model), _adapter(resumed_trainer.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    anchors = whole_trainer._onpolicy.anchor, resumed_trainer._onpolicy.anchor
    assert all(torch.equal(anchors[0][k], anchors[1][k]) for k in anchors[0])
    # the cached rewards came back with the checkpoint: the resumed half judged only what was new
    assert resumed_trainer.rewards.calls == whole_trainer.rewards.calls


def test_jbond_needs_rewards_and_refuses_the_fast_engine(tmp_path: Path) -> None:
    student = tiny_student()
    with pytest.raises(TrainingError) as info:
        BondTrainer(student, pairs(4), jbond_settings(steps=1), output_dir=tmp_path / "a").train()
    assert info.value.field == "rewards"
    with pytest.raises(TrainingError) as info:
        BondTrainer(
            student, pairs(4), jbond_settings(steps=1), output_dir=tmp_path / "b", engine="fast",
            rewards=make_rewards(pairs(4)),
        ).train()  # fmt: skip
    assert info.value.field == "engine" and "plain" in info.value.fix
