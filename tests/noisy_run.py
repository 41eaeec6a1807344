"""A run whose stages print the way third-party libraries do, for the browser test of output capture.

``install()`` (called inside a kernel started by JupyterLab) replaces ``Run._run_phases`` only:
``Run.run`` stays the product's own, so the capture it opens (:mod:`jupyter_distill.core.capture`,
the run's :class:`~jupyter_distill.core.runlog.RunLog`), the ``log`` events and the dashboard's
log view are the real ones. The stages are those of ``distill_fakes.fake_run`` (no teacher, no
model); during sampling the run's thread writes what libraries write: a tqdm bar and raw text on
stderr, a ``print``, a ``FutureWarning``, a logging warning, and a print from an
``asyncio.to_thread`` worker (the local teacher generates there).

The noise waits for :data:`gate`, which the next cell sets, so it is written while *another*
cell executes: output that escaped the capture would land in that cell. :data:`noise_done` tells
that cell when the noise is over.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import warnings
from typing import Any

from distill_fakes import fake_run

gate = threading.Event()
noise_done = threading.Event()

#: what each source writes; the test looks for these in the run's log and nowhere else
LINES = {
    "bar": "third-party bar",
    "stderr": "a library wrote this to stderr",
    "print": "a library printed this",
    "warning": "a library warns about the future",
    "logging": "a library logged this warning",
    "worker": "printed by a worker thread of the run",
}


def make_noise(timeout: float = 120.0) -> None:
    """Write one line from every source, after the next cell has started (see the module docstring)."""
    from tqdm import tqdm

    try:
        if not gate.wait(timeout):
            raise TimeoutError("the cell that opens the gate never ran")
        for _ in tqdm(range(3), desc=LINES["bar"], file=sys.stderr, mininterval=0):
            pass
        sys.stderr.write(LINES["stderr"] + "\n")
        print(LINES["print"])
        warnings.warn(LINES["warning"], FutureWarning, stacklevel=1)
        logging.getLogger("some.library").warning(LINES["logging"])
        asyncio.run(asyncio.to_thread(print, LINES["worker"]))
    finally:
        noise_done.set()


def noisy_phases(self: Any) -> Any:
    """``Run._run_phases`` with the fake stages and the noise inside the sampling phase."""
    phase = self._phase

    def with_noise(name: str, work: Any) -> Any:
        if name != "sampling":
            return phase(name, work)
        return phase(name, lambda: (make_noise(), work())[1])

    self._phase = with_noise
    return fake_run(self)


def install() -> None:
    """Patch ``Run._run_phases`` in this process."""
    from jupyter_distill.pipeline import run as pipeline

    pipeline.Run._run_phases = noisy_phases  # type: ignore[method-assign]
