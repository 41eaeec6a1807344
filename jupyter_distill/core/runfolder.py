"""The run folder: where run stores (``runs.db``) and run artifacts live, as one setting.

Every front end reads it from here, so a run made in a notebook, by ``jd.distill`` in a script,
or by ``make demo`` lands in the folder the JupyterLab panel shows:

- ``$JUPYTER_DISTILL_WORKDIR`` when set, else ``.distill``;
- relative folders are resolved against the working directory of whoever reads them (a kernel
  runs in its notebook's folder, the server in its root dir). So the server extension resolves
  the folder once, against its root dir, and exports the absolute path in
  ``JUPYTER_DISTILL_WORKDIR`` to the kernels it starts: a notebook in any sub-folder then writes
  where the panel reads, with nothing configured.

``JD_WORKDIR``, the variable the notebooks used to read, still works and warns.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

#: The one environment variable that overrides the run folder.
RUN_FOLDER_ENV = "JUPYTER_DISTILL_WORKDIR"
#: Older names of the same setting: read (after :data:`RUN_FOLDER_ENV`) with a DeprecationWarning.
DEPRECATED_RUN_FOLDER_ENVS: tuple[str, ...] = ("JD_WORKDIR",)
#: The run folder when nothing is set, relative to the reader's working directory.
DEFAULT_RUN_FOLDER = ".distill"


def run_folder() -> str:
    """The configured run folder, as written (``$JUPYTER_DISTILL_WORKDIR``, else ``.distill``).

    Read on every call, not at import: the server extension sets the variable at start-up and
    tests set it per test.
    """
    value = os.environ.get(RUN_FOLDER_ENV, "").strip()
    if value:
        return value
    for old in DEPRECATED_RUN_FOLDER_ENVS:
        value = os.environ.get(old, "").strip()
        if value:
            warnings.warn(
                f"${old} is deprecated: set ${RUN_FOLDER_ENV} instead (the same folder, read by the magics, "
                "jd.distill, the JupyterLab panel and make demo).",
                DeprecationWarning,
                stacklevel=2,
            )
            return value
    return DEFAULT_RUN_FOLDER


def resolve_run_folder(
    folder: str | os.PathLike[str] | None = None, root: str | os.PathLike[str] | None = None
) -> Path:
    """``folder`` (default: :func:`run_folder`) as an absolute path; a relative one is taken under ``root``
    (default: the current working directory). ``~`` is expanded. Nothing is created."""
    path = Path(folder if folder is not None and str(folder) else run_folder()).expanduser()
    if not path.is_absolute():
        path = Path(root if root is not None else Path.cwd()).expanduser() / path
    return path.resolve()


__all__ = [
    "DEFAULT_RUN_FOLDER",
    "DEPRECATED_RUN_FOLDER_ENVS",
    "RUN_FOLDER_ENV",
    "resolve_run_folder",
    "run_folder",
]
