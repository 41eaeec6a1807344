"""The live run dashboard: an ipywidgets view of one ``Run`` that ends with the run's summary card.

Why it is built this way:

- Events come from the run's worker thread. The sink (:meth:`RunDashboard.sink`) only folds
  them into a plain :class:`DashboardState` under a lock; it never touches a widget, so a slow
  front end can never slow training down. That fold is the only one: the widget traits, the
  plot, the HTML fallback of a saved notebook and, when no run store is at hand, the final card
  are all drawn from snapshots of the state.
- One renderer thread turns the state into widget traits at most every ``min_interval`` seconds
  (0.3 s by default) and only when something changed. Widget traits are synced over comms,
  which are routed by comm id, so updates reach the dashboard even after its cell has finished
  and while other cells run. Nothing here uses ``with output:`` from a thread.
- The plot is redrawn only when new points arrive.
- When the run ends, the display handle of the dashboard is updated once with the summary card
  (:mod:`jupyter_distill.notebook.summary_card`), so a saved (or headless-executed) notebook
  still shows the result without a kernel.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from jupyter_distill.core.errors import DistillError
from jupyter_distill.core.events import PHASES, Event
from jupyter_distill.core.runcard import RUN_CARD_VERSION
from jupyter_distill.core.store import RunStore
from jupyter_distill.notebook.dashboard_html import (
    _STATUS_COLOURS,
    NO_ETA_PHASES,
    PHASE_TITLES,
    _clock,
    _phase_text,
    _stats_html,
    _timeline_html,
    loss_svg,
)
from jupyter_distill.notebook.dashboard_state import (
    TERMINAL_STATUSES,
    DashboardState,
    PhaseProgress,
)
from jupyter_distill.notebook.htmltext import no_math, text
from jupyter_distill.notebook.plot_svg import metrics_svg
from jupyter_distill.notebook.run_log import RunLogView, log_details_html
from jupyter_distill.notebook.summary_card import RUN_MIME_TYPE, RunSummary, UnknownRunError, agreement_html

RUN_JSON_VERSION = RUN_CARD_VERSION


# ---------------------------------------------------------------------------------------------
# The widget
# ---------------------------------------------------------------------------------------------
class RunDashboard:
    """The live dashboard of one run: timeline, per-phase progress with ETA, cost, loss, Stop, card.

    Use :meth:`attach` to connect it to a :class:`~jupyter_distill.pipeline.run.Run` (events and
    the Stop button), then display it. ``sink`` is the event callback; it is cheap and
    thread-safe. ``flush()`` renders synchronously (tests, and the final frame).
    """

    def __init__(self, run_name: str, *, store: RunStore | None = None, min_interval: float = 0.3):
        self.state = DashboardState(run=run_name)
        self.store = store
        self.min_interval = max(0.05, float(min_interval))
        self.render_count = 0
        self.on_final: list[Callable[[RunDashboard], None]] = []
        self.summary: RunSummary | None = None
        self._run: Any = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._dirty = False
        self._finalized = False
        self._finish_lock = threading.Lock()
        self._final_drawn = threading.Event()
        self._renderer: threading.Thread | None = None
        self._renderer_lock = threading.Lock()
        self._last_render = 0.0
        self._plotted_points: tuple[Any, ...] = ()
        self._calibrated = False
        self._build()

    # ------------------------------------------------------------------ widgets
    def _build(self) -> None:
        self.header = widgets.HTML()
        self.timeline = widgets.HTML()
        self.phase_labels: dict[str, widgets.HTML] = {}
        self.phase_bars: dict[str, widgets.FloatProgress] = {}
        self.phase_texts: dict[str, widgets.Label] = {}
        rows = []
        for phase in PHASES:
            label = widgets.HTML(layout=widgets.Layout(width="90px"))
            bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="260px"))
            detail = widgets.Label(layout=widgets.Layout(width="auto"))
            self.phase_labels[phase], self.phase_bars[phase], self.phase_texts[phase] = label, bar, detail
            rows.append(widgets.HBox([label, bar, detail]))
        self.phase_box = widgets.VBox(rows)
        self.stats = widgets.HTML()
        self.plot = _MetricPlot()
        self.messages = widgets.HTML()
        self.run_log = RunLogView()  # what libraries printed during the run, collapsed
        self.calibration = widgets.HTML()  # judge vs human review, once the review phase is done
        self.review_slot = widgets.VBox()
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger", disabled=True)
        self.stop_button.on_click(self._on_stop)
        self.summary_card = widgets.HTML()
        self.widget = widgets.VBox(
            [
                self.header,
                self.timeline,
                self.phase_box,
                self.stats,
                self.plot.widget,
                self.messages,
                self.run_log.widget,
                self.calibration,
                self.review_slot,
                self.stop_button,
                self.summary_card,
            ],
            layout=widgets.Layout(border="1px solid #e0e0e0", padding="6px"),
        )
        self._render_state(self.state, time.time())

    # ------------------------------------------------------------------ wiring
    def attach(self, run: Any) -> RunDashboard:
        """Listen to ``run``'s events and let the Stop button stop it."""
        self._run = run
        self.store = getattr(run, "store", self.store)
        run.add_listener(self.sink)
        self.stop_button.disabled = False
        return self

    def sink(self, event: Event) -> None:
        """The event callback: fold the event into the state and wake the renderer."""
        with self._lock:
            self.state.apply(event)
            self._dirty = True
        self._wake.set()
        self._ensure_renderer()

    def _on_stop(self, _button: Any = None) -> None:
        """Stop button: runs on the kernel's main thread (a comm message), so it only sets a flag."""
        if self._run is not None:
            self._run.stop()
        self.stop_button.disabled = True
        self.stop_button.description = "Stopping…"

    def show_review(self, review_widget: Any) -> None:
        """Put the review widget inside the dashboard (a trait change: safe from the run's thread)."""
        self.review_slot.children = (review_widget,)

    # ------------------------------------------------------------------ rendering
    def _ensure_renderer(self) -> None:
        """Start the renderer thread unless it runs (sinks on several threads start only one)."""
        with self._renderer_lock:
            if self._finalized or (self._renderer is not None and self._renderer.is_alive()):
                return
            self._renderer = threading.Thread(
                target=self._loop, name=f"distill-dashboard-{self.state.run}", daemon=True
            )
            self._renderer.start()

    def _loop(self) -> None:
        """Render when woken, at most every ``min_interval``; finish after the run's last event."""
        while True:
            self._wake.wait(timeout=1.0)  # no event for 1 s: redraw anyway so clocks and ETAs tick
            wait = self._last_render + self.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._wake.clear()
            run_gone = self._run is not None and not getattr(self._run, "running", True)
            self.render()
            with self._lock:
                terminal = self.state.terminal
                if run_gone and not terminal:  # the thread died without a final event
                    self._adopt_run_state()
                    terminal = self.state.terminal
            if terminal:
                self._finish()
                return
            if run_gone:
                return

    def _adopt_run_state(self) -> None:
        run_state = getattr(self._run, "state", None)
        error = getattr(self._run, "error", None)
        self.state.status = getattr(run_state, "status", None) or ("failed" if error else "done")
        if self.state.status not in TERMINAL_STATUSES:
            self.state.status = "failed" if error else "stopped"
        if error is not None and self.state.error is None:
            self.state.error = f"{type(error).__name__}: {error}"
            self.state._message("error", self.state.error)
        self.state.ended = time.time()
        self._dirty = True

    def flush(self) -> None:
        """Render now in this thread; after the last event also draw the final card."""
        self.render()
        if self.state.terminal:
            self._finish()

    def render(self) -> None:
        """Turn the current state into widget traits (one consistent snapshot)."""
        with self._lock:
            snapshot = copy.deepcopy(self.state)
            self._dirty = False
        self.render_count += 1
        self._last_render = time.monotonic()
        self._render_state(snapshot, time.time())

    def _render_state(self, s: DashboardState, now: float) -> None:
        status_colour = _STATUS_COLOURS.get(
            {"running": "active", "waiting-review": "waiting", "created": "pending"}.get(s.status, s.status), "#1976d2"
        )
        elapsed = f" · {_clock((s.ended or now) - s.started)}" if s.started else ""
        self.header.value = no_math(
            f"<b>jupyter-distill</b> run <code>{text(s.run)}</code> "
            f"<span style='color:{status_colour};font-weight:bold'>{text(s.status)}</span>{elapsed}"
        )
        self.timeline.value = _timeline_html(s)
        for phase in PHASES:
            p = s.phases[phase]
            colour = _STATUS_COLOURS.get(p.status, "#9e9e9e")
            self.phase_labels[phase].value = f"<span style='color:{colour}'>{PHASE_TITLES[phase]}</span>"
            bar = self.phase_bars[phase]
            bar.value = p.fraction
            bar.bar_style = {"done": "success", "failed": "danger", "stopped": "warning"}.get(p.status, "info")
            self.phase_texts[phase].value = _phase_text(p, now, with_eta=phase not in NO_ETA_PHASES)
        self.stats.value = _stats_html(s)
        points = (
            tuple((name, len(pts), pts[-1]) for name, pts in s.series.items() if pts),
            tuple((label, tuple(pts)) for label, pts in s.evals.items()),
        )
        if points != self._plotted_points:  # a replayed step changes the last point, not the count
            self.plot.update(s.series, s.evals)
            self._plotted_points = points
        self.messages.value = (
            no_math(
                "".join(
                    f"<div style='color:{'#c62828' if kind == 'error' else '#ef6c00'}'>{kind}: {text(message)}</div>"
                    for kind, message in s.messages
                )
            )
            if s.messages
            else ""
        )
        self.run_log.update(s)
        if not self._calibrated and self.store is not None and s.phases["review"].status == "done":
            self._calibrated = True  # once: the review is over, the judge's agreement with it is fixed
            self.calibration.value = agreement_html(self.store, s.run)
        if s.terminal:
            self.stop_button.disabled = True
            self.stop_button.description = {"done": "Done", "failed": "Failed", "stopped": "Stopped"}[s.status]

    def _finish(self) -> None:
        """Draw the summary card once, then tell ``on_final`` listeners (the display-handle update)."""
        with self._finish_lock:
            if self._finalized:
                return
            self._finalized = True
        self.render()
        self.summary = self._build_summary()
        if self.summary is not None:
            self.summary_card.value = self.summary.html()
        for callback in list(self.on_final):
            try:
                callback(self)
            except Exception as exc:  # a broken listener must not hide the card
                self.state._message("warning", f"dashboard listener failed: {exc}")
        self.render()
        self._final_drawn.set()

    def _build_summary(self) -> RunSummary | None:
        """The card from the run store (what ``%distill status`` shows too), else from the state."""
        student = getattr(self._run, "result", None)
        if self.store is not None:
            try:
                return RunSummary.from_store(self.store, self.state.run, student=student)
            except DistillError:
                pass
        with self._lock:
            snapshot = copy.deepcopy(self.state)
        return RunSummary.from_state(snapshot)

    @property
    def finalized(self) -> bool:
        """True once the final card is drawn and ``on_final`` listeners have run."""
        return self._final_drawn.is_set()

    def wait_rendered(self, timeout: float = 5.0) -> bool:
        """Block until the renderer has drawn the final card (tests and ``%distill wait``)."""
        return self._final_drawn.wait(timeout)

    # ------------------------------------------------------------------ display
    def display(self) -> Any:
        """Show the dashboard under a display id, and re-send it once with the final card.

        The final update lets a saved or headless-executed notebook show the result as HTML; the
        live view itself changes only through widget traits.
        """
        from IPython.display import display

        handle = display(self, display_id=True)
        if handle is not None:
            self.on_final.append(lambda d: handle.update(d))
        return handle

    def fallback_html(self) -> str:
        """What a saved notebook shows without a kernel: the card when done, else the progress so far."""
        if self.summary is not None:
            return self.summary.html() + self.plot.html()
        with self._lock:
            s = copy.deepcopy(self.state)
        return no_math(
            f"{_timeline_html(s)}{_stats_html(s)}{log_details_html(s)}{self.plot.svg}"
            "<div style='color:var(--jp-ui-font-color2,#757575)'>(live dashboard: needs a running kernel)</div>",
            css_class="jd-run-live",
        )

    def __repr__(self) -> str:
        if self.summary is not None:
            return repr(self.summary)
        s = self.state
        done = ", ".join(p for p in PHASES if s.phases[p].status == "done") or "none"
        return f"RunDashboard({s.run!r}: {s.status}, phase {s.phase or '-'}, done: {done})"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = dict(self.widget._repr_mimebundle_() or {})
        bundle["text/plain"] = repr(self)
        bundle["text/html"] = self.fallback_html()
        if self.summary is not None:
            bundle[RUN_MIME_TYPE] = self.summary.to_json()
        return bundle


def watch(run: Any, *, min_interval: float = 0.3) -> RunDashboard:
    """Attach a dashboard to a :class:`~jupyter_distill.pipeline.run.Run` and display it.

    The Python-API path to the same view ``%%distill`` shows: ``watch(run); run.start()``.
    """
    dashboard = RunDashboard(run.name, store=run.store, min_interval=min_interval).attach(run)
    dashboard.display()
    return dashboard


class _MetricPlot:
    """The live plot: :func:`~jupyter_distill.notebook.plot_svg.metrics_svg` of the state's points in an HTML widget.

    Inline SVG takes JupyterLab's theme colours (a PNG would be a white slab in the dark theme);
    it is rebuilt by the renderer thread only when the points changed, and stays hidden until
    the first point. ``svg`` is the latest drawing, which the saved-notebook fallback shows too.
    """

    def __init__(self) -> None:
        self.widget = widgets.HTML(layout=widgets.Layout(display="none"))
        self.svg = ""

    def update(self, series: dict[str, list[tuple[int, float]]], evals: dict[str, list[tuple[int, float]]]) -> None:
        """New points (a snapshot of the state's): redraw."""
        svg = metrics_svg(series, evals)
        self.svg = svg
        self.widget.value = svg
        self.widget.layout.display = "block" if svg else "none"

    def html(self) -> str:
        """The drawing for an HTML output ("" before the first point)."""
        return no_math(self.svg, css_class="jd-plot-box") if self.svg else ""


__all__ = [
    "RUN_MIME_TYPE",
    "DashboardState",
    "PhaseProgress",
    "RunDashboard",
    "RunSummary",
    "UnknownRunError",
    "loss_svg",
    "watch",
]
