"""The ``import jupyter_distill as jd`` entry point of ``distill()``: the pipeline plus the notebook.

The pipeline must not import the notebook front end (the layers contract), yet
``jd.distill(..., review=True)`` called in a notebook has to show the review widget. A run that
pauses for review cannot block the cell that started it: while a cell runs, the kernel handles
no widget messages, so the "train" button could never reach the waiting run. So in a Jupyter
kernel ``review=True`` runs the pipeline in a background thread under a run dashboard (the
``%%distill`` view), puts the review widget into that dashboard when the run pauses, and returns
the :class:`~jupyter_distill.pipeline.run.Run` at once; ``run.wait()`` (in a later cell) or
``run.result`` gives the Student after training. Anywhere else the call is synchronous and
``review=True`` raises a ``ReviewError`` that says how to review.
"""

from __future__ import annotations

from typing import Any

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.data import check_source
from jupyter_distill.pipeline.run import Run
from jupyter_distill.pipeline.run import distill as _pipeline_distill


def distill(*args: Any, **kwargs: Any) -> Any:
    """Distil a student from a teacher; see :func:`jupyter_distill.pipeline.run.distill` for every argument.

    Returns the Student, except with ``review=True`` inside a Jupyter kernel, where it returns
    the running :class:`Run` at once (see the module docstring).
    """
    if kwargs.get("review") and kwargs.get("review_handler") is None and _in_kernel():
        return _start_with_review(*args, **kwargs)
    return _pipeline_distill(*args, **kwargs)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _start_with_review(
    dataset: Any = None,
    teacher: Any = "local:smollm2-135m",
    student: str = "smollm2-135m",
    judge: Any = None,
    *,
    on_progress: Any = None,
    resume: bool = True,
    review_handler: Any = None,
    **options: Any,
) -> Run:
    from jupyter_distill.notebook.dashboard import RunDashboard
    from jupyter_distill.notebook.review_widget import ReviewWidget

    config = DistillConfig.from_kwargs(dataset=dataset, teacher=teacher, student=student, judge=judge, **options)
    check_source(config.dataset)  # a missing file fails the call, not a dashboard in the background

    def show_review(run: Run) -> None:  # runs on the run's thread: only sets widget traits
        widget = ReviewWidget(run.store, run.name, run=run)
        widget.on_continue.append(lambda *_: run.continue_after_review())
        dashboard.show_review(widget)

    run = Run(config, on_progress=on_progress, review_handler=show_review, resume=resume)
    dashboard = RunDashboard(run.name, store=run.store).attach(run)
    dashboard.display()
    return run.start()
