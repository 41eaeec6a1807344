"""A run's log: captured third-party text turned into ``log`` events, line by line, folded, bounded.

Why fold: quantizing a small model to a k-quant makes llama.cpp warn once per tensor whose rows
are not a multiple of the k-quant block (256): 180 lines for SmolLM2-135M, all expected. They are
counted and shown as one summary line. Why bound: a library that logs in a loop must not fill the
run store; after :data:`MAX_LOG_EVENTS` lines the rest are counted, and the count is logged.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any

from jupyter_distill.core.events import Emit, Event

MAX_LOG_EVENTS = 400  # per run; beyond it lines are counted, not kept
MAX_LINE_CHARS = 2000

#: llama.cpp's quantizer, per tensor: ``warning: blk.0.attn_k.weight - ncols 576 not divisible by
#: 256 (required for type q4_K) -> falling back to q5_0``
FALLBACK_RE = re.compile(
    r"(?P<tensor>\S+)\s+-\s+ncols\s+(?P<ncols>\d+)\s+not divisible by\s+(?P<block>\d+)"
    r"\s+\(required for type\s+(?P<wanted>\S+)\)\s*->\s*falling back to\s+(?P<used>\S+)"
)

#: and its own total afterwards, which the summary line replaces
FALLBACK_TOTAL_RE = re.compile(r"(?P<count>\d+) of (?P<of>\d+) tensor\(s\) required fallback quantization")


def fallback_summary(fallbacks: Counter[str], blocks: set[str], ncols: set[str], of: int | None = None) -> str:
    """One line for every quantization fallback: ``180 of 272 tensors fell back to q5_0/q8_0 because ...``."""
    total = sum(fallbacks.values())
    types = "/".join(sorted(fallbacks))
    block = "/".join(sorted(blocks, key=int)) or "256"
    widths = ", ".join(sorted(ncols, key=int))
    count = f"{total} of {of}" if of else str(total)
    noun = "tensor" if total == 1 and not of else "tensors"
    return (
        f"{count} {noun} fell back to {types} because their row size ({widths}) is not a multiple of {block} "
        "(expected for small models; the other tensors have the asked type)"
    )


class RunLog:
    """The route of a run's captured output (see :mod:`jupyter_distill.core.capture`).

    ``write`` may be called from any thread with any fragment of text; whole lines become
    ``Event("log")`` with ``data={"source": ...}`` through ``emit``. :meth:`flush` sends pending
    fragments and the fallback summary (the pipeline calls it at the end of each phase).
    """

    def __init__(self, emit: Emit, run: str | None = None, *, max_events: int = MAX_LOG_EVENTS):
        self._emit = emit
        self.run = run
        self.max_events = max_events
        self.emitted = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._partial: dict[tuple[int, str], str] = {}
        self._fallbacks: Counter[str] = Counter()
        self._blocks: set[str] = set()
        self._ncols: set[str] = set()
        self._of: int | None = None
        self._phase: str | None = None

    def set_phase(self, phase: str | None) -> None:
        self._phase = phase

    def write(self, source: str, text: str) -> None:
        if getattr(self._local, "busy", False):  # a sink printing while it handles a log event
            return
        lines: list[tuple[str, str]] = []
        key = (threading.get_ident(), source)
        with self._lock:
            buffered = self._partial.pop(key, "") + text
            *complete, rest = buffered.split("\n")
            if rest:
                self._partial[key] = rest[-MAX_LINE_CHARS:]
            for line in complete:
                shown = self._clean(line)
                if shown and not self._fold(shown):
                    lines.append((source, shown))
        self._send(lines)

    def flush(self) -> None:
        """Send unfinished lines and the fallback summary; call at the end of a phase and of the run."""
        lines: list[tuple[str, str]] = []
        with self._lock:
            partial, self._partial = self._partial, {}
            for (_, source), rest in partial.items():
                shown = self._clean(rest)
                if shown and not self._fold(shown):
                    lines.append((source, shown))
            summary = None
            if self._fallbacks:
                summary = fallback_summary(self._fallbacks, self._blocks, self._ncols, self._of)
                folded = dict(self._fallbacks)
                self._fallbacks, self._blocks, self._ncols, self._of = Counter(), set(), set(), None
        self._send(lines)
        if summary is not None:
            self._event(summary, {"source": "llama.cpp", "folded": sum(folded.values()), "fallbacks": folded})
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self._event(
                f"{dropped} more log lines were not kept (the log keeps {self.max_events})",
                {"source": "log"},
                force=True,
            )

    @staticmethod
    def _clean(line: str) -> str:
        segments = [part for part in line.split("\r") if part.strip()]  # a progress bar: keep its last state
        return segments[-1].rstrip()[:MAX_LINE_CHARS] if segments else ""

    def _fold(self, line: str) -> bool:
        match = FALLBACK_RE.search(line)
        if match is None:
            total = FALLBACK_TOTAL_RE.search(line)
            if total is not None and self._fallbacks:
                self._of = int(total["of"])
                return True
            return False
        self._fallbacks[match["used"]] += 1
        self._blocks.add(match["block"])
        self._ncols.add(match["ncols"])
        return True

    def _send(self, lines: list[tuple[str, str]]) -> None:
        for source, line in lines:
            self._event(line, {"source": source})

    def _event(self, message: str, data: dict[str, Any], *, force: bool = False) -> None:
        with self._lock:
            if self.emitted >= self.max_events and not force:
                self.dropped += 1
                return
            self.emitted += 1
        self._local.busy = True
        try:
            self._emit(Event("log", phase=self._phase, run=self.run, message=message, data=data))
        finally:
            self._local.busy = False


__all__ = ["FALLBACK_RE", "FALLBACK_TOTAL_RE", "MAX_LOG_EVENTS", "RunLog", "fallback_summary"]
