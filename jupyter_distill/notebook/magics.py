"""``%%distill`` and ``%distill``: the notebook surface of jupyter-distill.

::

    %load_ext jupyter_distill

    %%distill tickets --steps 60          # NAME and flags; flags override the YAML body
    dataset: data/tickets.jsonl
    judge: $verify                        # `$name` takes a variable from the kernel
    alias: ticket-classifier

    %distill status|stop|wait|resume NAME|review NAME|runs|aliases|estimate|export NAME  (each --help)
    %distill promote RUN --alias NAME [--min-pass-rate F] [--max-latency-ms F] [--min-gain F]
    %distill rollback ALIAS | history ALIAS

This module is the thin IPython class: it holds the settings and this kernel's runs, parses a
line into a typed command and dispatches it to its handler. Why it is built this way:

- Parsing (:mod:`~jupyter_distill.notebook.magic_parser`) turns ``shlex.split`` + ``argparse``
  into one frozen dataclass per subcommand (:mod:`~jupyter_distill.notebook.commands`), and each
  type has one small handler (:mod:`~jupyter_distill.notebook.handlers`) that takes this class as
  its :class:`~jupyter_distill.notebook.handlers.context.MagicContext`.
- The cell body goes through :mod:`~jupyter_distill.notebook.cell_config`, so a YAML error names
  the line and the key, and flags override the body.
- Settings are traitlets with ``config=True``: ``%config DistillMagics.workdir = "..."``.
- ``%%distill`` returns at once: the run goes to a background thread and the cell shows a
  :class:`~jupyter_distill.notebook.dashboard.RunDashboard` updated through widget traits.
- A ``DistillError`` is shown as its message only (the exception gets ``_render_traceback_``),
  and the cell still fails, so "Run all" stops there. No ``set_custom_exc``: other exceptions in
  the user's kernel keep their normal tracebacks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Bool, Float, Unicode, validate
from traitlets import default as trait_default

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.errors import ConfigError, DistillError
from jupyter_distill.core.runfolder import run_folder
from jupyter_distill.core.store import RunStore
from jupyter_distill.notebook import cell_config
from jupyter_distill.notebook.commands import (
    AliasesCommand,
    Command,
    EstimateCommand,
    ExportCommand,
    HistoryCommand,
    PromoteCommand,
    ResumeCommand,
    ReviewCommand,
    RollbackCommand,
    RunCommand,
    RunsCommand,
    StatusCommand,
    StopCommand,
    WaitCommand,
)
from jupyter_distill.notebook.dashboard import RunDashboard, UnknownRunError
from jupyter_distill.notebook.display import Notice, Table
from jupyter_distill.notebook.handlers import PromotionRefused, ReviewPendingError, RunBusyError, dispatch
from jupyter_distill.notebook.handlers.run import launch as launch_run
from jupyter_distill.notebook.magic_parser import (
    MagicUsageError,
    build_cell_parser,
    build_line_parser,
    parse_cell_line,
    parse_line,
)


def _workdir_key(workdir: str | Path) -> str:
    try:
        return str(Path(workdir).expanduser().resolve())
    except (OSError, ValueError, RuntimeError):  # opening the store reports what is wrong with it
        return str(workdir)


def _clean_traceback(exc: DistillError) -> DistillError:
    """Let IPython show only ``Type: message`` for a user error (it honours ``_render_traceback_``)."""
    line = f"{type(exc).__name__}: {exc}"
    exc._render_traceback_ = lambda: [f"\x1b[0;31m{line}\x1b[0m"]  # type: ignore[attr-defined]
    return exc


@magics_class
class DistillMagics(Magics):
    """``%%distill`` / ``%distill``. Settings: ``%config DistillMagics.<name> = value``."""

    workdir = Unicode(
        help="Folder of the run store (runs.db) and run artifacts. Default: $JUPYTER_DISTILL_WORKDIR (in "
        "JupyterLab, the folder the Distill panel shows), else '.distill'."
    ).tag(config=True)
    default_teacher = Unicode(
        "local:smollm2-135m", help="Teacher used when neither the cell body nor a flag names one."
    ).tag(config=True)
    default_student = Unicode("smollm2-135m", help="Student used when neither the cell body nor a flag names one.").tag(
        config=True
    )
    show_console = Bool(
        False, help="Also draw tqdm progress bars on stderr (always on outside a notebook kernel)."
    ).tag(config=True)
    refresh_interval = Float(0.3, help="Seconds between dashboard redraws (0.05-5).").tag(config=True)

    @trait_default("workdir")
    def _default_workdir(self) -> str:
        return run_folder()

    @validate("refresh_interval")
    def _check_interval(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not 0.05 <= value <= 5.0:
            raise ConfigError(
                f"DistillMagics.refresh_interval = {value}: must be between 0.05 and 5 seconds. "
                "Fix: %config DistillMagics.refresh_interval = 0.3",
                field="refresh_interval",
                value=value,
            )
        return value

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.runs: dict[str, Any] = {}  # name -> pipeline.Run started in this kernel
        self.configs: dict[str, DistillConfig] = {}  # name -> the config it ran with (kernel objects included)
        self.dashboards: dict[str, RunDashboard] = {}
        self._last: str | None = None
        self._stores: dict[str, RunStore] = {}  # resolved workdir -> the one store the magics read it with
        self._stores_lock = threading.Lock()

    # ------------------------------------------------------------------ entry point
    @line_cell_magic
    def distill(self, line: str, cell: str | None = None) -> Any:
        """``%%distill NAME [flags]`` with a YAML body, or ``%distill SUBCOMMAND ...``; see ``--help``."""
        try:
            command = parse_cell_line(line) if cell is not None else parse_line(line)
            if command is None:
                return None
            return dispatch(self, command, cell or "")
        except DistillError as exc:
            raise _clean_traceback(exc) from None

    # ------------------------------------------------------------------ the handlers' context
    def store(self) -> RunStore:
        """The run store of ``workdir``, opened once per workdir for the life of the magics.

        Opening a ``RunStore`` runs its schema migration in a write transaction, which waits
        behind any write a training run in this kernel has in progress. Line magics only read,
        and reads never wait in WAL mode, so keeping one store per workdir (the run's own, when a
        run of this kernel opened it first) keeps `%distill runs|status` answering at once.
        """
        key = _workdir_key(self.workdir)
        with self._stores_lock:
            store = self._stores.get(key)
            if store is None:
                store = self._stores[key] = RunStore(self.workdir)
        return store

    def share_store(self, workdir: str | Path, store: RunStore) -> None:
        """Read ``workdir`` through ``store`` (a run's own) unless a store of it is open already."""
        with self._stores_lock:
            self._stores.setdefault(_workdir_key(workdir), store)

    def store_for(self, name: str) -> RunStore:
        run = self.runs.get(name)
        return run.store if run is not None else self.store()

    def name_or_last(self, name: str | None, what: str) -> str:
        if name:
            return name
        if self._last is not None:
            return self._last
        runs = self.store().list_runs()
        if not runs:
            raise UnknownRunError(
                f"`%distill {what}` without NAME uses the latest run, but {self.workdir!r} has no runs yet. "
                "Fix: start one with a %%distill cell, or set %config DistillMagics.workdir.",
                field="name",
                value=None,
            )
        return str(runs[0]["id"])

    def remember(self, name: str, run: Any, config: DistillConfig, dashboard: RunDashboard) -> None:
        self.runs[name], self.configs[name], self.dashboards[name] = run, config, dashboard
        self._last = name

    def launch(
        self,
        config: DistillConfig,
        *,
        resume: bool,
        wait: bool,
        show: Callable[[RunDashboard], Any] | None = None,
    ) -> Any:
        return launch_run(self, config, resume=resume, wait=wait, show=show)

    def in_kernel(self) -> bool:
        return self.shell is not None and type(self.shell).__name__ == "ZMQInteractiveShell"

    def user_namespace(self) -> Mapping[str, Any]:
        return self.shell.user_ns if self.shell is not None else {}

    def build_config(self, body: str, overrides: dict[str, Any], name: str | None = None) -> DistillConfig:
        """Body + kernel variables + traitlet defaults + flags -> a validated DistillConfig.

        Precedence, lowest first: the magic's defaults (teacher, student, workdir), the body,
        ``$variables`` in the body, the flags, and NAME.
        """
        defaults = {"teacher": self.default_teacher, "student": self.default_student, "workdir": self.workdir}
        return cell_config.build_config(body, overrides, name, defaults=defaults, namespace=self.user_namespace())


# ---------------------------------------------------------------------------------------------
# Extension hooks
# ---------------------------------------------------------------------------------------------
def load_ipython_extension(ipython: Any) -> None:
    """Register the magics and make their traitlets reachable from ``%config`` (idempotent)."""
    for existing in list(ipython.configurables):
        if isinstance(existing, DistillMagics):
            return
    magics = DistillMagics(shell=ipython, parent=ipython)  # Magics.__init__ adds it to shell.configurables
    ipython.register_magics(magics)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop this kernel's runs and remove the magics (``%unload_ext jupyter_distill``)."""
    for existing in list(ipython.configurables):
        if isinstance(existing, DistillMagics):
            for run in existing.runs.values():
                if run.running:
                    run.stop()
            ipython.configurables.remove(existing)
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("distill", None)


__all__ = [
    "AliasesCommand",
    "Command",
    "DistillMagics",
    "EstimateCommand",
    "ExportCommand",
    "HistoryCommand",
    "MagicUsageError",
    "Notice",
    "PromoteCommand",
    "PromotionRefused",
    "ResumeCommand",
    "ReviewCommand",
    "ReviewPendingError",
    "RollbackCommand",
    "RunBusyError",
    "RunCommand",
    "RunsCommand",
    "StatusCommand",
    "StopCommand",
    "Table",
    "WaitCommand",
    "build_cell_parser",
    "build_line_parser",
    "load_ipython_extension",
    "parse_cell_line",
    "parse_line",
    "unload_ipython_extension",
]
