"""``%distill estimate`` and ``%distill export``: what a run would cost, and a finished run's GGUF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import ExportError
from jupyter_distill.notebook.commands import EstimateCommand, ExportCommand
from jupyter_distill.notebook.dashboard import RunSummary
from jupyter_distill.notebook.handlers.context import MagicContext


def handle_estimate(ctx: MagicContext, command: EstimateCommand) -> Any:
    from jupyter_distill.pipeline.estimate import estimate_config

    return estimate_config(ctx.build_config("", command.overrides))


def handle_export(ctx: MagicContext, command: ExportCommand) -> RunSummary:
    """Export a finished run's adapter to GGUF in the foreground (seconds for small students)."""
    from jupyter_distill.export.gguf import export_gguf
    from jupyter_distill.train.student import resolve_student_folder

    store = ctx.store_for(command.name)
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
    student_spec = str(summary.run["config"].get("student", ctx.default_student))
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


__all__ = ["handle_estimate", "handle_export"]
