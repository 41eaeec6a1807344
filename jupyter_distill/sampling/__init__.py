"""Sampling: best-of-N candidates from a teacher, cached in the run store so nothing is paid twice.

:mod:`.stage` is the stage the pipeline calls (:func:`~jupyter_distill.sampling.stage.sample`).
"""

from jupyter_distill.core.reexport import reexport

__getattr__, __dir__ = reexport(__name__, ["stage"])
