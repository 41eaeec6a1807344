"""The run's log inside its dashboard: what libraries printed during the run, collapsed by default.

Why here and not in a cell's output: a run executes on a background thread, and what it prints
would land in whichever cell runs at the time (see :mod:`jupyter_distill.core.capture`). The
pipeline turns that text into ``log`` events; :class:`~jupyter_distill.notebook.dashboard_state.DashboardState`
keeps the latest lines, and this view shows them in a closed accordion whose title gives the
count, so a user who wants llama.cpp's or transformers' own words opens it and nobody else sees them.
"""

from __future__ import annotations

from collections.abc import Iterable

import ipywidgets as widgets

from jupyter_distill.notebook.dashboard_state import DashboardState
from jupyter_distill.notebook.htmltext import no_math, text

PRE_STYLE = "max-height:240px;overflow:auto;margin:0;font-size:11px;line-height:1.35;white-space:pre-wrap"


def log_title(shown: int, total: int) -> str:
    """``log (3 lines)``, or ``log (latest 200 of 950 lines)`` when the dashboard keeps fewer."""
    if total > shown:
        return f"log (latest {shown} of {total} lines)"
    return f"log ({total} line{'' if total == 1 else 's'})"


def log_lines_html(lines: Iterable[tuple[str, str]]) -> str:
    """The lines as escaped preformatted text, each prefixed with its source (``llama.cpp``, ``stderr``)."""
    body = "\n".join(f"[{text(source)}] {text(line)}" if source else text(line) for source, line in lines)
    return no_math(f"<pre style='{PRE_STYLE}'>{body}</pre>")


def log_details_html(state: DashboardState) -> str:
    """The log as a closed ``<details>`` element (a saved notebook's HTML, no widget needed); '' when empty."""
    if not state.log_total:
        return ""
    return (
        f"<details class='jd-run-log'><summary>{text(log_title(len(state.log), state.log_total))}</summary>"
        f"{log_lines_html(state.log)}</details>"
    )


class RunLogView:
    """A collapsed accordion with the run's log; hidden until the first line arrives."""

    def __init__(self) -> None:
        self.lines = widgets.HTML()
        self.widget = widgets.Accordion(children=[self.lines], selected_index=None)
        self.widget.layout.display = "none"
        self._shown_total = -1

    def update(self, state: DashboardState) -> None:
        """Draw ``state``'s log when it changed (called by the dashboard's renderer with a snapshot)."""
        if state.log_total == self._shown_total:
            return
        self._shown_total = state.log_total
        if not state.log_total:
            self.widget.layout.display = "none"
            return
        self.lines.value = log_lines_html(state.log)
        self.widget.set_title(0, log_title(len(state.log), state.log_total))
        self.widget.layout.display = ""


__all__ = ["RunLogView", "log_details_html", "log_lines_html", "log_title"]
