"""A dataset of curated pairs as a run's samples, judgments and pairs: no teacher is called.

Why apart from ``run.py``: a run over ``jd.export_dataset``'s rows replaces three phases
(sampling, judging, selection) with an import, and re-applies the terms gate to the teachers
that made the pairs. ``Run`` calls these in place of the phases; they touch only the store.
"""

from __future__ import annotations

from typing import Any

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.curated import CuratedPair
from jupyter_distill.core.errors import TrainingError
from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.store import PromptRecord, RunStore


def check_curated_terms(curated: dict[str, list[CuratedPair]], config: DistillConfig) -> None:
    """The terms gate a live teacher passes, applied to the teachers that made the dataset's pairs.

    Each pair's recorded provider and model are decided again under the terms installed now and
    the run's ``policy``: pairs a teacher may no longer be distilled from are refused before
    anything runs, as its samples would be. Rows that name no provider (hand-made pairs) have no
    terms to check.
    """
    from jupyter_distill.core import policy
    from jupyter_distill.core.errors import PolicyError

    seen: dict[tuple[Any, ...], int] = {}
    for group in curated.values():
        for pair in group:
            prov = pair.provenance
            key = (pair.teacher, prov.get("provider"), prov.get("model"), prov.get("authorization"),
                   prov.get("licence"))  # fmt: skip
            seen[key] = seen.get(key, 0) + 1
    for (teacher, provider, model, authorization, licence), count in seen.items():
        if not provider or provider not in policy.TERMS:
            continue
        try:
            policy.decide(
                str(provider), str(model or ""), mode=config.policy,
                authorization=authorization or config.authorization,
                enforce_distillable=config.enforce_distillable, licence=str(licence or ""),
            )  # fmt: skip
        except PolicyError as exc:
            raise PolicyError(
                f"{count} curated pair(s) of the dataset were made by {teacher}, which the terms installed now "
                f"({policy.TERMS_VERSION}) do not allow training on: {exc}",
                field="dataset",
                value=teacher,
            ) from None


def import_curated(
    store: RunStore, curated: dict[str, list[CuratedPair]], prompts: list[PromptRecord], source: str
) -> tuple[dict[str, list[Any]], dict[str, Any], dict[str, Any]]:
    """Store the dataset's pairs as samples (with the provenance their rows carry) and their scores
    as judgments; returns ``(samples by prompt, judgments by sample key)`` as sampling and judging do,
    and the run summary's entries (no teacher request, nothing paid, where the pairs came from)."""
    from jupyter_distill.core.store import JudgmentRecord, SampleRecord

    samples: dict[str, list[SampleRecord]] = {}
    judgments: dict[str, JudgmentRecord] = {}
    for prompt in prompts:
        for pair in curated.get(prompt.hash, []):
            prov = pair.provenance
            for side, text, score in (("chosen", pair.chosen, pair.chosen_score),
                                      ("rejected", pair.rejected, pair.rejected_score)):  # fmt: skip
                if text is None:
                    continue
                key = content_hash("curated", prompt.hash, pair.teacher, text)
                provenance = {
                    **{k: prov.get(k) for k in ("teacher", "provider", "endpoint", "model", "terms_version",
                                                "licence")},
                    "teacher": pair.teacher,
                    "time": prov.get("sampled_at"),
                    "policy": {
                        "verdict": prov.get("terms_verdict"), "terms_version": prov.get("terms_version"),
                        "provider": prov.get("provider"), "model": prov.get("model"),
                        "authorization": prov.get("authorization"), "licence": prov.get("licence"),
                    },
                    "imported_from": source,
                    "source_sample": prov.get(f"{side}_sample"),
                    "human_decision": pair.human_decision if side == "chosen" else None,
                    "judge": pair.judge,
                }  # fmt: skip
                group = samples.setdefault(prompt.hash, [])
                if any(s.key == key for s in group):
                    continue
                group.append(
                    SampleRecord(key, prompt.hash, pair.teacher, {"imported_from": source}, len(group), text,
                                 provenance=provenance)
                )  # fmt: skip
                if score is None:  # an edited text, or a row without scores: no judgment was made of it
                    continue
                judge_id = pair.judge or "imported"
                judgments[key] = JudgmentRecord(content_hash("judgment", key, judge_id), key, judge_id, score)
    store.put_samples([s for group in samples.values() for s in group])
    store.put_judgments(judgments.values())
    summary = {"teacher_requests": 0, "teacher_cost": 0.0, "failed_prompts": [], "unsaved_samples": 0,
               "curated_pairs": sum(map(len, curated.values())), "curated_from": source}  # fmt: skip
    return samples, judgments, summary


def curated_pairs(
    store: RunStore,
    run_name: str,
    curated: dict[str, list[CuratedPair]],
    prompts: list[PromptRecord],
    samples: dict[str, list[Any]],
    heldout_fraction: float,
) -> tuple[list[Any], dict[str, Any]]:
    """The dataset's pairs of the training prompts, as they came (held-out prompts are evaluated on),
    stored as the run's pairs; returns them with the run summary's pair counts."""
    from jupyter_distill.core.store import PairRecord

    pairs: list[PairRecord] = []
    for prompt in prompts:
        if prompt.split != "train":
            continue
        by_text = {s.text: s.key for s in samples.get(prompt.hash, [])}
        for rank, pair in enumerate(curated.get(prompt.hash, [])):
            rejected = pair.rejected if pair.rejected != pair.chosen else None
            pairs.append(
                PairRecord(prompt.hash, rank, pair.chosen, rejected, by_text.get(pair.chosen),
                           by_text.get(rejected) if rejected is not None else None, pair.source)
            )  # fmt: skip
    store.put_pairs(run_name, pairs)
    if not pairs:
        raise TrainingError(
            f"no training pairs for run {run_name!r}: the dataset's curated pairs all fell on held-out prompts. "
            "Fix: lower heldout_fraction.",
            field="heldout_fraction",
            value=heldout_fraction,
        )
    return pairs, {"pairs": len(pairs), "pairs_with_rejected": sum(p.rejected_text is not None for p in pairs)}


__all__ = ["check_curated_terms", "curated_pairs", "import_curated"]
