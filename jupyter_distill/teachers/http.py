"""Teachers behind OpenAI-compatible HTTP APIs: OpenRouter, self-hosted servers, closed APIs.

Teacher calls are the user's money and most of a run's wall time, so this module is built for
throughput and thrift:

* one pool of keep-alive connections per event loop (an ``httpx.AsyncClient`` over an aiohttp
  transport, see :mod:`~jupyter_distill.teachers.http_pool`) and an ``asyncio.Semaphore`` bounding the requests in
  flight (``concurrency``, default 16), so a run takes the time of its slowest batches, not the
  sum of its calls;
* ``n`` candidates per request where the server honours ``n``; a server that ignores it (or
  rejects it) is detected once and the rest are asked for one by one;
* retries with exponential backoff and jitter on 429, 5xx, timeouts, dropped connections and
  malformed bodies, honouring ``Retry-After`` (:mod:`~jupyter_distill.teachers.http_retry`); then a
  ``TeacherError`` for that prompt only;
* an endpoint that has never answered and refuses connections (a wrong port, a server that is
  not running) is not retried prompt by prompt: after ``FIRST_CONTACT_ATTEMPTS`` failed connects
  (all requests together) a :class:`TeacherUnreachable` names it and ends the phase, and every later call fails at once
  without opening a socket (so a 10,000-prompt run does not spend an hour in backoff);
* token usage and cost from each response (prices from ``TEACHER_MODEL_MAP``; estimated from
  characters, and flagged so, when a server sends no ``usage``;
  :mod:`~jupyter_distill.teachers.chat_response`), and a ``max_cost`` budget that refuses a
  request *before* it could take the spend past the limit (:mod:`~jupyter_distill.teachers.spend`);
* keys only from the environment or options, sent only in the ``Authorization`` header and
  scrubbed from every server text that reaches an exception or provenance.

This module holds the request loop; the providers' table, the pool, the retry rules, the budget
and the response reading each have their own module, and :func:`build_http_teacher` (in
:mod:`~jupyter_distill.teachers.http_build`) checks a spec and builds the teacher.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from jupyter_distill.core.errors import PolicyError, TeacherError
from jupyter_distill.core.policy import PolicyDecision
from jupyter_distill.core.tokenizer_id import TokenizerFingerprint
from jupyter_distill.teachers import http_scoring
from jupyter_distill.teachers.base import (
    FatalTeacherError,
    PartialSampleError,
    Sample,
    TokenScores,
    check_sample_args,
    redact,
    redact_url,
)
from jupyter_distill.teachers.chat_response import (
    choice_text_ok,
    error_message,
    mentions_n,
    samples_from_response,
)
from jupyter_distill.teachers.http_pool import ConnectionPool, make_client
from jupyter_distill.teachers.http_retry import (
    FIRST_CONTACT_ATTEMPTS,
    RETRYABLE_STATUS,
    NUnsupported,
    Retryable,
    TeacherUnreachable,
    backoff_delay,
    cannot_connect,
    is_fatal,
    retry_after_seconds,
)
from jupyter_distill.teachers.spend import SpendBudget

__all__ = ["HTTPTeacher", "TeacherUnreachable"]


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
        self._pools: dict[int, ConnectionPool] = {}
        self._ssl: ssl.SSLContext | None = None
        self._models_checked = False
        self.requests_sent = 0  # HTTP chat requests actually sent, retries included
        self.connect_failures = 0  # attempts that never reached the server (refused, DNS, unreachable)
        self._answered = False  # the endpoint has answered at least once (any HTTP status)
        self._unreachable: str | None = None  # why the endpoint was given up on, once it was
        self.budget = SpendBudget(max_cost, self.spec)
        self.batch_client: Any = None  # a teachers.batch.BatchClient when built with batch=True
        self.batch_discount = 0.5  # batch price / online price

    def __repr__(self) -> str:
        return f"HTTPTeacher(spec={self.spec!r}, concurrency={self.concurrency}, max_cost={self.max_cost!r})"

    # ------------------------------------------------------------------ plumbing
    @property
    def spent(self) -> float:
        """USD spent on this teacher so far, over every event loop that used it."""
        return self.budget.spent

    @spent.setter
    def spent(self, value: float) -> None:
        self.budget.add(value - self.budget.spent)

    def _pool(self) -> ConnectionPool:
        """The connection pool of the running loop (created on first use)."""
        loop = asyncio.get_running_loop()
        with self._state_lock:
            for key, pool in list(self._pools.items()):
                if pool.loop.is_closed():  # a finished asyncio.run(): its sockets died with it
                    del self._pools[key]
            pool = self._pools.get(id(loop))
            if pool is None or pool.loop is not loop:
                pool = ConnectionPool(loop, self._new_client(self.concurrency), self.concurrency)
                self._pools[id(loop)] = pool
        return pool

    def _new_client(self, connections: int) -> httpx.AsyncClient:
        return make_client(
            base_url=self.base_url + "/",
            headers=self._headers,
            timeout=self.timeout,
            connections=connections,
            ssl_context=self._ssl_context(),
            transport=self._transport,
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
        """Reserve the worst-case cost of one request, or raise ``BudgetExceeded`` before sending it."""
        self.budget.max_cost = self.max_cost  # the attribute stays the one setting users change
        return self.budget.reserve(messages, n, max_tokens, self._price())

    def _settle(self, reserved: float, cost: float) -> None:
        self.budget.settle(reserved, cost)

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
            except NUnsupported:
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
                first = next((e for e in errors if is_fatal(e)), errors[0])
                if not isinstance(first, Exception):
                    raise first
                if is_fatal(first) and any(s is not None for s in results):
                    first.partial = results  # type: ignore[attr-defined]  # paid for: sampling keeps them
                if any(s is not None for s in results) and not is_fatal(first):
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
                if cannot_connect(exc):
                    last_reason = f"cannot connect: {self._scrub(str(exc))[:200] or type(exc).__name__}"
                    self.connect_failures += 1
                    if not self._answered and self.connect_failures >= FIRST_CONTACT_ATTEMPTS:
                        self._unreachable = last_reason
                        raise self._unreachable_error(last_reason) from None
                elif isinstance(exc, httpx.TimeoutException):
                    last_reason = f"timed out after {self.timeout:g} s"
                else:
                    last_reason = f"connection error ({type(exc).__name__})"
            except Retryable as exc:
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
        return backoff_delay(
            attempt,
            retry_after,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            retry_after_max=self.retry_after_max,
        )

    def _check_response(self, response: httpx.Response, content: bytes, n: int) -> dict[str, Any]:
        """Turn a response into its JSON body, or raise: retryable, n-unsupported, policy, fatal or plain."""
        status = response.status_code
        text = self._scrub(content.decode("utf-8", errors="replace"))
        data: Any = None
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = None
        message = error_message(data) or text[:300].strip()
        if status == 200 and isinstance(data, dict) and data.get("error") and not data.get("choices"):
            code = data["error"].get("code") if isinstance(data["error"], dict) else None
            status = code if isinstance(code, int) and code >= 400 else 502
        if status != 200:
            self._raise_for_status(status, message, response, n)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            snippet = text[:120].replace("\n", " ")
            raise Retryable(f"malformed response (expected JSON with 'choices'), got {snippet!r}")
        for choice in data["choices"]:
            if not isinstance(choice, dict) or not choice_text_ok(choice):
                raise Retryable("malformed response: a choice has no message.content string")
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
            raise Retryable(f"HTTP {status}: {message[:200]}", retry_after_seconds(response.headers.get("Retry-After")))
        if status in (400, 422) and n > 1 and mentions_n(message):
            raise NUnsupported(message)
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
        """Split one response's choices, usage and cost into samples with this teacher's provenance."""
        provenance: dict[str, Any] = {
            "teacher": self.spec,
            "model": self.model,
            "provider": self.provider,
            "scheme": self.scheme,
            "endpoint": self.endpoint,
            "policy": self.decision.to_dict(),
            "terms_version": self.decision.terms_version,
            "licence": self.decision.licence,
        }
        if self.scheme == "openrouter":
            provenance["enforce_distillable_text"] = bool(self.enforce_distillable)
        return samples_from_response(
            data,
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            n=n,
            attempts=attempts,
            prices=self._price(),
            price_source=self.price_source,
            provenance=provenance,
        )

    # ------------------------------------------------------------------ scoring (loss: onpolicy)
    @property
    def can_score(self) -> bool:
        """Only a self-hosted OpenAI-compatible server may return prompt log-probs (vLLM does);
        whether it does, and with the student's tokenizer, the run checks through ``/tokenize``."""
        return self.scheme in http_scoring.SCORING_SCHEMES

    @property
    def cannot_score_reason(self) -> str:
        return f"the {self.scheme} API returns text only (no log-probs of given tokens)"

    async def tokenizer_fingerprint(self) -> TokenizerFingerprint:
        """The server's tokenizer fingerprint, through its free ``/tokenize`` endpoint."""
        return await http_scoring.tokenizer_fingerprint(self)

    async def token_logprobs(self, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]]) -> TokenScores:
        """The server's ``log p`` of each completion token after ``prompt_ids``; one priced request."""
        return await http_scoring.token_logprobs(self, prompt_ids, completions)

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


def __getattr__(name: str) -> Any:
    """``build_http_teacher``, ``PROVIDERS`` and ``HTTP_OPTIONS`` were defined here; they still resolve."""
    if name == "build_http_teacher" or name == "HTTP_OPTIONS":
        from jupyter_distill.teachers import http_build

        return getattr(http_build, name)
    if name in ("PROVIDERS", "ProviderInfo"):
        from jupyter_distill.teachers import providers

        return getattr(providers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
