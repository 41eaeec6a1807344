"""Run summaries for the lab panel, computed from the run store alone.

Why here and not in the pipeline: the panel must show a run that another kernel (or a crashed
one) is writing, so everything it needs is derived from rows already in ``runs.db`` — the
phase column, sample and metric counts, eval results — not from in-memory pipeline state.
The same dict is what the ``application/vnd.jupyter.distill.run+json`` renderer draws, so a
front end that emits that MIME type should send this shape:

``{"id", "status", "phase", "created_at", "updated_at", "live", "progress": {"phase", "fraction",
"overall", "current", "total"}, "cost", "loss": [[step, value], ...], "pass_rates": {label:
{"n", "pass_rate", "mean_score"}}, "alias", "error"}``
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_distill.core.events import PHASES
from jupyter_distill.core.store import RunStore
from jupyter_distill.server.public import public_message, public_traceback

# Statuses during which the panel keeps polling.
LIVE_STATUSES = frozenset({"created", "running", "waiting-review"})
# Sparklines have a fixed pixel width; more points than this only cost bandwidth.
MAX_SPARK_POINTS = 64
# The pass-rate labels the evaluation stage writes, in the order the panel shows them.
PASS_RATE_LABELS = ("student_before", "teacher_best_of_n", "student_after")


def _number(value: Any) -> float | None:
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


def pass_rates(store: RunStore, run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per eval label: prompts scored, pass rate and mean score.

    Live eval rows win over the summary (they exist while the eval phase is still running);
    the summary fills in labels that have no rows, such as the teacher's best-of-N.
    """
    out: dict[str, dict[str, Any]] = {}
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
    for label in PASS_RATE_LABELS:
        entry = run["summary"].get(label)
        if label not in out and isinstance(entry, dict) and _number(entry.get("pass_rate")) is not None:
            out[label] = {
                "n": int(entry.get("n") or 0),
                "pass_rate": float(entry["pass_rate"]),
                "mean_score": _number(entry.get("mean_score")),
            }
    return out


def progress(store: RunStore, run: dict[str, Any], loss: list[list[float]]) -> dict[str, Any]:
    """How far the run is: the phase, a fraction within it where countable, and overall.

    Sampling counts stored candidates (capped at ``n_samples`` per train prompt), training the
    last logged step against ``steps``; other phases are short and count as 0 until done.
    """
    phase = run.get("phase")
    config = run.get("config") or {}
    current: float | None = None
    total: float | None = None
    if run.get("status") == "done" or phase == "done":
        return {"phase": "done", "fraction": 1.0, "overall": 1.0, "current": None, "total": None}
    if phase == "sampling":
        n = int(_number(config.get("n_samples")) or 1)
        row = store.conn.execute(
            "SELECT COUNT(*) AS prompts, COALESCE(SUM(MIN(c, ?)), 0) AS done FROM ("
            " SELECT rp.prompt_hash, (SELECT COUNT(*) FROM samples s WHERE s.prompt_hash = rp.prompt_hash) AS c"
            " FROM run_prompts rp WHERE rp.run_id=? AND rp.split='train')",
            (n, run["id"]),
        ).fetchone()
        current, total = float(row["done"]), float(row["prompts"] * n)
    elif phase == "training":
        steps = _number(config.get("steps"))
        if steps:
            current, total = (loss[-1][0] if loss else 0.0), steps
    fraction = min(1.0, current / total) if current is not None and total else 0.0
    index = PHASES.index(phase) if phase in PHASES else 0
    overall = (index + fraction) / len(PHASES)
    return {
        "phase": phase,
        "fraction": round(fraction, 4),
        "overall": round(overall, 4),
        "current": current,
        "total": total,
    }


def run_summary(store: RunStore, run: dict[str, Any], *, full_loss: bool = False) -> dict[str, Any]:
    """Everything one row of the panel (or one summary card) shows about ``run``."""
    loss = loss_series(store, run["id"])
    summary = run.get("summary") or {}
    cost = _number(summary.get("teacher_cost"))
    if cost is None or run.get("status") in LIVE_STATUSES:
        cost = store.teacher_cost(run["id"])
    return {
        "id": run["id"],
        "status": run.get("status"),
        "phase": run.get("phase"),
        "created_at": run.get("created_at"),
        "updated_at": run.get("updated_at"),
        "live": run.get("status") in LIVE_STATUSES,
        "progress": progress(store, run, loss),
        "cost": round(cost, 6),
        "loss": loss if full_loss else downsample(loss),
        "pass_rates": pass_rates(store, run),
        "alias": summary.get("alias") or (run.get("config") or {}).get("alias"),
        "error": public_message(summary["error"]) if summary.get("error") else summary.get("error"),
    }


def run_detail(store: RunStore, run: dict[str, Any], *, events: int = 50) -> dict[str, Any]:
    """The summary plus config, artifacts, counts and the latest events of one run."""
    run_id = run["id"]
    counts = store.conn.execute(
        "SELECT COUNT(*) AS prompts, COALESCE(SUM(split='heldout'), 0) AS heldout FROM run_prompts WHERE run_id=?",
        (run_id,),
    ).fetchone()
    recent = store.conn.execute(
        "SELECT * FROM (SELECT id, time, kind, phase, message, data_json FROM events WHERE run_id=? "
        "ORDER BY id DESC LIMIT ?) ORDER BY id",
        (run_id, events),
    ).fetchall()
    return {
        **run_summary(store, run, full_loss=True),
        "config": run.get("config") or {},
        "summary": run.get("summary") or {},
        "prompts": int(counts["prompts"]),
        "heldout": int(counts["heldout"]),
        "pairs": len(store.get_pairs(run_id)),
        "reviews": len(store.get_reviews(run_id)),
        "failures": len(store.get_failures(run_id)),
        "artifacts": store.get_artifacts(run_id),
        "events": [
            {
                "id": row["id"],
                "time": row["time"],
                "kind": row["kind"],
                "phase": row["phase"],
                "message": public_message(row["message"]) if row["message"] else row["message"],
                "data": _public_event_data(json.loads(row["data_json"] or "{}")),
            }
            for row in recent
        ],
    }


def _public_event_data(data: Any) -> Any:
    """An event's data without the traceback a failed run stores (its last line says what failed).

    The notebook that ran the job shows the whole traceback; over REST it would show the server's
    file layout to anyone allowed to read runs.
    """
    if isinstance(data, dict) and isinstance(data.get("detail"), str) and "Traceback" in data["detail"]:
        return {**data, "detail": public_traceback(data["detail"])}
    return data
