"""Switching the panel's run folder for the server's session, and sharing it with new kernels.

The run folder is one setting (:mod:`jupyter_distill.core.runfolder`), fixed when the server
starts. A user who finds "No runs yet" next to a run made elsewhere (``make demo`` writes
``.demo/distill``) must be able to point the panel there without restarting JupyterLab, so the
panel may switch the folder for as long as this server runs. Only folders that already exist
are accepted (a typo must not silently show an empty list, and a GET never creates files), and
only under the server's root or a folder the operator allowed with
``c.DistillServer.allowed_workdirs``: the REST API must not become a way to read run stores
anywhere on the server's disk. Symbolic links are resolved before that check, so a link inside
the root cannot lead outside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from jupyter_distill.core.errors import ConfigError
from jupyter_distill.core.runfolder import RUN_FOLDER_ENV

#: Longest folder text accepted from the panel (a path, not data).
MAX_FOLDER_CHARS = 4096


def share_run_folder(folder: Path) -> None:
    """Export the absolute run folder to the kernels this server starts (they inherit its environment).

    A kernel runs in its notebook's folder, so a relative ``.distill`` there is another folder than
    the panel's ``<root>/.distill``; the absolute path makes both one, with nothing to configure.
    Kernels already running keep the folder they started with.
    """
    os.environ[RUN_FOLDER_ENV] = str(folder)


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def choose_workdir(value: object, root_dir: str | os.PathLike[str], allowed: Iterable[str] = ()) -> Path:
    """The absolute, existing folder ``value`` names, if the panel may switch to it.

    ``value`` is what the user typed: relative to the server's root, absolute, or ``~/...``.
    It must be an existing folder under ``root_dir`` or under one of ``allowed`` (relative ones
    also taken under ``root_dir``). ``ConfigError`` names the field, the value and the fix otherwise.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            "'path' must be a non-empty string naming the run folder, e.g. '.distill' or 'experiments/.distill'. "
            'Fix: send {"path": "<folder>"}.',
            field="path",
            value=value,
        )
    text = value.strip()
    if len(text) > MAX_FOLDER_CHARS or "\0" in text:
        raise ConfigError(
            f"'path' is not a usable folder name ({len(text)} characters). Fix: send a folder path.",
            field="path",
            value=text[:80],
        )
    root = Path(root_dir).expanduser().resolve()
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = root / path
    try:
        path = path.resolve()
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name the OS refuses
        exists = is_dir = False
    if not exists:
        raise ConfigError(
            f"run folder {text!r} does not exist. Fix: give a folder that exists (relative paths are taken under "
            "the server's root folder); a %%distill run creates its folder on its first run.",
            field="path",
            value=text,
        )
    if not is_dir:
        raise ConfigError(
            f"run folder {text!r} is a file, not a folder. Fix: give the folder that holds runs.db.",
            field="path",
            value=text,
        )
    roots = [root] + [_resolved(a, root) for a in allowed if str(a).strip()]
    if not any(_inside(path, r) for r in roots):
        raise ConfigError(
            f"run folder {text!r} is outside the server's root folder. Fix: choose a folder under the root, or "
            "let the server's operator allow it with c.DistillServer.allowed_workdirs (or start JupyterLab with "
            f"${RUN_FOLDER_ENV} set to it).",
            field="path",
            value=text,
        )
    return path


def _resolved(folder: str, root: Path) -> Path:
    path = Path(folder).expanduser()
    return (path if path.is_absolute() else root / path).resolve()


__all__ = ["MAX_FOLDER_CHARS", "choose_workdir", "share_run_folder"]
