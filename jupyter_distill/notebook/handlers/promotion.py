"""``%distill promote``, ``rollback`` and ``history``: the gated alias swap of ``jd.promote`` in a cell.

``promote`` shows the comparison as a :class:`~jupyter_distill.notebook.display.Table` and, when a
gate does not hold, shows it still and then fails the cell (so "Run all" stops before any cell that
assumes the new model); the registry is left exactly as it was.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from IPython.display import display

from jupyter_distill.core.errors import ConfigError, DistillError
from jupyter_distill.notebook.cell_config import lookup
from jupyter_distill.notebook.commands import HistoryCommand, PromoteCommand, RollbackCommand
from jupyter_distill.notebook.display import Notice, Table
from jupyter_distill.notebook.handlers.context import MagicContext

_NAME = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_COLUMNS = ["model", "target", "pass rate", "mean score", "p50 ms", "p95 ms", "cost / 1k calls"]


class PromotionRefused(DistillError):
    """A gate of ``%distill promote`` did not hold; the alias still serves what it served."""


def describe_target(entry: dict[str, Any] | None) -> str:
    """An alias entry in words: ``gguf model.gguf``, ``openai-compatible MODEL @ URL``, ``(removed)``."""
    if entry is None:
        return "(removed)"
    if entry.get("backend") == "openai-compatible":
        return f"openai-compatible {entry.get('model')} @ {entry.get('base_url')}"
    path = entry.get("model_path") or entry.get("base_model") or ""
    return f"{entry.get('backend')} {Path(str(path)).name}".strip()


def promotion_table(report: Any) -> Table:
    """A ``PromotionReport`` as a table: one row per model, then one line per gate and the verdict."""
    rows = [
        [s.label, s.target, f"{s.pass_rate:.2f}", f"{s.mean_score:.3f}", f"{s.p50_ms:.1f}", f"{s.p95_ms:.1f}",
         "unknown" if s.cost_per_1k is None else f"${s.cost_per_1k:.4f}"]
        for s in report.sides
    ]  # fmt: skip
    notes = [f"{'ok  ' if g.passed else 'FAIL'} {g.name}: {g.detail}" for g in report.gates]
    if report.promoted:
        number = (report.version or {}).get("version")
        notes.append(
            f"alias {report.alias!r} now serves run {report.run!r} (version {number}). "
            f"Undo: `%distill rollback {report.alias}`"
        )
    else:
        notes.append(f"alias {report.alias!r} unchanged")
    return Table(
        title=f"promotion of run {report.run!r} to alias {report.alias!r} ({report.prompts} held-out prompts)",
        columns=_COLUMNS,
        rows=rows,
        payload=report,
        notes=notes,
    )


def _judge(ctx: MagicContext, value: str | None) -> Any:
    """``--judge``: the kernel variable a Python name (``verify``, ``checks.strict``) names, else a model spec.

    A bare name, not ``$name``: IPython itself replaces ``$name`` in a line magic by the variable's
    text before the magic sees it, which turns a function into ``<function ...>``. Model specs
    always carry a ``scheme:``, so a bare name is always a variable (an undefined one is an error).
    """
    if value is None:
        return None
    if not _NAME.match(value):
        return value
    namespace = ctx.user_namespace()
    root = value.split(".")[0]
    if root not in namespace:
        raise ConfigError(
            f"--judge {value!r}: the kernel has no variable `{root}`, and a judge model spec needs a scheme "
            "(e.g. openrouter:MODEL). Fix: run the cell that defines it first, or pass a spec.",
            field="judge",
            value=value,
        )
    return lookup(value, "judge", None, namespace)


def handle_promote(ctx: MagicContext, command: PromoteCommand) -> Table:
    from jupyter_distill.pipeline.promote import promote

    run = ctx.runs.get(command.name)  # a run of this kernel brings its loaded judge (a Python function too)
    report = promote(
        run if run is not None else command.name,
        command.alias,
        min_pass_rate=command.min_pass_rate,
        max_latency_ms=command.max_latency_ms,
        min_gain=command.min_gain,
        judge=_judge(ctx, command.judge),
        workdir=None if run is not None else ctx.workdir,
    )
    table = promotion_table(report)
    if report.promoted:
        return table
    failed = [g for g in report.gates if not g.passed]
    display(table)
    flags = " / ".join(f"--{g.name.replace('_', '-')}" for g in failed)
    raise PromotionRefused(
        f"promotion of run {report.run!r} to alias {command.alias!r} refused: "
        + "; ".join(f"{g.name} ({g.detail}) does not hold" for g in failed)
        + f". Alias {command.alias!r} is unchanged. Fix: improve the run (more steps or data, then export it "
        f"again) or relax {flags}.",
        field=failed[0].name,
        value=failed[0].detail,
        fix=f"relax {flags}",
    )


def handle_rollback(ctx: MagicContext, command: RollbackCommand) -> Notice:
    from jupyter_distill.pipeline.promote import rollback

    version = rollback(command.alias)
    return Notice(
        f"alias {command.alias!r} serves version {version.get('restores')} again "
        f"({describe_target(version.get('entry'))}), recorded as version {version['version']}. "
        f"History: `%distill history {command.alias}`"
    )


def _detail(version: dict[str, Any]) -> str:
    if version.get("restores") is not None:
        return f"restores version {version['restores']}"
    report = version.get("report") or {}
    rates = [f"{label} pass rate {side['pass_rate']:.2f}" for label, side in report.items() if "pass_rate" in side]
    return ", ".join(rates)


def handle_history(ctx: MagicContext, command: HistoryCommand) -> Table:
    from jupyter_distill.pipeline.promote import alias_history

    versions = alias_history(command.alias)
    rows = [
        [
            v["version"],
            v["action"] + (" (current)" if i == len(versions) - 1 else ""),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(v.get("at") or 0))),
            describe_target(v.get("entry")),
            (v.get("entry") or {}).get("run") or v.get("run") or "",
            _detail(v),
        ]
        for i, v in enumerate(versions)
    ]
    return Table(
        title=f"versions of alias {command.alias!r}, oldest first",
        columns=["version", "action", "time", "target", "run", "detail"],
        rows=rows,
        empty=f"no versions: alias {command.alias!r} does not exist (`%distill aliases` lists them)",
        payload=versions,
    )


__all__ = ["PromotionRefused", "describe_target", "handle_history", "handle_promote", "handle_rollback"]
