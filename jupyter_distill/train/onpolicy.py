"""The on-policy distillation loss: per-token reverse KL to a teacher that scores the student's tokens.

The student samples its own answers; the teacher returns ``log p_T`` of every sampled token (the
same tokenizer, so the same token ids); each token's advantage is the negative of its sampled
reverse-KL term, ``−(log π − log p_T)``, detached. It is a policy gradient whose reward is dense
(one per token) and comes from the teacher's own distribution rather than from a judge. Like
``bond_loss`` and ``jbond_loss`` this is a pure function of flat tensors, checked against
:func:`onpolicy_loss_reference` in float64. The formulas are in ``docs/onpolicy.md``::

    δ_{s,t}  = log π(y_{s,t} | x_s, y_{s,<t}) − log p_T(y_{s,t} | x_s, y_{s,<t})    sampled reverse KL
    A_{s,t}  = −δ_{s,t}                                                             (constant)
    pg       = −(1/N) Σ_{s,t} A_{s,t} · log π(y_{s,t} | …)                          N tokens in the batch
    L        = pg + λ · mean_s KL_s(π ‖ π_anchor)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from jupyter_distill.core.errors import TrainingError

#: The keys of the ``parts`` dict :func:`onpolicy_loss` returns, in display order.
PART_NAMES: tuple[str, ...] = ("pg", "reverse_kl", "kl_anchor", "n_tokens", "n_samples")


def _fail(name: str, problem: str, fix: str, value: object) -> TrainingError:
    return TrainingError(f"onpolicy_loss: {name} {problem}. Fix: {fix}.", field=name, value=value, fix=fix)


def _check(token_logp: Tensor, teacher_logp: Tensor, token_sample: Tensor, kl_anchor: Tensor, kl_weight: float) -> None:
    for name, t in (
        ("token_logp", token_logp),
        ("teacher_logp", teacher_logp),
        ("token_sample", token_sample),
        ("kl_anchor", kl_anchor),
    ):
        if not isinstance(t, Tensor) or t.dim() != 1:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise _fail(name, f"must be a 1-D tensor, got {shape}", "pass flat per-token (or per-sample) values", shape)
    n = token_logp.shape[0]
    for name, t in (("teacher_logp", teacher_logp), ("token_sample", token_sample)):
        if t.shape[0] != n:
            raise _fail(name, f"has {t.shape[0]} entries but token_logp has {n}", "give one entry per token", n)
    if token_sample.dtype not in (torch.int32, torch.int64):
        raise _fail("token_sample", f"must be an integer tensor, got {token_sample.dtype}", "pass sample indices", "")
    if n and not bool(torch.isfinite(teacher_logp).all()):
        raise _fail(
            "teacher_logp",
            "holds a non-finite value (the teacher gave a token probability 0)",
            "check that the teacher scores with the student's tokenizer",
            "non-finite",
        )
    if n and int(token_sample.max()) >= kl_anchor.shape[0]:
        raise _fail(
            "kl_anchor",
            f"has {kl_anchor.shape[0]} entries for {int(token_sample.max()) + 1} samples",
            "one per sample",
            "",
        )
    if kl_weight < 0.0:
        raise _fail("jbond_kl", f"={kl_weight} is negative", "use 0 or a small positive value", kl_weight)


def onpolicy_loss(
    token_logp: Tensor,
    teacher_logp: Tensor,
    token_sample: Tensor,
    kl_anchor: Tensor,
    kl_weight: float = 0.05,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The on-policy distillation loss of one batch and its parts.

    Args:
        token_logp: ``(N,)`` ``log π`` of each sampled response token under the policy (the
            gradient flows through it), all samples of the batch flattened.
        teacher_logp: ``(N,)`` the teacher's ``log p_T`` of the same tokens; a constant.
        token_sample: ``(N,)`` integer, which sample each token belongs to (``0..S-1``).
        kl_anchor: ``(S,)`` mean token ``KL(π ‖ π_anchor)`` over each sample's tokens.
        kl_weight: λ, the weight of the KL to the EMA anchor (0 turns it off).

    Returns:
        ``(loss, parts)``: a scalar with gradient, and detached scalars ``pg`` (the surrogate's
        value), ``reverse_kl`` (mean sampled per-token reverse KL, ``mean δ``), ``kl_anchor``,
        ``n_tokens`` and ``n_samples``. With no tokens the policy-gradient term is exactly 0.
    """
    _check(token_logp, teacher_logp, token_sample, kl_anchor, kl_weight)

    def up(t: Tensor) -> Tensor:
        return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t

    logp = up(token_logp)
    n = logp.shape[0]
    s = kl_anchor.shape[0]
    if n:
        delta = (logp.detach() - up(teacher_logp).detach().to(logp.dtype)).detach()
        pg = (delta * logp).mean()  # = −mean(A · log π) with A = −δ
    else:
        delta = logp.detach()
        pg = logp.sum() * 0.0
    kl = up(kl_anchor).mean() if s else up(kl_anchor).sum() * 0.0
    loss = pg + kl_weight * kl
    with torch.no_grad():
        parts = {
            "pg": pg.detach(),
            "reverse_kl": delta.sum() / max(n, 1),
            "kl_anchor": kl.detach(),
            "n_tokens": torch.tensor(float(n), dtype=pg.dtype, device=pg.device),
            "n_samples": torch.tensor(float(s), dtype=pg.dtype, device=pg.device),
        }
    return loss, parts


def onpolicy_loss_reference(
    token_logp: Sequence[float],
    teacher_logp: Sequence[float],
    token_sample: Sequence[int],
    kl_anchor: Sequence[float],
    kl_weight: float = 0.05,
) -> float:
    """A loop-per-sample Python-float transcription of the formula, for tests.

    Written per sample (tokens grouped by ``token_sample``) so it shares no reduction with
    :func:`onpolicy_loss`: the token-mean over the batch is the sum over samples of each
    sample's token sum, divided by the total token count.
    """
    total, count = 0.0, 0
    for sample in sorted(set(token_sample)):
        for logp, teacher, owner in zip(token_logp, teacher_logp, token_sample, strict=True):
            if owner == sample:
                advantage = -(logp - teacher)
                total += -advantage * logp
                count += 1
    pg = total / count if count else 0.0
    kl = sum(kl_anchor) / len(kl_anchor) if kl_anchor else 0.0
    return pg + kl_weight * kl


__all__ = ["PART_NAMES", "onpolicy_loss", "onpolicy_loss_reference"]
