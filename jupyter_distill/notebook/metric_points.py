"""How a metric event becomes plot points, for the dashboard's state and the standalone live plot.

Why one module: the dashboard folds events into its state once and every view draws from that,
while :class:`~jupyter_distill.notebook.plots.LivePlot` can also listen to a run on its own; both
must place a point in the same spot. Two rules need care:

- a resumed run replays the steps after its checkpoint, so a step at or before the last one
  replaces the points from there on instead of drawing the curve backwards;
- the held-out evaluation reports ``step`` 0 unless told otherwise, also when it measures the
  trained model (after training, or the exported file inside export). A pass rate is drawn at
  the training step of the model it measured: the event's own step when it names one, else the
  last training step seen so far.
"""

from __future__ import annotations

import math
from typing import Any

from jupyter_distill.core.events import Event


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def add_point(points: list[tuple[int, float]], step: int, value: float) -> None:
    """Append ``(step, value)``; a replayed step drops the points at and after it first."""
    while points and points[-1][0] >= step:
        points.pop()
    points.append((step, value))


def eval_point(event: Event, trained_step: int | None) -> tuple[str, int, float] | None:
    """``(label, step, pass rate)`` of a held-out evaluation's metric event, else None.

    The label and rate come from ``label``/``pass_rate`` or from an ``eval/<label>/pass_rate`` key.
    """
    if event.kind != "metric" or event.phase != "eval":
        return None
    data = event.data
    label, rate = data.get("label"), finite_number(data.get("pass_rate"))
    if label is None or rate is None:
        for key, value in data.items():
            parts = str(key).split("/")
            if len(parts) == 3 and parts[0] == "eval" and parts[2] == "pass_rate" and finite_number(value) is not None:
                label, rate = parts[1], finite_number(value)
                break
    if label is None or rate is None:
        return None
    step = int(event.step) if event.step else int(trained_step or 0)
    return str(label), step, rate


def add_eval(points: list[tuple[int, float]], step: int, rate: float) -> None:
    """Put one pass rate of a label at ``step`` (a re-measured step replaces its value), in step order."""
    points[:] = sorted([p for p in points if p[0] != step] + [(step, rate)])


def smooth(values: list[float], weight: float = 0.6) -> list[float]:
    """An exponential moving average with the bias of its zero start removed: early points are not pulled toward zero.

    The first value is the first point itself, so a curve of one point is that point.
    """
    out: list[float] = []
    average = 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1.0 - weight) * value
        out.append(average / (1.0 - weight**i))
    return out


__all__ = ["add_eval", "add_point", "eval_point", "finite_number", "smooth"]
