"""llama.cpp's own HF -> GGUF converter, taken from the llama-cpp-python sdist the install builds.

Why this one: the converter that ships with a llama.cpp release knows exactly the architectures,
tensor layouts and tokenizer pre-processing that this llama.cpp loads (well over a hundred
families), so a student of any of them exports without a converter of our own per family. It is
plain Python (``convert_hf_to_gguf.py``, its ``conversion/`` package and its own ``gguf-py/``):
no compiler and no network at export time.

Where it lives: the install (``make install``) unpacks those three parts from the sdist of the
pinned llama-cpp-python into ``<venv>/share/jupyter-distill/llama-cpp-convert/``
(``python -m jupyter_distill.export.converter install SDIST``); ``JUPYTER_DISTILL_LLAMA_CPP_CONVERT``
names another folder. It runs in a subprocess (:mod:`jupyter_distill.export.convert_driver`) with
its own ``gguf-py`` first on ``sys.path``, so its ``gguf`` never shadows the pinned ``gguf``
package this process uses, and a crash in it cannot take the kernel down.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import ExportError

CONVERTER_ENV = "JUPYTER_DISTILL_LLAMA_CPP_CONVERT"
_PARTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion", "gguf-py")
_STAMP = "jupyter_distill_converter.json"
DRIVER = Path(__file__).with_name("convert_driver.py")


def default_dir() -> Path:
    """Where the install puts the converter: beside the venv's other shared data."""
    return Path(sys.prefix) / "share" / "jupyter-distill" / "llama-cpp-convert"


def converter_dir() -> Path:
    """The converter folder in use (the environment variable wins over the install's folder)."""
    named = os.environ.get(CONVERTER_ENV)
    return Path(named).expanduser() if named else default_dir()


def find_converter() -> Path:
    """The converter folder, checked complete; raises ``ExportError`` saying how to install it."""
    folder = converter_dir()
    missing = [p for p in _PARTS if not (folder / p).exists()]
    if missing:
        raise ExportError(
            f"llama.cpp's converter is not installed in {str(folder)!r} (missing {', '.join(missing)}). "
            "Fix: run `make install`, or `pip download --no-deps --no-binary llama-cpp-python "
            "llama-cpp-python==<installed version>` and `python -m jupyter_distill.export.converter install "
            f"<the .tar.gz>`; or set {CONVERTER_ENV} to a folder holding convert_hf_to_gguf.py, "
            "conversion/ and gguf-py/.",
            field="converter",
            value=str(folder),
        )
    return folder


def converter_version(folder: Path | None = None) -> str | None:
    """The llama-cpp-python version the converter came from (recorded at install), or None."""
    stamp = (folder or converter_dir()) / _STAMP
    try:
        return json.loads(stamp.read_text())["llama_cpp_python"]
    except (OSError, ValueError, KeyError):
        return None


def install_from_sdist(sdist: str | Path, dest: str | Path | None = None) -> Path:
    """Unpack the converter's parts from a llama-cpp-python sdist into ``dest`` (atomically).

    Only ``vendor/llama.cpp/{convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/, gguf-py/}``
    are extracted (about 2 MB of the 77 MB archive); members that would escape the folder are refused.
    """
    sdist = Path(sdist)
    dest = Path(dest) if dest else default_dir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=dest.parent))
    version = None
    try:
        with tarfile.open(sdist, "r:*") as archive:
            for member in archive:
                parts = Path(member.name).parts
                if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or parts[3] not in _PARTS:
                    continue
                if version is None and parts[0].startswith("llama_cpp_python-"):
                    version = parts[0].removeprefix("llama_cpp_python-")
                if not (member.isfile() or member.isdir()) or ".." in parts:
                    continue
                target = tmp.joinpath(*parts[3:])
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
        missing = [p for p in _PARTS if not (tmp / p).exists()]
        if missing:
            raise ExportError(
                f"{str(sdist)!r} does not hold llama.cpp's converter (missing {', '.join(missing)} under "
                "vendor/llama.cpp/). Fix: pass the llama-cpp-python source archive (.tar.gz), not a wheel.",
                field="sdist",
                value=str(sdist),
            )
        (tmp / _STAMP).write_text(json.dumps({"llama_cpp_python": version, "sdist": sdist.name}))
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _text_model_map.cache_clear()
    return dest


@lru_cache(maxsize=4)
def _text_model_map(folder: str) -> dict[str, str]:
    """HF architecture class -> converter module, read from conversion/__init__.py without importing it
    (importing the converter imports torch and its own gguf; this check must stay cheap)."""
    tree = ast.parse((Path(folder) / "conversion" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value is not None:
            return dict(ast.literal_eval(node.value))
    return {}


def supported_classes() -> dict[str, str]:
    """HF architecture classes the installed converter handles (``{}`` when it is not installed)."""
    folder = converter_dir()
    if not (folder / "conversion" / "__init__.py").is_file():
        return {}
    return _text_model_map(str(folder))


def run_converter(
    hf_folder: str | Path,
    out_path: str | Path,
    *,
    outtype: str = "f16",
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
    extra_kv: dict[str, Any] | None = None,
    pre_tokenizer: str | None = None,
    vocab_from: str | Path | None = None,
    chat_template: str | None = None,
    timeout: float | None = None,
) -> Path:
    """Convert an HF folder into one GGUF file with llama.cpp's converter, in a subprocess.

    ``metadata``: the converter's own metadata override (``general.license``, ``general.base_models``,
    ...). ``extra_kv``: further string/number keys written into the header (provenance).
    ``pre_tokenizer``: the llama.cpp pre-tokenizer to use when the converter does not recognise the
    tokenizer by its fingerprint (a retrained or truncated BPE vocabulary). ``vocab_from``: a GGUF
    whose tokenizer metadata is copied verbatim (a student that was itself loaded from a GGUF keeps
    exactly the vocabulary llama.cpp already tokenizes with). ``chat_template``: written into the
    header whatever the folder's tokenizer holds. Written to a temp name and renamed.
    """
    folder = find_converter()
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="jd-convert-") as work:
        spec = {
            "converter": str(folder),
            "model": str(Path(hf_folder).resolve()),
            "outfile": str(tmp),
            "outtype": outtype,
            "name": name,
            "metadata": metadata or {},
            "extra_kv": extra_kv or {},
            "pre_tokenizer": pre_tokenizer,
            "vocab_from": str(vocab_from) if vocab_from else None,
            "chat_template": chat_template,
        }
        spec_path = Path(work) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        # -I: the driver's own folder and PYTHONPATH stay off sys.path; it puts gguf-py first itself.
        proc = subprocess.run(
            [sys.executable, "-I", str(DRIVER), str(spec_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=work,
        )
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-12:]
        raise ExportError(
            f"llama.cpp's converter failed on {str(hf_folder)!r} (exit code {proc.returncode}):\n"
            + "\n".join(tail)
            + "\nFix: check that the folder is a complete HF model (config.json, safetensors, tokenizer) of an "
            "architecture the converter supports.",
            field="converter",
            value=str(hf_folder),
        )
    os.replace(tmp, out_path)
    return out_path


def run_lora_converter(
    adapter_dir: str | Path,
    base_folder: str | Path,
    out_path: str | Path,
    *,
    outtype: str = "f16",
    timeout: float | None = None,
) -> Path:
    """Convert a PEFT LoRA adapter into a llama.cpp LoRA GGUF (``convert_lora_to_gguf.py``).

    The base folder is read for its config only (no weights are loaded). The script runs from its
    own folder (it imports ``conversion`` from there and puts its ``gguf-py`` first itself).
    """
    folder = find_converter()
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    cmd = [
        sys.executable, "-s", str(folder / "convert_lora_to_gguf.py"), "--base", str(Path(base_folder).resolve()),
        "--outfile", str(tmp), "--outtype", outtype, str(Path(adapter_dir).resolve()),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="jd-lora-") as work:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=work)
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-12:]
        raise ExportError(
            f"llama.cpp's LoRA converter failed on {str(adapter_dir)!r} (exit code {proc.returncode}):\n"
            + "\n".join(tail)
            + "\nFix: export with export='merged', or check that the adapter targets linear layers of the base.",
            field="export",
            value="adapter",
        )
    os.replace(tmp, out_path)
    return out_path


def _main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "install":
        dest = install_from_sdist(argv[1], argv[2] if len(argv) > 2 else None)
        print(f"llama.cpp converter {converter_version(dest)} installed in {dest}")
        return 0
    if argv and argv[0] == "where":
        print(find_converter())
        return 0
    print("usage: python -m jupyter_distill.export.converter install SDIST [DEST] | where", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
