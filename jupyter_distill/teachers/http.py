"""Teachers behind OpenAI-compatible HTTP APIs: OpenRouter, self-hosted servers, closed APIs.

Teacher calls are the user's money and most of a run's wall time, so this module is built for
throughput and thrift:

* one pool of keep-alive connections per event loop (an ``httpx.AsyncClient`` over an aiohttp
  transport, see :class:`_Pool`) and an ``asyncio.Semaphore`` bounding the requests in
  flight (``concurrency``, default 16), so a run takes the time of its slowest batches, not the
  sum of its calls;
* ``n`` candidates per request where the server honours ``n``; a server that ignores it (or
  rejects it) is detected once and the rest are asked for one by one;
* retries with exponential backoff and jitter on 429, 5xx, timeouts, dropped connections and
  malformed bodies, honouring ``Retry-After``; then a ``TeacherError`` for that prompt only;
* an endpoint that has never answered and refuses connections (a wrong port, a server that is
  not running) is not retried prompt by prompt: after ``FIRST_CONTACT_ATTEMPTS`` failed connects
  (all requests together) a :class:`TeacherUnreachable` names it and ends the phase, and every later call fails at once
  without opening a socket (so a 10,000-prompt run does not spend an hour in backoff);
* token usage and cost from each response (prices from ``TEACHER_MODEL_MAP``; estimated from
  characters, and flagged so, when a server sends no ``usage``), and a ``max_cost`` budget that
  refuses a request *before* it could take the spend past the limit;
* keys only from the environment or options, sent only in the ``Authorization`` header and
  scrubbed from every server text that reaches an exception or provenance.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import os
import random
import ssl
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_aiohttp import AiohttpTransport

from jupyter_distill.core.errors import BudgetExceeded, ConfigError, PolicyError, TeacherError
from jupyter_distill.core.models import PRICES_AS_OF, find_teacher_model
from jupyter_distill.core.policy import PolicyDecision, PolicyMode, decide
from jupyter_distill.teachers.base import (
    FatalTeacherError,
    ParsedSpec,
    PartialSampleError,
    Sample,
    check_sample_args,
    estimate_tokens,
    messages_chars,
    redact,
    redact_url,
    utc_now,
)

# Failed connection attempts (over all requests) before an endpoint that has never answered is
# declared unreachable: one quick retry absorbs a blip; more would only delay the inevitable error.
# Requests already in flight finish their attempt, so at most ``concurrency + 1`` are made.
FIRST_CONTACT_ATTEMPTS = 2

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})


@dataclass(frozen=True)
class ProviderInfo:
    """How one spec scheme maps to a policy provider, env vars and default endpoint.

    Its models' price keys are :data:`jupyter_distill.core.models.PRICE_KEY_PREFIX`, next to the prices.
    """

    policy_provider: str
    key_env: str
    base_env: str | None
    default_base: str | None
    supports_n: bool | None  # None: try n and detect; False: never send n > 1
    key_required: bool = True


PROVIDERS: dict[str, ProviderInfo] = {
    "openrouter": ProviderInfo(
        "openrouter", "OPENROUTER_API_KEY", "OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1", None
    ),
    "openai": ProviderInfo("openai", "OPENAI_API_KEY", "OPENAI_BASE_URL", "https://api.openai.com/v1", True),
    # Anthropic's OpenAI-compatible endpoint accepts only n=1.
    "anthropic": ProviderInfo(
        "anthropic", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "https://api.anthropic.com/v1/", False
    ),
    "gemini": ProviderInfo(
        "google",
        "GEMINI_API_KEY",
        "GEMINI_BASE_URL",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        None,
    ),
    "openai-compatible": ProviderInfo(
        "openai-compatible", "OPENAI_COMPATIBLE_API_KEY", None, None, None, key_required=False
    ),
}

HTTP_OPTIONS = (
    "api_key",
    "base_url",
    "timeout",
    "max_retries",
    "backoff_base",
    "backoff_max",
    "retry_after_max",
    "supports_n",
    "input_usd_per_m",
    "output_usd_per_m",
    "licence",
    "headers",
    "extra_body",
    "check_models",
    "transport",
    "batch",
)


class TeacherUnreachable(FatalTeacherError):
    """The endpoint refused every connection before it ever answered: no prompt can succeed."""


class _Retryable(Exception):
    """One failed attempt that is worth repeating; ``retry_after`` is the server's wish in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _NUnsupported(Exception):
    """The server refused ``n > 1``: switch to one request per candidate."""


class _Pool:
    """One event loop's keep-alive connections and the semaphore bounding its requests in flight.

    The ``httpx.AsyncClient`` sends through an aiohttp transport (``httpx-aiohttp``, the route
    the OpenAI SDK offers too): httpcore's own pool re-scans every connection on each request
    start and end. With 64 requests in flight against a 200 ms server (2 cores), one plain
    64-connection client reached 0.33-0.47 of the ideal throughput, eight 8-connection clients
    0.75, and this transport 0.84 with the whole sampling loop around it
    (``benchmarks/sampling.py``). Errors still arrive as ``httpx`` exceptions, so retries and
    messages do not change; proxies from the environment still go through httpx's own transport.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient, concurrency: int):
        self.loop = loop
        self.client = client
        self.semaphore = asyncio.Semaphore(concurrency)
        self.models_check: asyncio.Future[bool | None] | None = None
        # aiohttp logs "Unclosed client session" for a session whose loop ended first, which a
        # bare ``asyncio.run(teacher.sample(...))`` would do. A suspended async generator is
        # closed by the loop's ``shutdown_asyncgens()`` (``asyncio.run`` calls it) while the
        # loop still runs, so its ``finally`` can close the connections properly.
        self._closer = self._close_when_loop_ends()
        with contextlib.suppress(StopIteration):
            self._closer.__anext__().send(None)  # run to the yield: registers with the running loop

    async def _close_when_loop_ends(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.client.aclose()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[httpx.AsyncClient]:
        async with self.semaphore:
            yield self.client

    async def aclose(self) -> None:
        await self._closer.aclose()  # runs the finally above once; a second aclose() is a no-op


class HTTPTeacher:
    """A teacher reached through an OpenAI-compatible ``/chat/completions`` endpoint.

    Build it with :func:`jupyter_distill.teachers.load_teacher`; the constructor trusts its
    arguments. The object can be shared by several event loops (a notebook's and a worker
    thread's): each loop gets its own connection pool and semaphore; the budget is shared.
    """

    def __init__(
        self,
        *,
        scheme: str,
        model: str,
        base_url: str,
        api_key: str | None,
        key_env: str,
        decision: PolicyDecision,
        concurrency: int = 16,
        max_cost: float | None = None,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 300.0,
        supports_n: bool | None = None,
        prices: tuple[float, float] | None = None,
        price_source: str = "",
        headers: dict[str, str] | None = None,
        extra_body: dict[str, Any] | None = None,
        enforce_distillable: bool | None = None,
        check_models: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.scheme = scheme
        self.model = model
        self.decision = decision
        self.provider = decision.provider
        self.base_url = base_url.rstrip("/")
        self.endpoint = redact_url(self.base_url) + "/chat/completions"
        self.spec = (
            f"openai-compatible:{redact_url(self.base_url)}#{model}"
            if scheme == "openai-compatible"
            else (f"{scheme}:{model}")
        )
        self.concurrency = concurrency
        self.max_cost = max_cost
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.supports_n = supports_n
        self.prices = prices
        self.price_source = price_source
        self.enforce_distillable = enforce_distillable
        self.check_models = check_models
        self._key_env = key_env
        self._secrets = [secret for secret in (api_key, urlsplit(base_url).password) if secret]
        self._headers = {"User-Agent": "jupyter-distill", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._extra_body = dict(extra_body or {})
        self._transport = transport
        self._chat_url = httpx.URL(self.base_url + "/chat/completions")  # parsed once, not per request
        self._state_lock = threading.Lock()
        self._pools: dict[int, _Pool] = {}
        self._ssl: ssl.SSLContext | None = None
        self._models_checked = False
        self.requests_sent = 0  # HTTP chat requests actually sent, retries included
        self.connect_failures = 0  # attempts that never reached the server (refused, DNS, unreachable)
        self._answered = False  # the endpoint has answered at least once (any HTTP status)
        self._unreachable: str | None = None  # why the endpoint was given up on, once it was
        self.spent = 0.0  # USD
        self._reserved = 0.0
        self.batch_client: Any = None  # a teachers.batch.BatchClient when built with batch=True
        self.batch_discount = 0.5  # batch price / online price

    def __repr__(self) -> str:
        return f"HTTPTeacher(spec={self.spec!r}, concurrency={self.concurrency}, max_cost={self.max_cost!r})"

    # ------------------------------------------------------------------ plumbing
    def _pool(self) -> _Pool:
        """The connection pool of the running loop (created on first use)."""
        loop = asyncio.get_running_loop()
        with self._state_lock:
            for key, pool in list(self._pools.items()):
                if pool.loop.is_closed():  # a finished asyncio.run(): its sockets died with it
                    del self._pools[key]
            pool = self._pools.get(id(loop))
            if pool is None or pool.loop is not loop:
                pool = _Pool(loop, self._new_client(self.concurrency), self.concurrency)
                self._pools[id(loop)] = pool
        return pool

    def _new_client(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        transport = self._transport or AiohttpTransport(verify=self._ssl_context(), limits=limits)
        return httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers=self._headers,
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 30.0)),
            limits=limits,
            transport=transport,
            verify=self._ssl_context(),
        )

    def _ssl_context(self) -> ssl.SSLContext:
        """One TLS context for all clients: loading the CA bundle costs ~25 ms per context."""
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def aclose(self) -> None:
        """Close this loop's connections; the teacher stays usable and reconnects on demand."""
        loop = asyncio.get_running_loop()
        with self._state_lock:
            pool = self._pools.pop(id(loop), None)
        if pool is not None:
            await pool.aclose()

    def _scrub(self, text: str) -> str:
        return redact(text, self._secrets)

    # ------------------------------------------------------------------ budget
    def _price(self) -> tuple[float, float]:
        return self.prices or (0.0, 0.0)

    def _reserve(self, messages: list[dict[str, Any]], n: int, max_tokens: int) -> float:
        """Reserve the worst-case cost of one request, or raise ``BudgetExceeded`` before sending it.

        The worst case counts every prompt character as half a token and all ``n x max_tokens``
        completion tokens, so the spend cannot pass ``max_cost`` on a request we let through.
        """
        price_in, price_out = self._price()
        prompt_tokens = messages_chars(messages) // 2 + 8 * len(messages)
        estimate = (prompt_tokens * price_in + n * max_tokens * price_out) / 1e6
        with self._state_lock:
            if self.max_cost is not None and self.spent + self._reserved + estimate > self.max_cost + 1e-12:
                raise BudgetExceeded(
                    f"max_cost={self.max_cost} USD would be exceeded by the next request to {self.spec}: spent "
                    f"{self.spent:.6f}, in flight up to {self._reserved:.6f}, next request up to {estimate:.6f} USD. "
                    "Fix: raise max_cost, lower n_samples or max_tokens, or pick a cheaper teacher; samples already "
                    "paid for are kept and a re-run requests only the missing ones.",
                    field="max_cost",
                    value=self.max_cost,
                    fix="raise max_cost",
                )
            self._reserved += estimate
        return estimate

    def _settle(self, reserved: float, cost: float) -> None:
        with self._state_lock:
            self._reserved = max(0.0, self._reserved - reserved)
            self.spent += cost

    # ------------------------------------------------------------------ sampling
    async def sample(
        self,
        messages: list[dict[str, Any]],
        n: int = 4,
        temperature: float = 0.8,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> list[Sample]:
        """``n`` candidates for ``messages``: one request with ``n`` when possible, else ``n`` requests."""
        check_sample_args(n, temperature, max_tokens)
        if self.check_models and not self._models_checked:
            pool = self._pool()
            if pool.models_check is None:  # one check per loop; concurrent prompts wait for it
                pool.models_check = asyncio.ensure_future(self.check_distillable())
            await asyncio.shield(pool.models_check)
        results: list[Sample | None] = [None] * n
        if n > 1 and self.supports_n is not False:
            try:
                got = await self._call(messages, n, temperature, max_tokens, seed)
            except _NUnsupported:
                self.supports_n = False
                got = []
            else:
                if len(got) < n and self.supports_n is None:
                    self.supports_n = False  # the server ignored n: ask one by one from now on
                elif len(got) >= n:
                    self.supports_n = True
            for i, sample in enumerate(got[:n]):
                results[i] = sample
        missing = [i for i, s in enumerate(results) if s is None]
        if missing:
            outcomes = await asyncio.gather(
                *(
                    self._call(messages, 1, temperature, max_tokens, None if seed is None else seed + i)
                    for i in missing
                ),
                return_exceptions=True,
            )
            errors: list[BaseException] = []
            for i, outcome in zip(missing, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    errors.append(outcome)
                elif outcome:
                    results[i] = outcome[0]
            if errors:
                first = next((e for e in errors if _is_fatal(e)), errors[0])
                if not isinstance(first, Exception):
                    raise first
                if _is_fatal(first) and any(s is not None for s in results):
                    first.partial = results  # type: ignore[attr-defined]  # paid for: sampling keeps them
                if any(s is not None for s in results) and not _is_fatal(first):
                    raise PartialSampleError(
                        f"{sum(s is not None for s in results)} of {n} candidates arrived, then: {first}",
                        partial=results,
                        cause=first,
                        field="teacher",
                        value=self.spec,
                    ) from None
                raise first
        return [s for s in results if s is not None]

    async def _call(
        self, messages: list[dict[str, Any]], n: int, temperature: float, max_tokens: int, seed: int | None
    ) -> list[Sample]:
        """One logical request with retries; returns its choices as samples."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if n > 1:
            body["n"] = n
        if seed is not None:
            body["seed"] = seed
        if self.scheme == "openrouter" and self.enforce_distillable:
            body["provider"] = {"enforce_distillable_text": True}
        for key, value in self._extra_body.items():
            if key == "provider" and isinstance(value, dict) and isinstance(body.get("provider"), dict):
                body["provider"] = {**value, **body["provider"]}  # the distillable flag cannot be overridden
            else:
                body.setdefault(key, value)
        pool = self._pool()
        last_reason = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if self._unreachable is not None:
                raise self._unreachable_error(self._unreachable)
            reserved = self._reserve(messages, n, max_tokens)
            settled = False
            try:
                async with pool.slot() as client:
                    if self._unreachable is not None:  # given up on while this call waited for a slot
                        raise self._unreachable_error(self._unreachable)
                    started = time.monotonic()
                    self.requests_sent += 1
                    response = await client.post(self._chat_url, json=body)
                    content = response.content
                self._answered = True
                data = self._check_response(response, content, n)
                samples, cost = self._to_samples(data, messages, n, temperature, max_tokens, seed, attempt + 1)
                self._settle(reserved, cost)
                settled = True
                for sample in samples:
                    sample.provenance["latency_s"] = round(time.monotonic() - started, 4)
                return samples
            except httpx.TransportError as exc:  # timeouts included
                retry_after = None
                if _cannot_connect(exc):
                    last_reason = f"cannot connect: {self._scrub(str(exc))[:200] or type(exc).__name__}"
                    self.connect_failures += 1
                    if not self._answered and self.connect_failures >= FIRST_CONTACT_ATTEMPTS:
                        self._unreachable = last_reason
                        raise self._unreachable_error(last_reason) from None
                elif isinstance(exc, httpx.TimeoutException):
                    last_reason = f"timed out after {self.timeout:g} s"
                else:
                    last_reason = f"connection error ({type(exc).__name__})"
            except _Retryable as exc:
                last_reason, retry_after = exc.reason, exc.retry_after
            finally:
                if not settled:
                    self._settle(reserved, 0.0)
            if attempt >= self.max_retries:
                break
            await asyncio.sleep(self._delay(attempt, retry_after))
        raise TeacherError(
            f"teacher {self.spec} failed after {self.max_retries + 1} attempts at {self.endpoint}: {last_reason}. "
            "Fix: check that the server is up and not overloaded, lower concurrency= or raise max_retries=; a re-run "
            "keeps every sample already received and requests only the missing ones.",
            field="teacher",
            value=self.spec,
        )

    def _unreachable_error(self, reason: str) -> TeacherUnreachable:
        """A fresh error per caller (one exception object raised in many tasks tangles tracebacks)."""
        return TeacherUnreachable(
            f"teacher {self.spec} is unreachable: no connection to {self.endpoint} could be opened "
            f"({reason}; {self.connect_failures} attempt(s), and the endpoint never answered). Sampling stopped "
            "instead of retrying every prompt. Fix: start the server or correct the URL/port in the teacher spec, "
            "then re-run; samples already received are kept.",
            field="teacher",
            value=self.spec,
            fix="start the server or fix the URL",
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before the next attempt: the server's Retry-After, else backoff with jitter."""
        if retry_after is not None:
            return min(self.retry_after_max, retry_after) * random.uniform(1.0, 1.1)
        return min(self.backoff_max, self.backoff_base * (2**attempt)) * random.uniform(0.5, 1.0)

    def _check_response(self, response: httpx.Response, content: bytes, n: int) -> dict[str, Any]:
        """Turn a response into its JSON body, or raise: retryable, n-unsupported, policy, fatal or plain."""
        status = response.status_code
        text = self._scrub(content.decode("utf-8", errors="replace"))
        data: Any = None
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = None
        message = _error_message(data) or text[:300].strip()
        if status == 200 and isinstance(data, dict) and data.get("error") and not data.get("choices"):
            code = data["error"].get("code") if isinstance(data["error"], dict) else None
            status = code if isinstance(code, int) and code >= 400 else 502
        if status != 200:
            self._raise_for_status(status, message, response, n)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            snippet = text[:120].replace("\n", " ")
            raise _Retryable(f"malformed response (expected JSON with 'choices'), got {snippet!r}")
        for choice in data["choices"]:
            if not isinstance(choice, dict) or not _choice_text_ok(choice):
                raise _Retryable("malformed response: a choice has no message.content string")
        return data

    def _raise_for_status(self, status: int, message: str, response: httpx.Response, n: int) -> None:
        where = f"{self.endpoint} answered HTTP {status}: {message or '(empty body)'}"
        if "distillab" in message.lower() or (
            self.scheme == "openrouter" and self.enforce_distillable and "no endpoints found" in message.lower()
        ):
            raise PolicyError(
                f"the distillable-only routing refused teacher {self.spec}: {where}. The request carried "
                "provider.enforce_distillable_text=true (or the server requires it), and no provider may serve this "
                "model's outputs for training. Fix: choose a model marked 'distillable' on openrouter.ai/models (for "
                "example an open-weight Llama, Qwen or Mistral model), or a local teacher such as "
                "'local:smollm2-135m'; if you hold written permission, pass enforce_distillable=False together with "
                "authorization='...'.",
                field="teacher",
                value=self.spec,
                fix="choose a distillable model",
            )
        if status in RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {status}: {message[:200]}", _retry_after(response.headers.get("Retry-After")))
        if status in (400, 422) and n > 1 and _mentions_n(message):
            raise _NUnsupported(message)
        if status in (401, 403):
            raise FatalTeacherError(
                f"{where}. The API key was refused. Fix: set a valid key in the environment variable "
                f"{self._key_env} (or pass api_key=...) for teacher {self.spec}.",
                field="api_key",
                value=self._key_env,
                fix=f"set {self._key_env}",
            )
        if status == 402:
            raise FatalTeacherError(
                f"{where}. The account has no credit left. Fix: add credit or lower max_cost.",
                field="teacher",
                value=self.spec,
            )
        if status == 404:
            raise FatalTeacherError(
                f"{where}. Fix: check the model name {self.model!r} and the base URL of teacher {self.spec}.",
                field="teacher",
                value=self.spec,
            )
        raise TeacherError(
            f"{where}. Fix: check the prompt (too long for the model's context?) and the decoding parameters.",
            field="teacher",
            value=self.spec,
        )

    def _to_samples(
        self,
        data: dict[str, Any],
        messages: list[dict[str, Any]],
        n: int,
        temperature: float,
        max_tokens: int,
        seed: int | None,
        attempts: int,
    ) -> tuple[list[Sample], float]:
        """Split one response's choices, usage and cost into samples with provenance."""
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)
        texts = [_choice_text(c) for c in choices]
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        estimated = usage is None or not isinstance(usage.get("completion_tokens"), int)
        if estimated:
            prompt_tokens = estimate_tokens(" " * messages_chars(messages))
            completion_total = sum(estimate_tokens(t) for t in texts)
        else:
            assert usage is not None
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_total = int(usage["completion_tokens"])
        completions = _apportion(completion_total, [max(1, estimate_tokens(t)) for t in texts])
        price_in, price_out = self._price()
        token_costs = [(prompt_tokens * price_in / len(texts) + c * price_out) / 1e6 for c in completions]
        reported = usage.get("cost") if usage is not None else None
        if isinstance(reported, int | float) and reported >= 0:
            total_cost = float(reported)
            weights = token_costs if sum(token_costs) > 0 else [1.0] * len(texts)
            costs = [total_cost * w / sum(weights) for w in weights]
            price_source = "response usage.cost"
        else:
            costs = token_costs
            total_cost = sum(costs)
            price_source = self.price_source
        now = utc_now()
        policy = self.decision.to_dict()
        samples = []
        for i, (choice, text, completion, cost) in enumerate(zip(choices, texts, completions, costs, strict=True)):
            sample_usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            }
            if estimated:
                sample_usage["estimated"] = True
            provenance = {
                "teacher": self.spec,
                "model": self.model,
                "response_model": data.get("model") if isinstance(data.get("model"), str) else None,
                "response_id": data.get("id") if isinstance(data.get("id"), str) else None,
                "provider": self.provider,
                "scheme": self.scheme,
                "endpoint": self.endpoint,
                "time": now,
                "params": {
                    "temperature": temperature,
                    "max_tokens": max_tokens,
                    "seed": seed,
                    "n_per_request": n,
                    "choice_index": i,
                },
                "policy": dict(policy),
                "terms_version": self.decision.terms_version,
                "licence": self.decision.licence,
                "usage": sample_usage,
                "usage_estimated": estimated,
                "cost_usd": cost,
                "price_source": price_source,
                "attempts": attempts,
            }
            if self.scheme == "openrouter":
                provenance["enforce_distillable_text"] = bool(self.enforce_distillable)
            samples.append(
                Sample(
                    text=text,
                    usage=sample_usage,
                    cost=cost,
                    provenance=provenance,
                    finish_reason=choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None,
                )
            )
        return samples, total_cost

    # ------------------------------------------------------------------ models list
    async def list_models(self) -> list[dict[str, Any]]:
        """The server's ``/models`` list (OpenRouter's carries distillability); never retried."""
        async with self._pool().slot() as client:
            response = await client.get("models")
        if response.status_code != 200:
            raise TeacherError(
                f"{self.base_url and redact_url(self.base_url)}/models answered HTTP {response.status_code}",
                field="teacher",
                value=self.spec,
            )
        data = response.json()
        items = data.get("data") if isinstance(data, dict) else data
        return [item for item in items or [] if isinstance(item, dict)]

    async def check_distillable(self) -> bool | None:
        """Read this model's distillability from the models list before the first request.

        Returns True/False when the list says, None when it cannot tell (the per-request routing
        flag still protects). In strict mode, a model explicitly marked non-distillable raises
        ``PolicyError`` before any money is spent, unless an authorisation was recorded.
        """
        try:
            models = await self.list_models()
        except (httpx.HTTPError, TeacherError, ValueError):
            self._models_checked = True
            return None
        self._models_checked = True
        entry = next((m for m in models if m.get("id") == self.model), None)
        if entry is None:
            return None
        flag = entry.get("is_trainable_text", entry.get("distillable"))
        if flag is None:
            return None
        if (
            flag is False
            and self.decision.mode == "strict"
            and not self.decision.authorization
            and self.enforce_distillable is not False
        ):
            raise PolicyError(
                f"OpenRouter lists {self.model!r} as not distillable (is_trainable_text=false): its author does "
                "not allow training on its outputs. Fix: choose a model marked 'distillable' on openrouter.ai/models, "
                "or a local teacher such as 'local:smollm2-135m'.",
                field="teacher",
                value=self.spec,
            )
        return bool(flag)


# ---------------------------------------------------------------------- building


def build_http_teacher(
    parsed: ParsedSpec,
    *,
    policy: PolicyMode = "strict",
    authorization: str | None = None,
    enforce_distillable: bool = True,
    concurrency: int = 16,
    max_cost: float | None = None,
    **options: Any,
) -> HTTPTeacher:
    """Check the policy, find the key and the prices, and build the teacher; nothing is sent yet.

    The policy is decided first, so a refused teacher fails the same way with or without a key.
    """
    unknown = sorted(set(options) - set(HTTP_OPTIONS))
    if unknown:
        raise TeacherError(
            f"unknown option {unknown[0]!r} for teacher '{parsed.scheme}:{parsed.target}'. "
            f"Known options: {', '.join(HTTP_OPTIONS)}.",
            field=unknown[0],
            value=unknown[0],
            fix="remove it",
        )
    info = PROVIDERS[parsed.scheme]
    model = parsed.target
    entry = find_teacher_model(parsed.scheme, model)
    licence = str(options.get("licence") or (entry.licence if entry else ""))
    decision = decide(
        info.policy_provider,
        model,
        mode=policy,
        authorization=authorization,
        enforce_distillable=enforce_distillable,
        licence=licence,
        model_terms=entry.terms if entry else None,
    )
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(
            f"invalid value for 'concurrency': {concurrency!r}. Fix: use a positive integer (default 16).",
            field="concurrency",
            value=concurrency,
        )
    if max_cost is not None and (not isinstance(max_cost, int | float) or max_cost < 0):
        raise ConfigError(
            f"invalid value for 'max_cost': {max_cost!r}. Fix: a budget in USD >= 0, or None for no limit.",
            field="max_cost",
            value=max_cost,
        )
    base_url = options.get("base_url") or parsed.base_url
    if not base_url and info.base_env:
        base_url = os.environ.get(info.base_env) or info.default_base
    assert base_url, "every scheme has a default base URL or carries one in its spec"
    api_key = options.get("api_key") or os.environ.get(info.key_env) or None
    if info.key_required and not api_key:
        raise TeacherError(
            f"teacher '{parsed.scheme}:{model}' needs an API key and the environment variable {info.key_env} is not "
            f"set. Fix: set {info.key_env} in the kernel's environment (e.g. in a .env file or with "
            f"%env {info.key_env}=...), or pass api_key=... to load_teacher; keys are never stored.",
            field="api_key",
            value=info.key_env,
            fix=f"set {info.key_env}",
        )
    if options.get("input_usd_per_m") is not None or options.get("output_usd_per_m") is not None:
        prices: tuple[float, float] | None = (
            float(options.get("input_usd_per_m") or 0.0),
            float(options.get("output_usd_per_m") or 0.0),
        )
        price_source = "options"
    elif entry is not None:
        prices = (entry.input_usd_per_m, entry.output_usd_per_m)
        price_source = f"TEACHER_MODEL_MAP {PRICES_AS_OF}"
    else:
        prices, price_source = None, "unknown price (cost counted as 0; pass input_usd_per_m/output_usd_per_m)"
    supports_n = options.get("supports_n", info.supports_n)
    check_models = options.get("check_models", parsed.scheme == "openrouter")
    batch_client = None
    if options.get("batch"):  # refused for a provider without a batch client before anything else happens
        from jupyter_distill.teachers.batch import make_batch_client

        batch_client = make_batch_client(parsed.scheme, str(base_url), api_key, float(options.get("timeout", 120.0)))
    teacher = HTTPTeacher(
        scheme=parsed.scheme,
        model=model,
        base_url=str(base_url),
        api_key=api_key,
        key_env=info.key_env,
        decision=decision,
        concurrency=concurrency,
        max_cost=max_cost,
        timeout=float(options.get("timeout", 120.0)),
        max_retries=int(options.get("max_retries", 5)),
        backoff_base=float(options.get("backoff_base", 0.5)),
        backoff_max=float(options.get("backoff_max", 30.0)),
        retry_after_max=float(options.get("retry_after_max", 300.0)),
        supports_n=supports_n,
        prices=prices,
        price_source=price_source,
        headers=options.get("headers"),
        extra_body=options.get("extra_body"),
        enforce_distillable=enforce_distillable if parsed.scheme == "openrouter" else None,
        check_models=bool(check_models),
        transport=options.get("transport"),
    )
    teacher.batch_client = batch_client  # sampling submits missing candidates as one batch when set
    teacher.batch_discount = entry.batch_discount if entry is not None else 0.5
    return teacher


# ---------------------------------------------------------------------- helpers


def _cannot_connect(exc: httpx.TransportError) -> bool:
    """True when no connection could be opened at all (refused, unknown host, no route).

    httpx raises ``ConnectError`` for these; the aiohttp transport maps aiohttp's
    ``ClientConnectorError`` to ``ConnectTimeout`` instead, so its cause is checked too. A real
    connect timeout (a slow or overloaded server) is not one of them: it is retried as before.
    """
    if isinstance(exc, httpx.ConnectError):
        return True
    import aiohttp

    cause = exc.__cause__
    return isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(cause, asyncio.TimeoutError)


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, PolicyError | BudgetExceeded | FatalTeacherError) or not isinstance(exc, Exception)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _error_message(data: Any) -> str:
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            parts = [str(error.get("message") or "")]
            metadata = error.get("metadata")
            if isinstance(metadata, dict) and metadata.get("raw"):
                parts.append(str(metadata["raw"]))
            return " ".join(p for p in parts if p)[:500]
        if isinstance(error, str):
            return error[:500]
        if isinstance(data.get("message"), str):
            return data["message"][:500]
    return ""


def _mentions_n(message: str) -> bool:
    lowered = message.lower()
    return "'n'" in lowered or '"n"' in lowered or " n " in f" {lowered} " or "n must" in lowered or "n>1" in lowered


def _choice_text_ok(choice: dict[str, Any]) -> bool:
    message = choice.get("message")
    if isinstance(message, dict):
        return isinstance(message.get("content"), str | type(None))
    return isinstance(choice.get("text"), str)


def _choice_text(choice: dict[str, Any]) -> str:
    message = choice.get("message")
    if isinstance(message, dict):
        return message.get("content") or ""
    return str(choice.get("text") or "")


def _apportion(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` that add up exactly (largest remainder)."""
    if len(weights) == 1:
        return [total]
    scale = sum(weights)
    raw = [total * w / scale for w in weights]
    parts = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - parts[i], reverse=True)
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts
