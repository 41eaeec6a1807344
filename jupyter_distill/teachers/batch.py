"""Provider batch APIs: submit many chat requests at once, poll, and read the answers back.

Batch APIs answer within 24 hours at a discount (half the online price at OpenAI and Anthropic),
which suits sampling thousands of candidates nobody waits for. Three wire shapes are spoken:

* OpenAI: upload a JSON-lines file (``POST /files``, ``purpose=batch``), create the batch
  (``POST /batches`` with ``endpoint=/v1/chat/completions``, ``completion_window=24h``), poll
  ``GET /batches/{id}``, then read ``GET /files/{output_file_id}/content`` and the error file;
* Anthropic: ``POST /messages/batches`` with ``requests[custom_id, params]``, poll
  ``GET /messages/batches/{id}``, then read the JSON-lines ``results_url``;
* OpenRouter: ``POST /batches`` with ``endpoint``, ``model`` and an inline ``requests[custom_id,
  body]`` array (in that key order: the server stream-parses the body), poll ``GET /batches/{id}``,
  whose terminal answer carries the results, else page through ``GET /batches/{id}/results``. Its
  batch-level routing takes only ``provider.only``, so the distillable-only flag travels in each
  request body, and the models list is checked before anything is submitted.

Every answer comes back as an OpenAI chat-completion dict (Anthropic messages are converted),
so the teacher's own ``_to_samples`` gives batch candidates the same usage and provenance as
online ones. A client holds no state between calls: the batch id lives in the run store, so a
new process polls the same batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from jupyter_distill.core.errors import ConfigError, TeacherError

BATCH_SCHEMES = ("openai", "anthropic", "openrouter")
ANTHROPIC_VERSION = "2023-06-01"
OPENAI_TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class BatchStatus:
    """Where a batch stands: ``done`` once the provider will change nothing more."""

    state: str
    done: bool
    finished: int  # requests answered (succeeded or not)
    total: int
    info: dict[str, Any] = field(default_factory=dict)  # what reading the results needs (file ids, results_url)


@dataclass
class BatchItem:
    """One request's outcome: ``data`` is a chat-completion dict, or ``error`` says why there is none."""

    custom_id: str
    data: dict[str, Any] | None = None
    error: str | None = None


class BatchClient:
    """Common plumbing: one short-lived ``httpx.AsyncClient`` per call (batch calls are few)."""

    provider = ""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(headers=self._headers(), timeout=self.timeout) as client:
            response = await client.request(method, url, **kwargs)
        if response.status_code >= 400:
            text = response.text[:300]
            if self._api_key:
                text = text.replace(self._api_key, "***")
            raise TeacherError(
                f"{self.provider} batch API answered HTTP {response.status_code} to {method} {url}: {text}. "
                "Fix: check the key, the model name and the provider's batch limits; nothing was stored for it.",
                field="batch",
                value=url,
            )
        return response

    async def submit(self, model: str, requests: list[tuple[str, dict[str, Any]]]) -> str:
        """Send ``(custom_id, chat body)`` pairs as one batch; returns the provider's batch id."""
        raise NotImplementedError

    async def poll(self, batch_id: str) -> BatchStatus:
        raise NotImplementedError

    async def results(self, status: BatchStatus) -> list[BatchItem]:
        raise NotImplementedError


class OpenAIBatchClient(BatchClient):
    provider = "openai"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    async def submit(self, model: str, requests: list[tuple[str, dict[str, Any]]]) -> str:
        lines = [
            json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body})
            for cid, body in requests
        ]
        upload = await self._request(
            "POST",
            f"{self.base_url}/files",
            data={"purpose": "batch"},
            files={"file": ("batch.jsonl", ("\n".join(lines) + "\n").encode("utf-8"), "application/jsonl")},
        )
        file_id = upload.json()["id"]
        created = await self._request(
            "POST",
            f"{self.base_url}/batches",
            json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )
        return str(created.json()["id"])

    async def poll(self, batch_id: str) -> BatchStatus:
        data = (await self._request("GET", f"{self.base_url}/batches/{batch_id}")).json()
        counts = data.get("request_counts") or {}
        state = str(data.get("status"))
        return BatchStatus(
            state=state,
            done=state in OPENAI_TERMINAL,
            finished=int(counts.get("completed") or 0) + int(counts.get("failed") or 0),
            total=int(counts.get("total") or 0),
            info={"output_file_id": data.get("output_file_id"), "error_file_id": data.get("error_file_id")},
        )

    async def results(self, status: BatchStatus) -> list[BatchItem]:
        items: list[BatchItem] = []
        for key in ("output_file_id", "error_file_id"):
            file_id = status.info.get(key)
            if not file_id:
                continue
            text = (await self._request("GET", f"{self.base_url}/files/{file_id}/content")).text
            for line in text.splitlines():
                if line.strip():
                    items.append(_result_row_item(json.loads(line), status.state))
        return items


def _result_row_item(row: dict[str, Any], state: str) -> BatchItem:
    """One OpenAI-shaped result row (``custom_id``, ``response{status_code, body}``, ``error``)."""
    response = row.get("response") or {}
    body = response.get("body")
    if response.get("status_code") == 200 and isinstance(body, dict) and body.get("choices"):
        return BatchItem(row["custom_id"], data=body)
    error = row.get("error") or (body or {}).get("error") or {}
    message = error.get("message") if isinstance(error, dict) else str(error)
    return BatchItem(row["custom_id"], error=f"{state}: {message or 'no answer'}")


class OpenRouterBatchClient(BatchClient):
    """OpenRouter's batch API: inline requests, results in the terminal poll or by cursor pages."""

    provider = "openrouter"
    max_pages = 10_000  # a cursor that never ends is a server bug, not a reason to loop for ever

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    async def submit(self, model: str, requests: list[tuple[str, dict[str, Any]]]) -> str:
        payload = {  # endpoint and model before requests: the server reads the body as a stream
            "endpoint": "/v1/chat/completions",
            "model": model,
            "completion_window": "24h",
            "requests": [{"custom_id": cid, "body": body} for cid, body in requests],
        }
        created = await self._request("POST", f"{self.base_url}/batches", json=payload)
        return str(created.json()["id"])

    async def poll(self, batch_id: str) -> BatchStatus:
        data = (await self._request("GET", f"{self.base_url}/batches/{batch_id}")).json()
        counts = data.get("request_counts") or {}
        state = str(data.get("status"))
        total = int(counts.get("total") or 0)
        inline = data.get("results") if isinstance(data.get("results"), list) else None
        return BatchStatus(
            state=state,
            done=state in OPENAI_TERMINAL,
            finished=int(counts.get("completed") or 0) + int(counts.get("failed") or 0),
            total=total,
            info={"batch_id": batch_id, "inline": inline if inline and len(inline) >= total else None},
        )

    async def results(self, status: BatchStatus) -> list[BatchItem]:
        rows = status.info.get("inline")
        if rows is None:  # not all inline: read the cursor pages
            rows, cursor = [], None
            for _ in range(self.max_pages):
                params = {"cursor": cursor} if cursor else None
                url = f"{self.base_url}/batches/{status.info['batch_id']}/results"
                page = (await self._request("GET", url, params=params)).json()
                rows.extend(page.get("data") or page.get("results") or [])
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        return [_result_row_item(row, status.state) for row in rows if isinstance(row, dict) and "custom_id" in row]


class AnthropicBatchClient(BatchClient):
    provider = "anthropic"

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    async def submit(self, model: str, requests: list[tuple[str, dict[str, Any]]]) -> str:
        payload = {"requests": [{"custom_id": cid, "params": _anthropic_params(body)} for cid, body in requests]}
        created = await self._request("POST", f"{self.base_url}/messages/batches", json=payload)
        return str(created.json()["id"])

    async def poll(self, batch_id: str) -> BatchStatus:
        data = (await self._request("GET", f"{self.base_url}/messages/batches/{batch_id}")).json()
        counts = data.get("request_counts") or {}
        finished = sum(int(counts.get(k) or 0) for k in ("succeeded", "errored", "canceled", "expired"))
        state = str(data.get("processing_status"))
        return BatchStatus(
            state=state,
            done=state == "ended",
            finished=finished,
            total=finished + int(counts.get("processing") or 0),
            info={"results_url": data.get("results_url")},
        )

    async def results(self, status: BatchStatus) -> list[BatchItem]:
        url = status.info.get("results_url")
        if not url:
            return []
        items = []
        for line in (await self._request("GET", str(url))).text.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            result = row.get("result") or {}
            kind = result.get("type")
            if kind == "succeeded" and isinstance(result.get("message"), dict):
                items.append(BatchItem(row["custom_id"], data=_anthropic_to_chat(result["message"])))
            else:
                error = result.get("error") or {}
                inner = error.get("error") if isinstance(error.get("error"), dict) else error
                message = inner.get("message") if isinstance(inner, dict) else None
                items.append(BatchItem(row["custom_id"], error=f"{kind}: {message or 'no answer'}"))
        return items


def _anthropic_params(body: dict[str, Any]) -> dict[str, Any]:
    """A chat-completions body as Messages API params: system messages move to ``system``."""
    system = [str(m.get("content") or "") for m in body["messages"] if m.get("role") == "system"]
    params: dict[str, Any] = {
        "model": body["model"],
        "max_tokens": body["max_tokens"],
        "messages": [m for m in body["messages"] if m.get("role") != "system"],
        "temperature": min(1.0, float(body.get("temperature", 1.0))),  # the Messages API caps it at 1
    }
    if system:
        params["system"] = "\n\n".join(system)
    return params


def _anthropic_to_chat(message: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic message as a one-choice chat completion (text blocks joined, usage renamed)."""
    text = "".join(b.get("text", "") for b in message.get("content") or [] if b.get("type") == "text")
    usage = message.get("usage") or {}
    stop = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
    return {
        "id": message.get("id"),
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": stop.get(str(message.get("stop_reason")), message.get("stop_reason")),
            }
        ],
        "usage": {
            "prompt_tokens": int(usage.get("input_tokens") or 0),
            "completion_tokens": int(usage.get("output_tokens") or 0),
        },
    }


def make_batch_client(scheme: str, base_url: str, api_key: str | None, timeout: float = 120.0) -> BatchClient:
    """The batch client of ``scheme``; a ``ConfigError`` naming the supported providers otherwise."""
    if scheme == "openai":
        return OpenAIBatchClient(base_url, api_key, timeout)
    if scheme == "anthropic":
        return AnthropicBatchClient(base_url, api_key, timeout)
    if scheme == "openrouter":
        return OpenRouterBatchClient(base_url, api_key, timeout)
    raise ConfigError(
        f"invalid value for 'batch': True with teacher scheme {scheme!r}: batch sampling is implemented for "
        f"{', '.join(s + ':' for s in BATCH_SCHEMES)} teachers only. Fix: set batch: false, or use an "
        "openai:, anthropic: or openrouter: teacher (with its authorisation where the policy asks for one).",
        field="batch",
        value=True,
        fix="set batch: false",
    )


__all__ = ["BATCH_SCHEMES", "BatchClient", "BatchItem", "BatchStatus", "make_batch_client"]
