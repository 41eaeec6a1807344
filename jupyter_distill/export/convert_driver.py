"""Subprocess entry point around llama.cpp's converter; run as ``python -I convert_driver.py SPEC``.

It is a script, not a module of the package: it runs with the converter's own ``gguf-py`` first on
``sys.path`` (so the converter gets the ``gguf`` it was written for, and this never happens in a
process that uses the pinned ``gguf``), imports nothing of jupyter_distill, and adds to the
converter only what an export needs that its command line lacks:

- provenance keys written into the GGUF header (``extra_kv``);
- the chat template the student was trained with, written whatever the folder's tokenizer says;
- a pre-tokenizer name for a byte-level BPE vocabulary whose fingerprint the converter does not know
  (a retrained or truncated vocabulary), decided by the caller from tokenizer.json's regex;
- the vocabulary copied verbatim from a GGUF (``vocab_from``): a student loaded from a GGUF keeps
  exactly the tokens, scores, types and special ids llama.cpp already tokenizes it with.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _copy_vocab(gguf: Any, writer: Any, source: str) -> None:
    reader = gguf.GGUFReader(source)
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or key == "tokenizer.chat_template":
            continue
        main = field.types[0]
        value = field.contents()
        if main == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, main, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, main)


def _add_extra(gguf: Any, writer: Any, extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, bool):
            writer.add_key_value(key, value, gguf.GGUFValueType.BOOL)
        elif isinstance(value, int):
            writer.add_key_value(key, value, gguf.GGUFValueType.INT64)
        elif isinstance(value, float):
            writer.add_key_value(key, value, gguf.GGUFValueType.FLOAT64)
        elif value is not None:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            writer.add_key_value(key, text, gguf.GGUFValueType.STRING)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    converter = Path(spec["converter"])
    sys.path[0:0] = [str(converter / "gguf-py"), str(converter)]
    import gguf
    import torch

    if not Path(gguf.__file__).resolve().is_relative_to(converter.resolve()):
        print(f"the converter's gguf-py was shadowed by {gguf.__file__}", file=sys.stderr)
        return 3
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    model_dir = Path(spec["model"])
    hparams = ModelBase.load_hparams(model_dir, False)
    arch = get_model_architecture(hparams, ModelType.TEXT)
    try:
        cls = get_model_class(arch)
    except NotImplementedError:
        print(f"architecture {arch!r} is not supported by this llama.cpp converter", file=sys.stderr)
        return 4

    class Export(cls):  # type: ignore[misc, valid-type]
        model_arch = cls.model_arch

        def get_vocab_base_pre(self, tokenizer: Any) -> str:
            try:
                return super().get_vocab_base_pre(tokenizer)
            except NotImplementedError:
                if spec.get("pre_tokenizer"):
                    return spec["pre_tokenizer"]
                raise

        def set_vocab(self) -> None:
            if spec.get("vocab_from"):
                _copy_vocab(gguf, self.gguf_writer, spec["vocab_from"])
            else:
                super().set_vocab()

        def prepare_metadata(self, vocab_only: bool) -> None:
            super().prepare_metadata(vocab_only)
            if spec.get("chat_template"):
                self.gguf_writer.add_key_value(
                    gguf.Keys.Tokenizer.CHAT_TEMPLATE, spec["chat_template"], gguf.GGUFValueType.STRING
                )
            _add_extra(gguf, self.gguf_writer, spec.get("extra_kv") or {})

    types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    }
    meta_path = None
    if spec.get("metadata"):
        meta_path = Path(spec_path).with_name("metadata.json")
        meta_path.write_text(json.dumps(spec["metadata"]))
    with torch.inference_mode():
        model = Export(
            model_dir,
            types[spec.get("outtype", "f16")],
            Path(spec["outfile"]),
            metadata_override=meta_path,
            model_name=spec.get("name"),
        )
        model.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
