"""One training process among several: which micro-batches it computes and what it sums with the others.

The group splits every optimizer step's ``grad_accum`` micro-batches between its processes (process
``r`` of ``N`` takes micro-batches ``r, r + N, ...``) instead of splitting each micro-batch's rows.
Each micro-batch is then the very tensor computation a single process does (same rows, same
padding, same loss normalisation), its gradient is scaled by ``1 / grad_accum`` as there, and the
group *sums* the gradients: the step is the single-process step up to the order of float additions.
Splitting rows would not be: the preference term of the loss is normalised by the number of rows
with a rejected response in the whole micro-batch, which no process knows alone.

The gradients are summed with one ``all_reduce`` over the flattened LoRA gradients per step, not
through ``DistributedDataParallel``: LoRA gradients are a few megabytes, the engines call
``model.disable_adapter()`` and other PEFT methods a DDP wrapper hides, and with gradient
accumulation DDP would also communicate once per step (its ``no_sync``). The process group itself
is the one accelerate's launcher set up (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

STRATEGIES: tuple[str, ...] = ("ddp", "fsdp")


class WorkerGroup:
    """This process's place in the launched process group, and the three collectives training needs."""

    def __init__(self, rank: int, world: int, device: torch.device | str = "cpu", strategy: str = "ddp"):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown distributed strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        self.rank = rank
        self.world = world
        self.device = torch.device(device)
        self.strategy = strategy

    @classmethod
    def from_environment(cls, strategy: str = "ddp") -> WorkerGroup:
        """Join the group ``accelerate launch`` started (its environment names rank and world size)."""
        from accelerate import PartialState

        # without cpu=True accelerate treats a launch on a machine with no visible GPU as one process
        state = PartialState(cpu=not torch.cuda.is_available())
        if state.num_processes < 2 or not torch.distributed.is_initialized():
            raise RuntimeError(
                f"this worker is not part of a process group (accelerate sees {state.distributed_type}); "
                "start it through jupyter_distill.train.distributed.train_in_workers"
            )
        return cls(state.process_index, state.num_processes, state.device, strategy)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, model: Any) -> None:
        """Before the optimizer is built: with ``fsdp``, shard the frozen base across the group.

        Only the base weights (the bulk of the memory: an 8B student's 16 GB in bf16) are sharded,
        one FSDP2 unit per decoder layer plus one for the rest (embeddings, head); FSDP gathers a
        layer's weights for its forward and backward and frees them after. The LoRA weights are left
        out of the shards (``ignored_params``): they, their gradients and the optimizer state are
        small, stay whole on every worker and are summed as with ``ddp``, so checkpoints and the
        adapter keep the single-process format.
        """
        if self.strategy != "fsdp":
            return
        from torch.distributed.fsdp import fully_shard

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        trainable = {p for p in model.parameters() if p.requires_grad}
        layer_types = set(getattr(base, "_no_split_modules", None) or ())
        layers = [m for m in base.modules() if type(m).__name__ in layer_types]
        if not layers:
            raise ValueError(
                f"distributed='fsdp' finds no decoder layers in {type(base).__name__} (it names none in "
                "_no_split_modules); use distributed='ddp'"
            )
        for layer in layers:
            fully_shard(layer, ignored_params=trainable & set(layer.parameters()))
        fully_shard(base, ignored_params=trainable)

    def owns(self, index: int, grad_accum: int) -> bool:
        """Whether micro-batch ``index`` (0-based within a step of ``grad_accum``) is computed here."""
        return index % self.world == self.rank

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any: the group stops at the same step."""
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        """Sum named numbers over the group (every process passes the same names)."""
        import torch.distributed as dist

        names = sorted(values)
        packed = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        return {name: float(v) for name, v in zip(names, packed.tolist(), strict=True)}

    def sum_gradients(self, params: Sequence[Any]) -> None:
        """Replace every trainable parameter's gradient by its sum over the group (one message)."""
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            size = p.numel()
            summed = flat[offset : offset + size].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = summed.clone()
            else:
                p.grad.copy_(summed)
            offset += size


__all__ = ["WorkerGroup"]
