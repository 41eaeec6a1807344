"""The dashboard's HTML: the phase timeline, the numbers line and the loss sparkline, drawn from state.

Why apart: the live widget, the HTML fallback a saved notebook shows and the final card all draw
these pieces from a :class:`DashboardState`, so they are plain functions of that state.
"""

from __future__ import annotations

import math

from jupyter_distill.core.events import PHASES
from jupyter_distill.notebook.dashboard_state import DashboardState, PhaseProgress
from jupyter_distill.notebook.htmltext import no_math, text

PHASE_TITLES: dict[str, str] = {
    "sampling": "sampling",
    "judging": "judging",
    "review": "review",
    "training": "training",
    "eval": "eval",
    "export": "export",
    "alias": "alias",
}
#: Phases whose steps differ too much in length for a rate to predict the rest (export: merge,
#: f16, quantize, check): they show the step and the elapsed time, no ETA.
NO_ETA_PHASES = frozenset({"export", "alias"})
_STATUS_COLOURS = {
    "pending": "#9e9e9e",
    "active": "#1976d2",
    "done": "#2e7d32",
    "failed": "#c62828",
    "stopped": "#ef6c00",
    "waiting": "#8e24aa",
}


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _phase_text(p: PhaseProgress, now: float, *, with_eta: bool = True) -> str:
    if p.status == "pending":
        return ""
    parts = []
    if p.current is not None and p.total:
        parts.append(f"{p.current}/{p.total}")
    if p.stage and p.status == "active":
        parts.append(p.stage)
    parts.append(_clock(p.elapsed(now)))
    eta = p.eta(now) if with_eta else None
    if eta is not None:
        parts.append(f"ETA {_clock(eta)}")
    if p.status == "waiting":
        parts.append("waiting for review")
    elif p.status in ("failed", "stopped"):
        parts.append(p.status)
    return " · ".join(parts)


def _timeline_html(s: DashboardState) -> str:
    cells = []
    for phase in PHASES:
        status = s.phases[phase].status
        colour = _STATUS_COLOURS.get(status, "#9e9e9e")
        mark = {"done": "✓", "active": "●", "waiting": "◐", "failed": "✗", "stopped": "■"}.get(status, "○")
        cells.append(
            f"<span class='jd-phase jd-{status}' data-phase='{phase}' style='color:{colour};margin-right:2px'>"
            f"{mark} {PHASE_TITLES[phase]}</span>"
        )
    return no_math(" → ".join(cells), css_class="jd-timeline")


def _stats_html(s: DashboardState) -> str:
    parts = [
        f"requests {s.requests:,}",
        f"teacher cost ${s.cost:.4f}",
        f"judge cost ${s.judge_cost:.4f}",
        f"total ${s.cost + s.judge_cost:.4f}",
    ]
    if s.step is not None:
        total = s.phases["training"].total
        parts.append(f"step {s.step}{f'/{total}' if total else ''}")
    for name in ("loss", "nll", "pref", "kl", "lr"):
        if name in s.latest:
            parts.append(f"{name} {s.latest[name]:.4g}")
    return no_math(" · ".join(text(part) for part in parts), css_class="jd-stats")


def loss_svg(points: list[tuple[int, float]], width: int = 420, height: int = 120) -> str:
    """A dependency-free line chart of (step, loss): cheap enough to redraw every 0.3 s."""
    if len(points) < 2:
        return ""
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(values), max(values)
    if y1 - y0 < 1e-12:
        y1 = y0 + 1.0
    pad = 24
    coords = " ".join(
        f"{pad + (x - x0) / max(1, x1 - x0) * (width - 2 * pad):.1f},"
        f"{height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad):.1f}"
        for x, y in points
    )
    return (
        f"<svg width='{width}' height='{height}' class='jd-loss' xmlns='http://www.w3.org/2000/svg'>"
        f"<polyline fill='none' stroke='#1976d2' stroke-width='1.5' points='{coords}'/>"
        f"<text x='{pad}' y='12' font-size='11'>loss {values[-1]:.4g} (step {steps[-1]})</text>"
        f"<text x='{pad}' y='{height - 6}' font-size='10' fill='#757575'>min {y0:.4g} · max {y1:.4g}</text>"
        "</svg>"
    )
