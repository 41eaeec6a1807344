"""The typed commands of ``%%distill`` / ``%distill``: one frozen dataclass per subcommand.

The parser (:mod:`~jupyter_distill.notebook.magic_parser`) produces them and the handlers
(:mod:`~jupyter_distill.notebook.handlers`) consume them, keyed by their ``type`` literal, so
neither side knows about the other and a command can be built by hand in a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from jupyter_distill.core.quant_types import DEFAULT_QUANTIZE


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


@dataclass(frozen=True, kw_only=True)
class PromoteCommand:
    """``%distill promote RUN --alias NAME``: the gated alias swap of ``jd.promote``, same gates."""

    type: Literal["promote"] = "promote"
    name: str
    alias: str
    min_pass_rate: float | None = None
    max_latency_ms: float | None = None
    min_gain: float | None = 0.0
    judge: str | None = None  # a kernel variable's name or a judge model spec (default: the run's judge)


@dataclass(frozen=True, kw_only=True)
class RollbackCommand:
    type: Literal["rollback"] = "rollback"
    alias: str


@dataclass(frozen=True, kw_only=True)
class HistoryCommand:
    type: Literal["history"] = "history"
    alias: str


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
    | PromoteCommand
    | RollbackCommand
    | HistoryCommand
)

__all__ = [
    "AliasesCommand",
    "Command",
    "EstimateCommand",
    "ExportCommand",
    "HistoryCommand",
    "PromoteCommand",
    "ResumeCommand",
    "ReviewCommand",
    "RollbackCommand",
    "RunCommand",
    "RunsCommand",
    "StatusCommand",
    "StopCommand",
    "WaitCommand",
]
