"""Loading a student in 4 or 8 bits (bitsandbytes) for QLoRA, and what that changes for training.

Why this exists: an 8B student in bf16 needs 16 GB for its weights alone, before LoRA states,
activations and logits, so it does not train on a 24 GB card; in NF4 with double quantization the
decoder's linear weights take about 0.52 bytes per parameter and the same student fits. Only the
frozen base is quantized: LoRA weights stay fp32 (PEFT's default) and are trained with the same
BOND loss by the same engines, and export merges the adapter into the full-precision weights the
student was loaded from (never into the dequantized 4-bit copy).

What this module deliberately does differently from ``peft.prepare_model_for_kbit_training``: it
does not up-cast the non-quantized weights (embeddings, norms, ``lm_head``) to fp32. At the 8B
shape (128k vocabulary, 4096 hidden) that up-cast alone adds about 2 GB, and the engines already
run bf16 autocast over fp32 LoRA weights, which is the same arithmetic the bf16 path uses.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

from jupyter_distill.core.errors import ConfigError
from jupyter_distill.core.models import STUDENT_QUANTIZATIONS, student_quantization

#: What ``quantization`` accepts; ``None`` loads the student in its training dtype.
QUANTIZATIONS = STUDENT_QUANTIZATIONS

#: The bitsandbytes release the package is tested with (``jupyter-distill[qlora]`` installs it).
BITSANDBYTES_VERSION = "0.50.2"


def normalise_quantization(value: Any) -> str | None:
    """``None``/``"none"``/``False`` -> ``None``; ``"4bit"``/``"8bit"`` (any case) as themselves."""
    found = student_quantization(value)
    if found is not False:
        return found  # type: ignore[return-value]
    raise ConfigError(
        f"unknown quantization {value!r}. Fix: use '4bit' (NF4, double quantization), '8bit' (LLM.int8) or None.",
        field="quantization",
        value=value,
        fix="use '4bit', '8bit' or None",
    )


def bitsandbytes_status() -> tuple[bool, str]:
    """Whether bitsandbytes is installed, and its version or how to install it."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return False, (
            "bitsandbytes is not installed. Fix: pip install 'jupyter-distill[qlora]' "
            f"(bitsandbytes=={BITSANDBYTES_VERSION}), or set quantization=None."
        )
    try:
        version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return True, f"bitsandbytes {version}"


def check_quantization(quantization: str | None, device: str) -> None:
    """Before any teacher request: the quantization can be loaded on ``device``.

    ``8bit`` (LLM.int8) has CUDA kernels only; ``4bit`` also runs on CPU through bitsandbytes'
    CPU backend (slow, but it is how the path is tested without a GPU).
    """
    if quantization is None:
        return
    ok, note = bitsandbytes_status()
    if not ok:
        raise ConfigError(
            f"quantization={quantization!r} needs bitsandbytes: {note}",
            field="quantization",
            value=quantization,
            fix="pip install 'jupyter-distill[qlora]' or set quantization=None",
        )
    if quantization == "8bit" and not str(device).startswith("cuda"):
        raise ConfigError(
            f"quantization='8bit' needs a CUDA device (bitsandbytes' LLM.int8 kernels), and training runs on "
            f"{device!r}. Fix: use quantization='4bit' (it also runs on CPU) or None, or train on a CUDA device.",
            field="quantization",
            value=quantization,
            fix="use quantization='4bit' or None on CPU",
        )


def quantization_config(quantization: str | None, compute_dtype: Any) -> Any:
    """The transformers ``BitsAndBytesConfig`` for ``quantization`` (``None`` for full precision).

    4-bit: NF4 with double quantization (the QLoRA recipe), computing in ``compute_dtype`` (bf16 on
    GPUs that have it). ``lm_head`` is never quantized: the loss's log-probabilities come from it.
    """
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage="uint8",
            llm_int8_skip_modules=["lm_head"],
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"])


def quantization_of(model: Any) -> str | None:
    """``"4bit"``/``"8bit"`` when ``model`` (or the base under a PEFT wrapper) was loaded quantized."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_loaded_in_4bit", False):
        return "4bit"
    if getattr(base, "is_loaded_in_8bit", False):
        return "8bit"
    return None


def keep_differentiable_on_cpu(model: Any) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference; returns the layers changed.

    On a CPU with AVX512-BF16, a ``Linear4bit`` that runs once in eval mode without gradients
    (the reference pass, a held-out evaluation) repacks its weight for a faster inference kernel
    for good, and that kernel has no backward: every later training step then drops the gradient
    through the frozen base layers. Measured on a tiny Llama: LoRA gradients 0.80 (relative L2)
    away from the same model with the dequantized weights in fp32; with this switch off, they agree
    to float precision (``tests/test_quantized.py``). Training and evaluation then both use the
    differentiable kernel. GPUs never take that path.
    """
    changed = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def prepare_for_lora(model: Any, gradient_checkpointing: bool) -> Any:
    """Freeze the quantized base and, when asked, recompute activations in the backward pass.

    Gradient checkpointing trades about a third more compute for keeping only each decoder
    layer's input alive; with it an 8B student's activations at 16 pairs of 384 tokens drop from
    tens of GB to about one. ``enable_input_require_grads`` makes the embedding output require
    grad, which non-reentrant checkpointing needs when every base weight is frozen.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        # transformers 5.2x renamed it; the GPU images still ship releases with only the old name
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    return model


def checkpointing_enabled(model: Any) -> bool:
    """Whether ``model`` (or the base under a PEFT wrapper) recomputes activations in backward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # new name first: no warning
        if hasattr(type(base), name):
            return bool(getattr(base, name))
    return False


__all__ = [
    "BITSANDBYTES_VERSION",
    "QUANTIZATIONS",
    "bitsandbytes_status",
    "check_quantization",
    "checkpointing_enabled",
    "keep_differentiable_on_cpu",
    "normalise_quantization",
    "prepare_for_lora",
    "quantization_config",
    "quantization_of",
]
