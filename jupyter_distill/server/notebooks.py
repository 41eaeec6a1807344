"""Which notebooks under the server's root made a run, so a panel row can open them.

The run store does not record the notebook a run came from (a run may come from a script, a
test or ``make demo``), but the notebook records the run: its ``%%distill NAME`` cell, or a
``distill(..., name="NAME")`` call. So the server looks for those cells in the notebooks it
serves. The walk is bounded (files, bytes per file) and skips hidden folders (checkpoints,
virtual environments, run folders), so a large root costs a bounded time, and only on a click.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

#: Notebook files read at most per search (the newest matches are returned first).
MAX_NOTEBOOKS = 2000
#: Larger notebooks are skipped (their outputs, not their code, make them large).
MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024
#: Folders never walked, besides hidden ones.
SKIPPED_FOLDERS = frozenset({"node_modules", "__pycache__", "site-packages"})

_CALL_NAME = re.compile(r"""\bname\s*=\s*(["'])(?P<name>[^"']+)\1""")


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def cell_makes_run(source: str, run_id: str) -> bool:
    """Whether a code cell starts run ``run_id``: ``%%distill run_id ...`` or ``distill(..., name="run_id")``."""
    lines = source.lstrip().splitlines()
    if not lines:
        return False
    first = lines[0].strip()
    if first.startswith("%%distill"):
        try:
            tokens = shlex.split(first)
        except ValueError:
            tokens = first.split()
        return run_id in [t for t in tokens[1:] if not t.startswith("-")]
    return "distill(" in source and any(m.group("name") == run_id for m in _CALL_NAME.finditer(source))


def notebook_makes_run(path: Path, run_id: str) -> bool:
    """Whether any code cell of the notebook at ``path`` starts ``run_id`` (unreadable files: no)."""
    try:
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            return False
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    cells = doc.get("cells") if isinstance(doc, dict) else None
    if not isinstance(cells, list):
        return False
    return any(
        isinstance(cell, dict) and cell.get("cell_type") == "code" and cell_makes_run(_source(cell), run_id)
        for cell in cells
    )


def find_run_notebooks(root: str | os.PathLike[str], run_id: str, *, limit: int = MAX_NOTEBOOKS) -> dict[str, Any]:
    """``{"notebooks": [paths relative to root, newest first], "searched": n, "complete": bool}``."""
    base = Path(root)
    found: list[tuple[float, str]] = []
    searched = 0
    complete = True
    for folder, subfolders, files in os.walk(base):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in SKIPPED_FOLDERS)
        for name in sorted(files):
            if not name.endswith(".ipynb") or name.startswith("."):
                continue
            if searched >= limit:
                complete = False
                break
            searched += 1
            path = Path(folder) / name
            if notebook_makes_run(path, run_id):
                try:
                    mtime = path.stat().st_mtime
                except OSError:
                    continue
                found.append((mtime, path.relative_to(base).as_posix()))
        if not complete:
            break
    found.sort(key=lambda item: (-item[0], item[1]))
    return {"notebooks": [p for _, p in found], "searched": searched, "complete": complete}


__all__ = ["MAX_NOTEBOOKS", "MAX_NOTEBOOK_BYTES", "cell_makes_run", "find_run_notebooks", "notebook_makes_run"]
