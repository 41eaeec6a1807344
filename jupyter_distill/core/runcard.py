"""The run-card JSON: the one definition of what ``application/vnd.jupyter.distill.run+json`` holds.

Why in core: the kernel (the notebook's ``RunSummary``) and the server (the panel's run list)
both emit this payload and the lab extension draws it, so the shape has to live below both
front ends. ``RUN_CARD_SCHEMA`` is the contract; ``labextension/src/format.ts`` declares the
same fields as ``IRunSummary`` and ``tests/fixtures/run_card.json`` is one example that both the
Python and the TypeScript tests read.
"""

from __future__ import annotations

from typing import Any, TypedDict

RUN_CARD_VERSION = 1

_NUMBER_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}
_STRING_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}


class RunCardProgress(TypedDict):
    """How far the run is: its phase, the fraction of that phase and of the whole run."""

    phase: str | None
    fraction: float
    overall: float
    current: float | None
    total: float | None


class RunCardPassRate(TypedDict):
    """One eval label: prompts scored, pass rate and mean score."""

    n: int
    pass_rate: float | None
    mean_score: float | None


class RunCard(TypedDict):
    """Everything one run card (or one row of the lab panel) shows about a run."""

    id: str
    status: str
    phase: str | None
    created_at: float | None
    updated_at: float | None
    live: bool
    progress: RunCardProgress
    cost: float
    loss: list[list[float]]
    pass_rates: dict[str, RunCardPassRate]
    alias: str | None
    error: str | None


RUN_CARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "jupyter-distill run card",
    "type": "object",
    "required": list(RunCard.__annotations__),
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "status": {"type": "string"},
        "phase": _STRING_OR_NULL,
        "created_at": _NUMBER_OR_NULL,
        "updated_at": _NUMBER_OR_NULL,
        "live": {"type": "boolean"},
        "progress": {
            "type": "object",
            "required": list(RunCardProgress.__annotations__),
            "additionalProperties": False,
            "properties": {
                "phase": _STRING_OR_NULL,
                "fraction": {"type": "number", "minimum": 0, "maximum": 1},
                "overall": {"type": "number", "minimum": 0, "maximum": 1},
                "current": _NUMBER_OR_NULL,
                "total": _NUMBER_OR_NULL,
            },
        },
        "cost": {"type": "number", "minimum": 0},
        "loss": {
            "type": "array",
            "items": {
                "type": "array",
                "prefixItems": [{"type": "number"}, {"type": "number"}],
                "minItems": 2,
                "maxItems": 2,
            },
        },
        "pass_rates": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": list(RunCardPassRate.__annotations__),
                "additionalProperties": False,
                "properties": {
                    "n": {"type": "integer", "minimum": 0},
                    "pass_rate": _NUMBER_OR_NULL,
                    "mean_score": _NUMBER_OR_NULL,
                },
            },
        },
        "alias": _STRING_OR_NULL,
        "error": _STRING_OR_NULL,
    },
}


def run_card_fields() -> list[str]:
    """The top-level field names of a run card, in schema order (what the TypeScript type declares)."""
    return list(RUN_CARD_SCHEMA["properties"])
