"""The README's code runs as written.

Every fenced ``python`` block and the ``%%distill`` cell of README.md (everything after the quick
start's shell commands) is extracted and run, in order, in one real IPython ``InteractiveShell``
from a folder laid out like the repository (``examples/tickets.jsonl`` next to it), as a user
pasting them into a notebook would. The snippets' settings are small enough to run on 2 CPU
cores in a few minutes, so nothing is shrunk: a README that drifts from the API fails here.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)

pytestmark = pytest.mark.slow


def readme_snippets(text: str) -> list[str]:
    """The code a user would run: python blocks and notebook cells, not the shell commands."""
    return [body for lang, body in FENCE.findall(text) if lang in ("python", "")]


def test_snippets_are_found() -> None:
    snippets = readme_snippets((ROOT / "README.md").read_text())
    assert any(s.startswith("%%distill") for s in snippets)
    assert any("jd.distill(" in s for s in snippets)
    assert any("jd.completion(" in s for s in snippets)


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "tickets.jsonl", tmp_path / "examples" / "tickets.jsonl")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    ip = InteractiveShell.instance()
    yield ip
    if "jupyter_distill" in ip.extension_manager.loaded:
        ip.run_line_magic("unload_ext", "jupyter_distill")


def run(shell: InteractiveShell, code: str) -> Any:
    result = shell.run_cell(code)
    if result.error_before_exec or result.error_in_exec:
        raise AssertionError(f"README snippet failed:\n{code}") from (result.error_before_exec or result.error_in_exec)
    return result.result


@pytest.mark.timeout(1800)
def test_readme_snippets_run_as_written(shell: InteractiveShell, tmp_path: Path) -> None:
    import jupyter_distill as jd

    for snippet in readme_snippets((ROOT / "README.md").read_text()):
        run(shell, snippet)
        if snippet.startswith("%%distill"):
            name = snippet.split()[1]
            summary = run(shell, f"%distill wait {name}")
            assert summary.run["status"] == "done", summary.run
    # what the snippets promise: the store in ./.distill, both aliases answering, a local call free
    assert (tmp_path / ".distill" / "runs.db").is_file()
    assert "ticket-classifier" in jd.list_aliases()
    resp = jd.completion(model="ticket-classifier", messages=[{"role": "user", "content": "Ticket: refund please"}])
    assert resp._cost == 0.0 and isinstance(resp.choices[0].message.content, str)
