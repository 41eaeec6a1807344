"""Run summaries for the lab panel, computed from the run store alone.

Why here and not in the pipeline: the panel must show a run that another kernel (or a crashed
one) is writing, so everything it needs is derived from rows already in ``runs.db`` — the
phase column, sample and metric counts, eval results — not from in-memory pipeline state.
Each summary is a run card as ``jupyter_distill.core.runcard`` defines it, the same payload the
kernel sends as ``application/vnd.jupyter.distill.run+json``, so the lab card draws both alike.
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_distill.core.runcard import (
    LIVE_STATUSES,
    MAX_SPARK_POINTS,
    PASS_RATE_LABELS,
    RunCard,
    card_progress,
    downsample,
    loss_series,
    make_run_card,
    signal_series,
)
from jupyter_distill.core.runcard import number as _number
from jupyter_distill.core.runcard import stored_pass_rates as pass_rates
from jupyter_distill.core.store import RunStore
from jupyter_distill.server.public import public_message, public_traceback

__all__ = [
    "LIVE_STATUSES",
    "MAX_SPARK_POINTS",
    "PASS_RATE_LABELS",
    "downsample",
    "loss_series",
    "pass_rates",
    "progress",
    "run_counts",
    "run_detail",
    "run_summary",
]


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
        return dict(card_progress(run, None, None))
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
    return dict(card_progress(run, current, total))


def run_summary(store: RunStore, run: dict[str, Any], *, full_loss: bool = False) -> RunCard:
    """Everything one row of the panel (or one summary card) shows about ``run``."""
    loss = loss_series(store, run["id"])
    summary = run.get("summary") or {}
    cost = _number(summary.get("teacher_cost"))
    if cost is None or run.get("status") in LIVE_STATUSES:
        cost = store.teacher_cost(run["id"])
    return make_run_card(
        run,
        progress=progress(store, run, loss),  # type: ignore[arg-type]
        cost=cost,
        loss=loss if full_loss else downsample(loss),
        pass_rates=pass_rates(store, run),
        error=public_message(summary["error"]) if summary.get("error") else None,
        signal=signal_series(store, run["id"]),
    )


def run_counts(store: RunStore) -> dict[str, dict[str, int]]:
    """Per run: train and held-out prompts and training pairs, so a pass rate is shown with its sample sizes.

    Two grouped queries for all runs at once: the panel asks on every refresh.
    """
    out: dict[str, dict[str, int]] = {}
    for row in store.conn.execute(
        "SELECT run_id, COALESCE(SUM(split='train'), 0) AS train, COALESCE(SUM(split='heldout'), 0) AS heldout "
        "FROM run_prompts GROUP BY run_id"
    ):
        out[row["run_id"]] = {"train": int(row["train"]), "heldout": int(row["heldout"]), "pairs": 0}
    for row in store.conn.execute("SELECT run_id, COUNT(*) AS pairs FROM pairs GROUP BY run_id"):
        out.setdefault(row["run_id"], {"train": 0, "heldout": 0, "pairs": 0})["pairs"] = int(row["pairs"])
    return out


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
