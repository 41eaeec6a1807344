"""How much RAM the export step needs, predicted from a model's shape before anything is loaded.

The export holds whole models in memory twice over: the merge loads the base and adds the LoRA to
it (:func:`jupyter_distill.export.merge.merge_lora` merges in the dtype the base is stored in, so a
bf16 base costs 2 bytes per parameter there, not 4), then writes it shard by shard (at most
:data:`MERGE_SHARD_BYTES` of serialised tensors beside it); the agreement check loads the merged
model in fp32 as the reference the GGUF is compared with (4 bytes per parameter, plus the logits of
a check sequence). llama.cpp's converter reads tensors lazily and its quantizer maps the file, so
neither adds a model-sized peak. An 8B student therefore needs about 16 GB to merge and 32 GB to
check in RAM. The check keeps its fp32 precision on a smaller machine: when the fp32 reference does
not fit in :data:`CHECK_RAM_FRACTION` of the available memory, accelerate places the layers that do
not fit on disk (:func:`reference_placement`) and streams them in at each forward pass, so the check
costs time instead of RAM. :func:`export_peak` says all this before a run starts, and
:func:`available_memory` says what the machine has, so ``estimate`` can warn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MERGE_SHARD_BYTES = 2 * 1024**3  # max_shard_size of the merged folder
CHECK_CONTEXT = 1024  # tokens of one agreement-check sequence (export.check n_ctx)
OVERHEAD_BYTES = 512 * 1024**2  # torch, transformers and the tokenizer themselves
# Share of the available memory the fp32 reference may hold; the rest is left to llama.cpp (which
# loads each GGUF beside it during the check), the logits and the process itself.
CHECK_RAM_FRACTION = 0.6
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_DTYPE_NAMES = {"float": "float32", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


@dataclass(frozen=True)
class ExportMemory:
    """Predicted peak bytes of the export's two model-sized steps, and which one decides."""

    merge: int  # base in its stored dtype + LoRA + one shard being written
    check: int  # the fp32 reference's share in RAM + the logits of one check sequence
    stored_dtype: str
    check_offloaded: int = 0  # bytes of the fp32 reference placed on disk because RAM is short

    @property
    def peak(self) -> int:
        return max(self.merge, self.check)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "peak": self.peak}


def stored_dtype(config: dict[str, Any]) -> str:
    """The dtype a transformers ``config.json`` says the weights are stored in (fp32 when it says none)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    name = config.get("torch_dtype") or config.get("dtype") or text.get("torch_dtype") or text.get("dtype")
    name = str(name or "float32").removeprefix("torch.")
    name = _DTYPE_NAMES.get(name, name)
    return name if name in DTYPE_BYTES else "float32"


def export_peak(
    params: int, vocab: int, *, dtype: str = "float32", lora_params: int = 0, available: int | None = None
) -> ExportMemory:
    """Peak RAM of merging and checking a student of ``params`` parameters stored in ``dtype``.

    ``available``: the machine's free memory; when the fp32 reference of the check does not fit in
    its :data:`CHECK_RAM_FRACTION`, the part that does not fit is counted on disk, not in RAM.
    """
    weights = params * DTYPE_BYTES.get(dtype, 4)
    merge = weights + min(MERGE_SHARD_BYTES, weights) + lora_params * 4 + OVERHEAD_BYTES
    in_ram, offloaded = reference_placement(params * 4, available)
    check = in_ram + CHECK_CONTEXT * vocab * 4 + OVERHEAD_BYTES
    return ExportMemory(merge=int(merge), check=int(check), stored_dtype=dtype, check_offloaded=int(offloaded))


def reference_budget(available: int | None) -> int | None:
    """Bytes of RAM the fp32 reference may take, or None when the machine's memory is unknown."""
    return None if available is None else int(available * CHECK_RAM_FRACTION)


def reference_placement(fp32_bytes: int, available: int | None) -> tuple[int, int]:
    """(bytes in RAM, bytes on disk) of an fp32 reference of ``fp32_bytes`` given ``available`` memory."""
    budget = reference_budget(available)
    if budget is None or fp32_bytes <= budget:
        return fp32_bytes, 0
    return budget, fp32_bytes - budget


def available_memory() -> int | None:
    """Bytes of memory available to a new process now: psutil when installed, else ``/proc/meminfo``."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


__all__ = [
    "CHECK_RAM_FRACTION",
    "ExportMemory",
    "available_memory",
    "export_peak",
    "reference_budget",
    "reference_placement",
    "stored_dtype",
]
