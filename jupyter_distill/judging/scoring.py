"""How judged candidates rank: one score per candidate, one uncertainty per prompt.

Shared by :mod:`jupyter_distill.judging.selection` (which turns ranks into training pairs) and
:mod:`jupyter_distill.judging.review` (which shows the same ranks to a human), so both always agree and
neither has to import the other.

A prompt's **uncertainty** in [0, 1] orders human review: high when even the best candidate
scored low, when the candidates are indistinguishable, when judges disagree about a candidate,
and when judgments failed (all failed = 1.0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from jupyter_distill.core.store import JudgmentRecord, SampleRecord

JudgmentsArg = (
    Mapping[str, JudgmentRecord]
    | Mapping[str, Sequence[JudgmentRecord]]
    | Sequence[Mapping[str, JudgmentRecord]]
    | Iterable[JudgmentRecord]
)


def group_judgments(judgments: JudgmentsArg | None) -> dict[str, list[JudgmentRecord]]:
    """Accept what :func:`jupyter_distill.judging.stage.judge` returns (one judge), several such dicts
    (one per judge), ``{sample_key: [records]}`` or a flat list; give ``{sample_key: [records]}``."""
    out: dict[str, list[JudgmentRecord]] = {}

    def add(record: JudgmentRecord) -> None:
        bucket = out.setdefault(record.sample_key, [])
        if all(r.key != record.key for r in bucket):
            bucket.append(record)

    if judgments is None:
        return out
    if isinstance(judgments, Mapping):
        for value in judgments.values():
            for record in [value] if isinstance(value, JudgmentRecord) else value:
                add(record)
        return out
    for item in judgments:
        if isinstance(item, JudgmentRecord):
            add(item)
        else:
            for record in group_judgments(item).values():
                for r in record:
                    add(r)
    return out


def candidate_scores(
    samples: Sequence[SampleRecord], judgments: JudgmentsArg | Mapping[str, list[JudgmentRecord]]
) -> dict[str, tuple[float | None, str]]:
    """``{sample_key: (score, status)}``: the mean of the candidate's ok judgments.

    status is "ok" (at least one judge scored it), "failed" (judged, none succeeded) or
    "unjudged"; score is ``None`` unless status is "ok".
    """
    grouped = group_judgments(judgments)
    out: dict[str, tuple[float | None, str]] = {}
    for s in samples:
        records = grouped.get(s.key, [])
        ok = [r.score for r in records if r.status == "ok" and r.score is not None]
        if ok:
            out[s.key] = (sum(ok) / len(ok), "ok")
        else:
            out[s.key] = (None, "failed" if records else "unjudged")
    return out


def prompt_uncertainty(
    samples: Sequence[SampleRecord], judgments: JudgmentsArg | Mapping[str, list[JudgmentRecord]]
) -> float:
    """How unsure the judges are about this prompt, in [0, 1].

    With ``best`` the top score and ``spread`` = best - worst over scored candidates:
    ``base = (1 - best) * (1 + best * (1 - spread))`` -- zero when a candidate is perfect, one
    when all are worthless, and raised when mediocre candidates are indistinguishable. Then the
    largest judge disagreement on any candidate (e.g. verifier 1.0 vs LLM 0.2) is a floor, and the
    share ``f`` of candidates without a score pulls it toward 1: ``u + (1 - u) * f``.
    """
    if not samples:
        return 1.0
    grouped = group_judgments(judgments)
    scores = candidate_scores(samples, grouped)
    ok = [score for score, status in scores.values() if status == "ok" and score is not None]
    if not ok:
        return 1.0
    best, spread = max(ok), max(ok) - min(ok)
    base = (1.0 - best) * (1.0 + best * (1.0 - spread))
    disagreement = 0.0
    for s in samples:
        per_judge = [r.score for r in grouped.get(s.key, []) if r.status == "ok" and r.score is not None]
        if len(per_judge) >= 2:
            disagreement = max(disagreement, max(per_judge) - min(per_judge))
    failed_share = sum(1 for _, status in scores.values() if status != "ok") / len(scores)
    u = max(base, disagreement)
    u = u + (1.0 - u) * failed_share
    return round(min(1.0, max(0.0, u)), 6)


__all__ = ["JudgmentsArg", "candidate_scores", "group_judgments", "prompt_uncertainty"]
