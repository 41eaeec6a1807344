"""The ``openai-compatible`` backend: a chat completion from a remote server over HTTP.

One pooled httpx client per process; the API key comes from the environment variable the alias
names and is redacted from every error, since servers echo it back.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any

from jupyter_distill.core.errors import AliasError
from jupyter_distill.serving.response import Messages, model_name

_HTTP: Any = None
_HTTP_LOCK = threading.Lock()


def _http() -> Any:
    """One pooled httpx client per process: keep-alive makes warm calls cheap."""
    global _HTTP
    import httpx

    with _HTTP_LOCK:
        if _HTTP is None or _HTTP.is_closed:
            _HTTP = httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0))
        return _HTTP


def _remote_headers(route: dict[str, Any]) -> dict[str, str]:
    env = route.get("api_key_env")
    if not env:
        return {}
    key = os.environ.get(env)
    if not key:
        raise AliasError(
            f"alias {route.get('name')!r} reads its API key from the environment variable {env!r}, which is not set. "
            f"Fix: export {env}=... before starting the kernel (or os.environ[{env!r}] = ...).",
            field="api_key_env",
            value=env,
        )
    return {"Authorization": f"Bearer {key}"}


def _remote_cost(route: dict[str, Any], usage: dict[str, Any] | None) -> float | None:
    """The cost the server reports, else the alias's per-million prices, else unknown (None)."""
    usage = usage or {}
    if isinstance(usage.get("cost"), int | float):
        return float(usage["cost"])
    pin, pout = route.get("input_usd_per_m"), route.get("output_usd_per_m")
    if pin is None or pout is None:
        return None
    return (usage.get("prompt_tokens", 0) * float(pin) + usage.get("completion_tokens", 0) * float(pout)) / 1e6


def _remote_secrets(route: dict[str, Any]) -> list[str]:
    env = route.get("api_key_env")
    key = os.environ.get(env) if isinstance(env, str) and env else None
    return [key] if key else []


def _remote_error(route: dict[str, Any], detail: str) -> AliasError:
    # Servers echo the key back ("Incorrect API key provided: sk-..."): never let it through.
    from jupyter_distill.teachers.base import redact

    detail = redact(detail, _remote_secrets(route))
    return AliasError(
        f"alias {route.get('name')!r}: the server at {route['base_url']} failed: {detail}. Fix: check that the "
        f"server runs and serves model {route.get('model')!r}, and the key in ${route.get('api_key_env') or '-'}.",
        field="base_url",
        value=route["base_url"],
    )


def _remote_json(route: dict[str, Any], text: str) -> dict[str, Any]:
    """A JSON object from the upstream server, or the ``AliasError`` that says it sent something else."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise _remote_error(route, f"it answered with a body that is not a JSON object: {text[:120]!r}")
    return data


def remote_completion(
    route: dict[str, Any], msgs: Messages, max_tokens: int, temperature: float, stream: bool, kw: dict[str, Any]
) -> Any:
    import httpx

    url = f"{route['base_url']}/chat/completions"
    body = {"model": route["model"], "messages": msgs, "max_tokens": max_tokens, "temperature": temperature, **kw}
    headers = _remote_headers(route)
    name = model_name(route)
    client = _http()
    if not stream:
        try:
            response = client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _remote_error(route, f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise _remote_error(route, f"HTTP {response.status_code}: {response.text[:300]}")
        data = _remote_json(route, response.text)
        data["model"] = name
        data["_cost"] = _remote_cost(route, data.get("usage"))
        return data

    def chunks() -> Iterator[dict[str, Any]]:
        try:
            with client.stream("POST", url, json={**body, "stream": True}, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _remote_error(route, f"HTTP {response.status_code}: {response.text[:300]}")
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = _remote_json(route, payload)
                    chunk["model"] = name
                    chunk["_cost"] = _remote_cost(route, chunk.get("usage")) if chunk.get("usage") else 0.0
                    yield chunk
        except httpx.HTTPError as exc:
            raise _remote_error(route, f"{type(exc).__name__}: {exc}") from None

    return chunks()


__all__ = ["remote_completion"]
