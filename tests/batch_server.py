"""A real HTTP server on 127.0.0.1 speaking the OpenAI, Anthropic and OpenRouter batch APIs.

OpenAI shape: ``POST /v1/files`` (multipart, ``purpose=batch``), ``POST /v1/batches``,
``GET /v1/batches/{id}``, ``GET /v1/files/{id}/content``. Anthropic shape:
``POST /v1/messages/batches``, ``GET /v1/messages/batches/{id}``, ``GET .../{id}/results``.
OpenRouter shape: ``POST /v1/batches`` with inline ``requests`` (400 unless ``endpoint`` and
``model`` come first in the body), ``GET /v1/batches/{id}`` (results inline when terminal, up to
``inline_results_limit``), ``GET /v1/batches/{id}/results?cursor=`` (``page_size`` rows a page),
and ``GET /v1/models`` (``distillable``).
Online ``POST /v1/chat/completions`` answers too, so failed batch items can be retried online.

Knobs: ``polls_until_done`` (GETs of a batch before it ends), ``fail_ids`` (custom_ids answered
with an error), ``expire`` (the batch ends as expired: only the first ``expire_after`` requests
are answered). Records: ``submissions``, ``uploads``, ``polls``, ``chat_requests``, ``headers``.
Answers are deterministic: ``reply(prompt, seed)``.
"""

from __future__ import annotations

import email.parser
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def reply(prompt: str, seed: Any) -> str:
    return f"answer to {prompt} (seed {seed})"


class BatchServer:
    def __init__(self) -> None:
        self.polls_until_done = 1
        self.fail_ids: set[str] = set()
        self.expire = False
        self.expire_after = 0
        self.reject_create = 0  # answer this many batch creations with HTTP 500
        self.submissions = 0
        self.uploads = 0
        self.polls = 0
        self.chat_requests = 0
        self.headers: list[dict[str, str]] = []
        self.files: dict[str, str] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.inline_results_limit = 10**6  # OpenRouter: a terminal poll carries results up to this many
        self.page_size = 2  # OpenRouter: results per cursor page
        self.distillable: dict[str, bool] = {}  # OpenRouter /models: is_trainable_text per model id
        self.bodies: list[dict[str, Any]] = []  # every request body an OpenRouter batch carried
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> BatchServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ---------------------------------------------------------------- answers
    @staticmethod
    def chat(body: dict[str, Any]) -> dict[str, Any]:
        prompt = next((m["content"] for m in reversed(body["messages"]) if m.get("role") == "user"), "")
        text = reply(prompt, body.get("seed"))
        return {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
        }

    def _outcomes(self, batch: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
        """(custom_id, chat body or None for failed/expired) per request, in order."""
        out = []
        for position, (cid, body) in enumerate(batch["requests"]):
            if (self.expire and position >= self.expire_after) or cid in self.fail_ids:
                out.append((cid, None))
            else:
                out.append((cid, body))
        return out

    def _poll(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            self.polls += 1
            batch = self.batches[batch_id]
            batch["polls"] += 1
            done = batch["polls"] >= self.polls_until_done
        outcomes = self._outcomes(batch)
        ok = sum(1 for _, body in outcomes if body is not None)
        if batch["kind"] == "openai":
            data: dict[str, Any] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": "/v1/chat/completions",
                "status": ("expired" if self.expire else "completed") if done else "in_progress",
                "request_counts": {
                    "total": len(outcomes),
                    "completed": ok if done else 0,
                    "failed": len(outcomes) - ok if done else 0,
                },
                "output_file_id": None,
                "error_file_id": None,
            }
            if done:
                lines, errors = [], []
                for cid, body in outcomes:
                    if body is not None:
                        lines.append({"custom_id": cid, "response": {"status_code": 200, "body": self.chat(body)}})
                    elif self.expire:
                        message = "This request could not be executed before the completion window expired."
                        errors.append(
                            {"custom_id": cid, "response": None, "error": {"code": "batch_expired", "message": message}}
                        )
                    else:
                        err = {"error": {"message": "boom", "type": "server_error"}}
                        errors.append({"custom_id": cid, "response": {"status_code": 500, "body": err}, "error": None})
                for suffix, rows in (("out", lines), ("err", errors)):
                    if rows:
                        fid = f"file-{batch_id}-{suffix}"
                        self.files[fid] = "".join(json.dumps(r) + "\n" for r in rows)
                        data["output_file_id" if suffix == "out" else "error_file_id"] = fid
            return data
        if batch["kind"] == "openrouter":
            rows = [self._openrouter_row(cid, body) for cid, body in outcomes]
            data = {
                "id": batch_id,
                "object": "batch",
                "endpoint": "/v1/chat/completions",
                "model": batch["model"],
                "status": ("expired" if self.expire else "completed") if done else "in_progress",
                "request_counts": {
                    "total": len(outcomes),
                    "completed": ok if done else 0,
                    "failed": len(outcomes) - ok if done else 0,
                },
                "results": rows if done and len(rows) <= self.inline_results_limit else [],
            }
            return data
        counts = {"processing": 0 if done else len(outcomes), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if done:
            counts["succeeded"] = ok
            counts["expired" if self.expire else "errored"] = len(outcomes) - ok
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "ended" if done else "in_progress",
            "request_counts": counts,
            "results_url": f"{self.url}/messages/batches/{batch_id}/results" if done else None,
        }

    def _openrouter_row(self, cid: str, body: dict[str, Any] | None) -> dict[str, Any]:
        if body is not None:
            return {"custom_id": cid, "id": f"r-{cid}", "response": {"status_code": 200, "body": self.chat(body)}}
        message = "expired before it ran" if self.expire else "boom"
        return {"custom_id": cid, "id": f"r-{cid}", "response": None, "error": {"message": message}}

    def _openrouter_page(self, batch_id: str, cursor: str | None) -> dict[str, Any]:
        rows = [self._openrouter_row(cid, body) for cid, body in self._outcomes(self.batches[batch_id])]
        start = int(cursor or 0)
        end = start + self.page_size
        return {"data": rows[start:end], "next_cursor": str(end) if end < len(rows) else None}

    def _anthropic_results(self, batch_id: str) -> str:
        rows = []
        for cid, params in self._outcomes(self.batches[batch_id]):
            if params is None:
                if self.expire:
                    result: dict[str, Any] = {"type": "expired"}
                else:
                    result = {
                        "type": "errored",
                        "error": {"type": "error", "error": {"type": "api_error", "message": "boom"}},
                    }
            else:
                prompt = next(m["content"] for m in reversed(params["messages"]) if m["role"] == "user")
                result = {
                    "type": "succeeded",
                    "message": {
                        "id": "msg_x",
                        "type": "message",
                        "role": "assistant",
                        "model": params["model"],
                        "content": [{"type": "text", "text": reply(prompt, params.get("seed", "none"))}],
                        "stop_reason": "end_turn",
                        "usage": {"input_tokens": 10, "output_tokens": 20},
                    },
                }
            rows.append(json.dumps({"custom_id": cid, "result": result}) + "\n")
        return "".join(rows)

    # ---------------------------------------------------------------- HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any, text: bool = False) -> None:
                raw = payload.encode() if text else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/jsonl" if text else "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self) -> None:
                server.headers.append(dict(self.headers))
                raw = self._body()
                if self.path == "/v1/files":
                    message = email.parser.BytesParser().parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
                    )
                    parts = {p.get_param("name", header="content-disposition"): p for p in message.get_payload()}
                    if parts["purpose"].get_payload(decode=True) != b"batch":
                        return self._send(400, {"error": {"message": "purpose must be batch"}})
                    with server.lock:
                        server.uploads += 1
                        fid = f"file-in-{server.uploads}"
                    server.files[fid] = parts["file"].get_payload(decode=True).decode()
                    return self._send(200, {"id": fid, "object": "file", "purpose": "batch"})
                body = json.loads(raw or b"{}")
                if self.path == "/v1/batches" and "requests" in body:  # OpenRouter: inline requests
                    order = [raw.find(b'"endpoint"'), raw.find(b'"model"'), raw.find(b'"requests"')]
                    if min(order) < 0 or order[2] < max(order[:2]):
                        return self._send(400, {"error": {"message": "endpoint and model must precede requests"}})
                    reqs = [(r["custom_id"], {"model": body["model"], **r["body"]}) for r in body["requests"]]
                    if any(b["model"] != body["model"] for _, b in reqs):
                        return self._send(400, {"error": {"message": "a request's model differs from the batch's"}})
                    with server.lock:
                        server.bodies.extend(r["body"] for r in body["requests"])
                    created = server._create("openrouter", reqs, model=body["model"])
                    return self._send(202, created) if created else self._send(500, {"error": {"message": "down"}})
                if self.path == "/v1/batches":
                    if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
                        return self._send(400, {"error": {"message": "bad endpoint or completion_window"}})
                    lines = [json.loads(x) for x in server.files[body["input_file_id"]].splitlines() if x]
                    assert all(x["method"] == "POST" and x["url"] == "/v1/chat/completions" for x in lines)
                    created = server._create("openai", [(x["custom_id"], x["body"]) for x in lines])
                    return self._send(200, created) if created else self._send(500, {"error": {"message": "down"}})
                if self.path == "/v1/messages/batches":
                    if self.headers.get("anthropic-version") is None:
                        return self._send(400, {"error": {"message": "anthropic-version header required"}})
                    reqs = [(r["custom_id"], r["params"]) for r in body["requests"]]
                    created = server._create("anthropic", reqs)
                    return self._send(200, created) if created else self._send(500, {"error": {"message": "down"}})
                if self.path == "/v1/chat/completions":
                    with server.lock:
                        server.chat_requests += 1
                    return self._send(200, server.chat(body))
                self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_GET(self) -> None:
                path = self.path
                if path == "/v1/models":
                    models = [{"id": m, "is_trainable_text": ok} for m, ok in server.distillable.items()]
                    return self._send(200, {"data": models})
                if path.startswith("/v1/batches/") and "/results" in path:
                    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
                    cursor = (query.get("cursor") or [None])[0]
                    return self._send(200, server._openrouter_page(path.split("/")[3], cursor))
                if path.startswith("/v1/batches/"):
                    return self._send(200, server._poll(path.rsplit("/", 1)[1]))
                if path.startswith("/v1/files/") and path.endswith("/content"):
                    return self._send(200, server.files[path.split("/")[3]], text=True)
                if path.startswith("/v1/messages/batches/") and path.endswith("/results"):
                    return self._send(200, server._anthropic_results(path.split("/")[4]), text=True)
                if path.startswith("/v1/messages/batches/"):
                    return self._send(200, server._poll(path.rsplit("/", 1)[1]))
                self._send(404, {"error": {"message": f"no route {path}"}})

        return Handler

    def _create(self, kind: str, requests: list[tuple[str, dict[str, Any]]], model: str = "") -> dict[str, Any] | None:
        with self.lock:
            if self.reject_create > 0:
                self.reject_create -= 1
                return None
            self.submissions += 1
            batch_id = f"batch_{self.submissions}"
            self.batches[batch_id] = {"kind": kind, "requests": requests, "polls": 0, "model": model}
        if kind in ("openai", "openrouter"):
            return {"id": batch_id, "object": "batch", "status": "validating", "request_counts": {"total": 0}}
        return {"id": batch_id, "type": "message_batch", "processing_status": "in_progress"}
