"""Judging: verifiers, the LLM judge, the judging stage, scoring, selection and human review.

``jd.judges`` is this package: ``jd.judges.json_valid(...)``, ``jd.judges.exact_match()`` and the
other verifier constructors are looked up in its modules.
"""

from jupyter_distill.core.reexport import reexport

__getattr__, __dir__ = reexport(
    __name__, ["verifiers", "llm_judge", "stage", "schema_score", "scoring", "selection", "review"]
)
