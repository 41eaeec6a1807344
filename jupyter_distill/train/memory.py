"""Peak training memory from a student's shape, its quantization and the step's token counts.

Why a model and not a probe: :func:`jupyter_distill.pipeline.estimate` must answer before anything is
loaded (a user picks the student and the quantization from it), so the figure comes from the
shape alone. Each term is what the step really keeps alive:

- **weights** (and CUDA's own working memory): the decoder's projections at 0.5 + 1/64 +
  1/16384 bytes a parameter in NF4 with double quantization (4-bit codes, one 8-bit absmax per
  64 weights, one fp32 absmax per 256 blocks), 1 byte in LLM.int8, else 2 (bf16) or 4 (fp32);
  embeddings and an untied ``lm_head`` are never quantized.
- **LoRA**: fp32 weights, gradients and AdamW's two moments, 16 bytes a trainable parameter.
- **activations**: what autograd saves per token and decoder layer (norm inputs and outputs,
  q/k/v, the attention output, the MLP's gate, up, activation and product), or with gradient
  checkpointing only each layer's input plus one layer recomputed.
- **logits**: the plain engine materialises ``tokens x vocab`` logits (bf16, their fp32
  log-softmax and its gradient) and the reference's for the KL term; the fast engine pushes
  ``chunk`` positions at a time through ``lm_head``.

The constants are checked against measured peaks by ``benchmarks/train_gpu.py --groups memory``
(the table in ``docs/benchmarks.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from jupyter_distill.core.models import ModelShape
from jupyter_distill.train.chunked import default_chunk_size

#: Bytes a parameter of the decoder's projections takes when loaded with each quantization.
WEIGHT_BYTES: dict[str, float] = {"4bit": 0.5 + 1 / 64 + 4 / (64 * 256), "8bit": 1.0}

#: Saved activations per token and layer, in elements: ``H*hidden + KV*kv_width + F*ffn``.
ACT_HIDDEN, ACT_KV, ACT_FFN = 8.0, 2.0, 4.0

#: What autograd really keeps of that count without checkpointing: eager layers save a few
#: intermediates more (x1.11), layers compiled by the fast engine fuse the norms and the MLP's
#: elementwise product and save fewer (x0.88). Both measured at the 1.05B and 8B shapes on an
#: H200 (``docs/benchmarks.md``).
EAGER_SAVED, COMPILED_SAVED = 1.11, 0.88

#: CUDA's own working memory on top (cuBLAS workspaces, allocator rounding), in bytes.
CUDA_OVERHEAD = 100_000_000

#: fp32 logits blocks live at once inside one chunk of the fast engine's ``lm_head`` pass
#: (logits, their log-softmax and the reference's), each of ``DEFAULT_CHUNK_ELEMENTS`` numbers.
FAST_LIVE_BLOCKS = 3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by what holds them; ``total`` is the predicted peak of one training step."""

    weights: int
    lora: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.activations + self.logits

    def to_dict(self) -> dict[str, float]:
        return {**{k: round(v / 1e9, 3) for k, v in asdict(self).items()}, "total": round(self.total / 1e9, 3)}


def lora_params(shape: ModelShape, rank: int) -> int:
    """Trainable parameters of rank-``rank`` LoRA on all seven projections of every layer."""
    q = shape.heads * shape.head_size
    kv = shape.kv_heads * shape.head_size
    per_layer = (shape.hidden + q) * 2 + (shape.hidden + kv) * 2 + 3 * (shape.hidden + shape.ffn)
    return shape.layers * rank * per_layer


def training_peak(
    shape: ModelShape,
    *,
    quantization: str | None,
    cuda: bool,
    engine: str,
    batch_size: int,
    prompt_tokens: float,
    response_tokens: float,
    lora_rank: int = 16,
    gradient_checkpointing: bool = False,
    compiled: bool | None = None,
) -> MemoryEstimate:
    """The predicted peak of one BOND step of ``batch_size`` pairs (chosen and rejected each
    ``response_tokens`` long after a ``prompt_tokens`` prompt) on ``engine`` (``fast``/``plain``).

    ``compiled``: whether the fast engine compiles its layers; by default it does on CUDA for a
    full-precision student without gradient checkpointing, as :class:`~.fast.FastEngine` decides.
    """
    if compiled is None:
        compiled = engine == "fast" and cuda and quantization is None and not gradient_checkpointing
    element = 2 if cuda else 4  # bf16 on GPUs, fp32 on CPU
    per_weight = WEIGHT_BYTES.get(quantization or "", float(element))
    weights = shape.linear_params * per_weight + shape.embedding_params * element + (CUDA_OVERHEAD if cuda else 0)
    lora = lora_params(shape, lora_rank) * 16

    # the fast engine runs the prompt once per pair; the plain engine twice (chosen and rejected rows)
    prompts = 1 if engine == "fast" else 2
    tokens = batch_size * (prompts * prompt_tokens + 2 * response_tokens)
    kv = shape.kv_heads * shape.head_size
    per_token_layer = (ACT_HIDDEN * shape.hidden + ACT_KV * kv + ACT_FFN * shape.ffn) * element
    if gradient_checkpointing:
        activations = tokens * (shape.layers * shape.hidden * element + per_token_layer)
    else:
        activations = tokens * shape.layers * per_token_layer * (COMPILED_SAVED if compiled else EAGER_SAVED)

    response = batch_size * 2 * response_tokens
    if engine == "fast":
        chunk = min(response, default_chunk_size(shape.vocab))
        logits = FAST_LIVE_BLOCKS * chunk * shape.vocab * 4
    else:
        # policy logits + fp32 log-softmax + its gradient, and the reference's chosen logits for KL
        logits = response * shape.vocab * (element + 4 + 4) + (response / 2) * shape.vocab * 4
    return MemoryEstimate(int(weights), int(lora), int(activations), int(logits))


__all__ = [
    "COMPILED_SAVED",
    "CUDA_OVERHEAD",
    "EAGER_SAVED",
    "FAST_LIVE_BLOCKS",
    "WEIGHT_BYTES",
    "MemoryEstimate",
    "lora_params",
    "training_peak",
]
