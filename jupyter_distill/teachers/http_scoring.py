"""Token scoring through an OpenAI-compatible server that returns prompt log-probs (vLLM does).

``loss: onpolicy`` needs ``log p_T`` of tokens the *student* sampled. A chat endpoint cannot be
asked that, but a completions endpoint that takes token ids as the prompt and returns the
log-probs of the prompt's own tokens can: the student's prompt ids followed by its sample go in
as the prompt, ``max_tokens: 1`` (nothing useful is generated), and the sample's positions are
read back. vLLM's ``prompt_logprobs: 0`` answers ``choices[i].prompt_logprobs``, one entry per
prompt token (``None`` for the first), keyed by token id, so every value is checked against the id
it is for; the legacy OpenAI ``echo: true, logprobs: 0`` answer (``logprobs.token_logprobs``, by
position only) is read when that is all the server returns. All completions of a prompt go in one
request (a batch of token-id prompts).

The tokenizer check uses the server's ``/tokenize`` (vLLM serves it at the root, beside ``/v1``):
it is free, so the run can compare tokenizers before it pays for anything. A server without it
cannot be checked, and the run is refused.

Cost: the server bills the prompt tokens (prompt + sample, per completion) at the input price
and one generated token each at the output price, reserved against ``max_cost`` before sending.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import Any

import httpx

from jupyter_distill.core.errors import TeacherError
from jupyter_distill.core.tokenizer_id import TokenizerFingerprint, fingerprint
from jupyter_distill.teachers.base import TokenScores
from jupyter_distill.teachers.http_retry import RETRYABLE_STATUS

SCORING_SCHEMES = ("openai-compatible",)  # self-hosted servers; the hosted APIs return no prompt log-probs


def server_root(base_url: str) -> str:
    """``http://host:port/v1`` -> ``http://host:port`` (where vLLM serves ``/tokenize``)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


async def _post(teacher: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST with the teacher's pool, key and retry rules for transient failures; the JSON answer."""
    last = "no attempt made"
    for attempt in range(teacher.max_retries + 1):
        try:
            async with teacher._pool().slot() as client:
                teacher.requests_sent += 1
                response = await client.post(httpx.URL(url), json=body)
                content = response.content
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {teacher._scrub(str(exc))[:200]}"
        else:
            text = teacher._scrub(content.decode("utf-8", errors="replace"))
            if response.status_code == 200:
                try:
                    data = json.loads(text)
                except ValueError:
                    data = None
                if isinstance(data, dict):
                    return data
                last = f"a body that is not a JSON object: {text[:120]!r}"
            elif response.status_code in RETRYABLE_STATUS:
                last = f"HTTP {response.status_code}: {text[:200]}"
            else:
                raise TeacherError(
                    f"teacher {teacher.spec}: {url} answered HTTP {response.status_code}: {text[:300]}",
                    field="teacher",
                    value=teacher.spec,
                )
        if attempt < teacher.max_retries:
            await asyncio.sleep(teacher._delay(attempt, None))
    raise TeacherError(
        f"teacher {teacher.spec}: {url} failed after {teacher.max_retries + 1} attempts: {last}.",
        field="teacher",
        value=teacher.spec,
    )


async def tokenizer_fingerprint(teacher: Any) -> TokenizerFingerprint:
    """The server's tokenizer fingerprint through ``/tokenize`` (free); refused without it."""
    url = server_root(teacher.base_url) + "/tokenize"

    async def encode_all() -> list[list[int]]:
        out = []
        from jupyter_distill.core.tokenizer_id import PROBE_TEXTS

        for text in PROBE_TEXTS:
            data = await _post(teacher, url, {"model": teacher.model, "prompt": text, "add_special_tokens": False})
            tokens = data.get("tokens")
            if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
                raise TeacherError(
                    f"teacher {teacher.spec}: {url} answered without a 'tokens' list of ids.",
                    field="teacher",
                    value=teacher.spec,
                )
            out.append(tokens)
        return out

    try:
        encoded = await encode_all()
    finally:
        await teacher.aclose()
    by_text = iter(encoded)
    return fingerprint(lambda _text: next(by_text), None)  # the server does not say its vocabulary size


def _read_choice(choice: dict[str, Any], ids: Sequence[int], n_prompt: int) -> list[float]:
    """The log-probs of the last ``len(ids) - n_prompt`` tokens of ``ids`` from one choice."""
    wanted = range(n_prompt, len(ids))
    entries = choice.get("prompt_logprobs")
    if isinstance(entries, list) and len(entries) >= len(ids):
        values = []
        for pos in wanted:
            entry = entries[pos]
            value = entry.get(str(ids[pos])) if isinstance(entry, dict) else None
            logprob = value.get("logprob") if isinstance(value, dict) else value
            if not isinstance(logprob, int | float):
                raise ValueError(f"prompt_logprobs[{pos}] has no log-prob for token id {ids[pos]}")
            values.append(float(logprob))
        return values
    legacy = choice.get("logprobs")
    token_logprobs = legacy.get("token_logprobs") if isinstance(legacy, dict) else None
    if isinstance(token_logprobs, list) and len(token_logprobs) >= len(ids):
        values = [token_logprobs[pos] for pos in wanted]
        if all(isinstance(v, int | float) for v in values):
            return [float(v) for v in values]
    raise ValueError("the answer carries neither prompt_logprobs nor echoed logprobs.token_logprobs")


async def token_logprobs(teacher: Any, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]]) -> TokenScores:
    """One ``/completions`` request scoring every completion of ``prompt_ids``; priced and budgeted."""
    prompt = [int(t) for t in prompt_ids]
    seqs = [prompt + [int(t) for t in c] for c in completions]
    if not seqs:
        return TokenScores([], 0.0, 0)
    n_tokens = sum(len(s) for s in seqs)
    price_in, price_out = teacher._price()
    teacher.budget.max_cost = teacher.max_cost
    reserved = teacher.budget.reserve_tokens(n_tokens, len(seqs), (price_in, price_out))
    cost = 0.0
    try:
        body = {
            "model": teacher.model,
            "prompt": seqs,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 0,
            "prompt_logprobs": 0,
        }
        data = await _post(teacher, teacher.base_url + "/completions", body)
        choices = data.get("choices")
        if not isinstance(choices, list) or len(choices) != len(seqs):
            raise TeacherError(
                f"teacher {teacher.spec}: /completions answered {len(choices) if isinstance(choices, list) else 'no'} "
                f"choices for {len(seqs)} prompts.",
                field="teacher",
                value=teacher.spec,
            )
        ordered = sorted(choices, key=lambda c: int(c.get("index", 0)) if isinstance(c, dict) else 0)
        try:
            values = [_read_choice(c, s, len(prompt)) for c, s in zip(ordered, seqs, strict=True)]
        except ValueError as exc:
            raise TeacherError(
                f"teacher {teacher.spec} cannot score tokens: {exc}. Fix: serve the teacher with a server that returns "
                "prompt log-probs (vLLM: /v1/completions with prompt_logprobs), or use loss='jbond'.",
                field="teacher",
                value=teacher.spec,
                fix="use loss='jbond'",
            ) from None
        if any(not math.isfinite(v) for row in values for v in row):
            raise TeacherError(
                f"teacher {teacher.spec} gave a student token log-probability -inf: it does not read the student's "
                "tokens with the same tokenizer. Fix: use loss='jbond'.",
                field="teacher",
                value=teacher.spec,
                fix="use loss='jbond'",
            )
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        prompt_tokens = int(usage.get("prompt_tokens") or n_tokens)
        completion_tokens = int(usage.get("completion_tokens") or len(seqs))
        reported = usage.get("cost")
        cost = (
            float(reported)
            if isinstance(reported, int | float)
            else (prompt_tokens * price_in + completion_tokens * price_out) / 1e6
        )
        return TokenScores(values, cost=cost, prompt_tokens=prompt_tokens)
    finally:
        teacher.budget.settle(reserved, cost)


__all__ = ["SCORING_SCHEMES", "server_root", "token_logprobs", "tokenizer_fingerprint"]
