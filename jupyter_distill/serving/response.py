"""What every serving backend answers with: OpenAI-shaped response objects, and chat messages checked on the way in.

An app written against the OpenAI client reads ``resp.choices[0].message.content``; the local
student answers in that same shape, so swapping an API model for the student is a one-word change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import ConfigError

Messages = list[dict[str, Any]]


# ---------------------------------------------------------------------------------------- response objects
class OpenAIObject(dict):
    """A dict that also answers attribute access (``resp.choices[0].message.content``).

    Being a real dict keeps ``json.dumps(resp)`` and ``resp["usage"]`` working; the extras
    ``_cost``, ``_latency_ms`` and ``_routing`` are attributes outside the dict, so serialising a
    response gives a clean OpenAI body.
    """

    def __init__(self, data: dict[str, Any] | None = None, **extras: Any):
        super().__init__({k: _wrap(v) for k, v in (data or {}).items()})
        for key, value in extras.items():
            object.__setattr__(self, key, value)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        if isinstance(key, str) and key.startswith("_") and not dict.__contains__(self, key) and key in self.__dict__:
            return self.__dict__[key]
        return dict.__getitem__(self, key)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self[name] = _wrap(value)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self))


def _wrap(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, OpenAIObject):
        return OpenAIObject(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def normalize_messages(messages: Any) -> Messages:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if isinstance(messages, dict):
        return [dict(messages)]
    try:
        out = [dict(m) for m in messages]
    except (TypeError, ValueError):
        raise ConfigError(
            f"messages must be a string or a list of {{'role', 'content'}} dicts, got {type(messages).__name__}.",
            field="messages",
            value=type(messages).__name__,
        ) from None
    for i, m in enumerate(out):
        if "role" not in m or "content" not in m:
            raise ConfigError(
                f"messages[{i}] needs 'role' and 'content', got keys {sorted(m)}. "
                "Fix: e.g. {'role': 'user', 'content': 'Hello'}.",
                field=f"messages[{i}]",
                value=sorted(m),
            )
    return out


def model_name(route: dict[str, Any]) -> str:
    """The ``model`` an answer reports: the alias entry's name, the alias, or the file's name."""
    return route.get("name") or route.get("alias") or Path(str(route.get("model_path", "student"))).name


__all__ = ["Messages", "OpenAIObject", "model_name", "normalize_messages"]
