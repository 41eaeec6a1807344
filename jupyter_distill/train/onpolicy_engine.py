"""The plain (PEFT, any device) step engine for ``loss: onpolicy``.

One micro-batch: the student samples ``jbond_n`` answers per prompt (:mod:`.rollout`), the teacher
scores every sampled token (:mod:`.teacher_logprobs`), then one no-grad forward of the samples
under the EMA anchor (when ``jbond_kl > 0``), one policy forward of the samples, and
:func:`.onpolicy.onpolicy_loss`. The anchor is J-BOND's (:class:`.jbond_engine.JBondEngine`, which
this engine extends), moved after each optimiser step.

A checkpoint holds the anchor and the cached teacher log-probs; the samples need no saved RNG
state, because each micro-batch's sampling is seeded from its place in the data order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from jupyter_distill.core.store import PromptRecord
from jupyter_distill.train.engines import TokenizedPair, _per_row, response_logits
from jupyter_distill.train.jbond_engine import JBondEngine
from jupyter_distill.train.onpolicy import onpolicy_loss
from jupyter_distill.train.student import LoadedStudent
from jupyter_distill.train.teacher_logprobs import TeacherLogprobs

#: the on-policy metrics an onpolicy step adds to the store, next to ``loss``
ONPOLICY_METRICS: tuple[str, ...] = ("pg", "reverse_kl", "kl_anchor", "sample_len", "teacher_calls")


class OnPolicyEngine(JBondEngine):
    """``StepEngine`` for on-policy distillation on the plain PEFT model; see the module docstring."""

    name = "plain-onpolicy"
    metric_names = ONPOLICY_METRICS
    counted = ("teacher_calls",)  # summed over micro-batches, not averaged

    def __init__(
        self,
        student: LoadedStudent,
        prompts: Sequence[PromptRecord],
        scores: TeacherLogprobs,
        *,
        n: int = 2,
        max_new_tokens: int = 64,
        kl_weight: float = 0.05,
        anchor_decay: float = 0.99,
        pad_token_id: int = 0,
    ):
        super().__init__(
            student,
            prompts,
            rewards=None,
            n=n,
            max_new_tokens=max_new_tokens,
            mix=1.0,
            kl_weight=kl_weight,
            anchor_decay=anchor_decay,
            pad_token_id=pad_token_id,
        )
        self.scores = scores

    def loss(self, model: Any, examples: Sequence[TokenizedPair], *, seed: int = 0) -> tuple[Tensor, dict[str, float]]:
        *_, samples = self._own_samples(model, examples, seed)
        calls_before = self.scores.calls
        teacher = self.scores.score([(s.prompt_ids, s.ids) for s in samples])

        seqs = [list(s.prompt_ids) + list(s.ids) for s in samples]
        starts = [len(s.prompt_ids) for s in samples]
        # the anchor's forward first: it swaps the LoRA weights in place, which must not happen
        # between the policy forward and its backward
        anchor = self._anchor_forward(model, seqs, starts) if self.kl_weight > 0 else None
        out = response_logits(model, seqs, starts, self.pad_token_id, full=anchor is not None)
        counts = _per_row(torch.ones_like(out.token_logp), out.row, len(seqs))
        device, dtype = out.token_logp.device, out.token_logp.dtype
        # response_logits flattens the response tokens row by row, in order: the teacher's lists line up
        teacher_logp = torch.tensor([v for values in teacher for v in values], dtype=torch.float64, device=device)
        if teacher_logp.numel() != out.token_logp.numel():
            raise AssertionError(f"{teacher_logp.numel()} teacher log-probs for {out.token_logp.numel()} tokens")
        if anchor is not None:
            assert out.logp is not None
            per_token = (out.logp.exp() * (out.logp - anchor)).sum(dim=-1)
            kl = _per_row(per_token, out.row, len(samples)) / counts
        else:
            kl = torch.zeros(len(samples), dtype=dtype, device=device)
        loss, parts = onpolicy_loss(out.token_logp, teacher_logp.to(dtype), out.row, kl, kl_weight=self.kl_weight)
        metrics = {name: float(value) for name, value in parts.items() if name not in ("n_tokens", "n_samples")}
        metrics["sample_len"] = sum(len(s.ids) for s in samples) / len(samples)
        metrics["teacher_calls"] = float(self.scores.calls - calls_before)
        metrics["tokens"] = float(sum(len(s) for s in seqs))
        return loss, metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"anchor": dict(self.anchor or {}), "teacher_logprobs": self.scores.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._load_anchor(state.get("anchor") or None)
        self.scores.load_state_dict(state.get("teacher_logprobs", {}))


__all__ = ["ONPOLICY_METRICS", "OnPolicyEngine"]
