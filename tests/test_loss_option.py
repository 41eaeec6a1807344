"""The ``loss`` option: validated in every front end, ``sft`` is plain NLL, and the losses the trainer
cannot run yet are refused before the first teacher request."""

from __future__ import annotations

import pytest
import torch

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.errors import ConfigError, TrainingError
from jupyter_distill.pipeline.preflight import check_loss
from jupyter_distill.train.bond import bond_loss
from jupyter_distill.train.trainer import LOSSES, TrainSettings, check_trainable_loss


def test_loss_default_is_bond_and_every_value_is_accepted() -> None:
    assert DistillConfig().loss == "bond"
    for loss in LOSSES:
        assert DistillConfig.from_kwargs(loss=loss).loss == loss
        assert DistillConfig.from_yaml(f"loss: {loss}\n").loss == loss


@pytest.mark.parametrize(
    "make", [lambda: DistillConfig.from_kwargs(loss="grpo"), lambda: DistillConfig.from_yaml("loss: grpo\n")]
)
def test_unknown_loss_lists_the_values(make) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    err = info.value
    assert err.field == "loss" and err.value == "grpo"
    for loss in LOSSES:
        assert repr(loss) in str(err)
    assert err.fix


@pytest.mark.parametrize(
    "field,value",
    [
        ("jbond_n", 0),
        ("jbond_n", 17),
        ("jbond_anchor_decay", 1.0),
        ("jbond_anchor_decay", -0.1),
        ("jbond_mix", 1.5),
        ("jbond_kl", -1.0),
        ("jbond_max_new_tokens", 0),
    ],
)
def test_jbond_knobs_are_range_checked(field: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_kwargs(**{field: value})
    assert info.value.field == field
    with pytest.raises(ConfigError):
        DistillConfig.from_yaml(f"{field}: {value}\n")


def test_the_config_lists_the_same_losses_as_the_trainer() -> None:
    import typing

    assert typing.get_args(DistillConfig.model_fields["loss"].annotation) == LOSSES


def test_sft_is_bond_with_both_extra_terms_off() -> None:
    settings = TrainSettings.from_config(DistillConfig(loss="sft", bond_beta=0.7, bond_gamma=0.3))
    assert (settings.loss, settings.beta, settings.gamma) == ("sft", 0.0, 0.0)
    bond = TrainSettings.from_config(DistillConfig(bond_beta=0.7, bond_gamma=0.3))
    assert (bond.loss, bond.beta, bond.gamma) == ("bond", 0.7, 0.3)


def test_sft_loss_is_exactly_the_mean_nll_even_with_extreme_margins() -> None:
    """beta = gamma = 0 leaves the preference and KL terms out: no 0 * inf = NaN, no gradient through them."""
    nll = torch.tensor([1.5, 2.5, 0.25], dtype=torch.float64, requires_grad=True)
    logp = torch.tensor([-1e308, 0.0, -5.0], dtype=torch.float64, requires_grad=True)
    huge = torch.tensor([1e308, -1e308, 0.0], dtype=torch.float64)
    kl = torch.tensor([float("inf"), 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    loss, _ = bond_loss(nll, logp, huge, huge, huge, kl, torch.tensor([True, True, False]), beta=0.0, gamma=0.0)
    assert loss.item() == nll.detach().mean().item()
    loss.backward()
    assert torch.equal(nll.grad, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert logp.grad is None and kl.grad is None


def test_offline_fingerprint_is_unchanged_by_the_jbond_knobs() -> None:
    """A bond checkpoint written before ``loss`` existed still resumes; jbond knobs matter only to jbond."""
    base = TrainSettings()
    assert TrainSettings(jbond_n=4, jbond_mix=0.9).fingerprint() == base.fingerprint()
    assert (
        TrainSettings(loss="sft", beta=0.0, gamma=0.0).fingerprint() == TrainSettings(beta=0.0, gamma=0.0).fingerprint()
    )
    jbond = TrainSettings(loss="jbond")
    assert jbond.fingerprint() != base.fingerprint()
    assert TrainSettings(loss="jbond", jbond_n=4).fingerprint() != jbond.fingerprint()


def test_train_settings_name_a_bad_loss_or_knob() -> None:
    with pytest.raises(TrainingError) as info:
        TrainSettings(loss="ppo")
    assert info.value.field == "loss" and "jbond" in str(info.value)
    with pytest.raises(TrainingError) as info:
        TrainSettings(jbond_anchor_decay=1.0)
    assert info.value.field == "jbond_anchor_decay"


def test_onpolicy_is_refused_with_jbond_suggested() -> None:
    with pytest.raises(ConfigError) as info:
        check_loss(DistillConfig(loss="onpolicy", teacher="openrouter:some/model"))
    err = info.value
    assert err.field == "loss" and err.value == "onpolicy"
    assert "jbond" in err.fix and "openrouter:some/model" in str(err)


def test_jbond_and_onpolicy_pass_the_trainer_check_except_on_the_fast_engine() -> None:
    for loss in ("sft", "bond", "jbond"):
        check_loss(DistillConfig(loss=loss))
        check_trainable_loss(loss)
    with pytest.raises(TrainingError) as info:
        check_loss(DistillConfig(loss="jbond", engine="fast"))
    assert info.value.field == "engine" and info.value.value == "fast"
    with pytest.raises(TrainingError) as info:
        check_trainable_loss("onpolicy", "fast")
    assert info.value.field == "engine" and "plain" in info.value.fix


def test_estimate_counts_the_judge_calls_on_the_students_samples() -> None:
    from jupyter_distill.pipeline.estimate import estimate

    rows = [{"prompt": f"hello there {i}"} for i in range(10)]
    common = dict(teacher="gemini:gemini-2.5-flash", steps=3, batch_size=2, device="cpu")
    bond = estimate(rows, **common)
    jbond = estimate(rows, loss="jbond", jbond_n=4, **common)  # the teacher judges (judge=None): paid
    assert bond.onpolicy_judge_requests == 0
    assert jbond.onpolicy_judge_requests == 3 * 2 * 4
    assert jbond.teacher_cost_max > bond.teacher_cost_max and jbond.teacher_cost_typical > bond.teacher_cost_typical
    assert jbond.training_seconds > bond.training_seconds
    assert "at most 24 on the student's samples" in repr(jbond)
    free = estimate(rows, loss="jbond", judge=lambda row, response: 1.0, **common)  # a verifier costs nothing
    assert (
        free.onpolicy_judge_requests == 0
        and free.teacher_cost_max == estimate(rows, judge=lambda row, response: 1.0, **common).teacher_cost_max
    )


def test_estimate_counts_and_prices_the_teachers_scoring_for_onpolicy() -> None:
    from jupyter_distill.pipeline.estimate import estimate

    rows = [{"prompt": f"hello there {i}"} for i in range(10)]
    common = dict(steps=3, batch_size=2, device="cpu", judge=lambda row, response: 1.0)
    server = "openai-compatible:http://127.0.0.1:9/v1#m"
    bond = estimate(rows, teacher=server, **common)
    onpolicy = estimate(rows, teacher=server, loss="onpolicy", jbond_n=4, jbond_max_new_tokens=16, **common)
    assert bond.onpolicy_scoring_requests == 0 and onpolicy.onpolicy_scoring_requests == 3 * 2
    assert onpolicy.onpolicy_scoring_tokens > 3 * 2 * 4 * 16  # the prompt is scored along with each sample
    assert onpolicy.onpolicy_judge_requests == 0 and onpolicy.training_seconds > bond.training_seconds
    assert "at most 6 requests" in repr(onpolicy)
    paid = dict(common, teacher="gemini:gemini-2.5-flash")  # priced like its sampling (refused by preflight)
    assert estimate(rows, loss="onpolicy", **paid).teacher_cost_max > estimate(rows, **paid).teacher_cost_max
    local = estimate(rows, loss="onpolicy", **common)  # the default local teacher: counted, free
    assert local.onpolicy_scoring_requests == 6 and local.teacher_cost_max == 0.0
