"""Merge a LoRA adapter into its base model as a plain HF folder, with the tokenizer beside it.

transformers + PEFT do the merge from a fresh copy of the base, so a model that is still training
is never mutated. The merged folder is what the GGUF converter reads and what the agreement check
compares the GGUF with.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import ExportError
from jupyter_distill.core.hashing import file_sha256
from jupyter_distill.export.memory import MERGE_SHARD_BYTES, stored_dtype


# ---------------------------------------------------------------------------------------- merge
def is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    )


def adapter_base(adapter_dir: Path, base_folder: str | Path | None) -> Path:
    """The local base folder of an adapter: ``base_folder`` or the one the adapter names."""
    if base_folder is not None:
        base = Path(base_folder).expanduser().resolve()
        if not is_hf_dir(base):
            raise ExportError(
                f"base_folder {str(base)!r} is not an HF model folder (config.json + *.safetensors). "
                "Fix: pass the folder the adapter was trained on.",
                field="base_folder",
                value=str(base),
            )
        return base
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    named = cfg.get("base_model_name_or_path")
    if named and is_hf_dir(Path(named).expanduser()):
        return Path(named).expanduser().resolve()
    raise ExportError(
        f"the adapter in {str(adapter_dir)!r} names base model {named!r}, which is not a local HF folder. "
        "Fix: pass base_folder=<the local folder the adapter was trained on> (no network at export time).",
        field="base_folder",
        value=named,
    )


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


TOKENIZER_FILES = (
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
    for name in TOKENIZER_FILES:
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

    The merge runs in the dtype the base is stored in (see :mod:`jupyter_distill.export.memory`).

    Idempotent: a finished merge records the adapter's hash and base path, and an identical
    request returns the existing folder. Written to a temp folder and renamed, so a crash never
    leaves a half-written merged model that a later run would trust.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = Path(adapter_dir).resolve()
    out_dir = Path(out_dir).resolve()
    base = adapter_base(adapter_dir, base_folder)
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
    if marker.is_file() and is_hf_dir(out_dir):
        try:
            if json.loads(marker.read_text()) == source:
                return out_dir
        except json.JSONDecodeError:
            pass
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # The stored dtype, not fp32: a bf16 8B base merges in 16 GB instead of 32 GB. Shards of at most
    # MERGE_SHARD_BYTES keep the save from serialising the whole model in one buffer.
    dtype = getattr(torch, stored_dtype(json.loads((base / "config.json").read_text())))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype, trust_remote_code=False)
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=MERGE_SHARD_BYTES)
    del model, merged
    _copy_tokenizer([adapter_dir, base], tmp)
    _copy_source_marker(base, tmp)
    (tmp / "jupyter_distill_merge.json").write_text(json.dumps(source, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def prepare_merged(
    model_or_path: Any, work: Path, base_folder: str | Path | None, tokenizer: Any
) -> tuple[Path, Path | None]:
    """Turn whatever the caller has into (merged HF folder, adapter folder or None)."""
    if isinstance(model_or_path, str | Path):
        path = Path(model_or_path).expanduser().resolve()
        if is_adapter_dir(path):
            return merge_lora(path, work / "merged", base_folder=base_folder), path
        if is_hf_dir(path):
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


__all__ = [
    "TOKENIZER_FILES",
    "adapter_base",
    "folder_chat_template",
    "is_adapter_dir",
    "is_hf_dir",
    "merge_lora",
    "prepare_merged",
]
