"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks (no mocked clients).

Start it with the ``openai_server`` fixture (``tests/conftest.py``) or by hand::

    server = OpenAIServer().start()        # random free port, background thread with its own loop
    server.url                              # "http://127.0.0.1:PORT/v1"  (OpenAI base URL)
    server.spec("test-model")               # "openai-compatible:http://127.0.0.1:PORT/v1#test-model"
    ...
    server.stop()

Endpoints: ``POST /v1/chat/completions`` and ``GET /v1/models``; for token scoring
``POST /v1/completions`` (token-id prompts, prompt log-probs from a deterministic table) and
vLLM's ``POST /tokenize`` (see ``tokenizer`` and ``prompt_logprobs`` below); for control from another
process (``python tests/openai_server.py`` serves in the foreground and prints its URL):
``POST /_set`` (JSON knobs, see ``SETTABLE``), ``POST /_reset``, ``GET /_stats``.

Knobs (plain attributes; change them at any time, they apply to the next request):

* ``latency`` (s): every chat request sleeps this long before answering.
* ``script``: list of directives consumed one per chat request, in arrival order;
  ``prompt_scripts[prompt]``: the same for requests whose last user message is ``prompt``
  (consumed first). Directives: ``"ok"``, ``"429"`` (with ``Retry-After: retry_after``), ``"500"``,
  ``"503"``, ``"400"``, ``"401"``, ``"timeout"`` (sleeps ``timeout_sleep`` s, past a client's
  timeout, then answers), ``"malformed"`` (200 with a body that is not JSON), ``"drop"``
  (closes the connection without an answer).
* ``error_rates``: ``{"429": 0.1, "500": 0.05, ...}``: each request draws a directive with these
  probabilities from a ``random.Random(rng_seed)`` when no script applies.
* ``retry_after``: the ``Retry-After`` header of 429s (a string, or None for none).
* ``usage``: include ``usage`` in answers (default True); ``usage_cost``: when set, also
  ``usage.cost`` (USD per request), as OpenRouter does.
* ``support_n``: honour ``n`` (default True); when False, answer one choice whatever ``n`` is.
  ``reject_n``: answer HTTP 400 to any request with ``n > 1`` (as Anthropic's endpoint does).
* ``require_distillable``: reject requests without ``provider.enforce_distillable_text: true`` with
  an OpenRouter-like 404 error; ``refuse_distillable``: reject them even with the flag (no
  distillable endpoint for the model).
* ``api_key``: when set, requests must carry ``Authorization: Bearer <api_key>`` or get a 401;
  ``echo_auth``: put the Authorization header the server saw into error messages, as careless
  servers do (for key-leak tests).
* ``responder(body, index) -> str``: produce the text of choice ``index`` yourself (judges,
  serving); the default is :meth:`reply`.
* ``models``: the list returned by ``/v1/models`` (OpenRouter-style ``is_trainable_text`` flags).
* ``tokenizer(text) -> ids``: what ``/tokenize`` encodes with (None: it answers 404);
  ``prompt_logprobs``: ``"vllm"``, ``"echo"`` or None, how ``/v1/completions`` returns the prompt's
  log-probs (:meth:`table_logprob` over ``vocab_size`` ids); ``usage_cost`` applies there too.

Records: ``requests_total`` (chat requests received), ``requests_by_prompt`` (Counter by last
user message), ``auth_headers`` (Authorization header of each request, None when absent),
``bodies`` (JSON bodies), ``arrivals`` (``time.monotonic()`` of each arrival), ``directives``
(what each request got), ``in_flight`` and ``max_in_flight`` (peak concurrent chat requests),
``connections_opened`` (distinct client sockets that sent chat requests: keep-alive reuse),
``scoring_bodies`` (JSON bodies sent to ``/v1/completions``), ``tokenize_requests``.
``reset()`` restores every knob and record.

Answers are deterministic: choice ``i`` of a request with ``seed`` s answers
``OpenAIServer.reply(prompt, i, s)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

DEFAULT_MODELS: list[dict[str, Any]] = [
    {"id": "test-model", "is_trainable_text": True},
    {"id": "meta-llama/llama-3.3-70b-instruct", "is_trainable_text": True},
    {"id": "qwen/qwen3-235b-a22b", "is_trainable_text": False},
    {"id": "openai/gpt-4o-mini", "is_trainable_text": False},
]


# Knobs a client in another process may set through ``POST /_set`` (JSON values only).
SETTABLE = (
    "latency",
    "script",
    "prompt_scripts",
    "error_rates",
    "retry_after",
    "timeout_sleep",
    "usage",
    "usage_cost",
    "support_n",
    "reject_n",
    "require_distillable",
    "refuse_distillable",
    "api_key",
    "echo_auth",
    "models",
)


def _last_user(messages: Any) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else json.dumps(content)
    return ""


class OpenAIServer:
    """See the module docstring: an aiohttp OpenAI-compatible server with failure knobs."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.reset()

    # ------------------------------------------------------------------ knobs and records
    def reset(self) -> None:
        """Default knobs, empty records."""
        self.latency = 0.0
        self.script: list[str] = []
        self.prompt_scripts: dict[str, list[str]] = {}
        self.error_rates: dict[str, float] = {}
        self.rng = random.Random(0)
        self.retry_after: str | None = "1"
        self.timeout_sleep = 3.0
        self.usage = True
        self.usage_cost: float | None = None
        self.support_n = True
        self.reject_n = False
        self.require_distillable = False
        self.refuse_distillable = False
        self.api_key: str | None = None
        self.echo_auth = False
        self.responder: Callable[[dict[str, Any], int], str] | None = None
        self.models: list[dict[str, Any]] = [dict(m) for m in DEFAULT_MODELS]
        self.tokenizer: Callable[[str], list[int]] | None = None
        self.prompt_logprobs: str | None = None
        self.vocab_size = 49152
        self.scoring_bodies: list[dict[str, Any]] = []
        self.tokenize_requests = 0
        self.requests_total = 0
        self.requests_by_prompt: Counter[str] = Counter()
        self.auth_headers: list[str | None] = []
        self.bodies: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.directives: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.peers: set[Any] = set()

    @property
    def connections_opened(self) -> int:
        return len(self.peers)

    @property
    def url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        if self.port is None:
            raise RuntimeError("the server is not started; call start()")
        return f"http://{self.host}:{self.port}/v1"

    def spec(self, model: str = "test-model") -> str:
        """A teacher spec pointing at this server."""
        return f"openai-compatible:{self.url}#{model}"

    @staticmethod
    def reply(prompt: str, index: int, seed: Any) -> str:
        """The default answer for choice ``index`` of a request with ``seed``."""
        digest = hashlib.sha256(f"{prompt}|{seed}|{index}".encode()).hexdigest()[:8]
        return f"answer {digest} to: {prompt}"

    @staticmethod
    def table_logprob(previous: int, token: int, vocab_size: int) -> float:
        """The scoring table: a normalised bigram distribution, ``p(t | prev) ∝ exp(−5 k / V)`` with
        ``k = (t − 7·prev) mod V``; its normaliser is a geometric series, so no loop over the vocabulary."""
        k = (token - 7 * previous) % vocab_size
        log_z = math.log((1 - math.exp(-5.0)) / (1 - math.exp(-5.0 / vocab_size)))
        return -5.0 * k / vocab_size - log_z

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> OpenAIServer:
        """Listen on a free port in a daemon thread; returns self once it accepts connections."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-test-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        await self._start_on(0)

    async def _start_on(self, port: int) -> None:
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/_stats", self._stats)
        app.router.add_post("/_set", self._set)
        app.router.add_post("/_reset", self._reset)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close every connection and the loop; pending slow answers are cancelled."""
        if self._loop is None:
            return
        if self._runner is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            except Exception:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ handlers
    def _directive(self, prompt: str) -> str:
        queue = self.prompt_scripts.get(prompt)
        if queue:
            return queue.pop(0)
        if self.script:
            return self.script.pop(0)
        if self.error_rates:
            draw = self.rng.random()
            for name, rate in self.error_rates.items():
                if draw < rate:
                    return name
                draw -= rate
        return "ok"

    @staticmethod
    def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        body = {"error": {"message": message, "type": "test_error", "code": status}}
        return web.json_response(body, status=status, headers=headers)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests_total": self.requests_total,
                "max_in_flight": self.max_in_flight,
                "in_flight": self.in_flight,
                "requests_by_prompt": dict(self.requests_by_prompt),
            }
        )

    async def _set(self, request: web.Request) -> web.Response:
        knobs = await request.json()
        for name, value in knobs.items():
            if name not in SETTABLE:
                return self._error(400, f"unknown knob {name!r}; settable: {', '.join(SETTABLE)}")
            setattr(self, name, value)
        return web.json_response({"ok": True})

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": self.models})

    async def _tokenize(self, request: web.Request) -> web.Response:
        """vLLM's ``/tokenize``: only when ``tokenizer`` is set (a server without it answers 404)."""
        self.tokenize_requests += 1
        if self.tokenizer is None:
            return self._error(404, "Not Found")
        body = await request.json()
        tokens = [int(t) for t in self.tokenizer(str(body.get("prompt", "")))]
        return web.json_response({"tokens": tokens, "count": len(tokens), "max_model_len": 2048})

    async def _completions(self, request: web.Request) -> web.Response:
        """``/v1/completions`` over token-id prompts, answering the prompt's log-probs from
        :meth:`table_logprob`: vLLM's ``prompt_logprobs`` (``prompt_logprobs = "vllm"``), the legacy
        ``echo`` + ``logprobs`` form (``"echo"``), or neither (``None``, a server that cannot score)."""
        body = await request.json()
        self.scoring_bodies.append(body)
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Incorrect API key provided")
        prompts = body.get("prompt")
        if isinstance(prompts, list) and prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        if not isinstance(prompts, list) or not all(isinstance(p, list) and p for p in prompts):
            return self._error(400, "prompt must be token ids or a list of token-id lists")
        choices, prompt_tokens = [], 0
        for index, ids in enumerate(prompts):
            if any(not 0 <= t < self.vocab_size for t in ids):
                return self._error(400, f"token id out of range for a vocabulary of {self.vocab_size}")
            prompt_tokens += len(ids)
            values = [None] + [self.table_logprob(a, b, self.vocab_size) for a, b in itertools.pairwise(ids)]
            generated = (7 * ids[-1]) % self.vocab_size
            choice: dict[str, Any] = {"index": index, "text": f"<{generated}>", "finish_reason": "length"}
            if self.prompt_logprobs == "vllm":
                choice["prompt_logprobs"] = [
                    None if v is None else {str(t): {"logprob": v, "rank": 1, "decoded_token": f"<{t}>"}}
                    for t, v in zip(ids, values, strict=True)
                ]
                choice["logprobs"] = None
            elif self.prompt_logprobs == "echo":
                choice["logprobs"] = {
                    "tokens": [f"<{t}>" for t in [*ids, generated]],
                    "token_logprobs": [*values, self.table_logprob(ids[-1], generated, self.vocab_size)],
                }
            choices.append(choice)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(choices),
            "total_tokens": prompt_tokens + len(choices),
        }
        if self.usage_cost is not None:
            usage["cost"] = self.usage_cost
        return web.json_response({"id": "cmpl-test", "object": "text_completion", "choices": choices, "usage": usage})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests_total += 1
        self.arrivals.append(time.monotonic())
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername"))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        self.auth_headers.append(auth)
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "request body is not JSON")
        self.bodies.append(body)
        prompt = _last_user(body.get("messages"))
        self.requests_by_prompt[prompt] += 1
        directive = self._directive(prompt)
        self.directives.append(directive)
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            seen = f" (got {auth!r})" if self.echo_auth else ""
            return self._error(401, f"Incorrect API key provided{seen}.")
        provider = body.get("provider") if isinstance(body.get("provider"), dict) else {}
        if self.refuse_distillable or (
            self.require_distillable and provider.get("enforce_distillable_text") is not True
        ):
            return self._error(
                404,
                "No endpoints found that allow text distillation for this model "
                "(provider.enforce_distillable_text). Choose a distillable model.",
            )
        if self.reject_n and int(body.get("n") or 1) > 1:
            return self._error(400, "Invalid value for 'n': this model supports only n=1.")
        if directive == "429":
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else None
            return self._error(429, "Rate limit exceeded: slow down.", headers)
        if directive in ("500", "503", "400", "401"):
            seen = f" (Authorization was {auth!r})" if self.echo_auth else ""
            return self._error(int(directive), f"Scripted HTTP {directive} error{seen}.")
        if directive == "timeout":
            await asyncio.sleep(self.timeout_sleep)
        if directive == "malformed":
            return web.Response(status=200, text='{"choices": [ this is not json', content_type="application/json")
        if directive == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        n = int(body.get("n") or 1) if self.support_n else 1
        seed = body.get("seed")
        texts = [
            self.responder(body, i) if self.responder is not None else self.reply(prompt, i, seed) for i in range(n)
        ]
        max_tokens = int(body.get("max_tokens") or 256)
        completion_tokens = [min(max_tokens, len(t.split())) for t in texts]
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages") or [] if isinstance(m, dict))
        response: dict[str, Any] = {
            "id": f"chatcmpl-test-{self.requests_total}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                for i, text in enumerate(texts)
            ],
        }
        if self.usage:
            usage: dict[str, Any] = {
                "prompt_tokens": prompt_chars // 4 + 1,
                "completion_tokens": sum(completion_tokens),
                "total_tokens": prompt_chars // 4 + 1 + sum(completion_tokens),
            }
            if self.usage_cost is not None:
                usage["cost"] = self.usage_cost
            response["usage"] = usage
        return web.json_response(response)


def main() -> None:
    """``python tests/openai_server.py [--port P]``: serve in the foreground, printing the base URL.

    For benchmarks that must not share a process (and its GIL) with the client under test; knobs
    are set with ``POST /_set`` (e.g. ``{"latency": 0.2}``), records read with ``GET /_stats``.
    """
    import argparse

    parser = argparse.ArgumentParser(description="OpenAI-compatible test server")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = OpenAIServer()

    async def serve() -> None:
        await server._start_on(args.port)
        print(server.url, flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
