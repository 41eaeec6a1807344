"""The magics' small result objects, each with a text and an HTML form so a saved notebook reads well.

Both keep their HTML free of ``application/json`` (JupyterLab would prefer it and show a collapsed
JSON tree) and write ``$`` as a character reference inside an element MathJax skips, so a cost
stays "$0.25" instead of becoming a formula (see :mod:`~jupyter_distill.notebook.htmltext`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jupyter_distill.notebook.htmltext import no_math, text


@dataclass
class Table:
    """A titled table of rows; ``%distill runs``, ``aliases``, ``history`` and ``promote`` return one."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    empty: str = "(none)"
    payload: Any = None  # the raw records, for code (`runs = %distill runs; runs.payload`); never displayed
    notes: list[str] = field(default_factory=list)  # lines shown under the table (gates, a verdict)

    def __repr__(self) -> str:
        if not self.rows:
            return "\n".join([f"{self.title}: {self.empty}", *self.notes])
        cells = [[str(c) for c in self.columns], *[[str(v) for v in row] for row in self.rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        return "\n".join([self.title, *lines, *self.notes])

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """A table in HTML and text only: JupyterLab prefers ``application/json`` to HTML (it would show
        a collapsed JSON tree), so the raw records stay in :attr:`payload` and out of the bundle."""
        if self.rows:
            head = "".join(f"<th style='text-align:left'>{text(c)}</th>" for c in self.columns)
            body = "".join(
                "<tr>" + "".join(f"<td style='text-align:left'>{text(v)}</td>" for v in row) + "</tr>"
                for row in self.rows
            )
            table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        else:
            table = f"<i>{text(self.empty)}</i>"
        notes = "".join(f"<div>{text(line)}</div>" for line in self.notes)
        return {
            "text/plain": repr(self),
            "text/html": no_math(f"<b>{text(self.title)}</b>{table}{notes}", css_class="jd-table"),
        }


@dataclass
class Notice:
    """A one-line outcome (stopped, resumed, exported, rolled back)."""

    text: str

    def __repr__(self) -> str:
        return self.text

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"text/plain": self.text, "text/html": no_math(text(self.text), css_class="jd-notice")}


__all__ = ["Notice", "Table"]
