"""Judge calibration over a run store: agreement with human review, and re-judging with a new rubric.

The arithmetic lives in :mod:`jupyter_distill.judging.agreement`; this module gathers its inputs
from the store (the replayed review log and one judge's stored scores) and runs the judging stage
again when the user edits the rubric. An LLM judge's id contains a hash of its rubric, so the
new verdicts are stored beside the old ones under another judge id: both rubrics stay in the
store and either can be compared with the review at any time.
"""

from __future__ import annotations

from typing import Any

from jupyter_distill.core.errors import JudgeError
from jupyter_distill.judging.agreement import PASS_THRESHOLD, Agreement
from jupyter_distill.judging.agreement import judge_agreement as compute_agreement
from jupyter_distill.pipeline.runref import RunRef, resolve_run


def _agreement(ref: RunRef, judge_id: str | None, threshold: float) -> Agreement:
    from jupyter_distill.judging.review import ReviewSession

    session = ReviewSession(ref.store, ref.run_id, judge=judge_id)
    decisions = session.decisions()
    candidates = {h: [(c.key, c.score) for c in session.item(h).candidates] for h in decisions}
    return compute_agreement(decisions, candidates, judge=session.judge_id, threshold=threshold)


def judge_agreement(
    run: Any, *, judge: str | None = None, threshold: float = PASS_THRESHOLD, workdir: Any = None
) -> Agreement:
    """How often the judge (``judge``: a judge id; default the run's own) matches the review of ``run``."""
    return _agreement(resolve_run(run, workdir), judge, threshold)


def _judge_model(ref: RunRef) -> Any:
    """What grades with the new rubric: the run's LLM judge model (its judge spec, else its teacher)."""
    loaded = getattr(ref.run, "_loaded_judge", None) if ref.run is not None else None
    if loaded is not None and hasattr(loaded, "teacher") and hasattr(loaded, "rubric"):
        return loaded.teacher
    config = ref.config
    judge = config.get("judge")
    if isinstance(judge, str) and judge and not judge.startswith("<"):
        return judge
    if judge is None and isinstance(config.get("teacher"), str):
        return config["teacher"]
    raise JudgeError(
        f"run {ref.run_id!r} was judged by {judge!r}, not by a model that reads a rubric, so it cannot be re-judged "
        "with an edited rubric. Fix: pass judge='<model spec>' to rejudge().",
        field="judge",
        value=str(judge),
    )


def rejudge(
    run: Any,
    rubric: str,
    *,
    judge: Any = None,
    all_prompts: bool = False,
    threshold: float = PASS_THRESHOLD,
    workdir: Any = None,
) -> Agreement:
    """Judge the run's candidates again with ``rubric`` and return the new agreement with the review.

    Only the reviewed prompts are judged unless ``all_prompts`` (what agreement needs, and no
    more requests). ``judge`` is the grading model (a spec or a Teacher; default the run's judge
    model). The verdicts of the old rubric stay in the store; the new judge id and its agreement
    are recorded in the run's summary under ``rejudged``.
    """
    from jupyter_distill.judging.llm_judge import LLMJudge, load_judge
    from jupyter_distill.judging.review import ReviewSession
    from jupyter_distill.judging.stage import judge as run_judge

    ref = resolve_run(run, workdir)
    model = judge if judge is not None else _judge_model(ref)
    if isinstance(model, LLMJudge):  # its model, graded with the new rubric
        the_judge: Any = LLMJudge(model.teacher, rubric=rubric, max_tokens=model.max_tokens)
    else:
        the_judge = load_judge(model, rubric=rubric)
    if not isinstance(the_judge, LLMJudge):
        raise JudgeError(
            f"judge={model!r} does not read a rubric (a verifier or a custom Judge), so an edited rubric changes "
            "nothing. Fix: pass judge='<model spec>' or a Teacher to grade with the rubric.",
            field="judge",
            value=repr(model)[:80],
        )
    session = ReviewSession(ref.store, ref.run_id, judge=the_judge.id)
    wanted = set(session.decisions()) if not all_prompts else {p.hash for p in session.prompts}
    prompts = [p for p in session.prompts if p.hash in wanted]
    samples = {p.hash: session.candidates(p.hash) for p in prompts}
    run_judge(ref.store, the_judge, prompts, samples, run_id=ref.run_id)
    result = _agreement(ref, the_judge.id, threshold)
    previous = dict(ref.summary.get("rejudged") or {})
    previous[the_judge.id] = {
        "rubric": getattr(the_judge, "rubric", rubric),
        "agreement": result.agreement,
        "kappa": result.kappa,
        "reviewed_prompts": result.reviewed_prompts,
    }
    ref.store.update_run(ref.run_id, summary={"rejudged": previous})
    return result


__all__ = ["judge_agreement", "rejudge"]
