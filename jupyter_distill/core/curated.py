"""The row format of a curated training set: one training pair per row, with where it came from.

A run's curated pairs leave the machine as such rows (``jd.export_dataset``) and come back the
same way (``jd.distill(dataset=<that file>)``): a row with a ``chosen`` text is an already sampled,
judged and reviewed pair, so the run that reads it trains on it without calling a teacher. The
provenance columns keep the rights ledger true across the round trip: the samples stored from
them name the teacher, provider, endpoint, terms version and verdict they were made under.

``prompt`` is the chat prompt as a list of ``{role, content}`` messages (the conversational form
of preference datasets), ``chosen``/``rejected`` are the assistant's texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Columns of a curated row that describe the pair (never handed to a verifier as a reference field).
PAIR_COLUMNS = (
    "prompt_hash",
    "chosen",
    "rejected",
    "chosen_score",
    "rejected_score",
    "judge",
    "rank",
    "source",
    "human_decision",
    "split",
)
#: Provenance columns: under which terms the chosen text was made.
PROVENANCE_COLUMNS = (
    "teacher",
    "provider",
    "endpoint",
    "model",
    "terms_version",
    "terms_verdict",
    "authorization",
    "licence",
    "chosen_sample",
    "rejected_sample",
    "sampled_at",
)
COLUMNS = ("prompt", *PAIR_COLUMNS, *PROVENANCE_COLUMNS)


@dataclass
class CuratedPair:
    """One already-made training pair read from a curated row."""

    prompt_hash: str
    rank: int
    chosen: str
    rejected: str | None
    chosen_score: float | None = None
    rejected_score: float | None = None
    judge: str | None = None
    source: str = "judge"
    human_decision: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # the PROVENANCE_COLUMNS of the row

    @property
    def teacher(self) -> str:
        return str(self.provenance.get("teacher") or "imported")


def is_curated(row: dict[str, Any]) -> bool:
    """True for a row that carries a made pair (a non-empty ``chosen`` text)."""
    chosen = row.get("chosen")
    return isinstance(chosen, str) and bool(chosen.strip())


def _score(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def from_row(row: dict[str, Any], prompt_hash: str, rank: int) -> CuratedPair:
    """The pair a curated row holds; ``rank`` is its place among the rows of the same prompt."""
    rejected = row.get("rejected")
    return CuratedPair(
        prompt_hash=prompt_hash,
        rank=rank,
        chosen=str(row["chosen"]),
        rejected=rejected if isinstance(rejected, str) and rejected else None,
        chosen_score=_score(row.get("chosen_score")),
        rejected_score=_score(row.get("rejected_score")),
        judge=str(row["judge"]) if row.get("judge") else None,
        source="human" if row.get("source") == "human" else "judge",
        human_decision=str(row["human_decision"]) if row.get("human_decision") else None,
        provenance={k: row.get(k) for k in PROVENANCE_COLUMNS if row.get(k) is not None},
    )


__all__ = ["COLUMNS", "PAIR_COLUMNS", "PROVENANCE_COLUMNS", "CuratedPair", "from_row", "is_curated"]
