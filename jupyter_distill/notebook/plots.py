"""Live training plots: a renderer of events (never of the store), cheap enough to leave on.

:class:`LivePlot` is an ``emit`` sink. It collects ``metric`` events of the ``training`` phase
(loss and its parts, preference accuracy, margin, KL) and of the ``eval`` phase (held-out pass
rate per label), and redraws **one** matplotlib figure:

- through a display handle (``display(..., display_id=True)`` once, then ``handle.update``), so
  the picture updates in place and never piles up outputs; or through an ``on_render(png)``
  callback (a widget of your own). The run dashboard does not use it: it draws its state as
  themed inline SVG (``notebook/plot_svg.py``); this is the plot for a run watched without one;
- on a transparent background with mid-grey text and grid, so the picture reads in JupyterLab's
  light and dark themes alike (a PNG cannot take the theme's colours);
- at most every ``min_interval`` seconds (0.5 s) and only when new points arrived, and further
  apart when drawing is slow: the interval grows to ``draw_time / overhead_budget`` so drawing
  costs about ``overhead_budget`` (1 %, half the 2 % allowed: the first draw is immediate) of
  wall time, whatever the machine. Pending points are flushed when the phase or run ends;
- with ``matplotlib.figure.Figure`` + the Agg canvas, never ``pyplot``: no global state, safe
  from a worker thread, and no stray figures in the notebook.

``stats`` reports the time spent inside the renderer (every call, drawing included), which is
how its overhead is measured: ``stats["seconds"] / training wall time``.

Outside a notebook :func:`default_renderer` returns the tqdm ``ConsoleRenderer`` instead.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jupyter_distill.core.events import ConsoleRenderer, Emit, Event
from jupyter_distill.notebook.metric_points import add_eval, eval_point

logger = logging.getLogger(__name__)

#: Panels of the figure: (title, metric names drawn in it).
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss and its parts", ("loss", "nll", "pref")),
    ("preference accuracy", ("pref_acc",)),
    ("KL to the reference", ("kl",)),
    ("held-out pass rate", ()),
)
_COLOURS = {"loss": "#1f77b4", "nll": "#ff7f0e", "pref": "#2ca02c", "pref_acc": "#9467bd", "kl": "#d62728"}
_NEUTRAL = "#8a8a8a"  # readable on a white and on a near-black page
_EVAL_COLOURS = ("#7f7f7f", "#17becf", "#bcbd22", "#8c564b", "#e377c2")


class LivePlot:
    """One throttled, in-place-updating figure of a run's training and eval metrics."""

    def __init__(
        self,
        *,
        min_interval: float = 0.5,
        overhead_budget: float = 0.01,
        display: bool | None = None,
        on_render: Callable[[bytes], None] | None = None,
        title: str | None = None,
        dpi: int = 72,
        size: tuple[float, float] = (9.0, 5.0),
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.min_interval = min_interval
        self.overhead_budget = overhead_budget
        self._display = _in_notebook() if display is None else display
        self.on_render = on_render
        self.title = title
        self.dpi = dpi
        self.size = size
        self._clock = clock
        self._lock = threading.RLock()
        self.series: dict[str, tuple[list[int], list[float]]] = {}
        self.evals: dict[str, list[tuple[int, float]]] = {}
        self._dirty = False
        self._last_draw = -math.inf
        self._draw_seconds = 0.0  # duration of the latest draw, for the adaptive interval
        self._handle: Any = None
        self._figure: Any = None
        self._lines: dict[str, Any] = {}
        self._axes: list[Any] = []
        self._png: bytes | None = None
        self.stats: dict[str, float] = {
            "calls": 0,
            "draws": 0,
            "seconds": 0.0,
            "draw_seconds": 0.0,
            "render_errors": 0,  # on_render calls that raised (logged; the last one in last_render_error)
        }
        self.last_render_error: str | None = None
        # Import matplotlib and lay out the axes now, before training starts: it is a one-off
        # cost of ~1 s that would otherwise land in the first training step.
        self._build()

    # ------------------------------------------------------------------ events in
    def __call__(self, event: Event) -> None:
        started = self._clock()
        with self._lock:
            try:
                self._ingest(event)
                if event.kind in ("phase_end", "run_end", "error"):
                    if self._dirty:
                        self._draw()
                elif self._dirty and self._due():
                    self._draw()
            finally:
                self.stats["calls"] += 1
                self.stats["seconds"] += self._clock() - started

    def _ingest(self, event: Event) -> None:
        if event.kind != "metric" or event.step is None:
            return
        step = int(event.step)
        if event.phase == "training":
            for name, value in event.data.items():
                if not isinstance(value, int | float) or not math.isfinite(value):
                    continue
                steps, values = self.series.setdefault(name, ([], []))
                while steps and steps[-1] >= step:  # a resumed run replays steps after its checkpoint
                    steps.pop()
                    values.pop()
                steps.append(step)
                values.append(float(value))
                self._dirty = True
        elif event.phase == "eval":
            trained = max((steps[-1] for steps, _ in self.series.values() if steps), default=None)
            point = eval_point(event, trained)  # drawn at the step of the model it measured
            if point is not None:
                label, at, rate = point
                add_eval(self.evals.setdefault(label, []), at, rate)
                self._dirty = True

    def show(
        self, series: Mapping[str, Sequence[tuple[int, float]]], evals: Mapping[str, Sequence[tuple[int, float]]]
    ) -> None:
        """Draw points folded elsewhere (the dashboard's state) instead of events; throttled as events are.

        ``series``: training metric -> ``[(step, value), ...]``; ``evals``: label -> ``[(step, pass rate)]``.
        """
        started = self._clock()
        with self._lock:
            try:
                new_series = {name: ([s for s, _ in pts], [v for _, v in pts]) for name, pts in series.items() if pts}
                new_evals = {label: list(pts) for label, pts in evals.items() if pts}
                if new_series != self.series or new_evals != self.evals:
                    self.series, self.evals, self._dirty = new_series, new_evals, True
                if self._dirty and self._due():
                    self._draw()
            finally:
                self.stats["calls"] += 1
                self.stats["seconds"] += self._clock() - started

    def _due(self) -> bool:
        interval = max(self.min_interval, self._draw_seconds / self.overhead_budget)
        return self._clock() - self._last_draw >= interval

    # ------------------------------------------------------------------ drawing
    def flush(self) -> None:
        """Draw now if new points arrived since the last draw (the throttle is skipped)."""
        started = self._clock()
        with self._lock:
            if self._dirty:
                self._draw()
            self.stats["seconds"] += self._clock() - started

    def _build(self) -> None:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        # A fixed layout: constrained/tight layout re-measures every tick label on each draw,
        # which was half of the drawing time.
        fig = Figure(figsize=self.size, dpi=self.dpi)
        fig.patch.set_alpha(0.0)  # no white slab in the dark theme
        top = 0.88 if self.title else 0.93
        fig.subplots_adjust(left=0.07, right=0.98, top=top, bottom=0.1, hspace=0.4, wspace=0.18)
        axes = fig.subplots(2, 2)
        self._axes = list(axes.flat)
        for ax, (title, names) in zip(self._axes, PANELS, strict=True):
            ax.set_facecolor("none")
            ax.set_title(title, fontsize=9, color=_NEUTRAL)
            ax.tick_params(labelsize=8, colors=_NEUTRAL)
            for spine in ax.spines.values():
                spine.set_color(_NEUTRAL)
            ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(4))
            ax.grid(True, alpha=0.3)
            for name in names:
                (line,) = ax.plot([], [], label=name, color=_COLOURS.get(name), linewidth=1.2)
                self._lines[name] = line
            if len(names) > 1:
                ax.legend(fontsize=7, loc="upper right")
        self._axes[1].set_ylim(-0.05, 1.05)
        self._axes[3].set_ylim(-0.05, 1.05)
        self._axes[3].set_xlabel("step", fontsize=8, color=_NEUTRAL)
        self._axes[2].set_xlabel("step", fontsize=8, color=_NEUTRAL)
        if self.title:
            fig.suptitle(self.title, fontsize=10)
        self._figure = fig

    def _draw(self) -> None:
        t0 = self._clock()
        if self._figure is None:
            self._build()
        for name, line in self._lines.items():
            steps, values = self.series.get(name, ([], []))
            line.set_data(steps, values)
        for ax in self._axes[:3]:
            ax.relim()
            ax.autoscale_view()
        self._axes[1].set_ylim(-0.05, 1.05)
        eval_ax = self._axes[3]
        for artist in list(eval_ax.lines) + list(eval_ax.collections) + list(eval_ax.texts):
            artist.remove()
        last_step = max((s[0][-1] for s in self.series.values() if s[0]), default=1)
        for i, (label, points) in enumerate(sorted(self.evals.items())):
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            colour = _EVAL_COLOURS[i % len(_EVAL_COLOURS)]
            eval_ax.plot(xs, ys, marker="o", linestyle="--", color=colour, label=label, linewidth=1)
            eval_ax.annotate(f"{ys[-1]:.2f}", (xs[-1], ys[-1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        eval_ax.set_xlim(-0.5, max(last_step, *(p[0] for pts in self.evals.values() for p in pts), 1) + 0.5)
        if self.evals:
            eval_ax.legend(fontsize=7, loc="lower right")
        self._png = _to_png(self._figure)
        self._publish(self._png)
        self._dirty = False
        self._last_draw = self._clock()
        self._draw_seconds = self._last_draw - t0
        self.stats["draws"] += 1
        self.stats["draw_seconds"] += self._draw_seconds

    def _publish(self, png: bytes) -> None:
        if self.on_render is not None:
            try:
                self.on_render(png)
            except Exception as exc:  # a broken sink must not break training, nor fail unseen
                self.stats["render_errors"] += 1
                self.last_render_error = f"{type(exc).__name__}: {exc}"
                logger.warning("live plot: on_render failed (%d so far): %s", self.stats["render_errors"], exc)
        if self._display:
            from IPython.display import Image, display

            image = Image(data=png, format="png")
            if self._handle is None:
                self._handle = display(image, display_id=True)
            else:
                self._handle.update(image)

    # ------------------------------------------------------------------ outputs
    @property
    def figure(self) -> Any:
        """The current ``matplotlib.figure.Figure`` (drawn up to the latest points)."""
        self.flush()
        with self._lock:
            if self._figure is None:
                self._build()
                self._draw()
            return self._figure

    def png(self) -> bytes:
        """The current figure as PNG bytes (for a widget, a report or a saved notebook)."""
        self.flush()
        with self._lock:
            if self._png is None:
                self._draw()
            assert self._png is not None
            return self._png

    def _repr_png_(self) -> bytes:
        return self.png()

    def overhead(self, wall_seconds: float) -> float:
        """Share of ``wall_seconds`` spent inside this renderer (0.01 = 1 %)."""
        return self.stats["seconds"] / wall_seconds if wall_seconds > 0 else 0.0


def _to_png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where display handles reach a front end)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def default_renderer(**options: Any) -> Emit:
    """A :class:`LivePlot` in a notebook, the tqdm :class:`ConsoleRenderer` anywhere else."""
    if _in_notebook():
        return LivePlot(**options)
    return ConsoleRenderer()


__all__ = ["PANELS", "LivePlot", "default_renderer"]
