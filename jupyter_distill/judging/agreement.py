"""Judge calibration: how often the judge's verdicts match a human reviewer's decisions.

A judge is trusted to pick training data, so after a human has reviewed some prompts the first
question is whether the two agree. Every candidate the human labelled explicitly is one item:

* human **good**: chosen as best or accepted; human **bad**: rejected, or any candidate of a
  prompt the human threw out. Edited candidates are left out (the human neither kept the text
  as it was nor threw it away), and so are candidates the human did not mark.
* judge **good**: its score is at least ``threshold`` (the pass mark, 0.5 on the normalised
  scale); judge **bad**: a lower score. A candidate the judge could not score counts as bad,
  since selection never chooses it.

Over these items the module reports the raw agreement rate and Cohen's kappa (agreement beyond
what two raters with the same label frequencies would reach by chance), the number of reviewed
prompts, how often the judge's top candidate is the one the human chose as best, and the prompts
where the two disagree (a label differs or the judge ranks another candidate first), worst
first: the largest sum of ``|judge score - human label|`` over the prompt's items, plus one when
the judge's top candidate is not the human's best. Pure functions over plain data: no store, no model.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from jupyter_distill.judging.review import Decision

PASS_THRESHOLD = 0.5


def cohen_kappa(pairs: Sequence[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa of two raters' binary labels ``(rater_a, rater_b)`` per item.

    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed agreement and ``p_e`` the
    chance agreement from each rater's own share of positive labels. ``None`` without items;
    when ``p_e`` is 1 (both raters gave every item one and the same label) kappa is undefined in
    the formula, and 1.0 is returned because the raters agree perfectly.
    """
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    a_yes = sum(a for a, _ in pairs) / n
    b_yes = sum(b for _, b in pairs) / n
    expected = a_yes * b_yes + (1 - a_yes) * (1 - b_yes)
    if expected >= 1.0:
        return 1.0
    return (observed - expected) / (1.0 - expected)


@dataclass(frozen=True)
class Disagreement:
    """One reviewed prompt and how far the judge is from the human on it."""

    prompt_hash: str
    distance: float  # sum over the prompt's items of |judge score - human label|
    human: str  # the human's decision in words
    judge_best: str | None  # the candidate the judge ranks first
    human_best: str | None
    items: list[dict[str, Any]] = field(default_factory=list)  # {sample_key, human, score}


@dataclass(frozen=True)
class Agreement:
    """How well a judge matches human review on one run."""

    judge: str | None
    reviewed_prompts: int
    items: int  # labelled candidates compared
    agreement: float | None  # share of items with the same label
    kappa: float | None
    top_pick_prompts: int  # prompts where the human chose a best candidate
    top_pick_agreement: float | None  # share of those where the judge ranks it first
    threshold: float = PASS_THRESHOLD
    disagreements: list[Disagreement] = field(default_factory=list)  # worst first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _line(self) -> str:
        def num(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2f}"

        return (
            f"judge {self.judge or '?'}: agreement {num(self.agreement)} (kappa {num(self.kappa)}) on {self.items} "
            f"labelled candidates of {self.reviewed_prompts} reviewed prompts; top pick matches on "
            f"{num(self.top_pick_agreement)} of {self.top_pick_prompts}"
        )

    def __repr__(self) -> str:
        lines = [f"Agreement({self._line()})"]
        for d in self.disagreements[:5]:
            lines.append(f"  {d.prompt_hash[:12]}  distance {d.distance:.2f}  human: {d.human}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{html.escape(d.prompt_hash[:12])}</code></td><td>{d.distance:.2f}</td>"
            f"<td>{html.escape(d.human)}</td></tr>"
            for d in self.disagreements[:10]
        )
        table = f"<table><tr><th>prompt</th><th>distance</th><th>human</th></tr>{rows}</table>" if rows else ""
        return f"<div><b>Judge agreement</b><p>{html.escape(self._line())}</p>{table}</div>"


def _human_labels(decision: Decision, keys: Sequence[str]) -> dict[str, bool]:
    if decision.rejected_prompt:
        return dict.fromkeys(keys, False)
    labels: dict[str, bool] = {}
    for key in keys:
        if key in decision.rejected:
            labels[key] = False
        elif key == decision.best or key in decision.accepted:
            labels[key] = True
    return labels


def judge_agreement(
    decisions: Mapping[str, Decision],
    candidates: Mapping[str, Sequence[tuple[str, float | None]]],
    *,
    judge: str | None = None,
    threshold: float = PASS_THRESHOLD,
    worst: int = 10,
) -> Agreement:
    """Compare the judge's scores with the human's decisions.

    ``decisions``: ``{prompt_hash: Decision}`` (replayed review log); ``candidates``:
    ``{prompt_hash: [(sample_key, judge score or None), ...]}`` in sample-index order (the order
    breaks ties of the judge's ranking, as selection does). Prompts without a standing decision
    are ignored; ``worst`` caps the disagreement list.
    """
    pairs: list[tuple[bool, bool]] = []
    top_hits = top_total = reviewed = 0
    found: list[Disagreement] = []
    for prompt_hash, decision in decisions.items():
        if not decision.reviewed:
            continue
        reviewed += 1
        cands = list(candidates.get(prompt_hash, []))
        scores = dict(cands)
        labels = _human_labels(decision, [key for key, _ in cands])
        scored = [(key, score) for key, score in cands if score is not None]
        judge_best = min(scored, key=lambda ks: -ks[1])[0] if scored else None  # min keeps the first of ties
        if decision.best is not None and not decision.rejected_prompt:
            top_total += 1
            top_hits += judge_best == decision.best
        distance = 0.0
        mismatch = False
        items = []
        for key, human in labels.items():
            score = scores.get(key)
            passed = score is not None and score >= threshold
            pairs.append((human, passed))
            mismatch = mismatch or passed != human
            distance += abs((score or 0.0) - (1.0 if human else 0.0))
            items.append({"sample_key": key, "human": "good" if human else "bad", "score": score})
        if decision.best is not None and not decision.rejected_prompt and judge_best != decision.best:
            distance += 1.0  # the judge would train on another candidate first
            mismatch = True
        if mismatch:
            found.append(
                Disagreement(prompt_hash, round(distance, 6), decision.summary(), judge_best, decision.best, items)
            )
    found.sort(key=lambda d: (-d.distance, d.prompt_hash))
    observed = sum(a == b for a, b in pairs) / len(pairs) if pairs else None
    return Agreement(
        judge=judge,
        reviewed_prompts=reviewed,
        items=len(pairs),
        agreement=None if observed is None else round(observed, 6),
        kappa=None if not pairs else round(float(cohen_kappa(pairs) or 0.0), 6),
        top_pick_prompts=top_total,
        top_pick_agreement=round(top_hits / top_total, 6) if top_total else None,
        threshold=threshold,
        disagreements=found[:worst],
    )


__all__ = ["PASS_THRESHOLD", "Agreement", "Disagreement", "cohen_kappa", "judge_agreement"]
