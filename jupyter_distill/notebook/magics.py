"""``%%distill`` and ``%distill``: the notebook surface of jupyter-distill.

::

    %load_ext jupyter_distill

    %%distill tickets --steps 60          # NAME and flags; flags override the YAML body
    dataset: data/tickets.jsonl
    judge: $verify                        # `$name` takes a variable from the kernel
    alias: ticket-classifier

    %distill status|stop|wait|resume NAME|review NAME|runs|aliases|estimate|export NAME  (each --help)

Why it is built this way (jupyter-ai's magics, the ipywidgets threading rules):

- Arguments go through ``argparse`` on ``shlex.split`` into one small typed command per
  subcommand (a frozen dataclass with a ``type`` literal) and one handler per type. The run
  flags are generated once from :class:`~jupyter_distill.core.config.DistillConfig`, so
  ``%%distill`` and ``%distill estimate`` share them and a new config field gets a flag for free.
- The cell body is parsed by ``DistillConfig.from_yaml(body, **flags)``, so a YAML error names
  the line and the key, and flags override the body.
- Settings are traitlets with ``config=True``: ``%config DistillMagics.workdir = "..."``.
- ``%%distill`` returns at once: the run goes to a background thread and the cell shows a
  :class:`~jupyter_distill.notebook.dashboard.RunDashboard` updated through widget traits.
- A ``DistillError`` is shown as its message only (the exception gets ``_render_traceback_``),
  and the cell still fails, so "Run all" stops there. No ``set_custom_exc``: other exceptions in
  the user's kernel keep their normal tracebacks.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shlex
import sys
import threading
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display
from traitlets import Bool, Float, Unicode, validate
from traitlets import default as trait_default

from jupyter_distill.core.config import DistillConfig, parse_yaml_mapping
from jupyter_distill.core.data import check_source
from jupyter_distill.core.errors import ConfigError, DistillError, ExportError
from jupyter_distill.core.events import PHASES
from jupyter_distill.core.quant_types import DEFAULT_QUANTIZE, QUANTIZE_TYPES
from jupyter_distill.core.runfolder import run_folder
from jupyter_distill.core.store import RunStore
from jupyter_distill.notebook.dashboard import RunDashboard, RunSummary, UnknownRunError
from jupyter_distill.notebook.htmltext import no_math, text

_VARIABLE = re.compile(r"^\$([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
_RUN_FLAG_EXCLUDE = frozenset({"name"})  # NAME is positional


class MagicUsageError(ConfigError):
    """The magic's arguments cannot be parsed (unknown flag, missing NAME, wrong type)."""


class RunBusyError(DistillError):
    """A run of that name is still running in this kernel."""


class ReviewPendingError(DistillError):
    """``%distill wait`` was asked to block on a run that waits for a human review."""


# ---------------------------------------------------------------------------------------------
# Typed commands: what the parser produces, one per subcommand
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class RunCommand:
    """``%%distill [NAME] [flags]``: start (or resume) a run from the cell body."""

    type: Literal["run"] = "run"
    name: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    estimate: bool = False
    wait: bool = False
    fresh: bool = False


@dataclass(frozen=True, kw_only=True)
class StatusCommand:
    type: Literal["status"] = "status"
    name: str | None = None


@dataclass(frozen=True, kw_only=True)
class StopCommand:
    type: Literal["stop"] = "stop"
    name: str | None = None


@dataclass(frozen=True, kw_only=True)
class WaitCommand:
    type: Literal["wait"] = "wait"
    name: str | None = None
    timeout: float | None = None
    until: str | None = None


@dataclass(frozen=True, kw_only=True)
class ResumeCommand:
    type: Literal["resume"] = "resume"
    name: str
    wait: bool = False
    fresh: bool = False


@dataclass(frozen=True, kw_only=True)
class ReviewCommand:
    type: Literal["review"] = "review"
    name: str


@dataclass(frozen=True, kw_only=True)
class RunsCommand:
    type: Literal["runs"] = "runs"


@dataclass(frozen=True, kw_only=True)
class AliasesCommand:
    type: Literal["aliases"] = "aliases"


@dataclass(frozen=True, kw_only=True)
class EstimateCommand:
    type: Literal["estimate"] = "estimate"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ExportCommand:
    type: Literal["export"] = "export"
    name: str
    quantize: str = DEFAULT_QUANTIZE
    alias: str | None = None
    out: str | None = None


Command = (
    RunCommand
    | StatusCommand
    | StopCommand
    | WaitCommand
    | ResumeCommand
    | ReviewCommand
    | RunsCommand
    | AliasesCommand
    | EstimateCommand
    | ExportCommand
)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
class _HelpShown(Exception):
    """argparse printed help (or a version) and wants to exit: end the magic quietly."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting the kernel, with a "did you mean" for flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        hint = ""
        if message.startswith("unrecognized arguments:"):
            unknown = message.split(":", 1)[1].split()
            flags = [opt for action in self._actions for opt in action.option_strings]
            for token in unknown:
                close = difflib.get_close_matches(token.split("=")[0], flags, n=1, cutoff=0.6)
                if close:
                    hint = f" Did you mean {close[0]}?"
                    break
        raise MagicUsageError(
            f"{self.prog}: {message}.{hint} Fix: see `{self.prog} --help`.",
            field="arguments",
            value=message,
            fix=f"see `{self.prog} --help`",
        )

    def exit(self, status: int = 0, message: str | None = None) -> typing.NoReturn:  # type: ignore[override]
        if message:
            print(message, file=sys.stderr)
        raise _HelpShown()


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per DistillConfig field (``n_samples`` -> ``--n-samples``), typed from the model.

    Defaults are ``SUPPRESS``: only flags the user typed reach the overrides, so the body and the
    magic's traitlet defaults keep their say.
    """
    group = parser.add_argument_group("run settings (override the YAML body)")
    for name, info in DistillConfig.model_fields.items():
        if name in _RUN_FLAG_EXCLUDE:
            continue
        annotation = _unwrap_optional(info.annotation)
        kwargs: dict[str, Any] = {"dest": f"cfg_{name}", "default": argparse.SUPPRESS, "help": info.description}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is Literal:
            kwargs["choices"] = list(typing.get_args(annotation))
        elif typing.get_origin(annotation) is list:
            kwargs["nargs"] = "+"
            kwargs["metavar"] = name.upper()
        elif annotation in (int, float):
            kwargs["type"] = annotation
            kwargs["metavar"] = annotation.__name__.upper()
        else:
            kwargs["metavar"] = name.upper()
        if kwargs.get("help") is None:
            default = info.default
            kwargs["help"] = f"default: {default}" if default is not None else None
        group.add_argument(f"--{name.replace('_', '-')}", **kwargs)


def _overrides(namespace: argparse.Namespace) -> dict[str, Any]:
    return {key[4:]: value for key, value in vars(namespace).items() if key.startswith("cfg_")}


def build_cell_parser() -> _Parser:
    """The parser of the ``%%distill`` line."""
    parser = _Parser(
        prog="%%distill",
        description="Start a distillation run from the YAML cell body; flags override the body. The cell "
        "returns at once with a live dashboard while the run goes on in the background. In the body, "
        "`key: $name` takes the value of the kernel variable `name` (write `$$` for a literal '$').",
    )
    parser.add_argument("name", nargs="?", default=None, help="run name (the key in the run store)")
    parser.add_argument("--estimate", action="store_true", help="only estimate requests, cost, time and memory")
    parser.add_argument("--wait", action="store_true", help="block the cell until the run ends")
    parser.add_argument(
        "--fresh", action="store_true", help="restart training from the initial student (samples are still reused)"
    )
    _add_config_flags(parser)
    return parser


def build_line_parser() -> _Parser:
    """The parser of ``%distill SUBCOMMAND ...``."""
    parser = _Parser(prog="%distill", description="Inspect and control jupyter-distill runs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def add(name: str, model: type, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(model=model)
        return p

    p = add("status", StatusCommand, "show a run's status and numbers (default: the latest run)")
    p.add_argument("name", nargs="?", default=None)
    p = add("stop", StopCommand, "stop a running run (default: every run running in this kernel)")
    p.add_argument("name", nargs="?", default=None)
    p = add("wait", WaitCommand, "block until a run ends and show its summary (default: the latest run)")
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument(
        "--until",
        choices=PHASES,
        default=None,
        help="return once the run reaches this phase (review: once it waits for a human) instead of its end",
    )
    p = add("resume", ResumeCommand, "continue a stopped or failed run; every paid sample is reused")
    p.add_argument("name")
    p.add_argument("--wait", action="store_true", help="block until the run ends")
    p.add_argument("--fresh", action="store_true", help="restart training from the initial student")
    p = add("review", ReviewCommand, "open the review widget of a run (judge scores, choose, reject, edit)")
    p.add_argument("name")
    add("runs", RunsCommand, "list the runs in the workdir's run store")
    add("aliases", AliasesCommand, "list the model aliases that completion(model=...) resolves")
    p = add("estimate", EstimateCommand, "estimate requests, tokens, teacher cost, training time and memory")
    _add_config_flags(p)
    p = add("export", ExportCommand, "export a run's trained adapter to a quantized GGUF (and set an alias)")
    p.add_argument("name")
    p.add_argument(
        "--quantize",
        default=DEFAULT_QUANTIZE,
        help=f"GGUF quantization type: {', '.join(QUANTIZE_TYPES)} (default {DEFAULT_QUANTIZE})",
    )
    p.add_argument("--alias", default=None, help="register the GGUF under this alias")
    p.add_argument("--out", default=None, help="output folder (default: WORKDIR/runs/NAME/export)")
    return parser


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line, posix=True)
    except ValueError as exc:
        raise MagicUsageError(
            f"cannot split the magic's arguments {line!r}: {exc}. Fix: close the quote.",
            field="arguments",
            value=line,
        ) from None


def parse_cell_line(line: str) -> RunCommand | None:
    """``%%distill`` line -> :class:`RunCommand`; ``None`` when ``--help`` was printed."""
    try:
        ns = build_cell_parser().parse_args(_split(line))
    except _HelpShown:
        return None
    return RunCommand(name=ns.name, overrides=_overrides(ns), estimate=ns.estimate, wait=ns.wait, fresh=ns.fresh)


def parse_line(line: str) -> Command | None:
    """``%distill`` line -> one typed command; ``None`` when ``--help`` was printed."""
    if not line.strip():
        line = "--help"
    parser = build_line_parser()
    try:
        ns, extras = parser.parse_known_args(_split(line))
        if extras:  # report against the subcommand, whose flags the "did you mean" should search
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            sub.choices[ns.command].error(f"unrecognized arguments: {' '.join(extras)}")
    except _HelpShown:
        return None
    model = ns.model
    names = {f.name for f in fields(model)} - {"type"}
    values = {k: v for k, v in vars(ns).items() if k in names}
    if "overrides" in names:
        values["overrides"] = _overrides(ns)
    return model(**values)


# ---------------------------------------------------------------------------------------------
# Small result objects (text + HTML so a saved notebook reads well)
# ---------------------------------------------------------------------------------------------
@dataclass
class Table:
    """A titled table of rows; ``%distill runs`` and ``%distill aliases`` return one."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    empty: str = "(none)"
    payload: Any = None  # the raw records, for code (`runs = %distill runs; runs.payload`); never displayed

    def __repr__(self) -> str:
        if not self.rows:
            return f"{self.title}: {self.empty}"
        cells = [[str(c) for c in self.columns], *[[str(v) for v in row] for row in self.rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        return "\n".join([self.title, *lines])

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """A table in HTML and text only: JupyterLab prefers ``application/json`` to HTML (it would show
        a collapsed JSON tree), so the raw records stay in :attr:`payload` and out of the bundle."""
        if self.rows:
            head = "".join(f"<th style='text-align:left'>{text(c)}</th>" for c in self.columns)
            body = "".join(
                "<tr>" + "".join(f"<td style='text-align:left'>{text(v)}</td>" for v in row) + "</tr>"
                for row in self.rows
            )
            table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        else:
            table = f"<i>{text(self.empty)}</i>"
        return {
            "text/plain": repr(self),
            "text/html": no_math(f"<b>{text(self.title)}</b>{table}", css_class="jd-table"),
        }


@dataclass
class Notice:
    """A one-line outcome (stopped, resumed, exported)."""

    text: str

    def __repr__(self) -> str:
        return self.text

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"text/plain": self.text, "text/html": no_math(text(self.text), css_class="jd-notice")}


def _workdir_key(workdir: str | Path) -> str:
    try:
        return str(Path(workdir).expanduser().resolve())
    except (OSError, ValueError, RuntimeError):  # opening the store reports what is wrong with it
        return str(workdir)


def _review_pending(run: Any) -> bool:
    """The run waits for a human and nobody has released it yet (continue_after_review not called)."""
    return bool(getattr(run, "review_pending", False))


def _clean_traceback(exc: DistillError) -> DistillError:
    """Let IPython show only ``Type: message`` for a user error (it honours ``_render_traceback_``)."""
    line = f"{type(exc).__name__}: {exc}"
    exc._render_traceback_ = lambda: [f"\x1b[0;31m{line}\x1b[0m"]  # type: ignore[attr-defined]
    return exc


# ---------------------------------------------------------------------------------------------
# The magics
# ---------------------------------------------------------------------------------------------
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
            handler: Callable[..., Any] = getattr(self, f"handle_{command.type}")
            if isinstance(command, RunCommand):
                return handler(command, cell or "")
            return handler(command)
        except DistillError as exc:
            raise _clean_traceback(exc) from None

    # ------------------------------------------------------------------ config
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

    def build_config(self, body: str, overrides: dict[str, Any], name: str | None = None) -> DistillConfig:
        """Body + kernel variables + traitlet defaults + flags -> a validated DistillConfig.

        Precedence, lowest first: the magic's defaults (teacher, student, workdir), the body,
        ``$variables`` in the body, the flags, and NAME.
        """
        body_keys, variables = self._scan_body(body)
        extra: dict[str, Any] = {}
        for key, default in (
            ("teacher", self.default_teacher),
            ("student", self.default_student),
            ("workdir", self.workdir),
        ):
            if key not in body_keys and key not in overrides:
                extra[key] = default
        extra.update(variables)
        extra.update(overrides)
        if name is not None:
            extra["name"] = name
        return DistillConfig.from_yaml(body, **extra)

    def _scan_body(self, body: str) -> tuple[set[str], dict[str, Any]]:
        """The body's keys and its ``$variable`` values resolved from the kernel.

        A body with YAML errors returns nothing here: ``from_yaml`` reports those with the line.
        """
        try:
            data, lines = parse_yaml_mapping(body)
        except ConfigError:
            return set(), {}
        variables: dict[str, Any] = {}
        for key, value in data.items():
            if key not in DistillConfig.model_fields or not isinstance(value, str):
                continue
            if value.startswith("$$"):
                variables[key] = value[1:]
                continue
            match = _VARIABLE.match(value.strip())
            if match:
                variables[key] = self._lookup(match.group(1), str(key), lines.get(key))
        return {str(k) for k in data}, variables

    def _lookup(self, expression: str, key: str, line: int | None) -> Any:
        namespace = self.shell.user_ns if self.shell is not None else {}
        root, *attrs = expression.split(".")
        where = f" (line {line})" if line else ""
        if root not in namespace:
            raise ConfigError(
                f"'{key}'{where} refers to the kernel variable ${expression}, but `{root}` is not defined. "
                f"Fix: run the cell that defines `{root}` first, or write the value itself (`$$` for a literal '$').",
                field=key,
                value=f"${expression}",
            )
        value = namespace[root]
        for attr in attrs:
            if not hasattr(value, attr):
                raise ConfigError(
                    f"'{key}'{where}: ${expression}: `{type(value).__name__}` object has no attribute {attr!r}. "
                    "Fix: check the name.",
                    field=key,
                    value=f"${expression}",
                )
            value = getattr(value, attr)
        if value is None:
            raise ConfigError(
                f"'{key}'{where}: the kernel variable ${expression} is None. Fix: assign it a value first, or "
                f"remove the '{key}' line to use the default.",
                field=key,
                value=f"${expression}",
            )
        return value

    # ------------------------------------------------------------------ %%distill
    def handle_run(self, command: RunCommand, body: str) -> Any:
        """Start the run in a background thread and show its dashboard; return at once."""
        config = self.build_config(body, command.overrides, command.name)
        if command.estimate:
            from jupyter_distill.pipeline.estimate import estimate_config

            return estimate_config(config)
        return self._launch(config, resume=not command.fresh, wait=command.wait)

    def _launch(self, config: DistillConfig, *, resume: bool, wait: bool) -> Any:
        from jupyter_distill.pipeline.run import Run, default_run_name

        name = config.name or default_run_name(config)
        current = self.runs.get(name)
        if current is not None and current.running:
            raise RunBusyError(
                f"run {name!r} is still running in this kernel. Fix: `%distill stop {name}` (then re-run the cell), "
                f"`%distill wait {name}`, or give this cell another NAME.",
                field="name",
                value=name,
            )
        # A dataset path that is not there fails the cell now, so "Run all" stops here, instead of
        # a dashboard that turns "failed" in the background while the next cells run.
        check_source(config.dataset)
        dashboard = RunDashboard(name, min_interval=self.refresh_interval)
        run = Run(config, review_handler=lambda r: self._show_review(r, dashboard), resume=resume)
        with self._stores_lock:
            self._stores.setdefault(_workdir_key(config.workdir), run.store)
        dashboard.attach(run)
        console = None
        if self.show_console or not self._in_kernel():
            from jupyter_distill.core.events import ConsoleRenderer

            console = ConsoleRenderer()
            run.add_listener(console)
        self.runs[name], self.configs[name], self.dashboards[name] = run, config, dashboard
        self._last = name
        dashboard.display()
        if console is not None:
            dashboard.on_final.append(lambda _d: console.close())
        run.start()
        if wait:
            return self.handle_wait(WaitCommand(name=name))
        return None

    def _in_kernel(self) -> bool:
        return self.shell is not None and type(self.shell).__name__ == "ZMQInteractiveShell"

    def _show_review(self, run: Any, dashboard: RunDashboard) -> None:
        """The pipeline's review hook (called on the run's thread): put the widget in the dashboard."""
        widget = self._review_widget(run.store, run.name, run)
        dashboard.show_review(widget)

    def _review_widget(self, store: RunStore, name: str, run: Any | None) -> Any:
        try:
            from jupyter_distill.notebook.review_widget import ReviewWidget
        except ImportError as exc:
            raise DistillError(
                f"the review widget is not available ({exc}). Fix: reinstall jupyter-distill with its notebook "
                "extras, or review from Python with jupyter_distill.judging.review.ReviewSession.",
                field="review",
                value=name,
            ) from None
        widget = ReviewWidget(store, name)
        if run is not None:
            widget.on_continue.append(lambda *_: run.continue_after_review())
        return widget

    # ------------------------------------------------------------------ line magics
    def _name_or_last(self, name: str | None, what: str) -> str:
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

    def handle_status(self, command: StatusCommand) -> RunSummary:
        """The run's card; for a run going on in this kernel, with its live numbers so far."""
        name = self._name_or_last(command.name, "status")
        run = self.runs.get(name)
        summary = RunSummary.from_store(self._store_for(name), name, student=getattr(run, "result", None))
        if run is not None and run.running:
            live = {**run.state.summary, "teacher_requests": run.state.requests, "teacher_cost": run.state.cost}
            summary.run["summary"] = {**live, **summary.summary}
            summary.run["status"], summary.run["phase"] = run.state.status, run.state.phase
        return summary

    def handle_stop(self, command: StopCommand) -> Notice:
        targets = [command.name] if command.name else [n for n, r in self.runs.items() if r.running]
        if command.name and (command.name not in self.runs or not self.runs[command.name].running):
            if command.name not in self.runs:
                RunSummary.from_store(self.store(), command.name)  # raises UnknownRunError for a typo
            return Notice(f"run {command.name!r} is not running in this kernel; nothing to stop.")
        if not targets:
            return Notice("no run is running in this kernel; nothing to stop.")
        for name in targets:
            self.runs[name].stop()
        names = ", ".join(repr(n) for n in targets)
        hints = " ".join(f"`%distill resume {n}`" for n in targets)
        return Notice(f"stopping {names}: each ends within one request or training step. Resume: {hints}")

    def handle_wait(self, command: WaitCommand) -> RunSummary:
        """Block until the run ends; the summary card (or the run's error, cleanly) is the result."""
        name = self._name_or_last(command.name, "wait")
        run = self.runs.get(name)
        if run is not None and command.until is not None:
            self._wait_for_phase(run, command.until, command.timeout)
            return RunSummary.from_store(self._store_for(name), name)
        if run is not None:
            self._wait_for_end(run, name, command.timeout)
            dashboard = self.dashboards.get(name)
            if dashboard is not None and not run.running:
                dashboard.wait_rendered(timeout=10.0)
            if run.running:  # timed out
                return RunSummary.from_store(self._store_for(name), name)
        summary = RunSummary.from_store(self._store_for(name), name, student=getattr(run, "result", None))
        error = getattr(run, "error", None) if run is not None else None
        if isinstance(error, DistillError) and type(error).__name__ != "RunStopped":
            display(summary)
            raise error
        return summary

    @staticmethod
    def _wait_for_end(run: Any, name: str, timeout: float | None) -> None:
        """Block until the run's thread ends; refuse to block on a run that waits for a human.

        While this cell blocks, widget clicks (the review widget's "train" button) cannot reach the
        kernel, so waiting on a run paused for review would never end.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while run.running and (deadline is None or time.monotonic() < deadline):
            if _review_pending(run):
                raise ReviewPendingError(
                    f"run {name!r} is waiting for your review, and a blocking `%distill wait` would keep the review "
                    "widget's clicks from reaching the kernel. Fix: finish the review in the widget (or "
                    f"`%distill review {name}`), press its train button, then run this cell again.",
                    field="review",
                    value=name,
                )
            time.sleep(0.05)
        if not run.running:
            try:
                run.wait(0)
            except DistillError:
                pass  # shown on the summary card, then raised by the caller (other errors keep their traceback)

    @staticmethod
    def _wait_for_phase(run: Any, phase: str, timeout: float | None) -> None:
        """Poll the run's state until it reaches ``phase`` (review: waits for a human) or ends."""
        target = PHASES.index(phase)
        deadline = None if timeout is None else time.monotonic() + timeout
        while run.running and (deadline is None or time.monotonic() < deadline):
            state = run.state
            if phase == "review" and state.status == "waiting-review":
                return
            current = PHASES.index(state.phase) if state.phase in PHASES else -1
            if current > target or (current == target and phase != "review"):
                return
            time.sleep(0.05)

    def handle_resume(self, command: ResumeCommand) -> Any:
        config = self.configs.get(command.name)
        if config is None:
            config = self._config_from_store(command.name)
        return self._launch(config, resume=not command.fresh, wait=command.wait)

    def _config_from_store(self, name: str) -> DistillConfig:
        run = self.store().get_run(name)
        if run is None:
            RunSummary.from_store(self.store(), name)  # raises UnknownRunError with the known runs
        stored = dict(run["config"]) if run else {}
        for key, value in stored.items():
            if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
                raise ConfigError(
                    f"run {name!r} was started in another kernel with a Python object for '{key}' ({value}), "
                    f"which the store cannot hold. Fix: re-run its %%distill cell (or distill(..., name={name!r})): "
                    "every sample and judgment already paid for is reused.",
                    field=key,
                    value=value,
                )
        stored["name"] = name
        return DistillConfig.from_kwargs(**{k: v for k, v in stored.items() if k in DistillConfig.model_fields})

    def handle_review(self, command: ReviewCommand) -> Any:
        store = self._store_for(command.name)
        RunSummary.from_store(store, command.name)  # a clear error for an unknown run
        return self._review_widget(store, command.name, self.runs.get(command.name))

    def handle_runs(self, command: RunsCommand) -> Table:
        runs = self.store().list_runs()
        rows = []
        for run in runs:
            summary = run.get("summary") or {}
            after = (summary.get("student_after") or {}).get("pass_rate")
            rows.append(
                [
                    run["id"],
                    run["status"]
                    + (" (this kernel)" if run["id"] in self.runs and self.runs[run["id"]].running else ""),
                    run.get("phase") or "",
                    str(run["config"].get("teacher", "")),
                    str(run["config"].get("student", "")),
                    "" if after is None else f"{after:.0%}",
                    summary.get("alias") or "",
                ]
            )
        return Table(
            title=f"runs in {str(Path(self.workdir))!r}",
            columns=["name", "status", "phase", "teacher", "student", "pass@1 after", "alias"],
            rows=rows,
            empty="no runs yet: start one with a %%distill cell",
            payload=json.loads(json.dumps(runs, default=str)),
        )

    def handle_aliases(self, command: AliasesCommand) -> Table:
        from jupyter_distill.serving.registry import list_aliases, registry_path

        aliases = list_aliases()
        rows = [
            [name, entry.get("backend", ""), entry.get("model_path") or entry.get("base_model") or ""]
            for name, entry in aliases.items()
        ]
        return Table(
            title=f"aliases in {str(registry_path())!r}",
            columns=["alias", "backend", "model"],
            rows=rows,
            empty="no aliases yet: set one with `alias:` in a %%distill cell or student.deploy(name)",
            payload=json.loads(json.dumps(aliases, default=str)),
        )

    def handle_estimate(self, command: EstimateCommand) -> Any:
        from jupyter_distill.pipeline.estimate import estimate_config

        return estimate_config(self.build_config("", command.overrides))

    def handle_export(self, command: ExportCommand) -> Any:
        """Export a finished run's adapter to GGUF in the foreground (seconds for small students)."""
        from jupyter_distill.export.gguf import export_gguf
        from jupyter_distill.train.student import resolve_student_folder

        store = self._store_for(command.name)
        summary = RunSummary.from_store(store, command.name)
        adapter = store.get_artifacts(command.name).get("adapter")
        if adapter is None:
            raise ExportError(
                f"run {command.name!r} has no trained adapter yet (status {summary.status}, phase "
                f"{summary.run.get('phase')}). Fix: let training finish (`%distill wait {command.name}`) or resume it "
                f"(`%distill resume {command.name}`).",
                field="name",
                value=command.name,
            )
        student_spec = str(summary.run["config"].get("student", self.default_student))
        base_folder = resolve_student_folder(student_spec)[0]
        out = Path(command.out) if command.out else Path(store.workdir) / "runs" / command.name / "export"
        result = export_gguf(
            adapter["path"],
            out,
            base_folder=base_folder,
            quantize=command.quantize,
            store=store,
            run_id=command.name,
        )
        if command.alias:
            from jupyter_distill.serving.registry import set_alias

            set_alias(command.alias, backend="gguf", model_path=str(result.gguf))
            store.update_run(command.name, summary={"alias": command.alias, "gguf": str(result.gguf)})
        return RunSummary.from_store(store, command.name)

    def _store_for(self, name: str) -> RunStore:
        run = self.runs.get(name)
        return run.store if run is not None else self.store()


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
    "MagicUsageError",
    "Notice",
    "ResumeCommand",
    "ReviewCommand",
    "ReviewPendingError",
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
