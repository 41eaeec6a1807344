"""``%distill stop`` and ``%distill wait``: end a run of this kernel, or block until it ends."""

from __future__ import annotations

import time
from typing import Any

from IPython.display import display

from jupyter_distill.core.errors import DistillError
from jupyter_distill.core.events import PHASES
from jupyter_distill.notebook.commands import StopCommand, WaitCommand
from jupyter_distill.notebook.dashboard import RunSummary
from jupyter_distill.notebook.display import Notice
from jupyter_distill.notebook.handlers.context import MagicContext


class ReviewPendingError(DistillError):
    """``%distill wait`` was asked to block on a run that waits for a human review."""


def handle_stop(ctx: MagicContext, command: StopCommand) -> Notice:
    targets = [command.name] if command.name else [n for n, r in ctx.runs.items() if r.running]
    if command.name and (command.name not in ctx.runs or not ctx.runs[command.name].running):
        if command.name not in ctx.runs:
            RunSummary.from_store(ctx.store(), command.name)  # raises UnknownRunError for a typo
        return Notice(f"run {command.name!r} is not running in this kernel; nothing to stop.")
    if not targets:
        return Notice("no run is running in this kernel; nothing to stop.")
    for name in targets:
        ctx.runs[name].stop()
    names = ", ".join(repr(n) for n in targets)
    hints = " ".join(f"`%distill resume {n}`" for n in targets)
    return Notice(f"stopping {names}: each ends within one request or training step. Resume: {hints}")


def handle_wait(ctx: MagicContext, command: WaitCommand) -> RunSummary:
    """Block until the run ends; the summary card (or the run's error, cleanly) is the result."""
    name = ctx.name_or_last(command.name, "wait")
    run = ctx.runs.get(name)
    if run is not None and command.until is not None:
        wait_for_phase(run, command.until, command.timeout)
        return RunSummary.from_store(ctx.store_for(name), name)
    if run is not None:
        wait_for_end(run, name, command.timeout)
        dashboard = ctx.dashboards.get(name)
        if dashboard is not None and not run.running:
            dashboard.wait_rendered(timeout=10.0)
        if run.running:  # timed out
            return RunSummary.from_store(ctx.store_for(name), name)
    summary = RunSummary.from_store(ctx.store_for(name), name, student=getattr(run, "result", None))
    error = getattr(run, "error", None) if run is not None else None
    if isinstance(error, DistillError) and type(error).__name__ != "RunStopped":
        display(summary)
        raise error
    return summary


def review_pending(run: Any) -> bool:
    """The run waits for a human and nobody has released it yet (continue_after_review not called)."""
    return bool(getattr(run, "review_pending", False))


def wait_for_end(run: Any, name: str, timeout: float | None) -> None:
    """Block until the run's thread ends; refuse to block on a run that waits for a human.

    While this cell blocks, widget clicks (the review widget's "train" button) cannot reach the
    kernel, so waiting on a run paused for review would never end.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while run.running and (deadline is None or time.monotonic() < deadline):
        if review_pending(run):
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


def wait_for_phase(run: Any, phase: str, timeout: float | None) -> None:
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


__all__ = ["ReviewPendingError", "handle_stop", "handle_wait", "review_pending", "wait_for_end", "wait_for_phase"]
