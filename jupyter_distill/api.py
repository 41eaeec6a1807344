"""The ``import jupyter_distill as jd`` entry point of ``distill()``: the pipeline plus the notebook.

The pipeline must not import the notebook front end (the layers contract), yet
``jd.distill(..., review=True)`` called in a notebook should open the review widget. This thin
front-end module makes that choice: in a Jupyter kernel it hands the pipeline a review handler
that displays the widget; elsewhere it hands none, and the pipeline explains how to review.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jupyter_distill.pipeline import Run
from jupyter_distill.pipeline import distill as _pipeline_distill


def distill(*args: Any, **kwargs: Any) -> Any:
    """Distil a student from a teacher; see :func:`jupyter_distill.pipeline.distill` for every argument."""
    if kwargs.get("review") and kwargs.get("review_handler") is None:
        kwargs["review_handler"] = notebook_review_handler()
    return _pipeline_distill(*args, **kwargs)


distill.__doc__ = _pipeline_distill.__doc__


def notebook_review_handler() -> Callable[[Run], None] | None:
    """In a Jupyter kernel, a handler that shows the review widget; elsewhere None (no human to ask)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None

    def show(run: Run) -> None:
        from IPython.display import display

        from jupyter_distill.notebook.review_widget import ReviewWidget

        widget = ReviewWidget(run.store, run.name)
        widget.on_continue.append(lambda *_: run.continue_after_review())
        display(widget)

    return show
