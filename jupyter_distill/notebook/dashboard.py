"""The run dashboard: a live picture of one ``Run``, and the summary card it ends with.

Why it is built this way (ipywidgets' "Output widget" and "Asynchronous" docs, fastprogress):

- Events come from the run's worker thread. The sink (:meth:`RunDashboard.sink`) only folds
  them into a plain :class:`DashboardState` under a lock; it never touches a widget, so a slow
  front end can never slow training down.
- One renderer thread turns the state into widget traits at most every ``min_interval`` seconds
  (0.3 s by default) and only when something changed. Widget traits are synced over comms,
  which are routed by comm id, so updates reach the dashboard even after its cell has finished
  and while other cells run. Nothing here uses ``with output:`` from a thread.
- The loss plot is redrawn only when new points arrive.
- When the run ends, the display handle of the dashboard is updated once with an HTML summary,
  so a saved (or headless-executed) notebook still shows the result without a kernel.

:class:`RunSummary` is the result object of ``%distill status/wait`` and the dashboard's final
card. Its MIME bundle carries ``text/plain``, ``text/html`` and
``application/vnd.jupyter.distill.run+json`` (rendered as a card by the lab extension), whose
shape is the run card that ``jupyter_distill.core.runcard`` defines (the server sends the same one).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as widgets

from jupyter_distill.core.errors import DistillError
from jupyter_distill.core.events import PHASES, Event
from jupyter_distill.core.runcard import (
    RUN_CARD_VERSION,
    RunCard,
    card_progress,
    downsample,
    loss_series,
    make_run_card,
    number,
    summary_pass_rates,
)
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
from jupyter_distill.notebook.run_log import RunLogView, log_details_html

RUN_MIME_TYPE = "application/vnd.jupyter.distill.run+json"
RUN_JSON_VERSION = RUN_CARD_VERSION

_PLOT_EVENT_KINDS = frozenset({"metric", "phase_end", "run_end", "error"})


class UnknownRunError(DistillError):
    """A magic or widget names a run that is not in the run store."""


# ---------------------------------------------------------------------------------------------
# The summary card (also the result object of `%distill status` / `%distill wait`)
# ---------------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    """One run as the store knows it, with what a user needs next (alias, snippet, numbers)."""

    run: dict[str, Any]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher_samples: int = 0
    example_prompt: str | None = None
    student: Any = None  # the Student object when the run finished in this kernel
    loss: list[list[float]] = field(default_factory=list)  # [[step, value], ...] for the card's sparkline

    @classmethod
    def from_store(cls, store: RunStore, name: str, *, student: Any = None) -> RunSummary:
        """Read the run, its metric summary, artifacts and teacher usage from the store."""
        run = store.get_run(name)
        if run is None:
            known = ", ".join(r["id"] for r in store.list_runs()[:10]) or "(none yet)"
            raise UnknownRunError(
                f"no run named {name!r} in {str(store.path)!r}. Known runs: {known}. "
                "Fix: check the name with `%distill runs`, or point `%config DistillMagics.workdir` at the "
                "workdir the run used.",
                field="name",
                value=name,
            )
        metrics: dict[str, dict[str, float]] = {}
        for row in store.get_metrics(name):
            entry = metrics.setdefault(row["name"], {"first": row["value"], "min": row["value"], "steps": 0})
            entry["last"] = row["value"]
            entry["min"] = min(entry["min"], row["value"])
            entry["steps"] = entry["steps"] + 1
            entry["last_step"] = row["step"]
        row = store.conn.execute(
            "SELECT COUNT(*) AS n FROM samples s JOIN run_prompts rp ON rp.prompt_hash = s.prompt_hash "
            "WHERE rp.run_id=?",
            (name,),
        ).fetchone()
        heldout = store.get_prompts(name, split="heldout")
        example = None
        if heldout:
            users = [m for m in heldout[0].messages if m.get("role") == "user"]
            example = str((users or heldout[0].messages)[-1].get("content", ""))
        artifacts = {
            kind: {"path": a["path"], "sha256": a["sha256"], "size": a["size"]}
            for kind, a in store.get_artifacts(name).items()
        }
        return cls(
            run=run,
            metrics=metrics,
            artifacts=artifacts,
            teacher_samples=int(row["n"]),
            example_prompt=example,
            student=student,
            loss=loss_series(store, name),
        )

    # ------------------------------------------------------------------ derived numbers
    @property
    def name(self) -> str:
        return str(self.run.get("id", ""))

    @property
    def status(self) -> str:
        return str(self.run.get("status", "unknown"))

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.run.get("summary") or {})

    @property
    def alias(self) -> str | None:
        return self.summary.get("alias") or None

    def pass_rates(self) -> dict[str, float | None]:
        """Held-out pass rates: student before, teacher best-of-N, student after."""
        out: dict[str, float | None] = {}
        for key in ("student_before", "teacher_best_of_n", "student_after"):
            value = self.summary.get(key)
            out[key] = value.get("pass_rate") if isinstance(value, dict) else None
        return out

    def cost_per_1k(self) -> dict[str, float]:
        """USD per 1000 answers: the teacher as paid in this run, the student served locally (free)."""
        cost = float(self.summary.get("teacher_cost") or 0.0)
        teacher = cost / self.teacher_samples * 1000 if self.teacher_samples else 0.0
        return {"teacher": round(teacher, 6), "student": 0.0}

    def snippet(self) -> str:
        """A ready-to-run call that reaches the new student, with a held-out prompt as example."""
        prompt = json.dumps(self.example_prompt or "your prompt here", ensure_ascii=False)
        lines = ["import jupyter_distill as jd", ""]
        model = self.alias
        if model is None:
            gguf = self.artifacts.get("gguf", {}).get("path") or self.summary.get("gguf")
            if not gguf:
                return ""
            model = self.name
            lines.append(f"jd.set_alias({model!r}, backend='gguf', model_path={str(gguf)!r})")
        lines += [
            f"resp = jd.completion(model={model!r}, messages=[{{'role': 'user', 'content': {prompt}}}])",
            "print(resp.choices[0].message.content)",
        ]
        return "\n".join(lines)

    def to_json(self) -> RunCard:
        """The ``application/vnd.jupyter.distill.run+json`` payload: a run card as ``core.runcard`` defines it.

        The server's panel sends the same shape, so the lab card draws both without telling them apart.
        """
        run = self.run
        config = run.get("config") or {}
        current: float | None = None
        total = number(config.get("steps"))
        if run.get("phase") == "training" and total:
            current = self.loss[-1][0] if self.loss else 0.0
        else:
            total = None
        error = self.summary.get("error")
        card = make_run_card(
            run,
            progress=card_progress(run, current, total),
            cost=number(self.summary.get("teacher_cost")) or 0.0,
            loss=downsample(self.loss),
            pass_rates=summary_pass_rates(self.summary),
            error=str(error) if error else None,
            snippet=self.snippet(),
        )
        return json.loads(json.dumps(card, default=str))

    # ------------------------------------------------------------------ rendering
    def _rows(self) -> list[tuple[str, str]]:
        summary = self.summary
        rates = self.pass_rates()
        rows: list[tuple[str, str]] = [("status", self.status)]
        if self.status == "failed" and summary.get("error"):
            rows.append(("error", str(summary["error"])))
        if summary.get("teacher"):
            rows.append(("teacher", str(summary["teacher"])))
        if summary.get("judge"):
            rows.append(("judge", str(summary["judge"])))
        if any(v is not None for v in rates.values()):
            n = next((v.get("n") for v in summary.values() if isinstance(v, dict) and "n" in v), None)
            rows.append(
                (
                    f"pass rate{f' ({n} held-out)' if n else ''}",
                    f"student before {_rate(rates['student_before'])} · teacher best-of-N "
                    f"{_rate(rates['teacher_best_of_n'])} · student after {_rate(rates['student_after'])}",
                )
            )
        per_1k = self.cost_per_1k()
        rows.append(
            (
                "cost per 1k calls",
                f"teacher ${per_1k['teacher']:.4f} · student ${per_1k['student']:.4f} (local)",
            )
        )
        if "teacher_cost" in summary:
            rows.append(
                ("teacher cost", f"${float(summary['teacher_cost'] or 0):.4f} for {self.teacher_samples} samples")
            )
        if "judge_cost" in summary:
            judge, teacher = float(summary["judge_cost"] or 0), float(summary.get("teacher_cost") or 0)
            rows.append(("judge cost", f"${judge:.4f}"))
            rows.append(("total cost", f"${teacher + judge:.4f}"))
        loss = self.metrics.get("loss")
        if loss:
            rows.append(
                (
                    "training",
                    f"{summary.get('steps', loss['steps'])} steps, loss {loss['first']:.3f} → {loss['last']:.3f}",
                )
            )
        for kind, artifact in sorted(self.artifacts.items()):
            rows.append((kind, str(artifact["path"])))
        if self.alias:
            rows.append(("alias", self.alias))
        if self.status == "stopped":
            rows.append(("resume", f"%distill resume {self.name}"))
        elif self.status == "failed":
            rows.append(("next", f"fix the error, then %distill resume {self.name} (paid samples are reused)"))
        return rows

    def __repr__(self) -> str:
        lines = [f"Run {self.name!r}"] + [f"  {k:<18} {v}" for k, v in self._rows()]
        snippet = self.snippet()
        if snippet and self.status == "done":
            lines += ["", *snippet.splitlines()]
        return "\n".join(lines)

    def html(self) -> str:
        """The card as self-contained HTML (inline styles: it must read well in a saved notebook)."""
        colour = _STATUS_COLOURS.get(
            {"done": "done", "failed": "failed", "stopped": "stopped"}.get(self.status, "active"), "#1976d2"
        )
        rows = "".join(
            f"<tr><th style='text-align:left;padding-right:1em;vertical-align:top'>{text(k)}</th>"
            f"<td style='text-align:left'>{_html_value(k, v)}</td></tr>"
            for k, v in self._rows()
        )
        snippet = self.snippet()
        code = (
            f"<pre style='background:#f5f5f5;padding:6px;margin:6px 0 0 0'>{text(snippet)}</pre>"
            if snippet and self.status == "done"
            else ""
        )
        return no_math(
            f"<b>jupyter-distill run {text(self.name)}</b><table style='margin-top:4px'>{rows}</table>{code}",
            css_class="jd-run-card",
            style=f"border-left:4px solid {colour};padding:4px 10px",
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"text/plain": repr(self), "text/html": self.html(), RUN_MIME_TYPE: self.to_json()}


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _html_value(key: str, value: str) -> str:
    if key in ("adapter", "gguf", "merged", "f16_gguf", "card") or "/" in value:
        return f"<code>{text(value)}</code>"
    return text(value)


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
        self._plotted_points = -1
        self._plot_events: list[Event] = []
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
        self.plot = _LossPlot()
        self.messages = widgets.HTML()
        self.run_log = RunLogView()  # what libraries printed during the run, collapsed
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
            if event.kind in _PLOT_EVENT_KINDS:
                self._plot_events.append(event)
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
            plot_events, self._plot_events = self._plot_events, []
            self._dirty = False
        self.plot.feed(plot_events)
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
        points = len(s.series.get("loss", ()))
        if points != self._plotted_points:
            self.plot.update(s.series)
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
        self.plot.flush()
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
        student = getattr(self._run, "result", None)
        if self.store is not None:
            try:
                return RunSummary.from_store(self.store, self.state.run, student=student)
            except DistillError:
                pass
        if self.state.summary is None and self.state.error is None:
            return None
        status = self.state.status
        summary = dict(self.state.summary or {})
        if self.state.error:
            summary["error"] = self.state.error
        metrics = {
            name: {"first": pts[0][1], "last": pts[-1][1], "min": min(v for _, v in pts), "steps": len(pts)}
            for name, pts in self.state.series.items()
            if pts
        }
        loss = [[float(step), float(value)] for step, value in self.state.series.get("loss", [])]
        return RunSummary(run={"id": self.state.run, "status": status, "summary": summary}, metrics=metrics, loss=loss)

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
            return self.summary.html()
        with self._lock:
            s = copy.deepcopy(self.state)
        return no_math(
            f"{_timeline_html(s)}{_stats_html(s)}{log_details_html(s)}"
            "<div style='color:#757575'>(live dashboard: needs a running kernel)</div>",
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


class _LossPlot:
    """The live training plot: ``notebook/plots.py``'s :class:`LivePlot` drawn into an Image widget.

    LivePlot throttles itself and draws only when new points arrived; the dashboard feeds it
    from its renderer thread (never from the training thread) and it hands back PNG bytes, which
    become the ``value`` of an ``ipywidgets.Image``. It is built on a side thread (importing
    matplotlib takes a second) so the ``%%distill`` cell returns at once; events that arrive
    before it is ready wait in a list. Without matplotlib, or if the plot breaks, a small SVG of
    the loss goes into the same Image widget.
    """

    def __init__(self) -> None:
        self.widget = widgets.Image(format="png", layout=widgets.Layout(max_width="660px", display="none"))
        self._live: Any = None
        self._pending: list[Event] = []
        self._series: dict[str, list[tuple[int, float]]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        threading.Thread(target=self._build, name="distill-plot-build", daemon=True).start()

    def _build(self) -> None:
        try:
            from jupyter_distill.notebook.plots import LivePlot

            live = LivePlot(display=False, on_render=self._show_png)
        except Exception:  # the plot is an ornament: a missing or broken renderer leaves the SVG
            live = None
        with self._lock:
            self._live = live
            self._ready.set()

    @property
    def live(self) -> Any:
        """The LivePlot in use (once built), or None when the SVG fallback draws."""
        self._ready.wait(30.0)
        return self._live

    def _show_png(self, png: bytes) -> None:
        self.widget.value = png
        self.widget.layout.display = "block"

    def feed(self, events: list[Event]) -> None:
        """Pass metric and phase events on to LivePlot (it decides when to draw)."""
        with self._lock:
            self._pending.extend(events)
            if not self._ready.is_set() or self._live is None:
                if self._live is None and self._ready.is_set():
                    self._pending.clear()
                return
            pending, self._pending = self._pending, []
        for event in pending:
            try:
                self._live(event)
            except Exception:
                self._live = None  # fall back to the SVG from now on
                break

    def update(self, series: dict[str, list[tuple[int, float]]]) -> None:
        """New loss points: redraw the SVG fallback when LivePlot is not in use."""
        self._series = series
        if self._ready.is_set() and self._live is None:
            self._draw_svg()

    def flush(self) -> None:
        """Draw what is pending (the run ended): LivePlot skips its throttle, the SVG redraws."""
        self._ready.wait(30.0)
        self.feed([])
        if self._live is not None:
            self._live.flush()
        else:
            self._draw_svg()

    def _draw_svg(self) -> None:
        svg = loss_svg(self._series.get("loss", []))
        if svg:
            self.widget.format = "svg+xml"
            self.widget.value = svg.encode()
            self.widget.layout.display = "block"


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
