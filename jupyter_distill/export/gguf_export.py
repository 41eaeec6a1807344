"""Export a trained student: merge LoRA -> HF folder -> GGUF f16 -> quantize -> check -> model card.

Conversion is llama.cpp's own converter (:mod:`jupyter_distill.export.converter`), unpacked at
install time from the sdist of the pinned llama-cpp-python, so it is the version that matches
the llama.cpp that loads the file and it covers every family that llama.cpp does. The popular
training tools clone and compile llama.cpp at export time, which fails offline or without a
compiler; here everything is installed Python: transformers + PEFT merge the adapter, the
converter writes the f16 file in a subprocess, and ``llama_cpp.llama_model_quantize`` quantizes
it. Afterwards the GGUF is loaded back through llama.cpp and its greedy next-token predictions are
compared with the merged HF model, because a conversion bug (wrong permutation, wrong
pre-tokenizer, wrong rope) shows up as fluent nonsense, not as an error.

:func:`check_exportable` says before any work (and before any teacher request) whether an
architecture can be exported; :data:`TESTED_ARCHITECTURES` are the ones proven end to end here.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jupyter_distill.core.errors import ExportError
from jupyter_distill.core.events import Event, no_emit
from jupyter_distill.core.hashing import file_sha256
from jupyter_distill.core.quant_types import DEFAULT_QUANTIZE, QUANT_TYPES, canonical_quant_name
from jupyter_distill.export import converter as gguf_converter

# Proven end to end (tiny random-init model of the exact config class: train, merge, convert,
# quantize, load in llama.cpp, agree with HF, serve): transformers model_type -> HF class.
TESTED_ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "smollm3": "SmolLM3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "granite": "GraniteForCausalLM",
}
SUPPORTED_ARCHITECTURES = tuple(TESTED_ARCHITECTURES)
MIN_F16_AGREEMENT = 0.95
# An adapter export is compared with the merged model, but llama.cpp applies the LoRA at run time
# to f16 base weights, where the merge added it to fp32 weights: near-ties can flip either way.
MIN_ADAPTER_AGREEMENT = 0.9
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
# llama.cpp pre-tokenizer that reproduces each (a hint for vocabularies the converter does not
# recognise by fingerprint). They differ only in how digits are grouped.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3_REGEX = _CONTRACTIONS + r"\p{N}{1,3}|" + _REST  # digits in runs of up to three
_QWEN2_REGEX = _CONTRACTIONS + r"\p{N}|" + _REST  # every digit alone


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
    quantize: str = DEFAULT_QUANTIZE
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
    name = canonical_quant_name(str(quantize))
    if name not in QUANT_TYPES:
        raise ExportError(
            f"unknown quantization type {quantize!r}. Valid: {', '.join(QUANT_TYPES)}. "
            f"Fix: pass one of them ({DEFAULT_QUANTIZE} is a good default), or quantize=None to skip GGUF export.",
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


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def _copy_tokenizer(sources: Sequence[Path], dest: Path) -> None:
    """Copy the tokenizer files of the first source that has them, verbatim, then the chat template of
    the first source that has one (the adapter's: prompts were rendered with it in training).

    Verbatim, not through transformers: a load-and-save round trip can rewrite fields such as
    ``tokenizer_class``, which llama.cpp's converter reads to pick the vocabulary type.
    """
    vocab_source = next(
        (s for s in sources if (s / "tokenizer.json").is_file() or (s / "tokenizer.model").is_file()), None
    )
    if vocab_source is None:
        raise ExportError(
            f"no tokenizer found in {', '.join(map(str, sources))}. Fix: save the tokenizer next to the adapter "
            "or the base model (tokenizer.save_pretrained(folder)).",
            field="tokenizer",
            value=[str(s) for s in sources],
        )
    for name in _TOKENIZER_FILES:
        if (vocab_source / name).is_file():
            shutil.copyfile(vocab_source / name, dest / name)
    template = next((t for t in (folder_chat_template(s) for s in sources) if t), None)
    if template:
        (dest / "chat_template.jinja").write_text(template, encoding="utf-8")
        config_path = dest / "tokenizer_config.json"
        if config_path.is_file():  # one template only: the .jinja file wins, drop an older inline copy
            config = json.loads(config_path.read_text(encoding="utf-8"))
            if config.pop("chat_template", None) is not None:
                config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _copy_source_marker(base: Path | None, dest: Path) -> None:
    """Carry the record of the GGUF a base folder was dequantized from (see :func:`source_gguf`)."""
    from jupyter_distill.core.models import SOURCE_MARKER

    if base is not None and (base / SOURCE_MARKER).is_file():
        shutil.copyfile(base / SOURCE_MARKER, dest / SOURCE_MARKER)


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
    _copy_source_marker(base, tmp)
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
        name = getattr(model_or_path.config, "_name_or_path", "")
        _copy_source_marker(Path(base_folder) if base_folder else (Path(name) if name else None), merged)
        return merged, None
    raise ExportError(
        f"cannot export an object of type {type(model_or_path).__name__}. Fix: pass an adapter folder, an HF "
        "model folder, a PeftModel or a transformers model.",
        field="merged_or_adapter",
        value=type(model_or_path).__name__,
    )


# ---------------------------------------------------------------------------------------- HF -> GGUF
def _hf_class_for(architecture: str) -> str | None:
    """The HF causal-LM class of a model type (``gemma3_text`` -> ``Gemma3ForCausalLM``); class names pass."""
    if architecture in TESTED_ARCHITECTURES:
        return TESTED_ARCHITECTURES[architecture]
    if "For" in architecture:
        return architecture
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        return None
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(architecture)


def check_exportable(architecture: str, quantize: str | None) -> None:
    """Raise ``ExportError`` unless a student of ``architecture`` can be exported as ``quantize``.

    Cheap (no torch, no model load), so it runs before any teacher request is paid for.
    ``architecture`` is a transformers ``model_type`` (``llama``, ``gemma3``, ...) or an HF class
    name (``Gemma3ForCausalLM``). ``quantize=None`` means no GGUF export, so any architecture passes.
    Accepted: every architecture the installed llama.cpp converter handles; the message names
    the ones proven end to end here (:data:`TESTED_ARCHITECTURES`).
    """
    if quantize is None:
        return
    validate_quantize(quantize)
    tested = ", ".join(SUPPORTED_ARCHITECTURES)
    supported = gguf_converter.supported_classes()
    if not supported:
        gguf_converter.find_converter()  # raises, saying how to install it
    cls = _hf_class_for(str(architecture))
    if cls is None or cls not in supported:
        raise ExportError(
            f"architecture {architecture!r}{f' ({cls})' if cls and cls != architecture else ''} cannot be exported "
            f"to GGUF: the installed llama.cpp converter does not handle it. Supported and tested here: {tested} "
            f"(and {len(supported)} HF classes the converter lists). Fix: pick a student of a supported family, "
            "or set quantize=None and serve it with the PEFT backend.",
            field="architecture",
            value=architecture,
            fix="use a student of one of: " + tested,
        )


def _read_config(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text())
    arch = config.get("model_type")
    classes = config.get("architectures") or []
    check_exportable(classes[0] if classes else str(arch), "f16")
    return config


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp pre-tokenizer reproducing a tokenizer.json byte-level pre-tokenizer, None if unknown.

    llama.cpp's converter recognises a tokenizer by the ids it gives a probe text; a retrained or
    truncated vocabulary has an unknown fingerprint even when its pre-tokenizer regex is a
    standard one. This reads the regex itself, and the converter uses the answer only then.
    """

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
    return None


def _pre_tokenizer_hint(folder: Path) -> str | None:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if data.get("model", {}).get("type") != "BPE":
        return None
    return _pre_tokenizer_name(data.get("pre_tokenizer"))


def source_gguf(folder: Path) -> Path | None:
    """The GGUF an HF folder was dequantized from, when its vocabulary still matches that file.

    :func:`jupyter_distill.core.models.dequantized_hf_folder` records the source; a merge copies the
    record. The vocabulary is then copied from that GGUF, so the export tokenizes exactly like the
    file the student was loaded from (and like the teacher, in self-distillation).
    """
    from jupyter_distill.core.models import SOURCE_MARKER

    marker = folder / SOURCE_MARKER
    if not marker.is_file():
        return None
    try:
        path = Path(json.loads(marker.read_text())["gguf"])
        n_tokens = int(json.loads(marker.read_text())["n_tokens"])
        vocab_size = int(_text_config(json.loads((folder / "config.json").read_text())).get("vocab_size", -1))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if path.is_file() and n_tokens == vocab_size else None


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config") or config


def folder_chat_template(folder: Path) -> str | None:
    """The chat template saved with an HF folder's tokenizer (chat_template.jinja or tokenizer_config.json)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        except ValueError:
            return None
        return value if isinstance(value, str) else None
    return None


def write_gguf(
    hf_folder: str | Path,
    out_path: str | Path,
    *,
    outtype: str = "f16",
    name: str | None = None,
    license: str | None = None,
    chat_template: str | None = None,
    metadata: dict[str, Any] | None = None,
    extra_kv: dict[str, Any] | None = None,
) -> Path:
    """Convert an HF folder to a GGUF file with llama.cpp's own converter (see :mod:`.gguf_converter`).

    ``chat_template`` (default: the folder's own) is written into the header, so llama.cpp renders
    prompts exactly as training did. ``metadata`` are the converter's ``general.*`` overrides;
    ``extra_kv`` further header keys (provenance).
    """
    folder = Path(hf_folder).resolve()
    if outtype not in ("f16", "f32", "bf16"):
        raise ExportError(
            f"outtype {outtype!r} is not a GGUF base type. Fix: use 'f16' (or 'f32'/'bf16'); quantize afterwards.",
            field="outtype",
            value=outtype,
        )
    _read_config(folder)
    extra = dict(extra_kv or {})
    if license:
        extra.setdefault("general.license", license)
    return gguf_converter.run_converter(
        folder,
        out_path,
        outtype=outtype,
        name=name,
        metadata=metadata,
        extra_kv=extra,
        pre_tokenizer=_pre_tokenizer_hint(folder),
        vocab_from=source_gguf(folder),
        chat_template=chat_template or folder_chat_template(folder),
    )


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
    lora: str | Path | None = None,
) -> dict[str, Any]:
    """Greedy next-token agreement of each GGUF with the HF model, position by position.

    ``lora``: a llama.cpp LoRA GGUF applied over each file (an adapter export is checked as served).

    The HF model generates ``new_tokens`` greedily after each prompt; llama.cpp then evaluates the
    same token sequence and at every position we compare the two argmaxes. Scoring positions along
    one shared sequence (teacher forcing) keeps one early flip from counting as a whole divergent
    continuation. The rendered prompt text is also tokenized by llama.cpp and compared with HF's
    ids: that catches a wrong pre-tokenizer, which argmax agreement alone would not.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jupyter_distill.core.runtime import load_llama

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
        extra = {"lora_path": str(lora)} if lora else {}
        llm = load_llama(str(path), n_ctx=n_ctx, logits_all=True, **extra)
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
    from jupyter_distill.core.models import STUDENT_MODEL_MAP

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


def dataset_hash(store: Any, run_id: str | None) -> str | None:
    """A content hash of the run's prompts (their content hashes, every split), or None without a store."""
    if store is None or run_id is None:
        return None
    from jupyter_distill.core.hashing import content_hash

    rows = store.conn.execute(
        "SELECT prompt_hash, split FROM run_prompts WHERE run_id=? ORDER BY prompt_hash", (run_id,)
    ).fetchall()
    if not rows:
        return None
    return content_hash([[row["prompt_hash"], row["split"]] for row in rows])


def gguf_provenance(
    info: dict[str, Any], provenance: dict[str, Any], store: Any = None, run_id: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the model card says about where the model came from, as GGUF header keys.

    Returns ``(metadata, extra_kv)``: the converter's standard ``general.*`` overrides (licence,
    base model) and ``jupyter_distill.*`` keys (teachers and their terms verdicts, dataset hash, run
    id), so the provenance travels with the file even when the card does not.
    """
    from jupyter_distill.core.models import STUDENT_MODEL_MAP

    student = info.get("student") or provenance.get("config", {}).get("student")
    base = STUDENT_MODEL_MAP.get(str(student)) if student else None
    licence = info.get("student_licence") or (base.licence if base else None)
    base_id = info.get("base_model") or (base.hf_id if base else None)
    metadata: dict[str, Any] = {}
    if base_id:
        entry: dict[str, Any] = {"name": str(base_id)}
        if "/" in str(base_id):
            entry["organization"] = str(base_id).split("/", 1)[0]
            entry["repo_url"] = f"https://huggingface.co/{base_id}"
        metadata["general.base_models"] = [entry]
    teachers = provenance.get("teachers") or {}
    if not teachers and info.get("teacher"):
        teachers = {str(info["teacher"]): {"verdict": info.get("teacher_terms")}}
    extra: dict[str, Any] = {
        # not a key the converter's metadata override reads, so it is written directly
        "general.license": str(licence) if licence else None,
        "jupyter_distill.run_id": provenance.get("run_id") or run_id,
        "jupyter_distill.student": str(student) if student else None,
        "jupyter_distill.dataset": str(info.get("dataset") or provenance.get("config", {}).get("dataset") or "")
        or None,
        "jupyter_distill.dataset_hash": info.get("dataset_sha256") or dataset_hash(store, run_id),
    }
    if teachers:
        extra["jupyter_distill.teachers"] = ",".join(teachers)
        extra["jupyter_distill.teacher_terms"] = {
            spec: {k: t.get(k) for k in ("verdict", "terms_version", "licence", "authorization") if t.get(k)}
            for spec, t in teachers.items()
        }
    return metadata, {k: v for k, v in extra.items() if v is not None}


# ---------------------------------------------------------------------------------------- entry point
def export_gguf(
    merged_or_adapter: Any,
    out_dir: str | Path,
    *,
    base_folder: str | Path | None = None,
    quantize: str | None = DEFAULT_QUANTIZE,
    check_prompts: Sequence[Any] = (),
    store: Any = None,
    run_id: str | None = None,
    card: dict[str, Any] | None = None,
    also_quantize: Sequence[str] = (),
    tokenizer: Any = None,
    min_agreement: float = MIN_F16_AGREEMENT,
    check_tokens: int = 16,
    chat_template: str | None = None,
    emit: Callable[[Event], None] = no_emit,
    stop: threading.Event | None = None,
) -> ExportResult:
    """Merge, convert, quantize, check and document a student; see the module docstring.

    ``merged_or_adapter``: a PEFT adapter folder (merged onto ``base_folder`` or the base the
    adapter names), a merged HF folder, an in-memory ``PeftModel`` or a transformers model.
    ``also_quantize`` makes and checks extra quantizations (e.g. ``("q8_0",)``) for comparison.
    ``chat_template`` (default: the one saved with the merged tokenizer, i.e. the one training
    rendered prompts with) is written into the GGUF, so serving renders prompts the same way.
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

    provenance = _provenance_summary(store, run_id)
    metadata, extra_kv = gguf_provenance(dict(card or {}), provenance, store, run_id)

    t0 = time.perf_counter()
    phase("writing the f16 GGUF", 1)
    f16 = write_gguf(
        merged_dir,
        out / f"{stem}.f16.gguf",
        outtype="f16",
        name=stem,
        chat_template=chat_template,
        metadata=metadata,
        extra_kv=extra_kv,
    )
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
            "provenance": provenance,
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


# ---------------------------------------------------------------------------------------- adapter export
def _shared_base_key(base: Path, chat_template: str | None) -> str:
    from jupyter_distill.core.hashing import content_hash

    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in base.glob("*.safetensors"))
    return content_hash(str(base), weights, chat_template or "")[:16]


def shared_base_gguf(
    base_folder: str | Path, quantize: str, *, shared_dir: str | Path | None = None, chat_template: str | None = None
) -> tuple[Path, Path]:
    """``(f16, quantized)`` GGUF of a base model, converted once and shared by every adapter over it.

    Keyed by the base folder, its weight files and the chat template, under a file lock, so two
    runs over the same base (and template) write it once and then reuse it.
    """
    from filelock import FileLock

    from jupyter_distill.core.models import cache_dir

    base = Path(base_folder).resolve()
    qtype = validate_quantize(quantize)
    root = Path(shared_dir) if shared_dir else cache_dir() / "base-gguf"
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{base.name}-{_shared_base_key(base, chat_template)}"
    f16, quantized = root / f"{stem}.f16.gguf", root / f"{stem}.{qtype}.gguf"
    with FileLock(str(root / f"{stem}.lock")):
        if not f16.is_file():
            write_gguf(base, f16, outtype="f16", name=base.name, chat_template=chat_template)
        if qtype != "f16" and not quantized.is_file():
            quantize_gguf(f16, quantized, qtype)
    return f16, (f16 if qtype == "f16" else quantized)


def export_adapter_gguf(
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    base_folder: str | Path | None = None,
    quantize: str | None = DEFAULT_QUANTIZE,
    shared_dir: str | Path | None = None,
    check_prompts: Sequence[Any] = (),
    check_tokens: int = 16,
    min_agreement: float = MIN_ADAPTER_AGREEMENT,
    name: str | None = None,
) -> ExportResult:
    """``export: adapter``: the LoRA as a llama.cpp LoRA GGUF beside one shared base GGUF.

    Several students distilled from one base then cost one base file (and, served together, one
    base in memory) plus a few MB each. The base is quantized as asked; the adapter is kept in f32
    (the converter's default: low-rank factors are small, and f16 factors round differently from
    f16 merged weights). Checked like a merged export: the base GGUF with
    the adapter applied must agree with the merged HF model.
    """
    qtype = validate_quantize(quantize)
    adapter_dir = Path(adapter_dir).resolve()
    if not _is_adapter_dir(adapter_dir):
        raise ExportError(
            f"{str(adapter_dir)!r} is not a PEFT adapter folder (adapter_config.json). Fix: pass the adapter folder "
            "the trainer wrote, or use export='merged'.",
            field="export",
            value="adapter",
        )
    base = _adapter_base(adapter_dir, base_folder)
    _read_config(base)
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    template = folder_chat_template(adapter_dir) or folder_chat_template(base)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    f16, quantized = shared_base_gguf(base, qtype, shared_dir=shared_dir, chat_template=template)
    timings["base_s"] = time.perf_counter() - t0
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in str(name or "adapter"))
    t0 = time.perf_counter()
    lora = gguf_converter.run_lora_converter(adapter_dir, base, out / f"{stem}.lora.gguf", outtype="f32")
    timings["convert_s"] = time.perf_counter() - t0
    merged = merge_lora(adapter_dir, out / "merged", base_folder=base)
    t0 = time.perf_counter()
    ggufs = {"f16": f16, qtype: quantized} if qtype != "f16" else {"f16": f16}
    report = check_agreement(merged, ggufs, check_prompts, new_tokens=check_tokens, lora=lora)
    timings["check_s"] = time.perf_counter() - t0
    agreement = report["agreement"]
    if agreement["f16"] < min_agreement:
        raise ExportError(
            f"the base GGUF with the LoRA GGUF applied agrees with the merged model on only {agreement['f16']:.1%} "
            f"of greedy next tokens (required {min_agreement:.0%}). Fix: use export='merged'.",
            field="agreement",
            value=agreement["f16"],
        )
    files = {"gguf": quantized, "gguf_f16": f16, "gguf_lora": lora}
    return ExportResult(
        gguf=quantized,
        f16_gguf=f16,
        merged_dir=merged,
        agreement=agreement,
        sha256={kind: file_sha256(path) for kind, path in files.items()},
        quantize=qtype,
        files=files,
        adapter_dir=adapter_dir,
        details={
            "export": "adapter",
            "lora": str(lora),
            "tokenizer_match": report.get("tokenizer_match"),
            "positions": report["positions"],
            "timings": timings,
        },
    )


__all__ = [
    "QUANT_TYPES",
    "SUPPORTED_ARCHITECTURES",
    "TESTED_ARCHITECTURES",
    "ExportResult",
    "ExportStopped",
    "check_agreement",
    "check_exportable",
    "export_adapter_gguf",
    "export_gguf",
    "gguf_provenance",
    "merge_lora",
    "quantize_gguf",
    "shared_base_gguf",
    "validate_quantize",
    "write_gguf",
    "write_model_card",
]
