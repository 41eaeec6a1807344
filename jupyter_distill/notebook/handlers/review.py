"""``%distill review NAME``: the review widget of a run, also put into a live run's dashboard."""

from __future__ import annotations

from typing import Any

from jupyter_distill.core.errors import DistillError
from jupyter_distill.core.store import RunStore
from jupyter_distill.notebook.commands import ReviewCommand
from jupyter_distill.notebook.dashboard import RunDashboard, RunSummary
from jupyter_distill.notebook.handlers.context import MagicContext


def review_widget(store: RunStore, name: str, run: Any | None, retrain: Any = None) -> Any:
    """The widget over ``name``'s candidates; its train button releases ``run`` when it waits here.

    ``retrain(widget)`` starts the resumed run when the run has ended (see :func:`resume_reviewed`);
    without it the widget starts one itself (:mod:`jupyter_distill.notebook.review_retrain`).
    """
    try:
        from jupyter_distill.notebook.review_widget import ReviewWidget
    except ImportError as exc:
        raise DistillError(
            f"the review widget is not available ({exc}). Fix: reinstall jupyter-distill with its notebook "
            "extras, or review from Python with jupyter_distill.judging.review.ReviewSession.",
            field="review",
            value=name,
        ) from None
    widget = ReviewWidget(store, name, run=run, on_retrain=retrain)
    if run is not None:
        widget.on_continue.append(lambda *_: run.continue_after_review())
    return widget


def show_review(run: Any, dashboard: RunDashboard) -> None:
    """The pipeline's review hook (called on the run's thread): put the widget in the dashboard."""
    dashboard.show_review(review_widget(run.store, run.name, run))


def handle_review(ctx: MagicContext, command: ReviewCommand) -> Any:
    store = ctx.store_for(command.name)
    RunSummary.from_store(store, command.name)  # a clear error for an unknown run
    return review_widget(
        store, command.name, ctx.runs.get(command.name), retrain=lambda widget: resume_reviewed(ctx, widget)
    )


def resume_reviewed(ctx: MagicContext, widget: Any) -> Any:
    """Resume the widget's ended run with review off, as this kernel's run of that name.

    Through the magics' own launch, so `%distill status|stop|wait NAME` act on the resumed run
    (a run started behind their back would leave them on the ended one); its dashboard goes
    inside the widget, where the button was clicked. Returns the started ``Run``.
    """
    from jupyter_distill.notebook.review_retrain import config_for_retrain

    name = widget.session.run_id
    config = config_for_retrain(widget.session.store, name, ctx.runs.get(name))
    ctx.launch(config, resume=True, wait=False, show=widget.show_resumed)
    return ctx.runs.get(name)


__all__ = ["handle_review", "resume_reviewed", "review_widget", "show_review"]
