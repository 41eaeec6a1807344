"""The BOND loss: best-of-N imitation + a preference term + a KL anchor, as one pure function.

``bond_loss`` is the single definition every training engine uses (the plain PEFT engine on CPU
and CUDA, and the CUDA fast path), so the engines can only differ in *how* they compute the
per-sequence statistics, never in what they optimise. It is a pure function of shape-``(B,)``
tensors so it can be unit-tested against a float64 reference and ``torch.autograd.gradcheck``.

The formula::

    L = (1 − β) · mean_b NLL(y+_b | x_b)
      +      β  · mean_{b: has y-} −log σ(τ · (Δ(y+_b) − Δ(y-_b)))
      +      γ  · mean_b KL_b

with ``Δ(y) = log π(y|x) − log π_ref(y|x)`` summed over response tokens, ``NLL`` and ``KL`` the
per-sequence *token means*. Rows without a rejected sample contribute only NLL and KL; when no
row has one the preference term is exactly 0 (and carries no gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from jupyter_distill.core.errors import TrainingError

#: The keys of the ``parts`` dict :func:`bond_loss` returns, in display order.
PART_NAMES: tuple[str, ...] = ("nll", "pref", "kl", "pref_acc", "margin", "n_pref")

_ARG_NAMES: tuple[str, ...] = (
    "nll_chosen",
    "logp_chosen",
    "ref_logp_chosen",
    "logp_rejected",
    "ref_logp_rejected",
    "kl_chosen",
    "has_rejected",
)


def _check(args: tuple[Tensor, ...], beta: float, gamma: float, tau: float) -> None:
    """Fail with a message that names the argument: shape bugs otherwise broadcast silently."""
    shape = args[0].shape
    if args[0].dim() != 1 or shape[0] == 0:
        raise TrainingError(
            f"bond_loss: nll_chosen must be a non-empty 1-D tensor of shape (B,), got shape {tuple(shape)}; "
            "pass one value per sequence (token means / sums already reduced).",
            field="nll_chosen",
            value=tuple(shape),
            fix="reduce per-token values to one value per sequence before calling bond_loss",
        )
    for name, tensor in zip(_ARG_NAMES, args, strict=True):
        if not isinstance(tensor, Tensor):
            raise TrainingError(
                f"bond_loss: {name} must be a torch.Tensor, got {type(tensor).__name__}.",
                field=name,
                value=type(tensor).__name__,
                fix="pass tensors of shape (B,)",
            )
        if tensor.shape != shape:
            raise TrainingError(
                f"bond_loss: {name} has shape {tuple(tensor.shape)} but nll_chosen has {tuple(shape)}; "
                "all arguments must have the same shape (B,).",
                field=name,
                value=tuple(tensor.shape),
                fix="give every argument one entry per row of the batch",
            )
    if args[-1].dtype != torch.bool:
        raise TrainingError(
            f"bond_loss: has_rejected must be a bool tensor, got dtype {args[-1].dtype}.",
            field="has_rejected",
            value=str(args[-1].dtype),
            fix="pass a torch.bool tensor (True where the row has a rejected sample)",
        )
    if not 0.0 <= beta <= 1.0:
        raise TrainingError(
            f"bond_loss: beta={beta} is outside [0, 1]; it mixes NLL (1 − β) and preference (β).",
            field="bond_beta",
            value=beta,
            fix="use a value between 0 and 1 (default 0.5; 0 = SFT only)",
        )
    if gamma < 0.0:
        raise TrainingError(
            f"bond_loss: gamma={gamma} is negative; the KL anchor weight must be >= 0.",
            field="bond_gamma",
            value=gamma,
            fix="use 0 to switch the KL term off, or a small positive value (default 0.1)",
        )
    if not tau > 0.0:
        raise TrainingError(
            f"bond_loss: tau={tau} must be > 0; it scales the log-ratio margin inside the sigmoid.",
            field="bond_tau",
            value=tau,
            fix="use a positive temperature (default 0.1)",
        )


def bond_loss(
    nll_chosen: Tensor,
    logp_chosen: Tensor,
    ref_logp_chosen: Tensor,
    logp_rejected: Tensor,
    ref_logp_rejected: Tensor,
    kl_chosen: Tensor,
    has_rejected: Tensor,
    beta: float = 0.5,
    gamma: float = 0.1,
    tau: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The BOND loss of one batch and its parts.

    Args:
        nll_chosen: ``(B,)`` mean token NLL of the chosen response under the policy.
        logp_chosen: ``(B,)`` summed log-prob of the chosen response under the policy.
        ref_logp_chosen: ``(B,)`` same under the reference (adapter disabled); no gradient needed.
        logp_rejected: ``(B,)`` summed log-prob of the rejected response under the policy; any
            finite or non-finite filler where ``has_rejected`` is False (it is masked out before use,
            so neither value nor gradient leaks).
        ref_logp_rejected: ``(B,)`` same under the reference.
        kl_chosen: ``(B,)`` mean over chosen response tokens of ``KL(π ‖ π_ref)``.
        has_rejected: ``(B,)`` bool, True where the row has a rejected sample.
        beta: weight of the preference term; ``1 − beta`` weighs the NLL.
        gamma: weight of the KL anchor.
        tau: temperature of the log-ratio margin.

    Returns:
        ``(loss, parts)``: ``loss`` a scalar with gradient; ``parts`` detached scalars (tensors, so
        a CUDA caller does not sync per step): ``nll``, ``pref``, ``kl`` (the three unweighted term
        means), ``pref_acc`` (fraction of preference rows whose margin is > 0), ``margin`` (mean
        ``Δ(y+) − Δ(y-)`` over preference rows, before ``tau``) and ``n_pref`` (how many rows had a
        rejected sample). ``pref``, ``pref_acc`` and ``margin`` are 0 when ``n_pref`` is 0.

    Low-precision inputs (bf16/fp16) are reduced in float32: the margin is a difference of two
    sums of hundreds of log-probs, which bf16 cannot resolve.
    """
    args = (nll_chosen, logp_chosen, ref_logp_chosen, logp_rejected, ref_logp_rejected, kl_chosen, has_rejected)
    _check(args, beta, gamma, tau)

    def up(t: Tensor) -> Tensor:
        return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t

    nll = up(nll_chosen)
    kl = up(kl_chosen)
    mask = has_rejected
    n_pref = mask.sum()

    delta_chosen = up(logp_chosen) - up(ref_logp_chosen)
    delta_rejected = up(logp_rejected) - up(ref_logp_rejected)
    # torch.where (not multiplication by the mask) so a NaN/inf filler in rows without a rejected
    # sample gives neither a NaN loss nor a NaN gradient.
    margin = torch.where(mask, delta_chosen - delta_rejected, torch.zeros_like(delta_chosen))
    per_row_pref = torch.where(mask, -F.logsigmoid(tau * margin), torch.zeros_like(margin))
    denom = n_pref.clamp(min=1).to(per_row_pref.dtype)
    pref = per_row_pref.sum() / denom  # exactly 0 when no row has a rejected sample

    nll_mean = nll.mean()
    kl_mean = kl.mean()
    # A term with weight 0 is left out, not multiplied by 0: ``sft`` (beta = gamma = 0) is then the
    # plain mean NLL, even where a huge margin would make 0 · pref a NaN.
    loss = (1.0 - beta) * nll_mean
    if beta:
        loss = loss + beta * pref
    if gamma:
        loss = loss + gamma * kl_mean

    with torch.no_grad():
        maskf = mask.to(margin.dtype)
        parts = {
            "nll": nll_mean.detach(),
            "pref": pref.detach(),
            "kl": kl_mean.detach(),
            "pref_acc": ((margin > 0).to(margin.dtype) * maskf).sum() / denom,
            "margin": margin.detach().sum() / denom,
            "n_pref": n_pref.detach().to(margin.dtype),
        }
    return loss, parts


def bond_loss_reference(
    nll_chosen: list[float],
    logp_chosen: list[float],
    ref_logp_chosen: list[float],
    logp_rejected: list[float],
    ref_logp_rejected: list[float],
    kl_chosen: list[float],
    has_rejected: list[bool],
    beta: float = 0.5,
    gamma: float = 0.1,
    tau: float = 0.1,
) -> float:
    """A loop-per-row float64 (Python float) transcription of the formula, for tests and engines.

    Kept next to :func:`bond_loss` so any engine (e.g. the CUDA fast path) can check itself against
    the same independent reference the unit tests use.
    """
    import math

    rows = len(nll_chosen)
    nll = sum(nll_chosen) / rows
    kl = sum(kl_chosen) / rows
    prefs = []
    for i in range(rows):
        if has_rejected[i]:
            m = (logp_chosen[i] - ref_logp_chosen[i]) - (logp_rejected[i] - ref_logp_rejected[i])
            z = tau * m
            # -log sigmoid(z) = log(1 + exp(-z)), computed stably
            prefs.append(max(-z, 0.0) + math.log1p(math.exp(-abs(z))))
    pref = sum(prefs) / len(prefs) if prefs else 0.0
    return (1.0 - beta) * nll + beta * pref + gamma * kl


__all__ = ["PART_NAMES", "bond_loss", "bond_loss_reference"]
