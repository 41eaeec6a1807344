"""``%%distill`` and ``%distill resume``: start a run in the background with its dashboard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.data import check_source
from jupyter_distill.core.errors import ConfigError, DistillError
from jupyter_distill.notebook.commands import ResumeCommand, RunCommand, WaitCommand
from jupyter_distill.notebook.dashboard import RunDashboard, RunSummary
from jupyter_distill.notebook.handlers.context import MagicContext
from jupyter_distill.notebook.handlers.control import handle_wait
from jupyter_distill.notebook.handlers.review import show_review


class RunBusyError(DistillError):
    """A run of that name is still running in this kernel."""


def handle_run(ctx: MagicContext, command: RunCommand, body: str) -> Any:
    """Start the run in a background thread and show its dashboard; return at once."""
    config = ctx.build_config(body, command.overrides, command.name)
    if command.estimate:
        from jupyter_distill.pipeline.estimate import estimate_config

        return estimate_config(config)
    return ctx.launch(config, resume=not command.fresh, wait=command.wait)


def handle_resume(ctx: MagicContext, command: ResumeCommand) -> Any:
    config = ctx.configs.get(command.name)
    if config is None:
        config = config_from_store(ctx, command.name)
    return ctx.launch(config, resume=not command.fresh, wait=command.wait)


def config_from_store(ctx: MagicContext, name: str) -> DistillConfig:
    """The config a run of another kernel was stored with; refused when it held Python objects."""
    run = ctx.store().get_run(name)
    if run is None:
        RunSummary.from_store(ctx.store(), name)  # raises UnknownRunError with the known runs
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


def launch(
    ctx: MagicContext,
    config: DistillConfig,
    *,
    resume: bool,
    wait: bool,
    show: Callable[[RunDashboard], Any] | None = None,
) -> Any:
    """Start ``config`` on a background thread, draw its dashboard, and return at once (or wait).

    ``show`` places the dashboard where the caller wants it instead of the cell's output: a
    widget button's callback has no cell to display into (its output would go to JupyterLab's
    log console), so the review widget's "resume with this review" puts it inside itself.
    """
    from jupyter_distill.pipeline.run import Run, default_run_name

    name = config.name or default_run_name(config)
    current = ctx.runs.get(name)
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
    dashboard = RunDashboard(name, min_interval=ctx.refresh_interval)
    run = Run(config, review_handler=lambda r: show_review(r, dashboard), resume=resume)
    ctx.share_store(str(config.workdir), run.store)
    dashboard.attach(run)
    console = None
    if ctx.show_console or not ctx.in_kernel():
        from jupyter_distill.core.events import ConsoleRenderer

        console = ConsoleRenderer()
        run.add_listener(console)
    ctx.remember(name, run, config, dashboard)
    if show is None:
        dashboard.display()
    else:
        show(dashboard)
    if console is not None:
        dashboard.on_final.append(lambda _d: console.close())
    run.start()
    if wait:
        return handle_wait(ctx, WaitCommand(name=name))
    return None


__all__ = ["RunBusyError", "config_from_store", "handle_resume", "handle_run", "launch"]
