"""Shared fixtures.

``openai_server``: a real OpenAI-compatible aiohttp server on 127.0.0.1 (random free port,
background thread), fresh for each test; its knobs and records are documented in
``tests/openai_server.py``. Point a teacher at it with ``load_teacher(openai_server.spec())`` or,
for named providers, ``base_url=openai_server.url``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(autouse=True)
def _hermetic_run_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without a run-folder setting in the environment and ends with the one it
    found: the server extension exports its run folder into ``os.environ`` for its kernels, and an
    in-process server must not move the next test's default run folder."""
    from jupyter_distill.core.runfolder import DEPRECATED_RUN_FOLDER_ENVS, RUN_FOLDER_ENV

    for name in (RUN_FOLDER_ENV, *DEPRECATED_RUN_FOLDER_ENVS):
        monkeypatch.delenv(name, raising=False)
