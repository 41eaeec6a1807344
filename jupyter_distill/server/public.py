"""Text fit for a remote caller: no server paths, no tracebacks, bounded length.

Error bodies and stored run events reach whoever can call the REST API. An absolute path tells
them how the server's disk is laid out and a traceback shows the code's internals; neither helps
them fix a request. Paths are cut to their last component (the file name still says which file
is at fault), tracebacks to their final line.
"""

from __future__ import annotations

import re

MAX_MESSAGE_CHARS = 2000

# An absolute POSIX path (not a URL path: no word character, ':', '/' or '.' right before the
# slash), a home-relative one, or a Windows drive path. Quotes and whitespace end it.
_PATH_RE = re.compile(r"(?<![\w:/.])(?:~|[A-Za-z]:)?[/\\][^\s'\"`<>|]+")


def _last_component(match: re.Match[str]) -> str:
    parts = [p for p in re.split(r"[/\\]", match.group(0)) if p and p != "~" and not p.endswith(":")]
    return parts[-1] if parts else "<path>"


def public_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` fit for a remote caller: absolute paths cut to their last component, length bounded."""
    text = _PATH_RE.sub(_last_component, str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def public_traceback(text: str) -> str:
    """The last line of a stored traceback (the exception and its message), made public."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return public_message(lines[-1].strip()) if lines else ""
