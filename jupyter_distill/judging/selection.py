"""Selection: from judged candidates (and human decisions) to BOND training pairs.

Per prompt the candidates are ranked -- human picks first, then judge score (descending),
then sample index, then key, so equal scores always give the same order -- and the best
``top_k`` survive. Each survivor becomes a pair whose *chosen* side is that survivor and whose
*rejected* side is the worst candidate, when that one is strictly worse (BOND's best-vs-worst).
A failed judgment has no score: it ranks last and is never chosen or used as the rejected side,
unless a human chose or rejected it explicitly.

Each prompt also gets an **uncertainty** in [0, 1] (:mod:`jupyter_distill.judging.scoring`) that
orders human review.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from jupyter_distill.core.errors import ConfigError
from jupyter_distill.core.store import JudgmentRecord, PairRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.judging.review import Decision, replay
from jupyter_distill.judging.scoring import JudgmentsArg, candidate_scores, group_judgments, prompt_uncertainty


@dataclass
class Selection:
    """What selection decided; ``pairs`` are also written to the store."""

    pairs: list[PairRecord]
    uncertainty: dict[str, float]
    survivors: dict[str, list[str]]  # prompt_hash -> sample keys, rank order
    dropped: list[str] = field(default_factory=list)  # prompts with no survivor (rejected or all failed)


def select(
    store: RunStore,
    run_id: str,
    prompts: Sequence[PromptRecord],
    samples: Mapping[str, Sequence[SampleRecord]] | Iterable[SampleRecord],
    judgments: JudgmentsArg,
    top_k: int,
    *,
    min_score: float | None = None,
    decisions: Mapping[str, Decision] | None = None,
) -> Selection:
    """Rank, keep ``top_k`` survivors per prompt, build pairs, write them with ``store.put_pairs``.

    Human decisions (read from the store unless ``decisions`` is given) come first: the chosen
    best, then edited and accepted candidates (all survive, even beyond ``top_k``; an edited
    text is the chosen text, source "human"); human-rejected candidates are never chosen and are
    the preferred rejected side; a rejected prompt is dropped. Judge-ranked candidates fill the
    remaining places; with ``min_score`` a candidate scoring below it is never chosen (still a
    rejected side), so a verifier that nobody passed yields no pair instead of a wrong one.
    """
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError(
            f"top_k must be an integer >= 1, got {top_k!r}. Fix: e.g. top_k=2.", field="top_k", value=top_k
        )
    if min_score is not None and not 0.0 <= float(min_score) <= 1.0:
        raise ConfigError(
            f"min_score must be in [0, 1] (scores are normalised), got {min_score!r}. Fix: e.g. min_score=0.5.",
            field="min_score",
            value=min_score,
        )
    if decisions is None:
        decisions = replay(store.get_reviews(run_id))
    by_prompt = _group_samples(samples)
    grouped = group_judgments(judgments)

    pairs: list[PairRecord] = []
    uncertainty: dict[str, float] = {}
    survivors: dict[str, list[str]] = {}
    dropped: list[str] = []
    for prompt in prompts:
        cands = by_prompt.get(prompt.hash, [])
        uncertainty[prompt.hash] = prompt_uncertainty(cands, grouped)
        decision = decisions.get(prompt.hash) or Decision(prompt.hash)
        if decision.rejected_prompt:
            survivors[prompt.hash] = []
            dropped.append(prompt.hash)
            continue
        kept, ranked_pairs = _select_prompt(prompt.hash, cands, grouped, decision, top_k, min_score)
        survivors[prompt.hash] = kept
        if not kept:
            dropped.append(prompt.hash)
        pairs.extend(ranked_pairs)
    store.put_pairs(run_id, pairs)
    return Selection(pairs=pairs, uncertainty=uncertainty, survivors=survivors, dropped=dropped)


def _select_prompt(
    prompt_hash: str,
    cands: list[SampleRecord],
    judgments: Mapping[str, list[JudgmentRecord]],
    decision: Decision,
    top_k: int,
    min_score: float | None,
) -> tuple[list[str], list[PairRecord]]:
    by_key = {s.key: s for s in cands}
    scores = candidate_scores(cands, judgments)
    human = [k for k in decision.chosen if k in by_key]
    human_rejected = [k for k in decision.rejected if k in by_key and k not in human]

    def judge_order(s: SampleRecord) -> tuple[float, int, str]:
        return (-(scores[s.key][0] or 0.0), s.sample_index, s.key)

    scored = sorted(
        (s for s in cands if scores[s.key][1] == "ok" and s.key not in human and s.key not in human_rejected),
        key=judge_order,
    )
    eligible = [s for s in scored if min_score is None or (scores[s.key][0] or 0.0) >= min_score]
    kept = human + [s.key for s in eligible[: max(0, top_k - len(human))]]

    # effective score: human picks above everything, human rejections below everything
    effective: dict[str, float] = {k: math.inf for k in human}
    effective.update({s.key: scores[s.key][0] or 0.0 for s in scored})
    effective.update({k: -math.inf for k in human_rejected})
    # full ranking; the rejected side is its last element (judge order reversed on ties)
    ranking = human + [s.key for s in scored] + sorted(human_rejected, key=lambda k: (by_key[k].sample_index, k))
    worst = ranking[-1] if ranking else None

    pairs = []
    for rank, key in enumerate(kept):
        chosen_text = decision.edits.get(key, by_key[key].text)
        rejected_key = worst if worst is not None and worst != key and effective[worst] < effective[key] else None
        rejected_text = by_key[rejected_key].text if rejected_key is not None else None
        if rejected_text is not None and rejected_text == chosen_text:
            rejected_key = rejected_text = None  # identical texts carry no preference signal
        pairs.append(
            PairRecord(
                prompt_hash=prompt_hash,
                rank=rank,
                chosen_text=chosen_text,
                rejected_text=rejected_text,
                chosen_key=key,
                rejected_key=rejected_key,
                source="human" if key in human else "judge",
            )
        )
    return kept, pairs


def _group_samples(
    samples: Mapping[str, Sequence[SampleRecord]] | Iterable[SampleRecord],
) -> dict[str, list[SampleRecord]]:
    flat = [s for group in samples.values() for s in group] if isinstance(samples, Mapping) else list(samples)
    out: dict[str, dict[str, SampleRecord]] = {}
    for s in flat:
        out.setdefault(s.prompt_hash, {}).setdefault(s.key, s)
    return {h: sorted(group.values(), key=lambda s: (s.sample_index, s.key)) for h, group in out.items()}


__all__ = ["Selection", "candidate_scores", "group_judgments", "prompt_uncertainty", "select"]
