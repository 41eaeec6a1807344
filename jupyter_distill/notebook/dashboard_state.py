"""The dashboard's state: plain data folded from pipeline events, with no widget and no thread.

Why apart from the widget: the live widget, the HTML fallback of a saved notebook and the final
card all draw from this one object, and tests drive it event by event without IPython.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from jupyter_distill.core.events import PHASES, Event, is_preparation, stage_text
from jupyter_distill.notebook.metric_points import add_eval, add_point, eval_point, finite_number

MAX_SERIES_POINTS = 4000  # per metric; older points are thinned, the curve keeps its shape
MAX_MESSAGES = 20
MAX_LOG_LINES = 200  # the run's log as the dashboard shows it: the latest lines (the store keeps more)
TERMINAL_STATUSES = frozenset({"done", "failed", "stopped"})


# ---------------------------------------------------------------------------------------------
# State: plain data folded from events (tests drive this without any widget or thread)
# ---------------------------------------------------------------------------------------------
@dataclass
class PhaseProgress:
    """Where one phase is: status, units done out of total, and when it started and ended."""

    status: str = "pending"  # pending | active | waiting | done | failed | stopped
    current: int | None = None
    total: int | None = None
    started: float | None = None
    ended: float | None = None
    message: str = ""
    stage: str = ""  # what the phase is doing now, when it is not its counted work (preparing, a named step)
    preparing: bool = False  # counted work has not begun: no ETA
    rate_time: float | None = None  # ETA is measured from here (after preparation), else from started
    rate_units: int = 0  # units done at rate_time

    @property
    def fraction(self) -> float:
        """0..1 for the progress bar; a finished phase is full even when it had no total."""
        if self.status == "done":
            return 1.0
        if self.total and self.current is not None:
            return max(0.0, min(1.0, self.current / self.total))
        return 0.0

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else now) - self.started

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate of the counted work so far (preparation time excluded); None while
        preparing, before the first unit, or without a total."""
        if self.status != "active" or self.preparing or not self.total or not self.current:
            return None
        since = self.rate_time if self.rate_time is not None else self.started
        done = self.current - (self.rate_units if self.rate_time is not None else 0)
        if since is None or done <= 0:
            return None
        elapsed = now - since
        if elapsed <= 0:
            return None
        return max(0.0, (self.total - self.current) * elapsed / done)


@dataclass
class DashboardState:
    """Everything the dashboard shows, built from events alone."""

    run: str
    status: str = "created"  # created | running | waiting-review | done | failed | stopped
    phase: str | None = None
    phases: dict[str, PhaseProgress] = field(default_factory=lambda: {p: PhaseProgress() for p in PHASES})
    requests: int = 0
    cost: float = 0.0  # teacher spend; the judge's is judge_cost (each phase reports only its own)
    judge_cost: float = 0.0
    step: int | None = None
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # training metrics by step
    evals: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # pass rate per label, by step
    latest: dict[str, float] = field(default_factory=dict)
    messages: list[tuple[str, str]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    events: int = 0
    log: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=MAX_LOG_LINES))  # (source, line)
    log_total: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def apply(self, event: Event) -> None:
        """Fold one event into the state (called from the run's thread, under the dashboard lock)."""
        self.events += 1
        phase = event.phase or self.phase
        progress = self.phases.get(phase) if phase else None
        if event.kind == "run_start":
            self.status = "running"
            self.started = event.time
        elif event.kind == "phase_start" and progress is not None:
            self.phase = phase
            progress.status = "active"
            progress.started = event.time
            progress.ended = None
            progress.total = event.total
            progress.current = 0 if event.total else None
            progress.stage, progress.preparing, progress.rate_time, progress.rate_units = "", False, None, 0
            if self.status in ("created", "waiting-review"):
                self.status = "running"
        elif event.kind == "progress":
            if progress is not None:
                self._progress(event, phase, progress)
            if "requests" in event.data:
                self.requests = int(event.data["requests"])
            if "cost" in event.data:
                if phase == "judging":  # the judge's spend is its own line, never the teacher's
                    self.judge_cost = float(event.data["cost"])
                else:
                    self.cost = float(event.data["cost"])
        elif event.kind == "metric":
            self._metric(event)
        elif event.kind == "phase_end" and progress is not None:
            progress.status = "done"
            progress.ended = event.time
            progress.stage, progress.preparing = "", False
            if progress.total:
                progress.current = progress.total
            if self.status == "waiting-review":
                self.status = "running"
        elif event.kind == "warning":
            self._message("warning", event.message)
        elif event.kind == "log":  # what a library printed: the collapsible log, not a run warning
            self.log.append((str(event.data.get("source", "")), event.message))
            self.log_total += 1
        elif event.kind == "error":
            self.status = "failed"
            self.error = event.message
            self.ended = event.time
            self._message("error", event.message)
            self._close_active("failed", event.time)
        elif event.kind == "run_end":
            stopped = event.data.get("status") == "stopped"
            self.status = "stopped" if stopped else "done"
            self.ended = event.time
            if stopped:
                self._message("warning", event.message)
                self._close_active("stopped", event.time)
            else:
                self.summary = dict(event.data)
                if "teacher_requests" in self.summary:
                    self.requests = max(self.requests, int(self.summary["teacher_requests"] or 0))
                if "teacher_cost" in self.summary:
                    self.cost = float(self.summary["teacher_cost"] or 0.0)
                if "judge_cost" in self.summary:
                    self.judge_cost = float(self.summary["judge_cost"] or 0.0)

    def _progress(self, event: Event, phase: str | None, progress: PhaseProgress) -> None:
        """A progress event moves its own phase's bar, and only while that phase runs.

        Two kinds of event must not: a phase's preparation (loading the student, reference
        log-probs: its count is not the phase's work) shows as the phase's stage; and an event of
        a phase that is not running (the held-out evaluation inside training, before the eval
        phase, and inside export, after it) shows as the stage of the phase that is running.
        """
        if is_preparation(event):
            progress.stage = stage_text(event)
            progress.preparing = True
            return
        if phase != self.phase and progress.status != "active":
            host = self.phases.get(self.phase) if self.phase else None
            if host is not None and host.status == "active":
                count = f" {event.current}/{event.total}" if event.current is not None and event.total else ""
                label = stage_text(event, label=(event.message or str(phase))) + count
                host.stage = f"preparing: {label}" if host.preparing else label
            return
        if progress.preparing and (event.current is not None or event.step is not None):
            progress.preparing = False  # counted work begins: measure its rate from here
            progress.rate_time, progress.rate_units = event.time, int(event.current or 0)
        if event.total is not None:
            progress.total = event.total
        if event.current is not None:
            progress.current = event.current
        if event.message:
            progress.message = event.message
            progress.stage = stage_text(event)
        elif event.step is not None:
            progress.stage = ""  # a training step: the count says it all
        if phase == "review" and "waiting" in event.message:
            progress.status = "waiting"
            self.status = "waiting-review"

    def _metric(self, event: Event) -> None:
        """Training metrics extend their series; a held-out evaluation adds a pass rate at the
        training step of the model it measured (never a new step: it does not move the counter)."""
        if event.phase == "eval":
            point = eval_point(event, self.step)
            if point is not None:
                label, step, rate = point
                add_eval(self.evals.setdefault(label, []), step, rate)
        elif event.step is not None and event.phase in (None, "training"):
            self.step = event.step
        for name, raw in event.data.items():
            value = finite_number(raw)
            if value is None:
                continue
            self.latest[name] = value
            if event.step is None or event.phase == "eval":
                continue
            points = self.series.setdefault(name, [])
            add_point(points, event.step, value)  # a resumed run replaces the steps it replays
            if len(points) > MAX_SERIES_POINTS:
                del points[1:-1:2]

    def _message(self, kind: str, text: str) -> None:
        if text:
            self.messages.append((kind, text))
            del self.messages[:-MAX_MESSAGES]

    def _close_active(self, status: str, when: float) -> None:
        for progress in self.phases.values():
            if progress.status in ("active", "waiting"):
                progress.status = status
                progress.ended = when
