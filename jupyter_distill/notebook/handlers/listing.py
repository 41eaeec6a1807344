"""``%distill status``, ``runs`` and ``aliases``: what the run store and the alias registry hold."""

from __future__ import annotations

import json
from pathlib import Path

from jupyter_distill.notebook.commands import AliasesCommand, RunsCommand, StatusCommand
from jupyter_distill.notebook.dashboard import RunSummary
from jupyter_distill.notebook.display import Table
from jupyter_distill.notebook.handlers.context import MagicContext


def handle_status(ctx: MagicContext, command: StatusCommand) -> RunSummary:
    """The run's card; for a run going on in this kernel, with its live numbers so far."""
    name = ctx.name_or_last(command.name, "status")
    run = ctx.runs.get(name)
    summary = RunSummary.from_store(ctx.store_for(name), name, student=getattr(run, "result", None))
    if run is not None and run.running:
        live = {**run.state.summary, "teacher_requests": run.state.requests, "teacher_cost": run.state.cost}
        summary.run["summary"] = {**live, **summary.summary}
        summary.run["status"], summary.run["phase"] = run.state.status, run.state.phase
    return summary


def handle_runs(ctx: MagicContext, command: RunsCommand) -> Table:
    runs = ctx.store().list_runs()
    rows = []
    for run in runs:
        summary = run.get("summary") or {}
        after = (summary.get("student_after") or {}).get("pass_rate")
        here = run["id"] in ctx.runs and ctx.runs[run["id"]].running
        rows.append(
            [
                run["id"],
                run["status"] + (" (this kernel)" if here else ""),
                run.get("phase") or "",
                str(run["config"].get("teacher", "")),
                str(run["config"].get("student", "")),
                "" if after is None else f"{after:.0%}",
                summary.get("alias") or "",
            ]
        )
    return Table(
        title=f"runs in {str(Path(ctx.workdir))!r}",
        columns=["name", "status", "phase", "teacher", "student", "pass@1 after", "alias"],
        rows=rows,
        empty="no runs yet: start one with a %%distill cell",
        payload=json.loads(json.dumps(runs, default=str)),
    )


def handle_aliases(ctx: MagicContext, command: AliasesCommand) -> Table:
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


__all__ = ["handle_aliases", "handle_runs", "handle_status"]
