"""Text in the notebook's HTML outputs, shown as written.

JupyterLab typesets ``$...$`` as mathematics in HTML outputs and in ipywidgets' HTML widgets
(MathJax walks the rendered DOM), so "teacher cost $0.0021 · total $0.0040" would turn the text
between the two dollar signs into an italic formula. Two things keep it literal:

- :func:`no_math` wraps an output in an element with the classes MathJax skips
  (``tex2jax_ignore``, honoured by MathJax 2 and 3 and nbconvert's HTML; ``mathjax_ignore`` for
  later configurations). It must sit *inside* the element a renderer typesets, which is why each
  output wraps its own content rather than relying on a class on some outer widget.
- :func:`text` HTML-escapes a value and writes ``$`` as ``&#36;``, so a front end that scans the
  HTML source for ``$`` (rather than the DOM) finds none either.
"""

from __future__ import annotations

import html
from typing import Any

#: Classes MathJax skips (with everything inside them).
NO_MATH_CLASSES = "tex2jax_ignore mathjax_ignore"


def text(value: Any) -> str:
    """``value`` as HTML text: escaped, with ``$`` as a character reference."""
    return html.escape(str(value)).replace("$", "&#36;")


def no_math(inner_html: str, *, tag: str = "div", css_class: str = "", style: str = "") -> str:
    """``inner_html`` inside a ``tag`` that MathJax leaves alone (extra classes and inline style optional)."""
    classes = f"{css_class} {NO_MATH_CLASSES}".strip()
    style_attr = f" style='{style}'" if style else ""
    return f"<{tag} class='{classes}'{style_attr}>{inner_html}</{tag}>"


__all__ = ["NO_MATH_CLASSES", "no_math", "text"]
