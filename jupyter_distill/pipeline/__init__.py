"""The pipeline: a ``Run`` drives sampling, judging, review, training, evaluation and export over
the run store; :mod:`.estimate` prices a run and :mod:`.preflight` checks its inputs before the
first paid request.
"""

from jupyter_distill.core.reexport import reexport

__getattr__, __dir__ = reexport(__name__, ["run", "preflight"])
