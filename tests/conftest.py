"""Shared fixtures.

``openai_server``: a real OpenAI-compatible aiohttp server on 127.0.0.1 (random free port,
background thread), fresh for each test; its knobs and records are documented in
``tests/openai_server.py``. Point a teacher at it with ``load_teacher(openai_server.spec())`` or,
for named providers, ``base_url=openai_server.url``.

``tiny_llama_student``: the 2-layer llama of ``tests/tiny_models.py`` as an HF folder, built once per
session and shared by every module whose runs train it (a run writes its adapter, merge and GGUFs
into its own workdir, never into the student's folder; the fixture checks that at the end).

``tiny_adapter_export``: a LoRA adapter over that student and its q8_0 GGUF export, made once per
session for the serving and promotion tests, which only read them.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_server import OpenAIServer


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    server = OpenAIServer().start()
    try:
        yield server
    finally:
        server.stop()


def _folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="session")
def tiny_llama_student(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One tiny llama student for the whole session (building one loads the SmolLM2 tokenizer and
    writes a model: seconds each time on 2 cores). Sharing is safe only while nothing writes into
    the folder, so the teardown fails the session if a test changed, added or removed a file."""
    from tiny_models import build_tiny_llama

    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-student"))
    before = _folder_digest(folder)
    yield folder
    assert _folder_digest(folder) == before, f"a test wrote into the shared student folder {folder}"


@pytest.fixture(scope="session")
def tiny_adapter_export(tiny_llama_student: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``{"root", "base", "adapter", "export"}``: an adapter (seed 1) over the shared student and the
    :class:`~jupyter_distill.export.gguf.ExportResult` of its q8_0 export (one conversion, one
    quantization and one agreement check for the session, where each module used to make its own).
    The files must stay as exported, which the teardown checks like the student's."""
    from tiny_models import CHECK_PROMPTS, add_lora_adapter

    from jupyter_distill.export.gguf import export_gguf

    root = tmp_path_factory.mktemp("tiny-adapter-export")
    add_lora_adapter(tiny_llama_student, root / "adapter")
    exported = export_gguf(
        root / "adapter", root / "export", quantize="q8_0", check_prompts=CHECK_PROMPTS[:1], check_tokens=4
    )
    before = _folder_digest(root)
    yield {"root": root, "base": tiny_llama_student, "adapter": root / "adapter", "export": exported}
    assert _folder_digest(root) == before, f"a test wrote into the shared adapter export {root}"


@pytest.fixture(autouse=True)
def _hermetic_run_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without a run-folder setting in the environment and ends with the one it
    found: the server extension exports its run folder into ``os.environ`` for its kernels, and an
    in-process server must not move the next test's default run folder."""
    from jupyter_distill.core.runfolder import DEPRECATED_RUN_FOLDER_ENVS, RUN_FOLDER_ENV

    for name in (RUN_FOLDER_ENV, *DEPRECATED_RUN_FOLDER_ENVS):
        monkeypatch.delenv(name, raising=False)
