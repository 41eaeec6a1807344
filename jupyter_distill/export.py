"""Export a trained student: merge LoRA -> HF folder -> GGUF f16 -> quantize -> check -> model card.

Why a converter of our own: the popular training tools clone and compile llama.cpp at export
time, which fails offline, without a compiler, or on a locked-down machine. Everything here runs
on installed Python packages: transformers + PEFT merge the adapter, the ``gguf`` package writes
the file (our own tensor-name map, llama q/k permutation and tokenizer metadata), and
``llama_cpp.llama_model_quantize`` from llama-cpp-python quantizes it. Afterwards the GGUF is
loaded back through llama.cpp and its greedy next-token predictions are compared with the merged
HF model, because a converter bug (wrong permutation, wrong pre-tokenizer, wrong rope) shows up as
fluent nonsense, not as an error.

Supported: the llama family (SmolLM2, Llama 3.x, with ``llama3``/``linear`` rope scaling) and
Qwen2/Qwen3 with byte-level BPE tokenizers. Anything else raises ``ExportError`` naming it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jupyter_distill.errors import ExportError
from jupyter_distill.events import Event, no_emit
from jupyter_distill.hashing import file_sha256

# name -> llama_cpp constant name; resolved lazily so importing this module stays cheap.
QUANT_TYPES: dict[str, str] = {
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
MIN_F16_AGREEMENT = 0.95
MAX_CHECK_PROMPTS = 16  # held-out prompts taken from the run store when none are given

DEFAULT_CHECK_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash table is in one sentence.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish.",
    "Classify the sentiment: 'I loved this film!'",
    'Return a JSON object with keys "name" and "age".',
    "Summarise: The meeting was moved from Monday to Wednesday at 3pm.",
)

# Byte-level BPE pre-tokenizer regexes as they appear in tokenizer.json `Split` patterns, and the
# llama.cpp pre-tokenizer that reproduces each. They differ only in how digits are grouped.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3_REGEX = _CONTRACTIONS + r"\p{N}{1,3}|" + _REST  # digits in runs of up to three
_QWEN2_REGEX = _CONTRACTIONS + r"\p{N}|" + _REST  # every digit alone

# GGUF token types (llama.cpp's llama_token_type).
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED = 1, 3, 4, 5


class ExportStopped(ExportError):
    """``stop`` was set during an export: nothing of it was registered in the run store."""


@dataclass
class ExportResult:
    """What :func:`export_gguf` produced; paths are absolute."""

    gguf: Path  # the quantized file (the f16 one when quantize="f16")
    f16_gguf: Path
    merged_dir: Path
    agreement: dict[str, float]  # quant type -> greedy next-token agreement with the merged HF model
    sha256: dict[str, str]  # artifact kind -> sha256 of the file
    quantize: str = "q4_k_m"
    files: dict[str, Path] = field(default_factory=dict)  # artifact kind -> path (incl. card, extra quants)
    card: Path | None = None
    adapter_dir: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)  # tokenizer match, positions checked, timings

    def to_dict(self) -> dict[str, Any]:
        return {
            "gguf": str(self.gguf),
            "f16_gguf": str(self.f16_gguf),
            "merged_dir": str(self.merged_dir),
            "agreement": dict(self.agreement),
            "sha256": dict(self.sha256),
            "quantize": self.quantize,
            "files": {k: str(v) for k, v in self.files.items()},
            "card": str(self.card) if self.card else None,
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
            "details": self.details,
        }


# ---------------------------------------------------------------------------------------- quantize
def validate_quantize(quantize: str | None) -> str:
    """Normalise a quantization name; ``None`` means "f16 only". Raises before any work is done."""
    if quantize is None:
        return "f16"
    name = str(quantize).strip().lower().replace("-", "_")
    if name not in QUANT_TYPES:
        raise ExportError(
            f"unknown quantization type {quantize!r}. Valid: {', '.join(QUANT_TYPES)}. "
            "Fix: pass one of them (q4_k_m is a good default), or quantize=None to skip GGUF export.",
            field="quantize",
            value=quantize,
            fix="use one of " + ", ".join(QUANT_TYPES),
        )
    return name


def quantize_gguf(src: str | Path, dst: str | Path, quantize: str, *, nthread: int | None = None) -> Path:
    """Quantize an f16 GGUF with llama.cpp's own quantizer (no compiler: it is in llama-cpp-python).

    Rows whose width is not a multiple of 256 fall back to q5_0/q8_0 inside k-quant types; llama.cpp
    logs that and it is expected for small models.
    """
    import llama_cpp

    name = validate_quantize(quantize)
    src, dst = Path(src), Path(dst)
    if name == "f16":
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        return dst
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[name])
    params.nthread = nthread or max(1, os.cpu_count() or 1)
    tmp = dst.with_name(f".{dst.name}.tmp")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ExportError(
            f"llama.cpp failed to quantize {str(src)!r} to {name} (return code {rc}). "
            "Fix: check that the f16 GGUF loads (re-export it) and that the disk has space.",
            field="quantize",
            value=name,
        )
    os.replace(tmp, dst)
    return dst


# ---------------------------------------------------------------------------------------- merge
def _is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    )


def _adapter_base(adapter_dir: Path, base_folder: str | Path | None) -> Path:
    """The local base folder of an adapter: ``base_folder`` or the one the adapter names."""
    if base_folder is not None:
        base = Path(base_folder).expanduser().resolve()
        if not _is_hf_dir(base):
            raise ExportError(
                f"base_folder {str(base)!r} is not an HF model folder (config.json + *.safetensors). "
                "Fix: pass the folder the adapter was trained on.",
                field="base_folder",
                value=str(base),
            )
        return base
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    named = cfg.get("base_model_name_or_path")
    if named and _is_hf_dir(Path(named).expanduser()):
        return Path(named).expanduser().resolve()
    raise ExportError(
        f"the adapter in {str(adapter_dir)!r} names base model {named!r}, which is not a local HF folder. "
        "Fix: pass base_folder=<the local folder the adapter was trained on> (no network at export time).",
        field="base_folder",
        value=named,
    )


def _copy_tokenizer(sources: Sequence[Path], dest: Path) -> None:
    """Save the tokenizer of the first source that has one (the adapter's wins: it was trained with it)."""
    from transformers import AutoTokenizer

    for src in sources:
        if (src / "tokenizer.json").is_file() or (src / "tokenizer_config.json").is_file():
            AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dest))
            return
    raise ExportError(
        f"no tokenizer found in {', '.join(map(str, sources))}. Fix: save the tokenizer next to the adapter "
        "or the base model (tokenizer.save_pretrained(folder)).",
        field="tokenizer",
        value=[str(s) for s in sources],
    )


def merge_lora(adapter_dir: str | Path, out_dir: str | Path, *, base_folder: str | Path | None = None) -> Path:
    """Merge a PEFT adapter into its base model and save a plain HF folder (safetensors).

    Idempotent: a finished merge records the adapter's hash and base path, and an identical
    request returns the existing folder. Written to a temp folder and renamed, so a crash never
    leaves a half-written merged model that a later run would trust.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = Path(adapter_dir).resolve()
    out_dir = Path(out_dir).resolve()
    base = _adapter_base(adapter_dir, base_folder)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ExportError(
            f"{str(adapter_dir)!r} has no adapter_model.safetensors (pickle .bin adapters are not loaded). "
            "Fix: save the adapter with safe_serialization=True.",
            field="adapter_dir",
            value=str(adapter_dir),
        )
    source = {"adapter_sha256": file_sha256(weights), "base": str(base)}
    marker = out_dir / "jupyter_distill_merge.json"
    if marker.is_file() and _is_hf_dir(out_dir):
        try:
            if json.loads(marker.read_text()) == source:
                return out_dir
        except json.JSONDecodeError:
            pass
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, trust_remote_code=False)
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(tmp), safe_serialization=True)
    del model, merged
    _copy_tokenizer([adapter_dir, base], tmp)
    (tmp / "jupyter_distill_merge.json").write_text(json.dumps(source, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def _prepare_merged(
    model_or_path: Any, work: Path, base_folder: str | Path | None, tokenizer: Any
) -> tuple[Path, Path | None]:
    """Turn whatever the caller has into (merged HF folder, adapter folder or None)."""
    if isinstance(model_or_path, str | Path):
        path = Path(model_or_path).expanduser().resolve()
        if _is_adapter_dir(path):
            return merge_lora(path, work / "merged", base_folder=base_folder), path
        if _is_hf_dir(path):
            return path, None
        raise ExportError(
            f"{str(path)!r} is neither a PEFT adapter folder (adapter_config.json) nor an HF model folder "
            "(config.json + *.safetensors). Fix: pass the adapter folder the trainer wrote, or a merged model.",
            field="merged_or_adapter",
            value=str(path),
        )
    # In-memory models: a PeftModel is saved as an adapter and merged from a fresh base copy, so
    # the caller's (possibly still training) model is never mutated by merge_and_unload().
    if hasattr(model_or_path, "peft_config") and hasattr(model_or_path, "save_pretrained"):
        adapter_dir = work / "adapter"
        shutil.rmtree(adapter_dir, ignore_errors=True)
        model_or_path.save_pretrained(str(adapter_dir), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(adapter_dir))
        if base_folder is None:
            cfg = next(iter(model_or_path.peft_config.values()))
            base_folder = cfg.base_model_name_or_path
            cfg_path = adapter_dir / "adapter_config.json"
            data = json.loads(cfg_path.read_text())
            data["base_model_name_or_path"] = base_folder
            cfg_path.write_text(json.dumps(data, indent=2))
        return merge_lora(adapter_dir, work / "merged", base_folder=base_folder), adapter_dir
    if hasattr(model_or_path, "save_pretrained") and hasattr(model_or_path, "config"):
        merged = work / "merged"
        shutil.rmtree(merged, ignore_errors=True)
        model_or_path.save_pretrained(str(merged), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(merged))
        else:
            sources = [Path(base_folder)] if base_folder else []
            name = getattr(model_or_path.config, "_name_or_path", "")
            if name and Path(name).is_dir():
                sources.append(Path(name))
            _copy_tokenizer(sources, merged)
        return merged, None
    raise ExportError(
        f"cannot export an object of type {type(model_or_path).__name__}. Fix: pass an adapter folder, an HF "
        "model folder, a PeftModel or a transformers model.",
        field="merged_or_adapter",
        value=type(model_or_path).__name__,
    )


# ---------------------------------------------------------------------------------------- HF -> GGUF
def _rope_theta(config: dict[str, Any]) -> float:
    params = config.get("rope_parameters") or {}
    return float(params.get("rope_theta") or config.get("rope_theta") or 10000.0)


def _rope_scaling(config: dict[str, Any]) -> dict[str, Any] | None:
    """The rope scaling block (transformers 5 `rope_parameters`, 4.x `rope_scaling`), None for plain rope."""
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or None
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "default":
        return None
    return {**scaling, "rope_type": kind}


def llama3_rope_factors(config: dict[str, Any], head_dim: int) -> np.ndarray:
    """Per-frequency divisors for Llama 3.1+ rope scaling (llama.cpp's ``rope_freqs`` tensor).

    Llama 3.1 scales long wavelengths by ``factor``, keeps short ones, and blends in between.
    llama.cpp divides each rotation frequency by the stored factor, so the tensor holds
    ``inv_freq_original / inv_freq_scaled`` per frequency pair.
    """
    scaling = _rope_scaling(config) or {}
    base = _rope_theta(config)
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    smooth = (old_ctx / wavelen - low) / (high - low)
    scale = np.where(
        wavelen < high_wavelen,
        1.0,
        np.where(wavelen > low_wavelen, 1.0 / factor, (1 - smooth) / factor + smooth),
    )
    return (1.0 / scale).astype(np.float32)


def _permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores q/k rows as [first halves | second halves] per head (rotate-half rope); llama.cpp's
    llama architecture rotates interleaved pairs. Reorder rows so pair i is (row i, row i + d/2)."""
    rows = w.shape[0]
    head = rows // n_head
    return w.reshape(n_head, 2, head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_tensor_name(hf_name: str) -> str | None:
    """GGUF name of an HF tensor; None for buffers we drop; raises for anything unknown."""
    if hf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[hf_name]
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    parts = hf_name.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        rest = ".".join(parts[3:])
        if rest in _LAYER_MAP:
            return f"blk.{parts[2]}.{_LAYER_MAP[rest]}"
    raise ExportError(
        f"tensor {hf_name!r} has no GGUF mapping for the supported architectures {SUPPORTED_ARCHITECTURES}. "
        "Fix: export a plain llama/qwen2/qwen3 checkpoint (no extra heads or custom modules).",
        field="tensor",
        value=hf_name,
    )


def check_exportable(architecture: str | None, quantize: str | None) -> None:
    """Raise ``ExportError`` unless a model of ``architecture`` (its config.json ``model_type``)
    can be written as a GGUF and quantized to ``quantize`` here; ``quantize=None`` exports nothing.

    The pipeline calls this before the first teacher request, so a student that could never be
    exported is refused before any money is spent, not after training.
    """
    if quantize is None:
        return
    validate_quantize(quantize)
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ExportError(
            f"architecture {architecture!r} cannot be exported to GGUF here (quantize={quantize!r}). "
            f"Supported: {', '.join(SUPPORTED_ARCHITECTURES)}. Fix: pick a student of a supported family, pass "
            "quantize=None to keep the trained LoRA adapter without GGUF export, or convert the merged model "
            "with llama.cpp's own converter.",
            field="architecture",
            value=architecture,
            fix="use a llama/qwen2/qwen3 student or quantize=None",
        )


def _read_config(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text())
    arch = config.get("model_type")
    try:
        check_exportable(arch, "f16")
    except ExportError as exc:
        raise ExportError(
            f"{exc} (config.json model_type in {str(folder)!r})", field=exc.field, value=exc.value, fix=exc.fix
        ) from None
    return config


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp pre-tokenizer reproducing a tokenizer.json byte-level pre-tokenizer."""

    def flatten(node: dict[str, Any] | None) -> list[dict[str, Any]]:
        if not node:
            return []
        if node.get("type") == "Sequence":
            return [p for child in node.get("pretokenizers", []) for p in flatten(child)]
        return [node]

    steps = flatten(pre)
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # GPT-2 regex with every digit split off (SmolLM, StarCoder)
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = steps[0].get("pattern", {})
        regex = pattern.get("Regex") or pattern.get("String")
        if regex == _LLAMA3_REGEX:
            return "llama-bpe"
        if regex == _QWEN2_REGEX:
            return "qwen2"
    raise ExportError(
        f"the tokenizer's pre-tokenizer {json.dumps(pre)[:300]} is not one llama.cpp is known to reproduce here "
        "(supported: GPT-2 byte-level, SmolLM digit split, Llama 3 and Qwen2 regex). Fix: use a student with a "
        "supported tokenizer.",
        field="tokenizer.pre_tokenizer",
        value=kinds,
    )


def _tokenizer_metadata(folder: Path, vocab_size: int, config: dict[str, Any]) -> dict[str, Any]:
    """Tokens, merges, token types, special ids and chat template for the GGUF header."""
    from transformers import AutoTokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportError(
            f"{str(folder)!r} has no tokenizer.json; only byte-level BPE tokenizers (tokenizer.json) are exported. "
            "Fix: save the fast tokenizer with the model (tokenizer.save_pretrained(folder)).",
            field="tokenizer",
            value=str(folder),
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ExportError(
            f"tokenizer model type {model.get('type')!r} (byte_fallback={model.get('byte_fallback')}) is not "
            "byte-level BPE. Fix: use a student with a GPT-2 style BPE tokenizer (SmolLM2, Llama 3, Qwen).",
            field="tokenizer.model",
            value=model.get("type"),
        )
    pre = _pre_tokenizer_name(data.get("pre_tokenizer"))
    id_to_token: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    types: dict[int, int] = {}
    for added in data.get("added_tokens", []):
        id_to_token[int(added["id"])] = added["content"]
        types[int(added["id"])] = _TOKEN_CONTROL if added.get("special") else _TOKEN_USER_DEFINED
    if id_to_token and max(id_to_token) >= vocab_size:
        raise ExportError(
            f"the tokenizer has token id {max(id_to_token)} but the model's vocab_size is {vocab_size}. "
            "Fix: resize the model's embeddings to the tokenizer (model.resize_token_embeddings(len(tokenizer))).",
            field="vocab_size",
            value=vocab_size,
        )
    tokens, token_types = [], []
    for i in range(vocab_size):
        if i in id_to_token:
            tokens.append(id_to_token[i])
            token_types.append(types.get(i, _TOKEN_NORMAL))
        else:  # embedding rows past the tokenizer (Qwen pads to a multiple of 128)
            tokens.append(f"[PAD{i}]")
            token_types.append(_TOKEN_UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    tok = AutoTokenizer.from_pretrained(str(folder))
    probe = tok("hello")["input_ids"]

    def token_id(attr: str, fallback_key: str) -> int | None:
        value = getattr(tok, attr, None)
        if value is None:
            value = config.get(fallback_key)
        if isinstance(value, list):
            value = value[0] if value else None
        return int(value) if value is not None else None

    bos = token_id("bos_token_id", "bos_token_id")
    return {
        "pre": pre,
        "tokens": tokens,
        "token_types": token_types,
        "merges": merges,
        "bos": bos,
        "eos": token_id("eos_token_id", "eos_token_id"),
        "unk": token_id("unk_token_id", "unk_token_id"),
        "pad": token_id("pad_token_id", "pad_token_id"),
        "add_bos": bool(bos is not None and probe and probe[0] == bos),
        "chat_template": tok.chat_template if isinstance(tok.chat_template, str) else None,
    }


def write_gguf(
    hf_folder: str | Path,
    out_path: str | Path,
    *,
    outtype: str = "f16",
    name: str | None = None,
    license: str | None = None,
) -> Path:
    """Write an HF folder (llama/qwen2/qwen3, safetensors, BPE tokenizer) as a GGUF file.

    Tensors stream one at a time from the safetensors files into the output, so memory stays at
    one tensor, not the whole model. 2-D weights are stored as ``outtype`` (f16 or f32); norms,
    biases and rope factors stay f32 as llama.cpp expects.
    """
    import gguf
    from safetensors import safe_open

    folder = Path(hf_folder).resolve()
    out_path = Path(out_path)
    if outtype not in ("f16", "f32"):
        raise ExportError(
            f"outtype {outtype!r} is not a GGUF base type. Fix: use 'f16' (or 'f32'); quantize afterwards.",
            field="outtype",
            value=outtype,
        )
    config = _read_config(folder)
    arch = config["model_type"]
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    vocab_size = int(config["vocab_size"])
    scaling = _rope_scaling(config)
    if scaling and scaling["rope_type"] not in ("llama3", "linear"):
        raise ExportError(
            f"rope scaling type {scaling['rope_type']!r} is not exported. Supported: default, linear, llama3. "
            "Fix: export a model without that rope scaling.",
            field="rope_scaling",
            value=scaling["rope_type"],
        )
    if config.get("mlp_bias"):
        raise ExportError(
            "mlp_bias=True llama models are not exported (llama.cpp's llama graph has no FFN biases). "
            "Fix: export a model without MLP biases.",
            field="mlp_bias",
            value=True,
        )
    vocab = _tokenizer_metadata(folder, vocab_size, config)

    files = sorted(folder.glob("*.safetensors"))
    handles = [safe_open(str(f), framework="pt") for f in files]
    where: dict[str, Any] = {}
    for handle in handles:
        for key in handle.keys():  # noqa: SIM118 (safe_open handles are not dicts)
            where[key] = handle
    tied = bool(config.get("tie_word_embeddings", False))
    plan: list[tuple[str, str]] = []  # (hf name, gguf name)
    for key in sorted(where):
        target = gguf_tensor_name(key)
        if target is None or (tied and target == "output.weight"):
            continue
        plan.append((key, target))

    def load(hf_name: str, target: str) -> np.ndarray:
        tensor = where[hf_name].get_tensor(hf_name).float().numpy()
        if arch == "llama" and target.endswith(("attn_q.weight", "attn_q.bias")):
            tensor = _permute_rotary(tensor, n_head)
        elif arch == "llama" and target.endswith(("attn_k.weight", "attn_k.bias")):
            tensor = _permute_rotary(tensor, n_kv)
        if tensor.ndim >= 2 and outtype == "f16":
            return tensor.astype(np.float16)
        return tensor.astype(np.float32)

    tmp = out_path.with_name(f".{out_path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type("model")
    writer.add_name(name or config.get("_name_or_path") or folder.name)
    if license:
        writer.add_license(license)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(vocab_size)
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    extra_tensors: list[tuple[str, np.ndarray]] = []
    if scaling and scaling["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif scaling and scaling["rope_type"] == "llama3":
        extra_tensors.append(("rope_freqs.weight", llama3_rope_factors(config, head_dim)))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["token_types"])
    writer.add_token_merges(vocab["merges"])
    for key, adder in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
    ):
        if vocab[key] is not None:
            adder(vocab[key])
    writer.add_add_bos_token(vocab["add_bos"])
    writer.add_add_eos_token(False)
    if vocab["chat_template"]:
        writer.add_chat_template(vocab["chat_template"])

    # Two passes: shapes first (header), then data one tensor at a time.
    for hf_name, target in plan:
        shape = list(where[hf_name].get_slice(hf_name).get_shape())
        dtype = np.float16 if (len(shape) >= 2 and outtype == "f16") else np.float32
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(target, shape, np.dtype(dtype), nbytes)
    for target, array in extra_tensors:
        writer.add_tensor_info(target, list(array.shape), array.dtype, array.nbytes)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for hf_name, target in plan:
            writer.write_tensor_data(load(hf_name, target))
        for _, array in extra_tensors:
            writer.write_tensor_data(array)
    finally:
        writer.close()
    os.replace(tmp, out_path)
    return out_path


# ---------------------------------------------------------------------------------------- agreement
def _render_prompts(tokenizer: Any, prompts: Sequence[Any]) -> list[list[int]]:
    """Token ids of each prompt as the student sees it (chat template when it has one)."""
    out = []
    for prompt in prompts:
        messages = getattr(prompt, "messages", prompt)
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = "\n".join(str(m.get("content", "")) for m in messages)
            ids = tokenizer(text)["input_ids"]
        out.append(list(ids))
    return out


def check_agreement(
    hf_folder: str | Path,
    ggufs: dict[str, Path],
    prompts: Sequence[Any] = (),
    *,
    new_tokens: int = 16,
    n_ctx: int = 1024,
) -> dict[str, Any]:
    """Greedy next-token agreement of each GGUF with the HF model, position by position.

    The HF model generates ``new_tokens`` greedily after each prompt; llama.cpp then evaluates the
    same token sequence and at every position we compare the two argmaxes. Scoring positions along
    one shared sequence (teacher forcing) keeps one early flip from counting as a whole divergent
    continuation. The rendered prompt text is also tokenized by llama.cpp and compared with HF's
    ids: that catches a wrong pre-tokenizer, which argmax agreement alone would not.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jupyter_distill.runtime import load_llama

    hf_folder = Path(hf_folder)
    prompts = list(prompts) or list(DEFAULT_CHECK_PROMPTS)
    tokenizer = AutoTokenizer.from_pretrained(str(hf_folder))
    model = AutoModelForCausalLM.from_pretrained(str(hf_folder), dtype=torch.float32, trust_remote_code=False)
    model.eval()
    eos = model.generation_config.eos_token_id
    sequences, reference, starts, texts = [], [], [], []
    with torch.inference_mode():
        for ids in _render_prompts(tokenizer, prompts):
            ids = ids[: n_ctx - new_tokens - 1]
            inp = torch.tensor([ids])
            gen = model.generate(
                inp,
                attention_mask=torch.ones_like(inp),
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            )[0].tolist()
            logits = model(torch.tensor([gen])).logits[0]
            start = len(ids) - 1
            sequences.append(gen)
            starts.append(start)
            reference.append(logits[start:].argmax(-1).tolist())
            texts.append(tokenizer.decode(ids, skip_special_tokens=False))
    del model

    report: dict[str, Any] = {"agreement": {}, "positions": sum(len(r) for r in reference), "prompts": len(prompts)}
    for qtype, path in ggufs.items():
        llm = load_llama(str(path), n_ctx=n_ctx, logits_all=True)
        try:
            same = total = 0
            for seq, start, ref in zip(sequences, starts, reference, strict=True):
                llm.reset()
                llm.eval(seq)
                scores = np.asarray(llm.scores[: len(seq)])
                pred = scores[start:].argmax(-1).tolist()
                same += sum(int(a == b) for a, b in zip(pred, ref, strict=True))
                total += len(ref)
            report["agreement"][qtype] = same / max(total, 1)
            if "tokenizer_match" not in report:
                matched = 0
                for text, seq, start in zip(texts, sequences, starts, strict=True):
                    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
                    matched += int(list(ids) == seq[: start + 1])
                report["tokenizer_match"] = matched / max(len(texts), 1)
        finally:
            llm.close()
    return report


# ---------------------------------------------------------------------------------------- model card
def _trained_teachers(store: Any, run_id: str) -> list[Any]:
    """One row per teacher whose samples the run trained on (its pairs' chosen and rejected texts).

    Other teachers may have sampled the same prompts for other runs: their terms do not bind this
    model. A run whose pairs name no sample (every one edited in review) falls back to the
    samples of its own teacher.
    """
    rows = store.conn.execute(
        "SELECT s.teacher, s.provenance_json, COUNT(*) AS n FROM samples s WHERE s.key IN "
        "(SELECT chosen_key FROM pairs WHERE run_id=? AND chosen_key IS NOT NULL "
        "UNION SELECT rejected_key FROM pairs WHERE run_id=? AND rejected_key IS NOT NULL) GROUP BY s.teacher",
        (run_id, run_id),
    ).fetchall()
    if rows:
        return list(rows)
    run = store.get_run(run_id) or {}
    teacher = (run.get("summary") or {}).get("teacher") or (run.get("config") or {}).get("teacher")
    query = (
        "SELECT s.teacher, s.provenance_json, COUNT(*) AS n FROM samples s JOIN run_prompts rp "
        "ON rp.prompt_hash = s.prompt_hash WHERE rp.run_id=?"
    )
    args: list[Any] = [run_id]
    if teacher:  # a run that recorded no teacher (an older version made it) lists every teacher
        query += " AND s.teacher=?"
        args.append(teacher)
    return list(store.conn.execute(query + " GROUP BY s.teacher", args).fetchall())


def _provenance_summary(store: Any, run_id: str | None) -> dict[str, Any]:
    """Teacher ids, providers, policy verdicts and terms of the samples the run trained on."""
    if store is None or run_id is None:
        return {}
    run = store.get_run(run_id) or {}
    summary: dict[str, Any] = {"run_id": run_id, "config": run.get("config", {})}
    teachers: dict[str, dict[str, Any]] = {}
    rows = _trained_teachers(store, run_id)
    for row in rows:
        prov = json.loads(row["provenance_json"] or "{}")
        policy = prov.get("policy") or prov.get("policy_decision") or {}
        teachers[row["teacher"]] = {
            "samples": row["n"],
            "provider": prov.get("provider"),
            "endpoint": prov.get("endpoint"),
            "model": prov.get("model") or prov.get("teacher"),
            "verdict": policy.get("verdict"),
            "terms_version": policy.get("terms_version"),
            "reason": policy.get("reason"),
            "licence": policy.get("licence"),
            "authorization": policy.get("authorization"),
        }
    summary["teachers"] = teachers
    summary["teacher_cost_usd"] = store.teacher_cost(run_id)
    if hasattr(store, "judge_cost"):
        summary["judge_cost_usd"] = store.judge_cost(run_id)
    counts = store.conn.execute("SELECT split, COUNT(*) AS n FROM run_prompts WHERE run_id=? GROUP BY split", (run_id,))
    summary["prompts"] = {row["split"]: row["n"] for row in counts}
    return summary


def write_model_card(path: str | Path, info: dict[str, Any]) -> Path:
    """README.md with YAML front matter, the licence chain and the provenance summary.

    The licence chain is what a user must check before shipping: the teacher's terms (may the
    outputs train a model?), the student base model's licence (what the weights allow), and
    where the prompts came from.
    """
    from jupyter_distill.models import STUDENT_MODEL_MAP

    path = Path(path)
    student = info.get("student") or info.get("provenance", {}).get("config", {}).get("student")
    base = STUDENT_MODEL_MAP.get(str(student)) if student else None
    licence = info.get("student_licence") or (base.licence if base else None) or "unknown: check the base model"
    base_id = info.get("base_model") or (base.hf_id if base else student) or "unknown"
    prov = info.get("provenance", {})
    dataset = info.get("dataset") or prov.get("config", {}).get("dataset") or "not recorded"
    teachers = prov.get("teachers", {})
    if not teachers and info.get("teacher"):
        teachers = {str(info["teacher"]): {"verdict": info.get("teacher_terms"), "reason": info.get("teacher_terms")}}
    lines = [
        "---",
        f"license: {json.dumps(str(licence))}",
        f"base_model: {json.dumps(str(base_id))}",
        "tags: [gguf, jupyter-distill, distillation, bond]",
        "---",
        "",
        f"# {info.get('name') or 'Distilled student'}",
        "",
        "A student model distilled with [jupyter-distill](https://github.com/jupyter-distill/jupyter-distill) "
        "(best-of-N teacher sampling, judge, BOND training, LoRA merge, GGUF export).",
        "",
        "## Licence chain",
        "",
        f"- **Student base model**: `{base_id}`, licence `{licence}`.",
    ]
    if teachers:
        for spec, t in teachers.items():
            verdict = t.get("verdict") or "not recorded"
            extra = f"; authorization: {t['authorization']}" if t.get("authorization") else ""
            lines.append(
                f"- **Teacher** `{spec}`: terms verdict `{verdict}` (terms version {t.get('terms_version') or 'n/a'})"
                f"{extra}. {t.get('reason') or ''}".rstrip()
            )
    else:
        lines.append("- **Teacher**: not recorded (no run store was given to the export).")
    lines += [f"- **Dataset**: {dataset}", ""]
    lines += ["Check each of these before you ship the model: the most restrictive one applies.", ""]
    lines += ["## Files", "", "| file | kind | sha256 | size |", "|---|---|---|---|"]
    for kind, f in info.get("files", {}).items():
        lines.append(f"| `{f['name']}` | {kind} | `{f['sha256']}` | {f['size']:,} B |")
    lines += ["", "## Export check", ""]
    agreement = info.get("agreement", {})
    if agreement:
        lines.append(
            "Greedy next-token agreement with the merged HF model "
            f"({info.get('positions', '?')} positions over {info.get('check_prompts', '?')} prompts):"
        )
        lines.append("")
        lines += [f"- `{q}`: {a:.1%}" for q, a in agreement.items()]
        if "tokenizer_match" in info:
            lines.append(f"- llama.cpp tokenization identical to HF on {info['tokenizer_match']:.0%} of the prompts")
    if prov:
        lines += ["", "## Provenance", ""]
        lines.append(f"- run: `{prov.get('run_id')}`")
        teacher_spend, judge_spend = prov.get("teacher_cost_usd", 0.0), prov.get("judge_cost_usd", 0.0)
        lines.append(f"- teacher spend: ${teacher_spend:.4f}")
        lines.append(f"- judge spend: ${judge_spend:.4f}")
        lines.append(f"- total spend: ${teacher_spend + judge_spend:.4f}")
        if prov.get("prompts"):
            lines.append(f"- prompts: {json.dumps(prov['prompts'])}")
    if info.get("metrics"):
        lines += ["", "## Metrics", ""]
        lines += [f"- {k}: {v}" for k, v in info["metrics"].items()]
    lines += ["", f"Exported {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- entry point
def export_gguf(
    merged_or_adapter: Any,
    out_dir: str | Path,
    *,
    base_folder: str | Path | None = None,
    quantize: str | None = "q4_k_m",
    check_prompts: Sequence[Any] = (),
    store: Any = None,
    run_id: str | None = None,
    card: dict[str, Any] | None = None,
    also_quantize: Sequence[str] = (),
    tokenizer: Any = None,
    min_agreement: float = MIN_F16_AGREEMENT,
    check_tokens: int = 16,
    emit: Callable[[Event], None] = no_emit,
    stop: threading.Event | None = None,
) -> ExportResult:
    """Merge, convert, quantize, check and document a student; see the module docstring.

    ``merged_or_adapter``: a PEFT adapter folder (merged onto ``base_folder`` or the base the
    adapter names), a merged HF folder, an in-memory ``PeftModel`` or a transformers model.
    ``also_quantize`` makes and checks extra quantizations (e.g. ``("q8_0",)``) for comparison.
    ``check_prompts`` default to the run's held-out prompts (with ``store`` and ``run_id``), else a
    small built-in set.
    Raises ``ExportError`` when f16 agreement is below ``min_agreement``: a broken conversion must
    not reach an alias. ``stop`` is checked between the steps (merge, convert, each quantization,
    check); a stop raises :class:`ExportStopped` before anything is registered in the store, so a
    stopped export never leaves a half-made artifact behind in the run's records.
    """
    qtype = validate_quantize(quantize)
    extras = [validate_quantize(q) for q in also_quantize]
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def phase(message: str, current: int) -> None:
        if stop is not None and stop.is_set():
            raise ExportStopped(
                f"export stopped before: {message}. Nothing was registered; run the export again to finish it.",
                field="stop",
                value=message,
                fix="resume the run",
            )
        emit(Event(kind="progress", phase="export", run=run_id, message=message, current=current, total=5))

    t0 = time.perf_counter()
    phase("merging the adapter", 0)
    merged_dir, adapter_dir = _prepare_merged(merged_or_adapter, out, base_folder, tokenizer)
    timings["merge_s"] = time.perf_counter() - t0
    config = _read_config(merged_dir)
    stem = card.get("name") if card and card.get("name") else "model"
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in str(stem))

    t0 = time.perf_counter()
    phase("writing the f16 GGUF", 1)
    f16 = write_gguf(merged_dir, out / f"{stem}.f16.gguf", outtype="f16", name=stem)
    timings["convert_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    phase(f"quantizing to {qtype}", 2)
    ggufs: dict[str, Path] = {"f16": f16}
    for q in dict.fromkeys([qtype, *extras]):
        if q != "f16":
            phase(f"quantizing to {q}", 2)
            ggufs[q] = quantize_gguf(f16, out / f"{stem}.{q}.gguf", q)
    timings["quantize_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    phase("checking the GGUF against the HF model", 3)
    if not check_prompts and store is not None and run_id is not None:
        check_prompts = store.get_prompts(run_id, split="heldout")[:MAX_CHECK_PROMPTS]
    report = check_agreement(merged_dir, ggufs, check_prompts, new_tokens=check_tokens)
    timings["check_s"] = time.perf_counter() - t0
    agreement = report["agreement"]
    if agreement["f16"] < min_agreement:
        raise ExportError(
            f"the f16 GGUF agrees with the merged HF model on only {agreement['f16']:.1%} of greedy next tokens "
            f"(required {min_agreement:.0%}; tokenizer match {report.get('tokenizer_match', 0):.0%}). "
            f"The conversion of architecture {config['model_type']!r} is wrong. Fix: report this with the model's "
            "config.json; meanwhile use the PEFT backend (set_alias(..., backend='peft')).",
            field="agreement",
            value=agreement["f16"],
        )

    phase("recording artifacts and writing the model card", 4)
    files: dict[str, Path] = {"gguf": ggufs[qtype], "gguf_f16": f16}
    for q in extras:
        files[f"gguf_{q}"] = ggufs[q]
    sha: dict[str, str] = {}
    file_info: dict[str, dict[str, Any]] = {}
    for kind, path in files.items():
        sha[kind] = file_sha256(path)
        file_info[kind] = {"name": path.name, "sha256": sha[kind], "size": path.stat().st_size}
    info = dict(card or {})
    info.update(
        {
            "files": file_info,
            "agreement": agreement,
            "positions": report["positions"],
            "check_prompts": report["prompts"],
            "tokenizer_match": report.get("tokenizer_match", 0.0),
            "provenance": _provenance_summary(store, run_id),
        }
    )
    card_path = write_model_card(out / "README.md", info)
    files["model_card"] = card_path
    sha["model_card"] = file_sha256(card_path)
    if stop is not None and stop.is_set():
        phase("registering the artifacts", 4)  # raises ExportStopped: the last chance to stop cleanly
    if store is not None and run_id is not None:
        meta = {"quantize": qtype, "agreement": agreement, "architecture": config["model_type"]}
        with store.transaction():  # every artifact of this export, or none
            for kind, path in files.items():
                store.put_artifact(run_id, kind, path, sha256=sha[kind], size=path.stat().st_size, meta=meta)
            store.put_artifact(run_id, "merged", merged_dir, meta={"architecture": config["model_type"]})
            if adapter_dir is not None:
                store.put_artifact(run_id, "adapter", adapter_dir, meta={})
    phase("export done", 5)
    details = {
        "tokenizer_match": report.get("tokenizer_match"),
        "positions": report["positions"],
        "timings": timings,
        "architecture": config["model_type"],
    }
    return ExportResult(
        gguf=ggufs[qtype],
        f16_gguf=f16,
        merged_dir=merged_dir,
        agreement=agreement,
        sha256=sha,
        quantize=qtype,
        files=files,
        card=card_path,
        adapter_dir=adapter_dir,
        details=details,
    )


__all__ = [
    "QUANT_TYPES",
    "SUPPORTED_ARCHITECTURES",
    "ExportResult",
    "ExportStopped",
    "check_agreement",
    "export_gguf",
    "merge_lora",
    "quantize_gguf",
    "validate_quantize",
    "write_gguf",
    "write_model_card",
]
