"""Per-token log-probs and KL from hidden states, without materialising full-vocabulary logits.

BOND needs, for every response token, ``log π(y_t | ·)`` (chosen and rejected) and, for chosen
tokens, ``KL(π(·|·) ‖ π_ref(·|·))`` over the whole vocabulary. The naive way builds a
``(tokens, vocab)`` fp32 log-softmax for the policy *and* for the reference and keeps the policy's
for the backward: at 16 pairs x 256 response tokens x 32k vocab that is 0.5 GB per copy, more than
the LoRA step itself needs, and the copies dominate peak memory of TRL-style trainers.

:func:`token_logp_and_kl` instead takes the final hidden states of only the positions that predict
response tokens, and computes logits ``h @ Wᵀ`` chunk by chunk (``chunk_size`` tokens at a time) in
fp32, reducing each chunk to two numbers per token before the next chunk starts. A custom
autograd ``Function`` saves only the hidden states (``tokens x hidden``, ~30x smaller than logits)
and recomputes each chunk's logits in the backward. The reference's logits come from *cached*
reference hidden states through the same (frozen) ``lm_head``, so the reference model never runs
again after the first pass.

Everything here is plain torch: it runs (and is tested against a float64 full-softmax reference)
on CPU, and runs unchanged on CUDA.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from jupyter_distill.core.errors import TrainingError

#: Elements of one fp32 ``(chunk, vocab)`` logits block: 2**25 = 128 MiB, a few of which are live
#: at once inside a chunk. Small enough for any GPU, large enough that the matmul stays efficient.
DEFAULT_CHUNK_ELEMENTS: int = 2**25


def default_chunk_size(vocab_size: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Tokens per chunk so one fp32 logits block holds about ``chunk_elements`` numbers (min 16)."""
    return max(16, chunk_elements // max(1, vocab_size))


def _logits(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Logits of one chunk in at least fp32; the matmul runs in the weight's dtype (bf16 on GPU),
    exactly like ``lm_head`` does in the unfused model, so both paths round the same way."""
    out = h.to(weight.dtype) @ weight.t()
    if bias is not None:
        out = out + bias
    return out.to(_acc_dtype(weight))


def _acc_dtype(weight: Tensor) -> torch.dtype:
    """fp32 for bf16/fp16/fp32 weights, fp64 for fp64 ones (so float64 tests are exact)."""
    return torch.promote_types(weight.dtype, torch.float32)


class _TokenLogpKL(torch.autograd.Function):
    """Chunked ``(log p(target), KL(p ‖ q))`` with a recomputing backward (see module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        ref_hidden: Tensor | None,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor]:
        n = hidden.shape[0]
        acc = _acc_dtype(weight)
        logp = torch.empty(n, dtype=acc, device=hidden.device)
        kl = torch.zeros(n, dtype=acc, device=hidden.device)
        with torch.no_grad():
            for s in range(0, n, chunk_size):
                e = min(n, s + chunk_size)
                logits = _logits(hidden[s:e], weight, bias)
                lse = torch.logsumexp(logits, dim=-1)
                logp[s:e] = logits.gather(1, targets[s:e, None]).squeeze(1) - lse
                if ref_hidden is not None:
                    logp_all = logits - lse[:, None]
                    del logits
                    logq_all = torch.log_softmax(_logits(ref_hidden[s:e], weight, bias), dim=-1)
                    kl[s:e] = (logp_all.exp() * (logp_all - logq_all)).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, ref_hidden, kl)
        ctx.chunk_size = chunk_size
        ctx.has_bias = bias is not None
        ctx.has_ref = ref_hidden is not None
        return logp, kl

    @staticmethod
    def backward(ctx: Any, grad_logp: Tensor | None, grad_kl: Tensor | None) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets, ref_hidden, kl = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        n = hidden.shape[0]
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = _acc_dtype(weight)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        if grad_logp is None:
            grad_logp = torch.zeros(n, dtype=acc, device=hidden.device)
        use_kl = ctx.has_ref and grad_kl is not None
        for s in range(0, n, ctx.chunk_size):
            e = min(n, s + ctx.chunk_size)
            logits = _logits(hidden[s:e], weight, bias)
            logp_all = torch.log_softmax(logits, dim=-1)
            del logits
            p = logp_all.exp()
            # d log p(t) / d logits = onehot(t) − p
            g = p * (-grad_logp[s:e, None])
            g.scatter_add_(1, targets[s:e, None], grad_logp[s:e, None].to(g.dtype))
            if use_kl:
                # d KL(p‖q) / d logits_j = p_j · (log p_j − log q_j − KL)
                logq_all = torch.log_softmax(_logits(ref_hidden[s:e], weight, bias), dim=-1)
                g += grad_kl[s:e, None] * p * (logp_all - logq_all - kl[s:e, None])
                del logq_all
            del p, logp_all
            g_low = g.to(weight.dtype)
            if grad_h is not None:
                grad_h[s:e] = (g_low @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w += (g_low.t() @ hidden[s:e].to(weight.dtype)).to(acc)
            if grad_b is not None:
                grad_b += g.sum(0)
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None and bias is not None else None,
            None,
            None,
            None,
        )


def token_logp_and_kl(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    ref_hidden: Tensor | None = None,
    bias: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token ``log softmax(h Wᵀ + b)[target]`` and ``KL(softmax(h Wᵀ) ‖ softmax(h_ref Wᵀ))``.

    Args:
        hidden: ``(N, H)`` final hidden states (after the final norm) at the positions that
            *predict* each target token. Gradient flows back into it.
        weight: ``(V, H)`` output-embedding (``lm_head``) weight; normally frozen.
        targets: ``(N,)`` token ids.
        ref_hidden: ``(N, H)`` the reference model's hidden states at the same positions; when
            given, the KL column is filled, else it is zeros. The reference distribution is a
            constant: no gradient flows into ``ref_hidden``, nor into ``weight`` through it (a
            trained ``lm_head`` would make cached reference states meaningless anyway).
        bias: optional ``(V,)`` ``lm_head`` bias.
        chunk_size: tokens per chunk; default keeps one fp32 logits block near 128 MiB.

    Returns:
        ``(logp, kl)``: two ``(N,)`` tensors in fp32 (fp64 for fp64 weights). Peak extra memory is
        a few ``chunk x V`` fp32 blocks, never ``N x V``.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise TrainingError(
            f"token_logp_and_kl: hidden {tuple(hidden.shape)} and lm_head weight {tuple(weight.shape)} "
            "do not fit; expected hidden (N, H) and weight (V, H).",
            field="hidden",
            value=tuple(hidden.shape),
            fix="gather the final hidden states of the predicting positions into a 2-D (N, H) tensor",
        )
    if targets.shape != (hidden.shape[0],):
        raise TrainingError(
            f"token_logp_and_kl: targets has shape {tuple(targets.shape)}, expected ({hidden.shape[0]},).",
            field="targets",
            value=tuple(targets.shape),
            fix="pass one target id per hidden-state row",
        )
    if ref_hidden is not None and ref_hidden.shape != hidden.shape:
        raise TrainingError(
            f"token_logp_and_kl: ref_hidden {tuple(ref_hidden.shape)} != hidden {tuple(hidden.shape)}.",
            field="ref_hidden",
            value=tuple(ref_hidden.shape),
            fix="cache the reference hidden states at exactly the positions used for the policy",
        )
    size = chunk_size or default_chunk_size(weight.shape[0])
    if size < 1:
        raise TrainingError(
            f"token_logp_and_kl: chunk_size={chunk_size} must be >= 1.",
            field="chunk_size",
            value=chunk_size,
            fix="leave it None for the default, or pass a positive number of tokens",
        )
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=_acc_dtype(weight))
        return empty + hidden.sum() * 0.0, empty.clone()
    ref = ref_hidden.detach() if ref_hidden is not None else None
    return _TokenLogpKL.apply(hidden, weight, bias, targets.long(), ref, int(size))


def token_logp_and_kl_reference(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    ref_hidden: Tensor | None = None,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The same two columns through a full ``(N, V)`` log-softmax, for tests (use float64 inputs)."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(1, targets.long()[:, None]).squeeze(1)
    if ref_hidden is None:
        return logp, torch.zeros_like(logp)
    ref_logits = ref_hidden @ weight.t()
    if bias is not None:
        ref_logits = ref_logits + bias
    logq_all = torch.log_softmax(ref_logits, dim=-1).detach()  # the reference is a constant
    kl = (logp_all.exp() * (logp_all - logq_all)).sum(-1)
    return logp, kl


def segment_sum(values: Tensor, segments: Tensor, n_segments: int) -> Tensor:
    """Sum ``values`` per segment id (``index_add``): per-sequence sums of per-token quantities."""
    out = torch.zeros(n_segments, dtype=values.dtype, device=values.device)
    return out.index_add(0, segments, values)


__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "default_chunk_size",
    "segment_sum",
    "token_logp_and_kl",
    "token_logp_and_kl_reference",
]
