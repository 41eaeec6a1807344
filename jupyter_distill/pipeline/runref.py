"""Which run a user means: a run name, a ``Run`` or the ``Student`` that ``distill()`` returned.

Calibration, promotion and the audit all start from "the run", and users hold it in whichever
form they have at hand. A ``Run`` carries its store; a ``Student`` made by a run records the run's
name and folder in its metadata (older ones are found through their file paths, which live under
``<workdir>/runs/<name>/``); a bare name is looked up in ``workdir`` (default: the run folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import ConfigError
from jupyter_distill.core.store import RunStore


@dataclass
class RunRef:
    """A resolved run: its store and id, and the ``Run`` object when the caller passed one."""

    store: RunStore
    run_id: str
    run: Any = None

    @property
    def record(self) -> dict[str, Any]:
        return self.store.get_run(self.run_id) or {}

    @property
    def config(self) -> dict[str, Any]:
        return self.record.get("config") or {}

    @property
    def summary(self) -> dict[str, Any]:
        return self.record.get("summary") or {}


def workdir_from_path(path: Path | None, name: str) -> Path | None:
    """``<workdir>`` for a file or folder under ``<workdir>/runs/<name>/``."""
    if path is None:
        return None
    for parent in Path(path).parents:
        if parent.name == name and parent.parent.name == "runs":
            return parent.parent.parent
    return None


def resolve_run(run: Any, workdir: str | Path | None = None) -> RunRef:
    """The store and id of ``run`` (a name, a ``Run`` or a ``Student``); ``ConfigError`` naming
    the runs there when it is not found."""
    from jupyter_distill.pipeline.run import Run
    from jupyter_distill.serving.student import Student

    if isinstance(run, Run):
        return RunRef(run.store, run.name, run)
    if isinstance(run, Student):
        recorded = (run.metadata or {}).get("run") or {}
        name = str(recorded.get("name") or run.name)
        folder = workdir or recorded.get("workdir")
        if folder is None:
            for path in (run.gguf_path, run.adapter_dir, run.merged_dir):
                folder = workdir_from_path(path, name)
                if folder is not None:
                    break
        return _by_name(name, folder)
    if isinstance(run, str) and run:
        return _by_name(run, workdir)
    raise ConfigError(
        f"run must be a run name, a Run or the Student distill() returned, got {type(run).__name__}. "
        "Fix: pass e.g. the name shown by `%distill runs`.",
        field="run",
        value=repr(run)[:80],
    )


def _by_name(name: str, workdir: str | Path | None) -> RunRef:
    from jupyter_distill.core.runfolder import run_folder

    folder = Path(workdir if workdir is not None else run_folder())
    if not (folder / "runs.db").is_file():  # never create a run store just to look a name up
        raise ConfigError(
            f"no run named {name!r}: {str(folder)!r} holds no run store (runs.db). Fix: pass the workdir= the run "
            "was made in.",
            field="run",
            value=name,
        )
    store = RunStore(folder)
    if store.get_run(name) is None:
        known = ", ".join(r["id"] for r in store.list_runs()[:10]) or "none"
        raise ConfigError(
            f"no run named {name!r} in {str(store.workdir)!r} (runs there: {known}). Fix: check the name with "
            "`%distill runs`, or pass the workdir= the run was made in.",
            field="run",
            value=name,
        )
    return RunRef(store, name)


__all__ = ["RunRef", "resolve_run", "workdir_from_path"]
