"""How much RAM the export step needs, predicted from a model's shape before anything is loaded.

The export holds whole models in memory twice over: the merge loads the base and adds the LoRA to
it (:func:`jupyter_distill.export.merge.merge_lora` merges in the dtype the base is stored in, so a
bf16 base costs 2 bytes per parameter there, not 4), then writes it shard by shard (at most
:data:`MERGE_SHARD_BYTES` of serialised tensors beside it); the agreement check loads the merged
model in fp32 as the reference the GGUF is compared with (4 bytes per parameter, plus the logits of
a check sequence). llama.cpp's converter reads tensors lazily and its quantizer maps the file, so
neither adds a model-sized peak. An 8B student therefore needs about 16 GB to merge and 32 GB to
check: :func:`export_peak` says so before a run starts, and :func:`available_memory` says what the
machine has, so ``estimate`` can warn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MERGE_SHARD_BYTES = 2 * 1024**3  # max_shard_size of the merged folder
CHECK_CONTEXT = 1024  # tokens of one agreement-check sequence (export.check n_ctx)
OVERHEAD_BYTES = 512 * 1024**2  # torch, transformers and the tokenizer themselves
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_DTYPE_NAMES = {"float": "float32", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


@dataclass(frozen=True)
class ExportMemory:
    """Predicted peak bytes of the export's two model-sized steps, and which one decides."""

    merge: int  # base in its stored dtype + LoRA + one shard being written
    check: int  # merged model in fp32 + the logits of one check sequence
    stored_dtype: str

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


def export_peak(params: int, vocab: int, *, dtype: str = "float32", lora_params: int = 0) -> ExportMemory:
    """Peak RAM of merging and checking a student of ``params`` parameters stored in ``dtype``."""
    weights = params * DTYPE_BYTES.get(dtype, 4)
    merge = weights + min(MERGE_SHARD_BYTES, weights) + lora_params * 4 + OVERHEAD_BYTES
    check = params * 4 + CHECK_CONTEXT * vocab * 4 + OVERHEAD_BYTES
    return ExportMemory(merge=int(merge), check=int(check), stored_dtype=dtype)


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


__all__ = ["ExportMemory", "available_memory", "export_peak", "stored_dtype"]
