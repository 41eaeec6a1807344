"""Evaluation: held-out pass rate and judge score of a student, before and after training.

:mod:`.heldout` holds :func:`~jupyter_distill.evaluation.heldout.evaluate` and the responders.
"""

from jupyter_distill.core.reexport import reexport

__getattr__, __dir__ = reexport(__name__, ["heldout"])
