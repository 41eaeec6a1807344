"""The GGUF quantization types a student can be exported as: the one list everything else reads.

The run config validates ``quantize`` against it, the export maps each name to llama.cpp's
quantizer constant, the preflight checks (through the export) and the ``%distill export --quantize``
help list it. The llama.cpp constants are kept as names so importing this module loads nothing.
"""

from __future__ import annotations

# name -> llama_cpp constant name, from the largest file to the smallest.
QUANT_TYPES: dict[str, str] = {
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}
QUANTIZE_TYPES: tuple[str, ...] = tuple(QUANT_TYPES)
DEFAULT_QUANTIZE = "q4_k_m"  # a quarter of the f16 size; the usual trade-off for small students


def canonical_quant_name(name: str) -> str:
    """``" Q4-K-M "`` -> ``"q4_k_m"``: case, surrounding spaces and ``-`` for ``_`` do not matter."""
    return name.strip().lower().replace("-", "_")


__all__ = ["DEFAULT_QUANTIZE", "QUANTIZE_TYPES", "QUANT_TYPES", "canonical_quant_name"]
