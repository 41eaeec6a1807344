"""The magics' argument parsing: ``shlex`` + ``argparse`` into the typed commands.

The run flags are generated once from :class:`~jupyter_distill.core.config.DistillConfig`, so
``%%distill`` and ``%distill estimate`` share them and a new config field gets a flag for free.
argparse never exits the kernel here: errors become :class:`MagicUsageError` with a "did you mean"
for a mistyped flag, and ``--help`` ends the magic quietly (the parse functions return ``None``).
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import sys
import types
import typing
from dataclasses import fields
from typing import Any, Literal, Union

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.errors import ConfigError
from jupyter_distill.core.events import PHASES
from jupyter_distill.core.quant_types import DEFAULT_QUANTIZE, QUANTIZE_TYPES
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

_RUN_FLAG_EXCLUDE = frozenset({"name"})  # NAME is positional


class MagicUsageError(ConfigError):
    """The magic's arguments cannot be parsed (unknown flag, missing NAME, wrong type)."""


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


def _float_or_none(value: str) -> float | None:
    """A float, or ``none`` to switch a gate off."""
    if value.strip().lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {value!r}") from None


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


def _add_promotion_commands(add: Any) -> None:
    p = add(
        "promote",
        PromoteCommand,
        "compare a run's exported model with what ALIAS serves now on the run's held-out prompts, and swap "
        "the alias only when every gate holds (a refused promotion changes nothing and fails the cell)",
    )
    p.add_argument("name", metavar="RUN", help="the run whose exported model is the candidate")
    p.add_argument("--alias", required=True, help="the alias to swap (a new alias is gated on the candidate alone)")
    p.add_argument("--min-pass-rate", type=float, default=None, metavar="F", help="candidate pass rate >= F (0-1)")
    p.add_argument(
        "--max-latency-ms", type=float, default=None, metavar="F", help="candidate p95 latency <= F milliseconds"
    )
    p.add_argument(
        "--min-gain",
        type=_float_or_none,
        default=0.0,
        metavar="F",
        help="candidate pass rate at least F above the current model's (default 0: not worse; none: no comparison)",
    )
    p.add_argument(
        "--judge",
        default=None,
        metavar="NAME|SPEC",
        help="score answers with the judge (a verifier function) in the kernel variable NAME, or with the judge "
        "model SPEC (default: the run's own judge)",
    )
    p = add("rollback", RollbackCommand, "point an alias back at its previous target (recorded as a new version)")
    p.add_argument("alias")
    p = add("history", HistoryCommand, "list an alias's recorded versions (set, promote, rollback), oldest first")
    p.add_argument("alias")


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
    _add_promotion_commands(add)
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


__all__ = ["MagicUsageError", "build_cell_parser", "build_line_parser", "parse_cell_line", "parse_line"]
