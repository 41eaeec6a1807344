"""Building an HTTP teacher from a spec: policy first, then options, key, prices and endpoint.

Why apart from the teacher: everything here runs before the first request and decides whether
one may be sent at all (a refused teacher fails the same way with or without a key); the teacher
itself only sends.
"""

from __future__ import annotations

import os
from typing import Any

from jupyter_distill.core.errors import ConfigError, TeacherError
from jupyter_distill.core.models import PRICES_AS_OF, find_teacher_model
from jupyter_distill.core.policy import PolicyMode, decide
from jupyter_distill.teachers.base import ParsedSpec
from jupyter_distill.teachers.http import HTTPTeacher
from jupyter_distill.teachers.providers import PROVIDERS

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
