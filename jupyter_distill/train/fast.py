"""The CUDA fast path for BOND: same loss, same interface, far less work per pair.

:func:`create_engine` is the hook :func:`jupyter_distill.train.choice.select_engine` calls on a
CUDA device. The engine it returns computes exactly the per-sequence statistics of the plain
engine and hands them to the same :func:`~jupyter_distill.train.bond.bond_loss`; what differs is
how they are computed:

1. **Prefix-sharing trees** (:mod:`.packing`): ``[prompt | chosen | rejected]`` in one sequence
   with a tree attention mask, so the prompt runs once per pair, not twice (384 instead of 512
   tokens for 128 + 128 + 128), and short pairs share a row instead of being padded. Models or
   kernels that cannot take a custom mask get the plain two-sequence layout with right padding
   and *no* mask (exact for causal models; lets SDPA pick its flash kernel).
2. **Chunked log-prob and KL** (:mod:`.chunked`): only the hidden states of positions that
   predict response tokens go through ``lm_head``, chunk by chunk, under a custom autograd
   function that saves hidden states, never ``tokens x vocab`` logits.
3. **Reference cached once**: in :meth:`FastEngine.prepare` (adapter disabled, ``no_grad``) the
   reference log-prob sums *and* the reference's final hidden states at chosen positions are
   cached. The KL term then needs no reference forward at all during training: the reference
   distribution is ``softmax(h_ref · Wᵀ)`` through the frozen ``lm_head``. (The plain engine
   re-runs a reference forward of the chosen rows every step for it.)
4. **bf16 autocast over fp32 LoRA master weights**, with PEFT's per-layer input up-casting off
   (it would keep an fp32 copy of every projection input alive for the backward).
5. **torch.compile of each decoder layer** (identical layers share one compiled graph), on CUDA
   only and with an eager fall-back that says why.

When a model has something the fused path does not reproduce exactly (a trained ``lm_head``, logit
soft-capping or scaling, an attention kernel without custom masks and no way round it), the engine
delegates to the plain engine and says so in :attr:`FastEngine.reason`: same results, never silently
different ones. On CPU it runs too (no autocast, no compile) so tests can compare it with the plain
engine on tiny models.

Unsloth: a model loaded through Unsloth (its ``FastLanguageModel`` patches the attention, MLP and
LoRA kernels and compiles the blocks) is detected; the engine then keeps its own steps 2-4, uses the
two-sequence layout (Unsloth's attention builds its own causal masks) and skips its own compile.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.train.bond import bond_loss
from jupyter_distill.train.chunked import segment_sum, token_logp_and_kl
from jupyter_distill.train.engines import PlainEngine, TokenizedPair, model_device, reference_mode
from jupyter_distill.train.packing import (
    PackedBatch,
    flex_tree_block_mask,
    pack_pairs,
    pad_sequences,
    tree_attention_mask,
)
from jupyter_distill.train.quantized import checkpointing_enabled, quantization_of

LAYOUTS = ("auto", "tree", "sequences")
COMPILE_MODES = ("auto", "on", "off")


def unsloth_available() -> tuple[bool, str]:
    """Whether Unsloth is importable (checked without importing it: importing Unsloth patches
    transformers process-wide, which only a model load through it should do).

    The pipeline never loads a student through Unsloth itself; a model the user loaded through
    Unsloth's ``FastLanguageModel`` is detected and trained with its patched forwards."""
    if importlib.util.find_spec("unsloth") is None:
        return False, "Unsloth is not installed (the pipeline does not load students through it)"
    return True, "Unsloth is installed (used for a model you loaded through FastLanguageModel)"


def is_unsloth_model(model: Any) -> bool:
    """True when the model's decoder layers run Unsloth's patched forwards."""
    try:
        backbone, _, _ = _parts(model)
    except TrainingError:
        return False
    layers = getattr(backbone, "layers", None)
    if not layers:
        return False
    layer = layers[0]
    candidates = [type(layer).forward, type(getattr(layer, "self_attn", layer)).forward, type(backbone).forward]
    return any(getattr(f, "__module__", "").startswith("unsloth") for f in candidates)


def create_engine(device: str, **options: Any) -> tuple[FastEngine | None, str]:
    """The hook for :func:`~jupyter_distill.train.choice.select_engine`: ``(engine, reason)``.

    On CUDA it always returns the fast engine (model-specific fall-backs happen in ``prepare``,
    where the model is known, and are written into ``engine.reason``). On CPU it also returns one:
    select_engine asks for it there only under ``engine="fast"`` (tests, reference checks).
    """
    known = {"beta", "gamma", "tau", "pad_token_id", "layout", "compile", "row_tokens", "chunk_size"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TrainingError(
            f"fast engine: unknown option(s) {unknown}; known: {sorted(known)}.",
            field="engine options",
            value=unknown,
            fix="drop the unknown options",
        )
    engine = FastEngine(**options)
    _, unsloth_note = unsloth_available()
    where = (
        f"CUDA fast path on {device}"
        if str(device).startswith("cuda")
        else f"CUDA fast path running on {device} in reference mode (no autocast, no compile)"
    )
    engine.reason = f"{where}: prefix-sharing packing, chunked log-prob/KL, cached reference; {unsloth_note}"
    return engine, engine.reason


def _parts(model: Any) -> tuple[Any, Any, Any]:
    """``(backbone, lm_head, config)`` of a causal LM, through a PEFT wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(base, "base_model_prefix", "model")
    backbone = getattr(base, prefix, None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if backbone is None or head is None:
        raise TrainingError(
            f"fast engine: cannot find the decoder and lm_head of {type(base).__name__}.",
            field="model",
            value=type(base).__name__,
            fix="use engine='plain' for this model",
        )
    return backbone, head, base.config


def _unsupported(model: Any) -> str | None:
    """Why the fused path would not reproduce this model's logits exactly, or None."""
    _, head, config = _parts(model)
    if type(head) is not torch.nn.Linear:
        return f"lm_head is a {type(head).__name__} (a LoRA-targeted or custom head), not a frozen nn.Linear"
    if head.weight.requires_grad:
        return "lm_head is trained, so cached reference hidden states would not give the reference logits"
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling"):
        text_config = getattr(config, "get_text_config", lambda: config)()
        if getattr(text_config, name, None) not in (None, 1, 1.0):
            return f"the model post-processes logits ({name}={getattr(text_config, name)})"
    return None


def sliding_window(model: Any) -> int | None:
    """The attention window of a model with sliding-window layers (Gemma 2/3, Mistral), else None.

    A custom 4-D tree mask replaces the mask transformers builds, sliding window included, so on
    such a model the tree layout would let sliding layers see past their window: the fast path
    then uses the two-sequence layout, where transformers builds its own (sliding) masks.
    """
    _, _, config = _parts(model)
    text = getattr(config, "get_text_config", lambda: config)()
    window = getattr(text, "sliding_window", None)
    if not window:
        return None
    types = getattr(text, "layer_types", None)
    if types is not None:
        return int(window) if "sliding_attention" in types else None
    return int(window) if getattr(text, "use_sliding_window", True) else None


class FastEngine:
    """BOND step engine for CUDA (and CPU in reference mode); see the module docstring."""

    name = "fast"

    def __init__(
        self,
        *,
        beta: float = 0.5,
        gamma: float = 0.1,
        tau: float = 0.1,
        pad_token_id: int = 0,
        layout: str = "auto",
        compile: str = "auto",
        row_tokens: int | None = None,
        chunk_size: int | None = None,
        prepare_batch_size: int = 16,
        ref_cache_device_bytes: int = 2 * 1024**3,
    ):
        if layout not in LAYOUTS:
            raise TrainingError(
                f"fast engine: layout={layout!r} is not one of {LAYOUTS}.",
                field="layout",
                value=layout,
                fix="use 'auto' (trees where the attention takes a custom mask), 'tree' or 'sequences'",
            )
        if compile not in COMPILE_MODES:
            raise TrainingError(
                f"fast engine: compile={compile!r} is not one of {COMPILE_MODES}.",
                field="compile",
                value=compile,
                fix="use 'auto' (compile decoder layers on CUDA), 'on' or 'off'",
            )
        self.beta, self.gamma, self.tau = beta, gamma, tau
        self.pad_token_id = pad_token_id
        self.layout = layout
        self.compile = compile
        self.row_tokens = row_tokens
        self.chunk_size = chunk_size
        self.prepare_batch_size = prepare_batch_size
        self.ref_cache_device_bytes = ref_cache_device_bytes
        self.reason = "fast engine (not prepared yet)"
        self._ref_hidden: dict[int, Tensor] = {}
        self._device_cache_bytes = 0
        self._fallback: PlainEngine | None = None
        self._resolved_layout: str | None = None
        self._compiled = False
        self._model_id: int | None = None
        self._autocast: torch.dtype | None = None

    # ------------------------------------------------------------------ set-up
    def _configure(self, model: Any) -> None:
        """Decide, once per model, between the fused path and the plain fall-back, the layout,
        autocast and compile; record every decision in :attr:`reason`."""
        if self._model_id == id(model):
            return
        self._model_id = id(model)
        why = _unsupported(model)
        if why is not None:
            self._fallback = PlainEngine(beta=self.beta, gamma=self.gamma, tau=self.tau, pad_token_id=self.pad_token_id)
            self.name = self._fallback.name  # so results and the dashboard name the engine that really ran
            self.reason = f"plain PEFT engine: the fast path does not reproduce this model exactly ({why})"
            return
        self._fallback = None
        self.name = type(self).name
        self._autocast = self._autocast_dtype(model)
        _, _, config = _parts(model)
        attn = getattr(config, "_attn_implementation", None) or "eager"
        unsloth = is_unsloth_model(model)
        window = sliding_window(model)
        mask_ok = attn in ("sdpa", "eager", "flex_attention") and not unsloth and window is None
        if self.layout == "tree" and not mask_ok:
            why = (
                f"this model has sliding-window attention (window {window}), which a custom mask would override"
                if window is not None
                else f"this model uses {attn!r}{' patched by Unsloth' if unsloth else ''}"
            )
            raise TrainingError(
                f"fast engine: layout='tree' needs an attention implementation that takes a custom 4-D mask "
                f"(sdpa, eager, flex_attention) and no sliding window; {why}.",
                field="layout",
                value=self.layout,
                fix="use layout='auto' or 'sequences', or load the model with attn_implementation='sdpa'",
            )
        self._resolved_layout = ("tree" if mask_ok else "sequences") if self.layout == "auto" else self.layout
        device = model_device(model)
        why_layout = f"attention {attn}{', Unsloth-patched' if unsloth else ''}"
        if window is not None:
            why_layout += f", sliding window {window} kept by transformers' own masks"
        notes = [
            f"layout={self._resolved_layout} ({why_layout})",
            "chunked log-prob/KL",
            "reference hidden states cached once" if self.gamma > 0 else "reference log-probs cached once",
        ]
        if self._autocast is not None:
            notes.append(f"{str(self._autocast).replace('torch.', '')} autocast over fp32 LoRA weights")
        quantized = quantization_of(model)
        checkpointing = checkpointing_enabled(model)
        want_compile = self.compile == "on" or (
            self.compile == "auto" and device.type == "cuda" and not unsloth and not quantized and not checkpointing
        )
        if want_compile:
            _, note = self._compile_layers(model)
            notes.append(note)
        elif unsloth:
            notes.append("no torch.compile of ours (Unsloth compiled its own blocks)")
        elif self.compile == "auto" and (quantized or checkpointing):
            notes.append(
                "no torch.compile ("
                + " and ".join(
                    [f"{quantized} bitsandbytes layers"] * bool(quantized) + ["gradient checkpointing"] * checkpointing
                )
                + " re-run eagerly)"
            )
        else:
            notes.append(f"no torch.compile (compile={self.compile}, device {device.type})")
        self.reason = f"fast engine on {device}: " + ", ".join(notes)

    def _autocast_dtype(self, model: Any) -> torch.dtype | None:
        """bf16/fp16 autocast when the frozen weights are low precision but LoRA weights are fp32."""
        _, head, _ = _parts(model)
        low = head.weight.dtype in (torch.bfloat16, torch.float16)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if low and trainable and any(p.dtype == torch.float32 for p in trainable):
            return head.weight.dtype
        return None

    def _compile_layers(self, model: Any) -> tuple[bool, str]:
        backbone, _, _ = _parts(model)
        layers = getattr(backbone, "layers", None)
        if not layers:
            return False, "no torch.compile (no .layers list on the decoder)"
        import torch._dynamo as dynamo

        # every layer and the adapter-disabled reference mode are separate guard sets; keep them all
        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 4 * len(layers) + 8)
        dynamo.config.accumulated_cache_size_limit = max(
            dynamo.config.accumulated_cache_size_limit, 8 * len(layers) + 64
        )
        try:
            for layer in layers:
                layer.compile(dynamic=None)
        except Exception as exc:  # compile is an optimisation: never fail training over it
            self._uncompile(model)
            return False, f"torch.compile failed at set-up ({type(exc).__name__}: {exc}); eager layers"
        self._compiled = True
        return True, f"torch.compile of {len(layers)} decoder layers"

    def _uncompile(self, model: Any) -> None:
        backbone, _, _ = _parts(model)
        for layer in getattr(backbone, "layers", []):
            if getattr(layer, "_compiled_call_impl", None) is not None:
                layer._compiled_call_impl = None
        self._compiled = False

    @contextlib.contextmanager
    def _precision(self, model: Any) -> Iterator[None]:
        dtype = self._autocast
        if dtype is None:
            yield
            return
        from peft.helpers import disable_input_dtype_casting

        device_type = model_device(model).type
        with torch.autocast(device_type=device_type, dtype=dtype), disable_input_dtype_casting(model):
            yield

    # ------------------------------------------------------------------ forward
    def _layout(self, examples: Sequence[TokenizedPair]) -> PackedBatch:
        if self._resolved_layout == "tree":
            return pack_pairs(examples, row_tokens=self.row_tokens, pad_token_id=self.pad_token_id)
        return pad_sequences(examples, pad_token_id=self.pad_token_id)

    def _hidden(self, model: Any, batch: PackedBatch) -> Tensor:
        """Final hidden states ``(rows * row_len, H)`` of a packed batch."""
        backbone, _, config = _parts(model)
        kwargs: dict[str, Any] = {
            "input_ids": batch.input_ids,
            "position_ids": batch.position_ids,
            "use_cache": False,
        }
        if self._resolved_layout == "tree":
            attn = getattr(config, "_attn_implementation", None) or "eager"
            if attn == "flex_attention":
                kwargs["attention_mask"] = flex_tree_block_mask(batch.tree_ids, batch.branch_ids)
            else:
                mask = tree_attention_mask(batch.tree_ids, batch.branch_ids)
                if attn == "eager":  # eager attention adds the mask to the scores
                    dtype = _parts(model)[1].weight.dtype
                    mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                        ~mask, torch.finfo(dtype).min
                    )
                kwargs["attention_mask"] = mask
        with self._precision(model):
            out = backbone(**kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden.reshape(-1, hidden.shape[-1])

    def _stats(
        self, model: Any, batch: PackedBatch, ref_hidden: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Per-token ``(logp_chosen, kl_chosen, logp_rejected, chosen_hidden)`` of a packed batch."""
        _, head, _ = _parts(model)
        flat = self._hidden(model, batch)
        chosen_h = flat.index_select(0, batch.chosen_pos)
        logp_c, kl_c = token_logp_and_kl(
            chosen_h, head.weight, batch.chosen_tgt, ref_hidden=ref_hidden, bias=head.bias, chunk_size=self.chunk_size
        )
        if batch.rejected_pos.numel():
            rejected_h = flat.index_select(0, batch.rejected_pos)
            logp_r, _ = token_logp_and_kl(
                rejected_h, head.weight, batch.rejected_tgt, bias=head.bias, chunk_size=self.chunk_size
            )
        else:
            logp_r = logp_c.new_zeros(0)
        return logp_c, kl_c, logp_r, chosen_h

    # ------------------------------------------------------------------ reference cache
    def prepare(self, model: Any, examples: Sequence[TokenizedPair]) -> None:
        """Cache reference log-prob sums on the examples (as the plain engine does) and, when the KL
        term is on, the reference's final hidden states at their chosen positions (in the engine)."""
        self._configure(model)
        if self._fallback is not None:
            self._fallback.prepare(model, examples)
            return
        todo = [e for e in examples if e.needs_reference or (self.gamma > 0 and e.index not in self._ref_hidden)]
        if not todo:
            return
        todo.sort(key=lambda e: len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids or ()))
        was_training = model.training
        model.eval()
        try:
            with reference_mode(model):
                for start in range(0, len(todo), self.prepare_batch_size):
                    self._prepare_chunk(model, todo[start : start + self.prepare_batch_size])
        finally:
            model.train(was_training)

    def _prepare_chunk(self, model: Any, chunk: Sequence[TokenizedPair]) -> None:
        device = model_device(model)
        batch = self._layout(chunk).to(device)
        logp_c, _, logp_r, chosen_h = self._stats(model, batch, None)
        sums_c = segment_sum(logp_c.double(), batch.chosen_pair, batch.n_pairs).tolist()
        sums_r = segment_sum(logp_r.double(), batch.rejected_pair, batch.n_pairs).tolist()
        lengths = batch.chosen_len.tolist()
        pieces = torch.split(chosen_h, lengths) if self.gamma > 0 and chosen_h is not None else ()
        for b, example in enumerate(chunk):
            example.ref_logp_chosen = float(sums_c[b])
            example.ref_logp_rejected = float(sums_r[b]) if example.rejected_ids else None
            if pieces:
                self._store_ref(example.index, pieces[b])

    def _store_ref(self, index: int, hidden: Tensor) -> None:
        """Keep a reference hidden block on the GPU while under budget, else in pinned CPU memory."""
        nbytes = hidden.numel() * hidden.element_size()
        if hidden.device.type != "cpu" and self._device_cache_bytes + nbytes > self.ref_cache_device_bytes:
            cpu = torch.empty(hidden.shape, dtype=hidden.dtype, pin_memory=torch.cuda.is_available())
            cpu.copy_(hidden)
            self._ref_hidden[index] = cpu
            return
        if hidden.device.type != "cpu":
            self._device_cache_bytes += nbytes
        self._ref_hidden[index] = hidden.detach().clone()

    def clear_reference_cache(self) -> None:
        """Drop cached reference hidden states (e.g. after the student or its data changed)."""
        self._ref_hidden.clear()
        self._device_cache_bytes = 0

    # ------------------------------------------------------------------ the step
    def loss(self, model: Any, examples: Sequence[TokenizedPair]) -> tuple[Tensor, dict[str, float]]:
        """The BOND loss of ``examples`` with the same definitions as the plain engine."""
        self._configure(model)
        if self._fallback is not None:
            return self._fallback.loss(model, examples)
        rows = list(examples)
        missing = [e for e in rows if e.needs_reference or (self.gamma > 0 and e.index not in self._ref_hidden)]
        if missing:  # e.g. after a resume: the hidden-state cache is not checkpointed
            self.prepare(model, missing)
        try:
            return self._loss(model, rows)
        except Exception as exc:
            if not self._compiled:
                raise
            # a compiled graph that fails at its first real call: fall back to eager, once, and say so
            self._uncompile(model)
            self.reason += f"; torch.compile failed at the first step ({type(exc).__name__}: {exc}), now eager"
            return self._loss(model, rows)

    def _loss(self, model: Any, rows: list[TokenizedPair]) -> tuple[Tensor, dict[str, float]]:
        device = model_device(model)
        batch = self._layout(rows).to(device)
        ref_hidden = None
        if self.gamma > 0:
            ref_hidden = torch.cat([self._ref_hidden[e.index].to(device, non_blocking=True) for e in rows])
        logp_c, kl_c, logp_r, _ = self._stats(model, batch, ref_hidden)
        n = batch.n_pairs
        chosen_len = batch.chosen_len.to(logp_c.dtype)
        logp_chosen = segment_sum(logp_c, batch.chosen_pair, n)
        logp_rejected = segment_sum(logp_r, batch.rejected_pair, n)
        kl_chosen = segment_sum(kl_c, batch.chosen_pair, n) / chosen_len
        ref_c = torch.tensor([e.ref_logp_chosen for e in rows], dtype=logp_c.dtype, device=device)
        ref_r = torch.tensor(
            [e.ref_logp_rejected if e.rejected_ids else 0.0 for e in rows], dtype=logp_c.dtype, device=device
        )
        loss, parts = bond_loss(
            -logp_chosen / chosen_len,
            logp_chosen,
            ref_c,
            logp_rejected,
            ref_r,
            kl_chosen,
            batch.has_rejected,
            beta=self.beta,
            gamma=self.gamma,
            tau=self.tau,
        )
        metrics = {name: float(value) for name, value in parts.items()}
        if self.gamma == 0:
            metrics.pop("kl")
        equivalent = sum(
            2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids)
            if e.rejected_ids
            else len(e.prompt_ids) + len(e.chosen_ids)
            for e in rows
        )
        metrics["tokens"] = float(equivalent)  # same definition as the plain engine: tokens/s compare
        metrics["tokens_computed"] = float(batch.real_tokens)
        metrics["pad_fraction"] = 1.0 - batch.real_tokens / batch.padded_tokens
        return loss, metrics


__all__ = ["COMPILE_MODES", "LAYOUTS", "FastEngine", "create_engine", "is_unsloth_model", "unsloth_available"]
