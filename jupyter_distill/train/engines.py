"""Step engines: how one BOND loss is computed on a batch of tokenized pairs.

The trainer owns everything around a step (LoRA set-up, optimizer, schedule, checkpoints,
metrics); an engine owns only the forward passes that produce the per-sequence statistics
:func:`~jupyter_distill.train.bond.bond_loss` needs. That split lets the CUDA fast path
(:mod:`jupyter_distill.train.fast`) replace the forward passes (chunked log-probs,
packing, compiled kernels) while the loss, the loop and the checkpoints stay the same.

The plain engine here runs on CPU and CUDA with stock PEFT:

- chosen and rejected sequences of a micro-batch go through the policy in **one** batched
  forward (right-padded; logits are kept only from the first response position on, via
  ``logits_to_keep``, and log-softmax is taken only at response positions);
- the reference model is the same model with the adapter disabled (``model.disable_adapter()``),
  so there is never a second copy of the weights;
- reference log-prob *sums* for chosen and rejected are computed once per example under
  ``no_grad`` in :meth:`PlainEngine.prepare` and cached on the example (they do not change
  while training: the reference is frozen);
- the per-token KL term needs the full reference *distribution* at every chosen position, which
  is far too big to cache (vocab × tokens floats per example), so it is recomputed each step by
  one extra no-grad forward of the chosen rows with the adapter disabled. That is exact and costs
  about a sixth of a step (one forward of half the sequences, against forward + backward of all
  of them); with ``gamma == 0`` it is skipped and ``kl`` is not reported.

The CUDA fast-path hook: on a CUDA device
:func:`~jupyter_distill.train.choice.select_engine` imports
``jupyter_distill.train.fast`` and calls ``create_engine(device, **options) -> (engine | None,
reason)``; an ImportError or a ``None`` engine falls back to the plain engine with the reason
shown to the user. The trainer wraps the student in LoRA itself (through Unsloth's own wrapper
when the student was loaded by Unsloth), so engines only compute the loss.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.train.bond import bond_loss


@dataclass
class TokenizedPair:
    """One training example as token ids; the engines' only input.

    ``chosen_ids``/``rejected_ids`` are response tokens *including* the end-of-turn token; the
    loss is taken on exactly these. ``index`` is the example's position in the training set (the
    data order and the reference cache refer to it). The ``ref_*`` fields are filled by
    :meth:`StepEngine.prepare` and saved in checkpoints.
    """

    index: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None = None
    ref_logp_chosen: float | None = None
    ref_logp_rejected: float | None = None

    @property
    def has_rejected(self) -> bool:
        return bool(self.rejected_ids)

    @property
    def length(self) -> int:
        """Longest sequence this example puts through the model (for length bucketing)."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids or ()))

    @property
    def n_tokens(self) -> int:
        """Tokens this example puts through the policy forward (chosen + rejected sequences)."""
        total = len(self.prompt_ids) + len(self.chosen_ids)
        if self.rejected_ids:
            total += len(self.prompt_ids) + len(self.rejected_ids)
        return total

    @property
    def needs_reference(self) -> bool:
        return self.ref_logp_chosen is None or (self.has_rejected and self.ref_logp_rejected is None)


@runtime_checkable
class StepEngine(Protocol):
    """Computes the BOND loss of a micro-batch; the trainer does the rest.

    ``loss`` returns the scalar to backpropagate and plain floats for the metrics: at least
    ``nll``, ``pref``, ``pref_acc``, ``margin``, ``n_pref`` and ``tokens`` (policy tokens
    processed), and ``kl`` when it was computed.
    """

    name: str

    def prepare(self, model: Any, examples: Sequence[TokenizedPair]) -> None: ...

    def loss(self, model: Any, examples: Sequence[TokenizedPair]) -> tuple[Tensor, dict[str, float]]: ...


@contextlib.contextmanager
def reference_mode(model: Any) -> Iterator[None]:
    """The reference policy: the same model with its LoRA adapter switched off, without gradients.

    A model without an adapter (no PEFT wrapper) *is* its own reference.
    """
    disable = getattr(model, "disable_adapter", None)
    with torch.no_grad():
        if disable is None:
            yield
        else:
            with disable():
                yield


def model_device(model: Any) -> torch.device:
    return next(p.device for p in model.parameters())


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``; right padding keeps positions 0..len-1."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def _supports_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class ResponseLogits:
    """Log-probabilities at the response positions of a right-padded batch, flattened row-major."""

    token_logp: Tensor  # (n,) log-prob of each response token
    row: Tensor  # (n,) which sequence each token belongs to
    logp: Tensor | None  # (n, V) full log-distribution at those positions, when asked for


def response_logits(
    model: Any,
    seqs: Sequence[Sequence[int]],
    starts: Sequence[int],
    pad_id: int,
    *,
    full: bool = False,
) -> ResponseLogits:
    """One forward of ``seqs``; log-probs of tokens ``seq[start:]`` (the response) only.

    Logits are kept from position ``min(starts) - 1`` on (``logits_to_keep``), and the
    log-softmax is taken only at response positions, in float32.
    """
    device = model_device(model)
    input_ids, attention_mask = pad_right(seqs, pad_id, device)
    width = input_ids.shape[1]
    first = min(starts) - 1  # the position whose logits predict the first response token
    if first < 0:
        raise TrainingError(
            "a training sequence has an empty prompt, so its first response token has nothing to be predicted "
            "from. Fix: give every pair a prompt (the chat template normally guarantees one).",
            field="prompt",
            value="",
            fix="use non-empty prompts",
        )
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    keep = width - first
    if _supports_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
        logits = model(**kwargs).logits
    else:
        logits = model(**kwargs).logits[:, first:, :]
    # kept column j predicts the token at position first + j + 1
    positions = torch.arange(first + 1, first + keep + 1, device=device)
    lengths = attention_mask.sum(dim=1)
    start_t = torch.tensor(list(starts), device=device)
    select = (positions[None, :] >= start_t[:, None]) & (positions[None, :] < lengths[:, None])
    targets = torch.zeros_like(select, dtype=torch.long)
    targets[:, : keep - 1] = input_ids[:, first + 1 :]
    chosen_logits = logits[select].float()  # (n, V), row-major: row 0's tokens first
    logp = chosen_logits.log_softmax(dim=-1)
    token_logp = logp.gather(1, targets[select][:, None]).squeeze(1)
    rows = torch.arange(len(seqs), device=device)[:, None].expand_as(select)[select]
    return ResponseLogits(token_logp=token_logp, row=rows, logp=logp if full else None)


def _per_row(values: Tensor, rows: Tensor, n: int) -> Tensor:
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, rows, values)


class PlainEngine:
    """BOND with stock PEFT on any device: correct and simple; the reference for the fast path."""

    name = "plain"

    def __init__(
        self,
        *,
        beta: float = 0.5,
        gamma: float = 0.1,
        tau: float = 0.1,
        pad_token_id: int = 0,
        prepare_batch_size: int = 8,
    ):
        self.beta = beta
        self.gamma = gamma
        self.tau = tau
        self.pad_token_id = pad_token_id
        self.prepare_batch_size = prepare_batch_size

    # ------------------------------------------------------------------ reference cache
    def prepare(self, model: Any, examples: Sequence[TokenizedPair]) -> None:
        """Fill ``ref_logp_chosen``/``ref_logp_rejected`` of examples that lack them.

        Runs in eval mode with the adapter disabled: the reference is the student before training.
        Examples are processed in length order so padding stays small.
        """
        todo = sorted((e for e in examples if e.needs_reference), key=lambda e: e.length)
        if not todo:
            return
        was_training = model.training
        model.eval()
        try:
            with reference_mode(model):
                for start in range(0, len(todo), self.prepare_batch_size):
                    chunk = todo[start : start + self.prepare_batch_size]
                    seqs, starts, owners = [], [], []
                    for example in chunk:
                        seqs.append(example.prompt_ids + example.chosen_ids)
                        starts.append(len(example.prompt_ids))
                        owners.append((example, "chosen"))
                        if example.rejected_ids:
                            seqs.append(example.prompt_ids + example.rejected_ids)
                            starts.append(len(example.prompt_ids))
                            owners.append((example, "rejected"))
                    out = response_logits(model, seqs, starts, self.pad_token_id)
                    sums = _per_row(out.token_logp.double(), out.row, len(seqs)).tolist()
                    for (example, which), value in zip(owners, sums, strict=True):
                        setattr(example, f"ref_logp_{which}", float(value))
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------ the step
    def loss(self, model: Any, examples: Sequence[TokenizedPair]) -> tuple[Tensor, dict[str, float]]:
        """The BOND loss of ``examples``: one policy forward of chosen + rejected, one no-grad
        reference forward of the chosen rows for the KL term (skipped when ``gamma == 0``)."""
        rows = list(examples)
        if any(e.needs_reference for e in rows):
            raise TrainingError(
                "a batch reached the step engine without cached reference log-probs. Fix: call "
                "engine.prepare(model, examples) before training (BondTrainer does this).",
                field="examples",
                value=[e.index for e in rows if e.needs_reference],
                fix="call prepare() first",
            )
        n = len(rows)
        with_rejected = [e for e in rows if e.rejected_ids]
        seqs = [e.prompt_ids + e.chosen_ids for e in rows] + [e.prompt_ids + e.rejected_ids for e in with_rejected]  # type: ignore[operator]
        starts = [len(e.prompt_ids) for e in rows] + [len(e.prompt_ids) for e in with_rejected]
        out = response_logits(model, seqs, starts, self.pad_token_id, full=self.gamma > 0)
        device = out.token_logp.device
        sums = _per_row(out.token_logp, out.row, len(seqs))
        counts = _per_row(torch.ones_like(out.token_logp), out.row, len(seqs))

        logp_chosen = sums[:n]
        nll_chosen = -logp_chosen / counts[:n]
        has_rejected = torch.tensor([bool(e.rejected_ids) for e in rows], device=device)
        logp_rejected = torch.zeros(n, dtype=sums.dtype, device=device)
        if with_rejected:
            logp_rejected = logp_rejected.index_put((has_rejected.nonzero().squeeze(1),), sums[n:])
        ref_chosen = torch.tensor([e.ref_logp_chosen for e in rows], dtype=sums.dtype, device=device)
        ref_rejected = torch.tensor(
            [e.ref_logp_rejected if e.rejected_ids else 0.0 for e in rows], dtype=sums.dtype, device=device
        )

        if self.gamma > 0:
            assert out.logp is not None
            chosen_tokens = out.row < n
            policy_logp = out.logp[chosen_tokens]
            with reference_mode(model):
                ref = response_logits(model, seqs[:n], starts[:n], self.pad_token_id, full=True)
            assert ref.logp is not None
            per_token_kl = (policy_logp.exp() * (policy_logp - ref.logp)).sum(dim=-1)
            kl_chosen = _per_row(per_token_kl, out.row[chosen_tokens], n) / counts[:n]
        else:
            kl_chosen = torch.zeros(n, dtype=sums.dtype, device=device)

        loss, parts = bond_loss(
            nll_chosen,
            logp_chosen,
            ref_chosen,
            logp_rejected,
            ref_rejected,
            kl_chosen,
            has_rejected,
            beta=self.beta,
            gamma=self.gamma,
            tau=self.tau,
        )
        metrics = {name: float(value) for name, value in parts.items()}
        if self.gamma == 0:
            metrics.pop("kl")
        metrics["tokens"] = float(sum(len(s) for s in seqs))
        return loss, metrics


__all__ = [
    "PlainEngine",
    "ResponseLogits",
    "StepEngine",
    "TokenizedPair",
    "pad_right",
    "reference_mode",
    "response_logits",
]
