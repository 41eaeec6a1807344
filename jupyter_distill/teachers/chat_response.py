"""Reading an OpenAI-style ``/chat/completions`` body: choices, errors, usage and per-sample cost.

Why apart from the teacher: these are pure functions of a JSON body, shared by online requests
and batch results, and tested on hand-written bodies without a server.
"""

from __future__ import annotations

from typing import Any

from jupyter_distill.teachers.base import Sample, estimate_tokens, messages_chars, utc_now


def error_message(data: Any) -> str:
    """The human part of an error body (OpenAI's ``error.message``, OpenRouter's ``metadata.raw``)."""
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


def mentions_n(message: str) -> bool:
    """True when a 400/422 message is about the ``n`` parameter (the server will not take n > 1)."""
    lowered = message.lower()
    return "'n'" in lowered or '"n"' in lowered or " n " in f" {lowered} " or "n must" in lowered or "n>1" in lowered


def choice_text_ok(choice: dict[str, Any]) -> bool:
    """True when a choice carries its text where the chat (or legacy completion) shape puts it."""
    message = choice.get("message")
    if isinstance(message, dict):
        return isinstance(message.get("content"), str | type(None))
    return isinstance(choice.get("text"), str)


def choice_text(choice: dict[str, Any]) -> str:
    """A choice's text ('' for a null content, which some servers send for an empty answer)."""
    message = choice.get("message")
    if isinstance(message, dict):
        return message.get("content") or ""
    return str(choice.get("text") or "")


def apportion(total: int, weights: list[int]) -> list[int]:
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


def samples_from_response(
    data: dict[str, Any],
    messages: list[dict[str, Any]],
    *,
    temperature: float,
    max_tokens: int,
    seed: int | None,
    n: int,
    attempts: int,
    prices: tuple[float, float],
    price_source: str,
    provenance: dict[str, Any],
) -> tuple[list[Sample], float]:
    """Split one response's choices, usage and cost into samples; returns them and the total cost.

    ``provenance`` holds what every sample of this teacher carries (spec, provider, endpoint,
    policy); each sample adds its response id, time, parameters, usage and cost. A server that
    sends no ``usage`` gets a character-based estimate, flagged as such; one that reports
    ``usage.cost`` is believed and that cost is split over the choices by their token cost.
    """
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)
    texts = [choice_text(c) for c in choices]
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    estimated = usage is None or not isinstance(usage.get("completion_tokens"), int)
    if estimated:
        prompt_tokens = estimate_tokens(" " * messages_chars(messages))
        completion_total = sum(estimate_tokens(t) for t in texts)
    else:
        assert usage is not None
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_total = int(usage["completion_tokens"])
    completions = apportion(completion_total, [max(1, estimate_tokens(t)) for t in texts])
    price_in, price_out = prices
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
    now = utc_now()
    samples = []
    for i, (choice, text, completion, cost) in enumerate(zip(choices, texts, completions, costs, strict=True)):
        sample_usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }
        if estimated:
            sample_usage["estimated"] = True
        record = {
            "teacher": provenance["teacher"],
            "model": provenance["model"],
            "response_model": data.get("model") if isinstance(data.get("model"), str) else None,
            "response_id": data.get("id") if isinstance(data.get("id"), str) else None,
            "provider": provenance["provider"],
            "scheme": provenance["scheme"],
            "endpoint": provenance["endpoint"],
            "time": now,
            "params": {
                "temperature": temperature,
                "max_tokens": max_tokens,
                "seed": seed,
                "n_per_request": n,
                "choice_index": i,
            },
            "policy": dict(provenance["policy"]),
            "terms_version": provenance["terms_version"],
            "licence": provenance["licence"],
            "usage": sample_usage,
            "usage_estimated": estimated,
            "cost_usd": cost,
            "price_source": price_source,
            "attempts": attempts,
        }
        if "enforce_distillable_text" in provenance:
            record["enforce_distillable_text"] = provenance["enforce_distillable_text"]
        samples.append(
            Sample(
                text=text,
                usage=sample_usage,
                cost=cost,
                provenance=record,
                finish_reason=choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None,
            )
        )
    return samples, total_cost
