"""Train again on a finished run's review: resume the run with review off, so the decisions apply.

A review made after the run ended (``%distill review NAME``) has no waiting run to release.
Selection reads the human decisions before the judge's scores, so resuming the run is what
trains on them: samples and judgments come from the store (no teacher or judge request for
them), and training restarts from the initial student when the selected pairs changed.
``review`` is turned off for that resume, or the run would stop at the review step again.
"""

from __future__ import annotations

from typing import Any

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.errors import ConfigError
from jupyter_distill.core.store import RunLock, RunStore


def config_for_retrain(store: RunStore, run_id: str, run: Any = None) -> DistillConfig:
    """The run's config with ``review=False``: the ``Run``'s own when given, else the stored one.

    A stored config keeps Python objects (a list of rows, a verifier function) only as
    descriptions; such a run is resumed from its cell instead, and the error says so.
    """
    config = getattr(run, "config", None)
    if isinstance(config, DistillConfig):
        return config.model_copy(update={"review": False})
    stored = dict(((store.get_run(run_id) or {}).get("config")) or {})
    for key, value in stored.items():
        if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
            raise ConfigError(
                f"run {run_id!r} was started with a Python object for '{key}' ({value}), which the store cannot "
                "hold, so it cannot be resumed from here. Fix: re-run its %%distill cell (or distill(..., "
                f"name={run_id!r})) with review: false; every sample and judgment is re-used and your review "
                "decisions are applied.",
                field=key,
                value=value,
            )
    stored.update(name=run_id, workdir=str(store.workdir), review=False)
    return DistillConfig.from_kwargs(**{k: v for k, v in stored.items() if k in DistillConfig.model_fields})


def check_free(store: RunStore, run_id: str) -> None:
    """Raise ``RunLockedError`` (naming the holder) when a process runs ``run_id`` now.

    The resumed run takes the run's lock on its own thread, after the widget has answered; a run
    still waiting for review in another kernel would make it fail there, behind a feedback line
    that said it resumes. Probing the lock first lets the widget say so instead.
    """
    RunLock(store.workdir, run_id).acquire().release()


def resume_with_review(store: RunStore, run_id: str, run: Any = None) -> tuple[Any, Any]:
    """Start the resumed run in the background; returns ``(Run, RunDashboard)`` (the dashboard attached)."""
    from jupyter_distill.notebook.dashboard import RunDashboard
    from jupyter_distill.pipeline.run import Run

    resumed = Run(config_for_retrain(store, run_id, run), resume=True)
    dashboard = RunDashboard(resumed.name, store=resumed.store).attach(resumed)
    resumed.start()
    return resumed, dashboard


__all__ = ["check_free", "config_for_retrain", "resume_with_review"]
