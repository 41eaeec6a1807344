"""jbond_loss against an independent float64 reference, gradcheck, the quantile reward and the EMA anchor."""

from __future__ import annotations

import math

import pytest
import torch

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.train.jbond import (
    ema_update,
    init_anchor,
    jbond_loss,
    jbond_loss_reference,
    leave_one_out_baseline,
    quantile_reward,
    sequence_stats,
    smoothed_quantile,
    win_fraction,
)


def _batch(b: int = 3, n: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = b * n
    group = torch.arange(b).repeat_interleave(n)
    if s > 2:
        group[-1] = b + 5  # one prompt with a single sample: baseline 0
    return {
        "nll_best": torch.rand(b, generator=g, dtype=dtype) * 3,
        "sample_logp": -torch.rand(s, generator=g, dtype=dtype) * 40,
        "sample_reward": torch.log(torch.rand(s, generator=g, dtype=dtype) * 0.9 + 0.05),
        "sample_group": group,
        "kl_anchor": torch.rand(s, generator=g, dtype=dtype) * 0.3,
    }


def _ref(batch: dict[str, torch.Tensor], **kw: float) -> float:
    return jbond_loss_reference(**{k: v.tolist() for k, v in batch.items()}, **kw)


@pytest.mark.parametrize("mix,kl_weight", [(0.5, 0.05), (0.0, 0.0), (1.0, 0.3), (0.2, 1.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_matches_float64_reference(mix: float, kl_weight: float, seed: int, n: int) -> None:
    batch = _batch(n=n, seed=seed)
    loss, parts = jbond_loss(**batch, mix=mix, kl_weight=kl_weight)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(_ref(batch, mix=mix, kl_weight=kl_weight), rel=1e-12, abs=1e-12)
    again = (1 - mix) * parts["fwd"] + mix * parts["pg"] + kl_weight * parts["kl_anchor"]
    assert again.item() == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
    assert parts["n_samples"].item() == batch["sample_logp"].numel()


def test_parts_by_hand() -> None:
    batch = {
        "nll_best": torch.tensor([1.0, 2.0], dtype=torch.float64),
        "sample_logp": torch.tensor([-10.0, -20.0, -5.0], dtype=torch.float64),
        "sample_reward": torch.tensor([math.log(0.75), math.log(0.25), math.log(0.5)], dtype=torch.float64),
        "sample_group": torch.tensor([0, 0, 1]),
        "kl_anchor": torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
    }
    loss, parts = jbond_loss(**batch, mix=0.5, kl_weight=0.1)
    d = math.log(0.75) - math.log(0.25)  # advantages +d, -d, and 0 (alone: baseline 0 -> adv = log 0.5)
    pg = -(d * -10.0 + (-d) * -20.0 + math.log(0.5) * -5.0) / 3
    assert parts["fwd"].item() == pytest.approx(1.5)
    assert parts["pg"].item() == pytest.approx(pg)
    assert parts["kl_anchor"].item() == pytest.approx(0.2)
    assert parts["adv_abs"].item() == pytest.approx((2 * d + math.log(2)) / 3)
    assert loss.item() == pytest.approx(0.5 * 1.5 + 0.5 * pg + 0.1 * 0.2)


def test_gradcheck() -> None:
    batch = _batch(b=3, n=3, seed=4)
    names = ["nll_best", "sample_logp", "kl_anchor"]
    inputs = tuple(batch[k].clone().requires_grad_(True) for k in names)

    def fn(nll: torch.Tensor, logp: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        return jbond_loss(nll, logp, batch["sample_reward"], batch["sample_group"], kl, mix=0.4, kl_weight=0.2)[0]

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_gradient_is_reinforce_with_leave_one_out_baseline() -> None:
    """d loss / d logp_s = -mix * A_s / S: the better sample of a pair is pushed up, the worse down."""
    batch = _batch(b=2, n=2, seed=5)
    batch["sample_group"] = torch.tensor([0, 0, 1, 1])
    logp = batch["sample_logp"].clone().requires_grad_(True)
    loss, _ = jbond_loss(batch["nll_best"], logp, batch["sample_reward"], batch["sample_group"], batch["kl_anchor"])
    loss.backward()
    r = batch["sample_reward"]
    adv = torch.stack([r[0] - r[1], r[1] - r[0], r[2] - r[3], r[3] - r[2]])
    assert torch.allclose(logp.grad, -0.5 * adv / 4, rtol=1e-12, atol=1e-15)


def test_reward_carries_no_gradient() -> None:
    batch = _batch()
    reward = batch["sample_reward"].clone().requires_grad_(True)
    logp = batch["sample_logp"].clone().requires_grad_(True)
    loss, _ = jbond_loss(batch["nll_best"], logp, reward, batch["sample_group"], batch["kl_anchor"])
    loss.backward()
    assert reward.grad is None
    assert logp.grad is not None and bool(logp.grad.abs().sum() > 0)


def test_mix_zero_is_plain_nll_of_the_best() -> None:
    batch = _batch(seed=6)
    loss, _ = jbond_loss(**batch, mix=0.0, kl_weight=0.0)
    assert loss.item() == batch["nll_best"].mean().item()


def test_no_samples_gives_forward_term_only() -> None:
    empty = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    nll = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
    loss, parts = jbond_loss(nll, empty, empty.detach(), torch.zeros(0, dtype=torch.long), empty, mix=0.5)
    assert loss.item() == pytest.approx(1.0)
    assert parts["n_samples"].item() == 0 and parts["pg"].item() == 0
    loss.backward()
    assert torch.equal(nll.grad, torch.tensor([0.25, 0.25], dtype=torch.float64))


def test_bf16_inputs_reduce_in_float32() -> None:
    batch = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in _batch(seed=7).items()}
    loss, _ = jbond_loss(**batch)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize(
    "change,field",
    [
        ({"mix": 1.5}, "jbond_mix"),
        ({"kl_weight": -0.1}, "jbond_kl"),
        ({"sample_reward": torch.tensor([0.0, -math.inf, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)}, "sample_reward"),
        ({"kl_anchor": torch.zeros(5, dtype=torch.float64)}, "kl_anchor"),
        ({"sample_group": torch.zeros(6)}, "sample_group"),
        ({"nll_best": torch.zeros(0, dtype=torch.float64)}, "nll_best"),
        ({"sample_logp": torch.zeros(6, 1, dtype=torch.float64)}, "sample_logp"),
    ],
)
def test_bad_inputs_name_the_field(change: dict, field: str) -> None:
    args = {**_batch(), "mix": 0.5, "kl_weight": 0.05, **change}
    with pytest.raises(TrainingError) as err:
        jbond_loss(**args)
    assert err.value.field == field
    assert "Fix:" in str(err.value)


# ------------------------------------------------------------------------------ the quantile reward
def test_quantile_counts_ties_half_and_is_smoothed() -> None:
    teacher = [0.0, 0.5, 0.5, 1.0]
    assert win_fraction(0.5, teacher) == pytest.approx((1 + 0.5 * 2) / 4)
    assert win_fraction(2.0, teacher) == 1.0
    assert win_fraction(-1.0, teacher) == 0.0
    assert math.isnan(win_fraction(0.3, []))
    assert smoothed_quantile(0.5, teacher) == pytest.approx((1 + 1 + 0.5) / 5)
    assert smoothed_quantile(-1.0, teacher) == pytest.approx(0.1)
    assert smoothed_quantile(2.0, teacher) == pytest.approx(0.9)
    assert smoothed_quantile(0.7, []) == 0.5
    assert quantile_reward(-1.0, teacher) == pytest.approx(math.log(0.1))
    # monotone in the score
    rewards = [quantile_reward(s, teacher) for s in (-1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0)]
    assert rewards == sorted(rewards) and all(r < 0 for r in rewards)


def test_leave_one_out_baseline_by_hand() -> None:
    r = torch.tensor([1.0, 2.0, 6.0, 5.0], dtype=torch.float64)
    g = torch.tensor([7, 7, 7, 3])
    assert leave_one_out_baseline(r, g).tolist() == [4.0, 3.5, 1.5, 0.0]


# ------------------------------------------------------------------------------ the anchor
def test_ema_update_by_hand_and_in_float32() -> None:
    weights = {"a": torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "b": torch.tensor([4.0])}
    anchor = init_anchor(weights.items())
    assert anchor["a"].dtype == torch.float32
    weights["a"].add_(1.0)  # the anchor is a copy
    assert anchor["a"].tolist() == [1.0, 2.0]
    ema_update(anchor, {"a": torch.tensor([3.0, 2.0]), "b": torch.tensor([0.0])}, decay=0.75)
    assert anchor["a"].tolist() == [1.5, 2.0]
    assert anchor["b"].tolist() == [3.0]
    with pytest.raises(TrainingError) as err:
        ema_update(anchor, {"a": torch.zeros(2)}, decay=0.5)
    assert err.value.field == "anchor"
    with pytest.raises(TrainingError) as err:
        ema_update(anchor, {"a": torch.zeros(2), "b": torch.zeros(1)}, decay=1.0)
    assert err.value.field == "jbond_anchor_decay"


# ------------------------------------------------------------------------------ per-token statistics
def test_sequence_stats_against_a_loop() -> None:
    g = torch.Generator().manual_seed(8)
    s, t, v = 3, 5, 7
    logits = torch.randn(s, t, v, generator=g, dtype=torch.float64)
    anchor = torch.randn(s, t, v, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (s, t), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]], dtype=torch.bool)
    sum_logp, nll, kl = sequence_stats(logits, anchor, labels, mask)
    for i in range(s):
        lp, k, n = 0.0, 0.0, 0
        for j in range(t):
            if not mask[i, j]:
                continue
            p = torch.softmax(logits[i, j], -1).tolist()
            q = torch.softmax(anchor[i, j], -1).tolist()
            lp += math.log(p[int(labels[i, j])])
            k += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
            n += 1
        assert sum_logp[i].item() == pytest.approx(lp, rel=1e-12)
        assert nll[i].item() == pytest.approx(-lp / n, rel=1e-12)
        assert kl[i].item() == pytest.approx(k / n, rel=1e-10, abs=1e-14)
    same = sequence_stats(logits, logits, labels, mask)[2]
    assert torch.allclose(same, torch.zeros(s, dtype=torch.float64), atol=1e-15)
