"""The J-BOND loss: forward KL on the teacher's best + backward KL by policy gradient + an EMA anchor.

Offline BOND (:mod:`jupyter_distill.train.bond`) only ever sees the teacher's text, so the student
never learns from its own mistakes. J-BOND adds the other direction of the divergence: the student
samples its own answers, the run's judge scores them, and each sample is rewarded by where its
score falls among the teacher candidates already judged for that prompt (its *quantile*). No new
teacher call is needed, so it works with any teacher, API or local, text only.

Like ``bond_loss`` this is a pure function of per-sequence tensors, so every engine optimises the
same thing and it can be checked against :func:`jbond_loss_reference` and ``gradcheck``. The
formulas, and why each choice was made, are in ``docs/jbond.md``::

    q̂(y)  = (#{c : s_c < s(y)} + ½ #{c : s_c = s(y)} + ½) / (K + 1)      K teacher candidates
    r(y)   = log q̂(y)                                                     log-quantile reward
    A_s    = r_s − mean_{s' ≠ s, same prompt} r_{s'}                      leave-one-out baseline
    L = (1 − μ) · mean_b NLL(y*_b | x_b)                                   forward KL (teacher's best)
      +      μ  · mean_s −A_s · log π(y_s | x_s)                           backward KL (REINFORCE)
      +      λ  · mean_s KL_s(π ‖ π_anchor)                                KL to the EMA anchor
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, MutableMapping, Sequence

import torch
from torch import Tensor

from jupyter_distill.core.errors import TrainingError

#: The keys of the ``parts`` dict :func:`jbond_loss` returns, in display order.
PART_NAMES: tuple[str, ...] = ("fwd", "pg", "kl_anchor", "reward", "adv_abs", "n_samples")


# ------------------------------------------------------------------------------ the reward
def win_fraction(score: float, teacher_scores: Sequence[float]) -> float:
    """The fraction of teacher candidates the sample beats, a tie counting half; ``nan`` with none.

    This is the plotted "win rate against the teacher": 1.0 means the student's sample scored
    above every candidate the teacher produced for the prompt.
    """
    if not teacher_scores:
        return math.nan
    less = sum(1 for c in teacher_scores if c < score)
    ties = sum(1 for c in teacher_scores if c == score)
    return (less + 0.5 * ties) / len(teacher_scores)


def smoothed_quantile(score: float, teacher_scores: Sequence[float]) -> float:
    """The quantile of ``score`` among the teacher's scores, smoothed into ``(0, 1)``.

    Adding half a win and one comparison (``(wins + ½) / (K + 1)``) keeps ``log q̂`` finite when the
    sample loses to every candidate, and gives ``½`` (no information) when no candidate was judged.
    """
    k = len(teacher_scores)
    less = sum(1 for c in teacher_scores if c < score)
    ties = sum(1 for c in teacher_scores if c == score)
    return (less + 0.5 * ties + 0.5) / (k + 1)


def quantile_reward(score: float, teacher_scores: Sequence[float]) -> float:
    """BOND's log-quantile reward ``log q̂``: ``≤ 0``, ``log(1 − ½/(K+1))`` for a sample beating all."""
    return math.log(smoothed_quantile(score, teacher_scores))


# ------------------------------------------------------------------------------ the anchor
@torch.no_grad()
def ema_update(anchor: MutableMapping[str, Tensor], current: Mapping[str, Tensor], decay: float) -> None:
    """``anchor ← decay · anchor + (1 − decay) · current``, in place, key by key.

    The anchor is kept in float32 whatever the adapter's dtype, so a slow decay (0.99 and up)
    is not rounded away in bf16.
    """
    if not 0.0 <= decay < 1.0:
        raise TrainingError(
            f"ema_update: decay={decay} is outside [0, 1).",
            field="jbond_anchor_decay",
            value=decay,
            fix="use a value in [0, 1), e.g. 0.99",
        )
    missing = sorted(set(anchor) ^ set(current))
    if missing:
        raise TrainingError(
            f"ema_update: the anchor and the adapter hold different weights ({missing[:3]}...).",
            field="anchor",
            value=missing[:3],
            fix="build the anchor from the same adapter (init_anchor)",
        )
    for name, value in current.items():
        anchor[name].mul_(decay).add_(value.detach().to(anchor[name].dtype), alpha=1.0 - decay)


def init_anchor(weights: Iterable[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """A float32 copy of the trainable (LoRA) weights: the anchor at step 0 is the policy."""
    return {name: value.detach().to(torch.float32).clone() for name, value in weights}


# ------------------------------------------------------------------------------ per-token pieces
def sequence_stats(
    logits: Tensor, anchor_logits: Tensor, labels: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sequence ``(sum log π(y), mean token NLL, mean token KL(π ‖ π_anchor))`` over ``mask``.

    ``logits``/``anchor_logits`` ``(S, T, V)`` predict ``labels`` ``(S, T)`` at the same position
    (already shifted); ``mask`` ``(S, T)`` bool marks response tokens. The KL is exact over the
    vocabulary, not a sampled estimate. Reductions run in float32 (or float64 if given).
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    ref = torch.log_softmax(anchor_logits.to(dtype), dim=-1)
    maskf = mask.to(dtype)
    count = maskf.sum(-1).clamp(min=1.0)
    token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_kl = (logp.exp() * (logp - ref)).sum(-1)
    sum_logp = (token_logp * maskf).sum(-1)
    return sum_logp, -sum_logp / count, (token_kl * maskf).sum(-1) / count


# ------------------------------------------------------------------------------ the loss
def _fail(name: str, problem: str, fix: str, value: object) -> TrainingError:
    return TrainingError(f"jbond_loss: {name} {problem}. Fix: {fix}.", field=name, value=value, fix=fix)


def _check(
    nll_best: Tensor,
    sample_logp: Tensor,
    sample_reward: Tensor,
    sample_group: Tensor,
    kl_anchor: Tensor,
    mix: float,
    kl_weight: float,
) -> None:
    for name, t in (
        ("nll_best", nll_best),
        ("sample_logp", sample_logp),
        ("sample_reward", sample_reward),
        ("sample_group", sample_group),
        ("kl_anchor", kl_anchor),
    ):
        if not isinstance(t, Tensor) or t.dim() != 1:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise _fail(name, f"must be a 1-D tensor, got {shape}", "pass one value per sequence", shape)
    if nll_best.shape[0] == 0:
        raise _fail("nll_best", "is empty", "pass at least one prompt row", 0)
    s = sample_logp.shape[0]
    for name, t in (("sample_reward", sample_reward), ("sample_group", sample_group), ("kl_anchor", kl_anchor)):
        if t.shape[0] != s:
            raise _fail(name, f"has {t.shape[0]} entries but sample_logp has {s}", "give one entry per sample", s)
    if sample_group.dtype not in (torch.int32, torch.int64):
        raise _fail("sample_group", f"must be an integer tensor, got {sample_group.dtype}", "pass prompt indices", "")
    if s and not bool(torch.isfinite(sample_reward).all()):
        raise _fail("sample_reward", "holds a non-finite value", "use the smoothed log-quantile reward", "non-finite")
    if not 0.0 <= mix <= 1.0:
        raise _fail("jbond_mix", f"={mix} is outside [0, 1]", "use a value in [0, 1]", mix)
    if kl_weight < 0.0:
        raise _fail("jbond_kl", f"={kl_weight} is negative", "use 0 or a small positive value", kl_weight)


def leave_one_out_baseline(reward: Tensor, group: Tensor) -> Tensor:
    """Per sample, the mean reward of the *other* samples of its prompt; 0 for a sample alone.

    Leaving the sample out keeps the REINFORCE estimate unbiased (the baseline does not depend on
    the sample it is subtracted from).
    """
    if reward.numel() == 0:
        return reward.clone()
    groups, inverse = torch.unique(group, return_inverse=True)
    sums = torch.zeros(groups.numel(), dtype=reward.dtype, device=reward.device).index_add_(0, inverse, reward)
    counts = torch.zeros(groups.numel(), dtype=reward.dtype, device=reward.device).index_add_(
        0, inverse, torch.ones_like(reward)
    )
    others = counts[inverse] - 1.0
    return torch.where(others > 0, (sums[inverse] - reward) / others.clamp(min=1.0), torch.zeros_like(reward))


def jbond_loss(
    nll_best: Tensor,
    sample_logp: Tensor,
    sample_reward: Tensor,
    sample_group: Tensor,
    kl_anchor: Tensor,
    mix: float = 0.5,
    kl_weight: float = 0.05,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The J-BOND loss of one batch and its parts.

    Args:
        nll_best: ``(B,)`` mean token NLL of the teacher's best candidate under the policy.
        sample_logp: ``(S,)`` summed log-prob of each student sample under the policy (the
            REINFORCE term's gradient flows through it).
        sample_reward: ``(S,)`` the log-quantile reward of each sample (:func:`quantile_reward`);
            treated as a constant.
        sample_group: ``(S,)`` integer, which prompt each sample answers (for the baseline).
        kl_anchor: ``(S,)`` mean token ``KL(π ‖ π_anchor)`` over each sample's tokens.
        mix: the Jeffreys weight μ: ``0`` is forward KL only (SFT on the best), ``1`` backward only.
        kl_weight: λ, the weight of the KL to the EMA anchor.

    Returns:
        ``(loss, parts)``: a scalar with gradient, and detached scalars ``fwd``, ``pg`` (the
        surrogate's value), ``kl_anchor``, ``reward`` (mean), ``adv_abs`` (mean |advantage|) and
        ``n_samples``. With no samples (``S = 0``) the backward and anchor terms are exactly 0.
    """
    _check(nll_best, sample_logp, sample_reward, sample_group, kl_anchor, mix, kl_weight)

    def up(t: Tensor) -> Tensor:
        return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t

    fwd = up(nll_best).mean()
    logp = up(sample_logp)
    n = logp.shape[0]
    if n:
        reward = up(sample_reward).detach().to(logp.dtype)
        adv = reward - leave_one_out_baseline(reward, sample_group)
        pg = -(adv * logp).mean()
        kl = up(kl_anchor).mean()
    else:
        adv = logp.detach()
        reward = adv
        pg = logp.sum() * 0.0  # keeps the graph (and the dtype) with a zero value and gradient
        kl = up(kl_anchor).sum() * 0.0
    loss = (1.0 - mix) * fwd + mix * pg + kl_weight * kl
    with torch.no_grad():
        denom = max(n, 1)
        parts = {
            "fwd": fwd.detach(),
            "pg": pg.detach(),
            "kl_anchor": kl.detach(),
            "reward": reward.sum() / denom,
            "adv_abs": adv.abs().sum() / denom,
            "n_samples": torch.tensor(float(n), dtype=fwd.dtype, device=fwd.device),
        }
    return loss, parts


def jbond_loss_reference(
    nll_best: Sequence[float],
    sample_logp: Sequence[float],
    sample_reward: Sequence[float],
    sample_group: Sequence[int],
    kl_anchor: Sequence[float],
    mix: float = 0.5,
    kl_weight: float = 0.05,
) -> float:
    """A loop-per-sample Python-float transcription of the formula, for tests and engines."""
    fwd = sum(nll_best) / len(nll_best)
    n = len(sample_logp)
    pg = kl = 0.0
    for i in range(n):
        others = [sample_reward[j] for j in range(n) if j != i and sample_group[j] == sample_group[i]]
        baseline = sum(others) / len(others) if others else 0.0
        pg += -(sample_reward[i] - baseline) * sample_logp[i]
        kl += kl_anchor[i]
    if n:
        pg, kl = pg / n, kl / n
    return (1.0 - mix) * fwd + mix * pg + kl_weight * kl


__all__ = [
    "PART_NAMES",
    "ema_update",
    "init_anchor",
    "jbond_loss",
    "jbond_loss_reference",
    "leave_one_out_baseline",
    "quantile_reward",
    "sequence_stats",
    "smoothed_quantile",
    "win_fraction",
]
