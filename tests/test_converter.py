"""llama.cpp's converter as the install places it: unpacking from the sdist, finding it, and the
pre-flight architecture check that runs before any teacher request."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from jupyter_distill.core.errors import ExportError
from jupyter_distill.export import converter as gguf_converter
from jupyter_distill.export.gguf import SUPPORTED_ARCHITECTURES, check_exportable


def _fake_sdist(path: Path, *, with_gguf_py: bool = True, evil: bool = False) -> Path:
    root = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
    files = {
        root + "convert_hf_to_gguf.py": b"# converter\n",
        root + "convert_lora_to_gguf.py": b"# lora\n",
        root + "conversion/__init__.py": b'TEXT_MODEL_MAP: dict[str, str] = {"LlamaForCausalLM": "llama"}\n',
        root + "README.md": b"not extracted",
        "llama_cpp_python-9.9.9/llama_cpp/llama.py": b"not extracted",
    }
    if with_gguf_py:
        files[root + "gguf-py/gguf/__init__.py"] = b""
    if evil:
        files[root + "conversion/../../../../escape.py"] = b"no"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_install_unpacks_only_the_converter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = gguf_converter.install_from_sdist(_fake_sdist(tmp_path / "s.tar.gz", evil=True), tmp_path / "conv")
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["conversion", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py", "jupyter_distill_converter.json"]
    )
    assert not (tmp_path / "escape.py").exists() and not list(tmp_path.rglob("escape.py"))
    assert gguf_converter.converter_version(dest) == "9.9.9"
    monkeypatch.setenv(gguf_converter.CONVERTER_ENV, str(dest))
    assert gguf_converter.find_converter() == dest
    assert gguf_converter.supported_classes() == {"LlamaForCausalLM": "llama"}
    # a re-install replaces the folder atomically (no stale files from the last version)
    (dest / "stale.py").write_text("")
    gguf_converter.install_from_sdist(_fake_sdist(tmp_path / "s2.tar.gz"), dest)
    assert not (dest / "stale.py").exists()


def test_install_refuses_an_archive_without_the_converter(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="gguf-py") as info:
        gguf_converter.install_from_sdist(_fake_sdist(tmp_path / "s.tar.gz", with_gguf_py=False), tmp_path / "c")
    assert info.value.field == "sdist" and not (tmp_path / "c").exists()


def test_missing_converter_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gguf_converter.CONVERTER_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ExportError) as info:
        check_exportable("llama", "q4_k_m")
    assert "make install" in str(info.value) and info.value.field == "converter"
    check_exportable("llama", None)  # no export asked for: nothing to check


def test_check_exportable_before_any_request() -> None:
    for arch in ("llama", "qwen2", "qwen3", "gemma3", "gemma3_text", "smollm3", "phi3", "granite"):
        check_exportable(arch, "q4_k_m")
    check_exportable("Gemma3ForCausalLM", "f16")  # HF class names are accepted too
    with pytest.raises(ExportError) as info:
        check_exportable("frobnicator", "q4_k_m")
    message = str(info.value)
    assert "'frobnicator'" in message and all(a in message for a in SUPPORTED_ARCHITECTURES)
    assert info.value.field == "architecture"
    with pytest.raises(ExportError) as info:
        check_exportable("llama", "q3_weird")
    assert info.value.field == "quantize"
