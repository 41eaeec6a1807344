"""Loading and LoRA-wrapping a student through Unsloth's ``FastLanguageModel`` (``engine="unsloth"``).

Why: many users already run Unsloth, whose patched attention, MLP and LoRA kernels save memory
and time on CUDA. With ``engine="unsloth"`` (or ``"auto"`` when Unsloth imports and a CUDA device
is present) the student is loaded and LoRA-wrapped by Unsloth, then trained by our own trainer
(checkpoints, stop, metrics) with the same BOND loss through the fast engine, which detects the
patched layers and keeps to what they support (two-sequence layout, no compile of ours).

Importing Unsloth patches transformers for the whole process, so it is imported only here and
only when asked for. Unsloth pins its own TRL and datasets; the versions this package was tested
with are :data:`TESTED_VERSIONS`, and an import failure names them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import ConfigError, TrainingError

#: The Unsloth stack measured with this package (its own pins: trl <= 1.15, datasets < 5).
TESTED_VERSIONS: dict[str, str] = {
    "unsloth": "2026.10.9",
    "unsloth_zoo": "2026.10.9",
    "trl": "1.15.0",
    "datasets": "4.8.5",
}


def _tested() -> str:
    return ", ".join(f"{name}=={version}" for name, version in TESTED_VERSIONS.items())


def unsloth_status(device: str) -> tuple[bool, str]:
    """Whether ``engine="unsloth"`` can run on ``device``, and why not (checked without importing it)."""
    if importlib.util.find_spec("unsloth") is None:
        return False, f"Unsloth is not installed (tested with {_tested()})"
    if not str(device).startswith("cuda"):
        return False, f"Unsloth needs a CUDA device and training runs on {device!r}"
    try:
        version = importlib.metadata.version("unsloth")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return True, f"Unsloth {version}"


def check_unsloth(engine: str, device: str) -> None:
    """Before any teacher request: ``engine="unsloth"`` is refused where it cannot run."""
    if engine != "unsloth":
        return
    ok, why = unsloth_status(device)
    if not ok:
        raise ConfigError(
            f"engine='unsloth' was asked for but {why}. Fix: install Unsloth ({_tested()}) on a machine with a "
            "CUDA GPU, or use engine='auto', 'fast' or 'plain' (same loss, our own kernels).",
            field="engine",
            value=engine,
            fix="use engine='auto' or install Unsloth on a CUDA machine",
        )


def _import_fast_language_model() -> Any:
    try:
        from unsloth import FastLanguageModel
    except Exception as exc:  # Unsloth raises ImportError, RuntimeError or NotImplementedError on conflicts
        raise TrainingError(
            f"Unsloth failed to import ({type(exc).__name__}: {exc}). It pins its own versions; this package was "
            f"tested with {_tested()}. Fix: install those versions, or use engine='fast' (same loss, no Unsloth).",
            field="engine",
            value="unsloth",
            fix=f"pip install {' '.join(f'{k}=={v}' for k, v in TESTED_VERSIONS.items())}",
        ) from None
    return FastLanguageModel


def load_with_unsloth(folder: Path, *, dtype: Any, quantization: str | None, max_length: int) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the HF folder through ``FastLanguageModel.from_pretrained``."""
    fast = _import_fast_language_model()
    model, tokenizer = fast.from_pretrained(
        model_name=str(folder),
        max_seq_length=max_length,
        dtype=dtype,
        load_in_4bit=quantization == "4bit",
        load_in_8bit=quantization == "8bit",
        trust_remote_code=False,
    )
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor for multimodal families
    return model, tokenizer


def attach_lora(model: Any, lora: Any, *, seed: int, gradient_checkpointing: bool) -> Any:
    """Unsloth's own LoRA wrapper (its fused LoRA kernels) with the trainer's LoRA settings."""
    fast = _import_fast_language_model()
    targets = lora.target_modules
    return fast.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=sorted(targets) if isinstance(targets, set | list | tuple) else targets,
        bias="none",
        use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
        random_state=seed,
    )


__all__ = ["TESTED_VERSIONS", "attach_lora", "check_unsloth", "load_with_unsloth", "unsloth_status"]
