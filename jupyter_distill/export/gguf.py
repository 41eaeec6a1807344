"""Write a student as GGUF: convert the merged HF folder, quantize, and run the whole export.

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

from jupyter_distill.core.errors import ExportError
from jupyter_distill.core.events import Event, no_emit
from jupyter_distill.core.hashing import content_hash, file_sha256
from jupyter_distill.core.models import SOURCE_MARKER
from jupyter_distill.core.quant_types import DEFAULT_QUANTIZE, QUANT_TYPES, canonical_quant_name
from jupyter_distill.export import converter as gguf_converter
from jupyter_distill.export.card import (
    dataset_hash,
    gguf_provenance,
    provenance_summary,
    travelling_ledger,
    write_model_card,
)
from jupyter_distill.export.check import (
    MAX_CHECK_PROMPTS,
    MIN_ADAPTER_AGREEMENT,
    MIN_F16_AGREEMENT,
    check_agreement,
)
from jupyter_distill.export.memory import available_memory, reference_budget
from jupyter_distill.export.merge import (
    TOKENIZER_FILES,
    adapter_base,
    folder_chat_template,
    is_adapter_dir,
    merge_lora,
    prepare_merged,
)

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


def _export_steps(emit: Any, run_id: str | None, stop: Any) -> Any:
    """``phase(message, current)``: one export step announced as progress (of 5), refused once ``stop`` is set."""

    def phase(message: str, current: int) -> None:
        if stop is not None and stop.is_set():
            raise ExportStopped(
                f"export stopped before: {message}. Nothing was registered; run the export again to finish it.",
                field="stop",
                value=message,
                fix="resume the run",
            )
        emit(Event(kind="progress", phase="export", run=run_id, message=message, current=current, total=5))

    return phase


def quantize_gguf(src: str | Path, dst: str | Path, quantize: str, *, nthread: int | None = None) -> Path:
    """Quantize an f16 GGUF with llama.cpp's own quantizer (no compiler: it is in llama-cpp-python).

    Rows whose width is not a multiple of 256 fall back to q5_0/q8_0 inside k-quant types; llama.cpp
    logs that per tensor and it is expected for small models (a run's log folds it into one line).
    """
    import llama_cpp

    from jupyter_distill.core.capture import route_llama_log

    route_llama_log()  # a run's thread gets the per-tensor warnings in its log, folded into one line
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
    small built-in set. ``card["rights_ledger"]`` (the run's audit, ``Ledger.to_dict()``) is written
    into the model card and, as JSON, into the GGUF header key ``jupyter_distill.ledger``; the
    quantized files keep it (llama.cpp's quantizer copies every header key).
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

    phase = _export_steps(emit, run_id, stop)

    t0 = time.perf_counter()
    phase("merging the adapter", 0)
    merged_dir, adapter_dir = prepare_merged(merged_or_adapter, out, base_folder, tokenizer)
    timings["merge_s"] = time.perf_counter() - t0
    config = _read_config(merged_dir)
    stem = card.get("name") if card and card.get("name") else "model"
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in str(stem))

    provenance = provenance_summary(store, run_id)
    card = dict(card or {})
    if card.get("rights_ledger"):  # one travelling form for the header and the card
        digest = card.get("dataset_sha256") or dataset_hash(store, run_id)
        card["rights_ledger"] = travelling_ledger(card["rights_ledger"], run_id=run_id, dataset_hash=digest)
    metadata, extra_kv = gguf_provenance(card, provenance, store, run_id)

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
    report = check_agreement(
        merged_dir, ggufs, check_prompts, new_tokens=check_tokens, ram_budget=reference_budget(available_memory())
    )
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
def _stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in str(name))


# What decides the bytes of a base GGUF: the weights, the config, the tokenizer (and the GGUF a
# dequantized folder copies its vocabulary from), plus the chat template written into the header.
_BASE_INPUTS = ("config.json", "model.safetensors.index.json", *TOKENIZER_FILES, SOURCE_MARKER)


def _memo_sha256(path: Path, memo: dict[str, str]) -> str:
    """``file_sha256``, remembered by path, size and mtime: a multi-GB base is hashed once, not per export."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in memo:
        memo[key] = file_sha256(path)
    return memo[key]


def _shared_base_key(base: Path, chat_template: str | None, memo_path: Path) -> str:
    """Content address of a base model's GGUF: the same bytes in another folder reuse the same file."""
    try:
        memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
    except ValueError:
        memo = {}
    names = sorted({p.name for p in base.glob("*.safetensors")} | {n for n in _BASE_INPUTS if (base / n).is_file()})
    digests = [(name, _memo_sha256(base / name, memo)) for name in names]
    tmp = memo_path.with_name(f".{memo_path.name}.tmp")
    tmp.write_text(json.dumps(memo, indent=0, sort_keys=True))
    os.replace(tmp, memo_path)
    return content_hash(digests, chat_template or "")[:16]


def shared_base_gguf(
    base_folder: str | Path, quantize: str, *, shared_dir: str | Path | None = None, chat_template: str | None = None
) -> tuple[Path, Path]:
    """``(f16, quantized)`` GGUF of a base model, converted once and shared by every adapter over it.

    Content-addressed: named by the sha256 of the base's weights, config and tokenizer files and
    the chat template (file digests are remembered by path, size and mtime in ``digests.json``, so
    a large base is read once). Written under a file lock, so two runs over the same base (and
    template) write it once and then reuse it, whatever folder the base was read from.
    """
    from filelock import FileLock

    from jupyter_distill.core.models import cache_dir

    base = Path(base_folder).resolve()
    qtype = validate_quantize(quantize)
    root = Path(shared_dir) if shared_dir else cache_dir() / "base-gguf"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "digests.lock")):
        stem = f"{_stem(base.name)}-{_shared_base_key(base, chat_template, root / 'digests.json')}"
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
    store: Any = None,
    run_id: str | None = None,
    card: dict[str, Any] | None = None,
    emit: Callable[[Event], None] = no_emit,
    stop: threading.Event | None = None,
) -> ExportResult:
    """``export: adapter``: the LoRA as a llama.cpp LoRA GGUF beside one shared base GGUF.

    Several students distilled from one base then cost one base file (and, served together, one
    base in memory) plus a few MB each. The base is quantized as asked and shared through
    :func:`shared_base_gguf` (``shared_dir``, default the model cache); the adapter is kept in f32
    (the converter's default: low-rank factors are small, and f16 factors round differently from
    f16 merged weights). Checked like a merged export: the base GGUF with the adapter applied must
    agree with the merged HF model. With ``store`` and ``run_id`` the files are registered as one
    transaction (``gguf`` is the shared base, ``gguf_lora`` the adapter); ``stop`` is honoured
    between the steps as in :func:`export_gguf`.
    """
    qtype = validate_quantize(quantize)
    adapter_dir = Path(adapter_dir).resolve()
    if not is_adapter_dir(adapter_dir):
        raise ExportError(
            f"{str(adapter_dir)!r} is not a PEFT adapter folder (adapter_config.json). Fix: pass the adapter folder "
            "the trainer wrote, or use export='merged'.",
            field="export",
            value="adapter",
        )
    base = adapter_base(adapter_dir, base_folder)
    config = _read_config(base)
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    phase = _export_steps(emit, run_id, stop)

    template = folder_chat_template(adapter_dir) or folder_chat_template(base)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    phase(f"writing the shared base GGUF ({qtype}) or finding it", 0)
    f16, quantized = shared_base_gguf(base, qtype, shared_dir=shared_dir, chat_template=template)
    timings["base_s"] = time.perf_counter() - t0
    stem = _stem(name or (card or {}).get("name") or "adapter")
    t0 = time.perf_counter()
    phase("writing the LoRA GGUF", 1)
    lora = gguf_converter.run_lora_converter(adapter_dir, base, out / f"{stem}.lora.gguf", outtype="f32")
    timings["convert_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    phase("merging the adapter for the check", 2)
    merged = merge_lora(adapter_dir, out / "merged", base_folder=base)
    timings["merge_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    phase("checking base + adapter against the merged HF model", 3)
    if not check_prompts and store is not None and run_id is not None:
        check_prompts = store.get_prompts(run_id, split="heldout")[:MAX_CHECK_PROMPTS]
    ggufs = {"f16": f16, qtype: quantized} if qtype != "f16" else {"f16": f16}
    report = check_agreement(
        merged,
        ggufs,
        check_prompts,
        new_tokens=check_tokens,
        lora=lora,
        ram_budget=reference_budget(available_memory()),
    )
    timings["check_s"] = time.perf_counter() - t0
    agreement = report["agreement"]
    if agreement["f16"] < min_agreement:
        raise ExportError(
            f"the base GGUF with the LoRA GGUF applied agrees with the merged model on only {agreement['f16']:.1%} "
            f"of greedy next tokens (required {min_agreement:.0%}). Fix: use export='merged'.",
            field="agreement",
            value=agreement["f16"],
        )
    phase("recording artifacts and writing the model card", 4)
    files: dict[str, Path] = {"gguf": quantized, "gguf_f16": f16, "gguf_lora": lora}
    sha = {kind: file_sha256(path) for kind, path in files.items()}
    info = dict(card or {})
    info.update(
        {
            "files": {k: {"name": p.name, "sha256": sha[k], "size": p.stat().st_size} for k, p in files.items()},
            "agreement": agreement,
            "positions": report["positions"],
            "check_prompts": report["prompts"],
            "tokenizer_match": report.get("tokenizer_match", 0.0),
            "provenance": provenance_summary(store, run_id),
            "export": "adapter",
        }
    )
    files["model_card"] = write_model_card(out / "README.md", info)
    sha["model_card"] = file_sha256(files["model_card"])
    if stop is not None and stop.is_set():
        phase("registering the artifacts", 4)  # raises ExportStopped
    if store is not None and run_id is not None:
        meta = {"quantize": qtype, "agreement": agreement, "architecture": config["model_type"], "export": "adapter"}
        with store.transaction():  # every artifact of this export, or none
            for kind, path in files.items():
                store.put_artifact(run_id, kind, path, sha256=sha[kind], size=path.stat().st_size, meta=meta)
            store.put_artifact(run_id, "merged", merged, meta={"architecture": config["model_type"]})
            store.put_artifact(run_id, "adapter", adapter_dir, meta={})
    phase("export done", 5)
    return ExportResult(
        gguf=quantized,
        f16_gguf=f16,
        merged_dir=merged,
        agreement=agreement,
        sha256=sha,
        quantize=qtype,
        files=files,
        card=files["model_card"],
        adapter_dir=adapter_dir,
        details={
            "export": "adapter",
            "lora": str(lora),
            "tokenizer_match": report.get("tokenizer_match"),
            "positions": report["positions"],
            "timings": timings,
            "architecture": config["model_type"],
        },
    )


__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "TESTED_ARCHITECTURES",
    "ExportResult",
    "ExportStopped",
    "check_exportable",
    "export_adapter_gguf",
    "export_gguf",
    "quantize_gguf",
    "shared_base_gguf",
    "validate_quantize",
    "write_gguf",
]
