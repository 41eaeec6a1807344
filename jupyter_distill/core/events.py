"""Events: how long stages report progress without printing.

A stage takes ``emit: Callable[[Event], None]``. The notebook layer turns events into widgets
and plots, the lab panel reads them from the store, and :class:`ConsoleRenderer` draws tqdm bars
when no notebook is attached. The core itself never prints.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO

EventKind = Literal[
    "run_start",  # a run begins; data: config summary
    "phase_start",  # a phase begins; total = units of work if known
    "progress",  # current/total within a phase; data may carry cost, requests
    "metric",  # a training or eval metric; data: {name: value}, step
    "phase_end",  # a phase is done; data: its summary
    "warning",  # something the user should know; the run goes on
    "error",  # the run stopped with an error; message is the user-facing text
    "run_end",  # the run finished; data: the run summary
    "log",  # a line a library printed during the run (core/runlog.py); data: source
]

logger = logging.getLogger(__name__)

PHASES: tuple[str, ...] = ("sampling", "judging", "review", "training", "eval", "export", "alias")
#: ``data["stage"]`` values of ``progress`` events that prepare a phase's counted work (loading the
#: student, caching reference log-probs): their current/total count the preparation, not the phase.
PREPARATION_STAGES = frozenset({"prepare", "reference"})
STAGE_TEXT_CHARS = 80  # how much of a progress message a one-line display shows


@dataclass(frozen=True)
class Event:
    """One thing that happened in a run. Plain data so it can be queued, stored and sent."""

    kind: EventKind
    phase: str | None = None
    run: str | None = None
    message: str = ""
    current: int | None = None
    total: int | None = None
    step: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Emit = Callable[[Event], None]


def is_preparation(event: Event) -> bool:
    """A ``progress`` event about a phase's preparation: its numbers must not move the phase's bar."""
    return event.kind == "progress" and event.data.get("stage") in PREPARATION_STAGES


def stage_text(event: Event, *, label: str | None = None) -> str:
    """One short line for what a progress event is doing: ``preparing: reference log-probs 8/13``,
    ``quantizing to q4_k_m``, or ``student_before 3/10`` (``label`` replaces the message)."""
    text = label if label is not None else event.message
    text = " ".join(text.split())
    if len(text) > STAGE_TEXT_CHARS:
        text = text[: STAGE_TEXT_CHARS - 1].rstrip() + "…"
    if is_preparation(event) and event.current is not None and event.total:
        text = f"{text} {event.current}/{event.total}"
    if is_preparation(event):
        text = f"preparing: {text}" if text else "preparing"
    return text


def no_emit(event: Event) -> None:
    """The default sink: stages always have somewhere to send events."""


class FanOut:
    """One emit that calls every sink; a failing sink never stops the run, and never fails silently.

    A sink may be what persists events (the run store): its failure is logged and counted per sink
    in :attr:`failures` (with the last error in :attr:`last_errors`), so the run summary can report
    it. With ``announce_failures`` the first failure of each sink is also sent as a ``warning``
    event to the sinks, so a live dashboard shows it at once.
    """

    def __init__(self, sinks: Iterable[Emit | None] = (), *, announce_failures: bool = False):
        self._sinks: list[Emit] = [sink for sink in sinks if sink is not None]
        self._announce_failures = announce_failures
        self._lock = threading.Lock()
        self._local = threading.local()
        self.failures: dict[str, int] = {}
        self.last_errors: dict[str, str] = {}

    def add(self, sink: Emit) -> None:
        with self._lock:
            self._sinks = [*self._sinks, sink]

    @property
    def failed(self) -> int:
        """Events that at least one sink failed to take, summed over sinks."""
        with self._lock:
            return sum(self.failures.values())

    def __call__(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink(event)
            except Exception as exc:  # a broken progress callback must not kill training
                self._failed(sink, event, exc)

    def _failed(self, sink: Emit, event: Event, exc: Exception) -> None:
        name = _sink_name(sink)
        with self._lock:
            count = self.failures[name] = self.failures.get(name, 0) + 1
            self.last_errors[name] = f"{type(exc).__name__}: {exc}"
        logger.warning("event sink %s failed on a %s event (%d so far): %s", name, event.kind, count, exc)
        if self._announce_failures and count == 1 and not getattr(self._local, "warning", False):
            self._local.warning = True  # a sink that also fails on the warning must not recurse
            try:
                self(
                    Event(
                        "warning",
                        phase=event.phase,
                        run=event.run,
                        message=f"event sink {name} failed ({type(exc).__name__}: {exc}); "
                        "its failures are counted in the run summary",
                        data={"sink": name},
                    )
                )
            finally:
                self._local.warning = False


def _sink_name(sink: Emit) -> str:
    owner = getattr(sink, "__self__", None)
    name = getattr(sink, "__qualname__", None) or type(sink).__qualname__
    return f"{type(owner).__qualname__}.{getattr(sink, '__name__', name)}" if owner is not None else str(name)


def fan_out(sinks: Iterable[Emit | None], *, announce_failures: bool = False) -> FanOut:
    """One emit that calls every sink; see :class:`FanOut` for what happens when one fails."""
    return FanOut(sinks, announce_failures=announce_failures)


class ConsoleRenderer:
    """Draws one tqdm bar per phase on stderr; used when no notebook front end is attached.

    A phase's bar moves only with its own counted work: preparation events show as a note beside
    it, and events of a phase that has no bar (the held-out evaluation that runs inside training
    and export) are left out.
    """

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.5):
        from jupyter_distill.core.capture import unrouted

        self._stream = unrouted(stream or sys.stderr)  # its bars, not a run's log, even on the run's thread
        self._min_interval = min_interval
        self._bars: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        from tqdm.auto import tqdm

        with self._lock:
            phase = event.phase or "run"
            if event.kind == "phase_start":
                self._close(phase)
                self._bars[phase] = tqdm(
                    total=event.total, desc=phase, file=self._stream, mininterval=self._min_interval, leave=True
                )
            elif event.kind == "progress" and phase in self._bars:
                bar = self._bars[phase]
                if is_preparation(event):  # the bar counts the phase's work, not its preparation
                    bar.set_postfix_str(stage_text(event), refresh=False)
                    bar.refresh()
                    return
                if event.total is not None and bar.total != event.total:
                    bar.total = event.total
                if event.current is not None:
                    bar.n = event.current
                postfix = {k: v for k, v in event.data.items() if isinstance(v, int | float | str)}
                if postfix:
                    bar.set_postfix(postfix, refresh=False)
                elif event.message:  # a named step (export: merge, f16, quantize, check)
                    bar.set_postfix_str(stage_text(event), refresh=False)
                bar.refresh()
            elif event.kind == "metric" and phase in self._bars:
                shown = {k: round(v, 4) for k, v in event.data.items() if isinstance(v, float)}
                self._bars[phase].set_postfix(shown, refresh=False)
            elif event.kind == "phase_end":
                self._close(phase)
            elif event.kind in ("warning", "error"):
                self._stream.write(f"[{event.kind}] {event.message}\n")
            elif event.kind == "run_end" and event.message:
                self._stream.write(event.message + "\n")

    def _close(self, phase: str) -> None:
        bar = self._bars.pop(phase, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        with self._lock:
            for phase in list(self._bars):
                self._close(phase)
