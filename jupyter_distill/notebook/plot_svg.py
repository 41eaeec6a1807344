"""The dashboard's metric chart as inline SVG that follows the JupyterLab theme.

Why not a PNG: a picture has its colours baked in, so a light figure is a white slab in the dark
theme. Inline SVG inside the page takes its colours from JupyterLab's CSS variables
(``--jp-ui-font-color1``, ``--jp-layout-color1``, ``--jp-brand-color1`` ...), set in ``style``
attributes (presentation attributes do not resolve ``var()``), with a fallback for a page that
lacks them (a saved notebook opened elsewhere). It is a string built from the dashboard state's
points, cheap enough to rebuild on every render, and it needs no plotting library.

What it draws: the training loss as raw points under a smoothed line, held-out pass rates as
markers at the training step of the model they measured, and for the on-policy losses the
signal that says whether the student's own answers improve: ``win_rate`` (``jbond``: how often
the judge ranks the student's sample above the teacher's judged candidates) or ``reverse_kl``
(``onpolicy``: the per-token KL from the teacher on the student's tokens). It draws from the first point on
(one point is a dot with its value, never empty axes); with no point at all it is empty and the
dashboard hides it. Long curves are thinned to ``MAX_DRAWN_POINTS`` for drawing (smoothing uses
every point), which keeps each redraw a few tens of KiB.
"""

from __future__ import annotations

from collections.abc import Callable

from jupyter_distill.core.runcard import ON_POLICY_SIGNALS
from jupyter_distill.core.runcard import on_policy_name as _first_signal
from jupyter_distill.notebook.htmltext import text
from jupyter_distill.notebook.metric_points import smooth

FONT = "font-family:var(--jp-ui-font-family,sans-serif)"
TEXT = f"{FONT};fill:var(--jp-ui-font-color1,#212121)"
MUTED = f"{FONT};fill:var(--jp-ui-font-color2,#616161)"
GRID = "stroke:var(--jp-border-color2,#e0e0e0);stroke-width:1"
LINE = "var(--jp-brand-color1,#1976d2)"
#: Colours of the pass-rate labels, in the order labels are first seen.
LABEL_COLOURS = (
    "var(--jp-success-color1,#388e3c)",
    "var(--jp-warn-color1,#f57c00)",
    "var(--jp-brand-color1,#1976d2)",
    "var(--jp-error-color1,#d32f2f)",
    "var(--jp-ui-font-color2,#616161)",
)
PANEL_WIDTH = 300
HEIGHT = 150
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 40, 12, 22, 22
#: Points drawn per curve: a panel is ~250 px wide, so more only cost bytes on every redraw.
MAX_DRAWN_POINTS = 250


def _spread(count: int, limit: int = MAX_DRAWN_POINTS) -> list[int]:
    """Up to ``limit`` indices spread evenly over ``count`` points, first and last included."""
    if count <= limit:
        return list(range(count))
    stride = (count - 1) / (limit - 1)
    return sorted({round(i * stride) for i in range(limit)})


def loss_name(series: dict[str, list[tuple[int, float]]]) -> str | None:
    """The series drawn as the loss: ``loss``, else the first ``*loss`` metric."""
    if series.get("loss"):
        return "loss"
    return next((name for name in sorted(series) if name.endswith("loss") and series[name]), None)


def on_policy_name(series: dict[str, list[tuple[int, float]]]) -> str | None:
    """The on-policy signal drawn next to the loss (``None`` for ``sft``/``bond`` runs).

    Which names count, and in what order, is ``core.runcard.ON_POLICY_SIGNALS``: the lab card
    shows the same signal as this panel.
    """
    return _first_signal([name for name, points in series.items() if points])


def _scale(lo: float, hi: float, size: float, start: float, *, flip: bool = False) -> Callable[[float], float]:
    """Data value -> pixel along one axis (a range of one value is widened to draw it in the middle)."""
    if hi - lo < 1e-12:
        lo, hi = lo - 1.0, hi + 1.0

    def at(value: float) -> float:
        share = (value - lo) / (hi - lo)
        return start + (1.0 - share) * size if flip else start + share * size

    return at


def _frame(x0: float, label: str, value: str, lo: str, hi: str, steps: tuple[int, int]) -> list[str]:
    """A panel's title, its y range, its step range and a base line."""
    bottom = HEIGHT - PAD_BOTTOM
    right = x0 + PANEL_WIDTH - PAD_RIGHT
    return [
        f"<text x='{x0 + PAD_LEFT}' y='14' style='{TEXT};font-size:12px'>{text(label)} {text(value)}</text>",
        f"<text x='{x0 + PAD_LEFT - 4}' y='{PAD_TOP + 4}' text-anchor='end' style='{MUTED};font-size:10px'>"
        f"{text(hi)}</text>",
        f"<text x='{x0 + PAD_LEFT - 4}' y='{bottom}' text-anchor='end' style='{MUTED};font-size:10px'>"
        f"{text(lo)}</text>",
        f"<line x1='{x0 + PAD_LEFT}' y1='{bottom}' x2='{right}' y2='{bottom}' style='{GRID}'/>",
        f"<line x1='{x0 + PAD_LEFT}' y1='{PAD_TOP}' x2='{x0 + PAD_LEFT}' y2='{bottom}' style='{GRID}'/>",
        f"<text x='{x0 + PAD_LEFT}' y='{HEIGHT - 6}' style='{MUTED};font-size:10px'>step {steps[0]}</text>",
        f"<text x='{right}' y='{HEIGHT - 6}' text-anchor='end' style='{MUTED};font-size:10px'>step {steps[1]}</text>",
    ]


def _loss_panel(name: str, points: list[tuple[int, float]], x0: float) -> list[str]:
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    x = _scale(min(steps), max(steps), PANEL_WIDTH - PAD_LEFT - PAD_RIGHT, x0 + PAD_LEFT)
    y = _scale(min(values), max(values), HEIGHT - PAD_TOP - PAD_BOTTOM, PAD_TOP, flip=True)
    parts = _frame(
        x0,
        name,
        f"{values[-1]:.4g} (step {steps[-1]})",
        f"{min(values):.3g}",
        f"{max(values):.3g}",
        (steps[0], steps[-1]),
    )
    smoothed = smooth(values)  # over every point; only the drawing is thinned
    shown = _spread(len(points))
    parts += [
        f"<circle class='jd-raw' cx='{x(steps[i]):.1f}' cy='{y(values[i]):.1f}' r='2' "
        f"style='fill:{LINE};fill-opacity:0.3'/>"
        for i in shown
    ]
    if len(points) > 1:
        coords = " ".join(f"{x(steps[i]):.1f},{y(smoothed[i]):.1f}" for i in shown)
        parts.append(f"<polyline class='jd-smooth' points='{coords}' style='fill:none;stroke:{LINE};stroke-width:2'/>")
    else:
        parts.append(
            f"<circle class='jd-smooth' cx='{x(steps[0]):.1f}' cy='{y(values[0]):.1f}' r='3' style='fill:{LINE}'/>"
        )
    return parts


def _pass_rate_panel(evals: dict[str, list[tuple[int, float]]], steps: tuple[int, int], x0: float) -> list[str]:
    lo = min([steps[0], *(s for pts in evals.values() for s, _ in pts)])
    hi = max([steps[1], *(s for pts in evals.values() for s, _ in pts)])
    x = _scale(lo, hi, PANEL_WIDTH - PAD_LEFT - PAD_RIGHT, x0 + PAD_LEFT)
    y = _scale(0.0, 1.0, HEIGHT - PAD_TOP - PAD_BOTTOM, PAD_TOP, flip=True)
    parts = _frame(x0, "held-out pass rate", "", "0%", "100%", (lo, hi))
    for i, (label, points) in enumerate(evals.items()):
        colour = LABEL_COLOURS[i % len(LABEL_COLOURS)]
        if len(points) > 1:
            coords = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
            parts.append(f"<polyline points='{coords}' style='fill:none;stroke:{colour};stroke-dasharray:3 2'/>")
        for s, v in points:
            parts.append(
                f"<circle class='jd-pass' data-label='{text(label)}' data-step='{s}' cx='{x(s):.1f}' cy='{y(v):.1f}' "
                f"r='3.5' style='fill:{colour}'/>"
            )
        s, v = points[-1]
        parts.append(
            f"<text x='{x0 + PAD_LEFT + 4}' y='{PAD_TOP + 12 + 12 * i}' style='{FONT};fill:{colour};font-size:10px'>"
            f"{text(label)} {v:.0%} (step {s})</text>"
        )
    return parts


def metrics_svg(series: dict[str, list[tuple[int, float]]], evals: dict[str, list[tuple[int, float]]]) -> str:
    """The loss, on-policy and pass-rate panels as one inline ``<svg>``; "" while there is no point to draw."""
    name = loss_name(series)
    signal = on_policy_name(series)
    rates = {label: points for label, points in evals.items() if points}
    panels: list[str] = []
    steps = (0, 1)
    x0 = 0
    if name is not None:
        points = series[name]
        steps = (points[0][0], points[-1][0])
        panels += _loss_panel(name, points, x0)
        x0 += PANEL_WIDTH
    if signal is not None:  # same drawing as the loss: raw points under a smoothed line
        panels += _loss_panel(signal, series[signal], x0)
        x0 += PANEL_WIDTH
    if rates:
        panels += _pass_rate_panel(rates, steps, x0)
        x0 += PANEL_WIDTH
    if not panels:
        return ""
    width = x0
    return (
        f"<svg class='jd-plot' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{HEIGHT}' "
        f"viewBox='0 0 {width} {HEIGHT}' style='background:var(--jp-layout-color1,transparent)'>"
        + "".join(panels)
        + "</svg>"
    )


__all__ = ["ON_POLICY_SIGNALS", "metrics_svg", "on_policy_name"]
