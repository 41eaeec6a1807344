"""The plain (PEFT, any device) step engine for ``loss: jbond``.

One micro-batch: the student samples ``jbond_n`` answers per prompt (:mod:`.rollout`), the run's
judge scores them against the teacher's stored candidates (:mod:`.rewards`), then one policy
forward of the teacher's best and the samples, one no-grad forward of the samples under the EMA
anchor (the LoRA weights swapped for the anchor's, then back), and :func:`.jbond.jbond_loss`.
After each optimiser step the trainer calls :meth:`JBondEngine.after_step` to move the anchor.

What a resumed run needs to equal an uninterrupted one is in :meth:`state_dict`: the anchor and the
cached rewards. The samples themselves are reproducible without saved RNG state: each micro-batch
is seeded from its place in the data order (see ``rollout.step_seed``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.core.store import PromptRecord
from jupyter_distill.train.engines import TokenizedPair, _per_row, response_logits
from jupyter_distill.train.jbond import ema_update, init_anchor, jbond_loss
from jupyter_distill.train.rewards import OnPolicyRewards
from jupyter_distill.train.rollout import sample_student
from jupyter_distill.train.student import LoadedStudent

#: the on-policy metrics a jbond step adds to the store, next to ``loss``
JBOND_METRICS: tuple[str, ...] = ("fwd", "pg", "kl_anchor", "reward", "win_rate", "sample_len", "judge_calls")


class JBondEngine:
    """``StepEngine`` for J-BOND on the plain PEFT model; see the module docstring."""

    name = "plain-jbond"
    metric_names = JBOND_METRICS
    counted: tuple[str, ...] = ("judge_calls",)  # summed over micro-batches, not averaged

    def __init__(
        self,
        student: LoadedStudent,
        prompts: Sequence[PromptRecord],
        rewards: OnPolicyRewards | None,
        *,
        n: int = 2,
        max_new_tokens: int = 64,
        mix: float = 0.5,
        kl_weight: float = 0.05,
        anchor_decay: float = 0.99,
        pad_token_id: int = 0,
    ):
        self.student = student
        self.prompts = list(prompts)  # indexed like the training examples
        self.rewards = rewards
        self.n, self.max_new_tokens = n, max_new_tokens
        self.mix, self.kl_weight, self.anchor_decay = mix, kl_weight, anchor_decay
        self.pad_token_id = pad_token_id
        self.anchor: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ the anchor
    @staticmethod
    def _lora(model: Any) -> dict[str, Tensor]:
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def prepare(self, model: Any, examples: Sequence[TokenizedPair]) -> None:
        """No reference log-probs are needed (the anchor replaces the frozen reference); start the anchor."""
        lora = self._lora(model)
        if self.anchor is None:
            self.anchor = init_anchor(lora.items())
        else:  # restored from a checkpoint (loaded on the CPU): keep it beside the weights it follows
            self.anchor = {name: value.to(lora[name].device) for name, value in self.anchor.items()}

    def after_step(self, model: Any) -> None:
        """Move the anchor towards the weights the optimiser just wrote."""
        if self.anchor is None:
            self.anchor = init_anchor(self._lora(model).items())
        else:
            ema_update(self.anchor, self._lora(model), self.anchor_decay)

    def _anchor_forward(self, model: Any, seqs: list[list[int]], starts: list[int]) -> Tensor:
        assert self.anchor is not None
        lora = self._lora(model)
        with torch.no_grad():
            saved = {name: p.detach().clone() for name, p in lora.items()}
            try:
                for name, p in lora.items():
                    p.copy_(self.anchor[name].to(p.dtype))
                out = response_logits(model, seqs, starts, self.pad_token_id, full=True)
            finally:
                for name, p in lora.items():
                    p.copy_(saved[name])
        assert out.logp is not None
        return out.logp

    # ------------------------------------------------------------------ the step
    def _own_samples(
        self, model: Any, examples: Sequence[TokenizedPair], seed: int
    ) -> tuple[list[TokenizedPair], list[PromptRecord], list[Any]]:
        """The step's rows, their prompts and ``n`` samples of the student per prompt (anchor made first)."""
        rows = list(examples)
        if self.anchor is None:
            self.prepare(model, rows)
        prompts = [self.prompts[e.index] for e in rows]
        samples = sample_student(
            self.student,
            model,
            [p.messages for p in prompts],
            n=self.n,
            max_new_tokens=self.max_new_tokens,
            seed=seed,
        )
        return rows, prompts, samples

    def loss(self, model: Any, examples: Sequence[TokenizedPair], *, seed: int = 0) -> tuple[Tensor, dict[str, float]]:
        rows, prompts, samples = self._own_samples(model, examples, seed)
        assert self.rewards is not None
        calls_before = self.rewards.calls
        scored = self.rewards.score([prompts[s.prompt_index] for s in samples], [s.text for s in samples])

        b = len(rows)
        seqs = [e.prompt_ids + e.chosen_ids for e in rows] + [list(s.prompt_ids) + list(s.ids) for s in samples]
        starts = [len(e.prompt_ids) for e in rows] + [len(s.prompt_ids) for s in samples]
        # the anchor's forward first: it swaps the LoRA weights in place, which must not happen
        # between the policy forward and its backward
        anchor = self._anchor_forward(model, seqs[b:], starts[b:]) if self.kl_weight > 0 else None
        out = response_logits(model, seqs, starts, self.pad_token_id, full=self.kl_weight > 0)
        sums = _per_row(out.token_logp, out.row, len(seqs))
        counts = _per_row(torch.ones_like(out.token_logp), out.row, len(seqs))
        device, dtype = sums.device, sums.dtype
        nll_best = -sums[:b] / counts[:b]
        sample_logp = sums[b:]
        if anchor is not None:
            assert out.logp is not None
            mine = out.row >= b
            policy = out.logp[mine]
            per_token = (policy.exp() * (policy - anchor)).sum(dim=-1)
            kl = _per_row(per_token, out.row[mine] - b, len(samples)) / counts[b:]
        else:
            kl = torch.zeros(len(samples), dtype=dtype, device=device)
        reward = torch.tensor([r.reward for r in scored], dtype=dtype, device=device)
        group = torch.tensor([s.prompt_index for s in samples], dtype=torch.long, device=device)
        loss, parts = jbond_loss(nll_best, sample_logp, reward, group, kl, mix=self.mix, kl_weight=self.kl_weight)
        wins = [r.win for r in scored if not math.isnan(r.win)]
        metrics = {name: float(value) for name, value in parts.items() if name != "n_samples"}
        metrics["nll"] = metrics["fwd"]
        metrics["win_rate"] = sum(wins) / len(wins) if wins else math.nan
        metrics["sample_len"] = sum(len(s.ids) for s in samples) / len(samples)
        metrics["judge_calls"] = float(self.rewards.calls - calls_before)
        metrics["tokens"] = float(sum(len(s) for s in seqs))
        return loss, metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        assert self.rewards is not None
        return {"anchor": dict(self.anchor or {}), "rewards": self.rewards.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._load_anchor(state.get("anchor") or None)
        assert self.rewards is not None
        self.rewards.load_state_dict(state.get("rewards", {}))

    def _load_anchor(self, anchor: Mapping[str, Tensor] | None) -> None:
        if anchor is not None and self.anchor is not None and set(anchor) != set(self.anchor):
            raise TrainingError(
                "the checkpoint's EMA anchor holds other LoRA weights than this adapter. "
                "Fix: call train(resume=False) to start over.",
                field="resume",
                value="anchor",
                fix="train(resume=False)",
            )
        self.anchor = {k: v.to(torch.float32).clone() for k, v in anchor.items()} if anchor else None


__all__ = ["JBOND_METRICS", "JBondEngine"]
