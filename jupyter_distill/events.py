"""Events: how long stages report progress without printing.

A stage takes ``emit: Callable[[Event], None]``. The notebook layer turns events into widgets
and plots, the lab panel reads them from the store, and :class:`ConsoleRenderer` draws tqdm bars
when no notebook is attached. The core itself never prints.
"""

from __future__ import annotations

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
]

PHASES: tuple[str, ...] = ("sampling", "judging", "review", "training", "eval", "export", "alias")


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


def no_emit(event: Event) -> None:
    """The default sink: stages always have somewhere to send events."""


def fan_out(sinks: Iterable[Emit | None]) -> Emit:
    """One emit that calls every sink; a failing sink never stops the run."""
    targets = [sink for sink in sinks if sink is not None]

    def emit(event: Event) -> None:
        for sink in targets:
            try:
                sink(event)
            except Exception:  # a broken progress callback must not kill training
                pass

    return emit


class ConsoleRenderer:
    """Draws one tqdm bar per phase on stderr; used when no notebook front end is attached."""

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.5):
        self._stream = stream or sys.stderr
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
                if event.total is not None and bar.total != event.total:
                    bar.total = event.total
                if event.current is not None:
                    bar.n = event.current
                postfix = {k: v for k, v in event.data.items() if isinstance(v, int | float | str)}
                if postfix:
                    bar.set_postfix(postfix, refresh=False)
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
