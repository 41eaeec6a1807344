"""The run-card JSON: the one definition of what ``application/vnd.jupyter.distill.run+json`` holds.

Why in core: the kernel (the notebook's ``RunSummary``) and the server (the panel's run list)
both emit this payload and the lab extension draws it, so the shape has to live below both
front ends. ``RUN_CARD_SCHEMA`` is the contract; ``labextension/src/format.ts`` declares the
same fields as ``IRunSummary`` and ``tests/fixtures/run_card.json`` is one example that both the
Python and the TypeScript tests read.

The optional ``signal`` field carries the on-policy losses' own signal (``ON_POLICY_SIGNALS``),
the number that says whether the student's own answers improve, which the loss alone does not:
a falling ``jbond`` loss can come from the forward-KL half while the win rate stays flat. It is
absent for ``sft``/``bond`` runs, so cards saved before it existed still match the schema.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from jupyter_distill.core.events import PHASES

if TYPE_CHECKING:
    from jupyter_distill.core.store import RunStore

RUN_CARD_VERSION = 1
# Statuses during which a run still changes (the panel keeps polling, the card says "live").
LIVE_STATUSES = frozenset({"created", "running", "waiting-review"})
# Sparklines have a fixed pixel width; more points than this only cost bandwidth.
MAX_SPARK_POINTS = 64
# The pass-rate labels the evaluation stage writes, in the order the card shows them.
PASS_RATE_LABELS = ("student_before", "teacher_best_of_n", "student_after", "student_served")
#: The on-policy signals, in the order looked for: the first one a run reports is the one shown
#: next to its loss (the notebook dashboard's panel and the lab card's sparkline). ``win_rate``
#: (``jbond``: how often the judge ranks the student's own sample above the teacher's judged
#: candidates), ``reverse_kl`` (``onpolicy``: per-token KL from the teacher on the student's
#: tokens), ``reward`` (``jbond``'s quantile reward, for runs that log no win rate).
ON_POLICY_SIGNALS: tuple[str, ...] = ("win_rate", "reverse_kl", "reward")

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


class RunCardSignal(TypedDict):
    """The on-policy signal of a ``jbond``/``onpolicy`` run: its metric name and ``[[step, value], ...]``."""

    name: str
    points: list[list[float]]


class RunCard(TypedDict):
    """Everything one run card (or one row of the lab panel) shows about a run."""

    version: int
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
    snippet: str | None
    signal: NotRequired[RunCardSignal]


#: Fields a card may leave out: old saved cards lack them, and ``sft``/``bond`` runs have no signal.
OPTIONAL_FIELDS: tuple[str, ...] = ("signal",)

_POINTS: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "array",
        "prefixItems": [{"type": "number"}, {"type": "number"}],
        "minItems": 2,
        "maxItems": 2,
    },
}

RUN_CARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "jupyter-distill run card",
    "type": "object",
    "required": [name for name in RunCard.__annotations__ if name not in OPTIONAL_FIELDS],
    "additionalProperties": False,
    "properties": {
        "version": {"const": RUN_CARD_VERSION},
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
        "loss": _POINTS,
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
        "snippet": _STRING_OR_NULL,
        "signal": {
            "type": "object",
            "required": list(RunCardSignal.__annotations__),
            "additionalProperties": False,
            "properties": {"name": {"enum": list(ON_POLICY_SIGNALS)}, "points": {**_POINTS, "minItems": 1}},
        },
    },
}


def run_card_fields() -> list[str]:
    """The top-level field names of a run card, in schema order (what the TypeScript type declares)."""
    return list(RUN_CARD_SCHEMA["properties"])


def number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


def downsample(points: list[list[float]], limit: int = MAX_SPARK_POINTS) -> list[list[float]]:
    """Keep at most ``limit`` points, always including the first and the last one."""
    if len(points) <= limit or limit < 2:
        return points
    stride = (len(points) - 1) / (limit - 1)
    return [points[round(i * stride)] for i in range(limit)]


def loss_series(store: RunStore, run_id: str) -> list[list[float]]:
    """The training loss as ``[[step, value], ...]``: the metric named ``loss`` or else ``*loss``."""
    names = [
        row["name"]
        for row in store.conn.execute("SELECT DISTINCT name FROM metrics WHERE run_id=? ORDER BY name", (run_id,))
    ]
    if "loss" in names:
        name = "loss"
    else:
        candidates = [n for n in names if n.endswith("loss")]
        if not candidates:
            return []
        name = candidates[0]
    return [[float(m["step"]), float(m["value"])] for m in store.get_metrics(run_id, name)]


def on_policy_name(reported: Collection[str]) -> str | None:
    """The on-policy signal shown for a run that reports the metrics ``reported`` (None: not on-policy)."""
    return next((name for name in ON_POLICY_SIGNALS if name in reported), None)


def signal_points(series: Mapping[str, Sequence[Sequence[Any]]]) -> RunCardSignal | None:
    """The card's ``signal`` from metric series by name: the first on-policy signal with a finite point.

    Non-finite values are dropped (a step where no sample was judged logs a NaN win rate, and NaN
    is not JSON); a signal with no finite point left counts as not reported.
    """
    finite = {
        name: [[float(step), float(value)] for step, value in points if value is not None and math.isfinite(value)]
        for name, points in series.items()
        if name in ON_POLICY_SIGNALS
    }
    name = on_policy_name([n for n, points in finite.items() if points])
    return None if name is None else {"name": name, "points": finite[name]}


def signal_series(store: RunStore, run_id: str) -> RunCardSignal | None:
    """The on-policy signal of a stored run (None for ``sft``/``bond`` runs, which log none)."""
    rows = store.conn.execute(
        f"SELECT step, name, value FROM metrics WHERE run_id=? AND name IN ({','.join('?' * len(ON_POLICY_SIGNALS))}) "
        "ORDER BY step",
        (run_id, *ON_POLICY_SIGNALS),
    ).fetchall()
    series: dict[str, list[list[float]]] = {}
    for row in rows:
        series.setdefault(row["name"], []).append([row["step"], row["value"]])
    return signal_points(series)


def summary_pass_rates(
    summary: dict[str, Any], known: dict[str, RunCardPassRate] | None = None
) -> dict[str, RunCardPassRate]:
    """``known`` plus the labels a finished run's summary holds that ``known`` lacks."""
    out: dict[str, RunCardPassRate] = dict(known or {})
    for label in PASS_RATE_LABELS:
        entry = summary.get(label)
        if label not in out and isinstance(entry, dict) and number(entry.get("pass_rate")) is not None:
            out[label] = {
                "n": int(entry.get("n") or 0),
                "pass_rate": float(entry["pass_rate"]),
                "mean_score": number(entry.get("mean_score")),
            }
    return out


def stored_pass_rates(store: RunStore, run: dict[str, Any]) -> dict[str, RunCardPassRate]:
    """Per eval label: prompts scored, pass rate and mean score, as the kernel and the server show them.

    Live eval rows win over the summary (they exist while the eval phase is still running);
    the summary fills in labels that have no rows, such as the teacher's best-of-N.
    """
    out: dict[str, RunCardPassRate] = {}
    rows = store.conn.execute(
        "SELECT label, COUNT(*) AS n, AVG(passed) AS pass_rate, AVG(score) AS mean_score FROM eval_results "
        "WHERE run_id=? GROUP BY label",
        (run["id"],),
    ).fetchall()
    for row in rows:
        out[row["label"]] = {
            "n": int(row["n"]),
            "pass_rate": None if row["pass_rate"] is None else round(float(row["pass_rate"]), 4),
            "mean_score": None if row["mean_score"] is None else round(float(row["mean_score"]), 4),
        }
    return summary_pass_rates(run.get("summary") or {}, out)


def card_progress(run: dict[str, Any], current: float | None, total: float | None) -> RunCardProgress:
    """The progress block: ``current``/``total`` within the run's phase, and the share of all phases."""
    phase = run.get("phase")
    if run.get("status") == "done" or phase == "done":
        return {"phase": "done", "fraction": 1.0, "overall": 1.0, "current": None, "total": None}
    fraction = min(1.0, current / total) if current is not None and total else 0.0
    index = PHASES.index(phase) if phase in PHASES else 0
    return {
        "phase": phase,
        "fraction": round(fraction, 4),
        "overall": round((index + fraction) / len(PHASES), 4),
        "current": current,
        "total": total,
    }


def make_run_card(
    run: dict[str, Any],
    *,
    progress: RunCardProgress,
    cost: float,
    loss: list[list[float]],
    pass_rates: dict[str, RunCardPassRate],
    error: str | None,
    snippet: str | None = None,
    signal: RunCardSignal | None = None,
) -> RunCard:
    """The card for ``run`` (a ``RunStore.get_run`` row); the one constructor both producers call.

    ``signal`` is left out of the card when None, so a ``bond`` card is what it was before; its
    points are thinned here for the sparkline (the dashboard's SVG draws every point).
    """
    summary = run.get("summary") or {}
    status = str(run.get("status") or "unknown")
    card: RunCard = {
        "version": RUN_CARD_VERSION,
        "id": str(run["id"]),
        "status": status,
        "phase": run.get("phase"),
        "created_at": number(run.get("created_at")),
        "updated_at": number(run.get("updated_at")),
        "live": status in LIVE_STATUSES,
        "progress": progress,
        "cost": round(float(cost), 6),
        "loss": loss,
        "pass_rates": pass_rates,
        "alias": summary.get("alias") or (run.get("config") or {}).get("alias") or None,
        "error": error,
        "snippet": snippet or None,
    }
    if signal is not None:
        card["signal"] = {"name": signal["name"], "points": downsample(signal["points"])}
    return card
