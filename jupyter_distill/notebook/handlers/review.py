"""``%distill review NAME``: the review widget of a run, also put into a live run's dashboard."""

from __future__ import annotations

from typing import Any

from jupyter_distill.core.errors import DistillError
from jupyter_distill.core.store import RunStore
from jupyter_distill.notebook.commands import ReviewCommand
from jupyter_distill.notebook.dashboard import RunDashboard, RunSummary
from jupyter_distill.notebook.handlers.context import MagicContext


def review_widget(store: RunStore, name: str, run: Any | None) -> Any:
    """The widget over ``name``'s candidates; its train button releases ``run`` when it waits here."""
    try:
        from jupyter_distill.notebook.review_widget import ReviewWidget
    except ImportError as exc:
        raise DistillError(
            f"the review widget is not available ({exc}). Fix: reinstall jupyter-distill with its notebook "
            "extras, or review from Python with jupyter_distill.judging.review.ReviewSession.",
            field="review",
            value=name,
        ) from None
    widget = ReviewWidget(store, name, run=run)
    if run is not None:
        widget.on_continue.append(lambda *_: run.continue_after_review())
    return widget


def show_review(run: Any, dashboard: RunDashboard) -> None:
    """The pipeline's review hook (called on the run's thread): put the widget in the dashboard."""
    dashboard.show_review(review_widget(run.store, run.name, run))


def handle_review(ctx: MagicContext, command: ReviewCommand) -> Any:
    store = ctx.store_for(command.name)
    RunSummary.from_store(store, command.name)  # a clear error for an unknown run
    return review_widget(store, command.name, ctx.runs.get(command.name))


__all__ = ["handle_review", "review_widget", "show_review"]
