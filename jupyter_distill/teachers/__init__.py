"""Teachers: where candidate answers come from.

``load_teacher("openrouter:...")`` (or ``openai-compatible:``, ``openai:``, ``anthropic:``,
``gemini:``, ``local:``, ``gguf:``, ``hf:``) builds a :class:`Teacher` after checking the
distillation policy, so a refused teacher fails before anything is loaded or paid for.
"""

from __future__ import annotations

from typing import Any

from jupyter_distill.core.errors import TeacherError
from jupyter_distill.core.policy import PolicyMode
from jupyter_distill.teachers.base import SCHEMES, FatalTeacherError, PartialSampleError, Sample, Teacher, parse_spec

__all__ = ["SCHEMES", "FatalTeacherError", "PartialSampleError", "Sample", "Teacher", "load_teacher"]


def load_teacher(
    spec_or_teacher: str | Teacher,
    *,
    policy: PolicyMode = "strict",
    authorization: str | None = None,
    enforce_distillable: bool = True,
    concurrency: int = 16,
    max_cost: float | None = None,
    **options: Any,
) -> Teacher:
    """Build the teacher a spec names; a ``Teacher`` object is returned as it is.

    ``policy``: 'strict' (refuse teachers whose terms forbid distillation), 'warn' or 'off'.
    ``authorization``: your written permission for a closed API, recorded verbatim in every
    sample's provenance. ``enforce_distillable``: OpenRouter's distillable-only routing.
    ``concurrency`` and ``max_cost`` (USD) apply to HTTP teachers. ``options`` are per-kind:
    HTTP (``api_key``, ``base_url``, ``timeout``, ``max_retries``, ``supports_n``, prices ...),
    GGUF (``n_ctx``, ``n_threads``, ``licence``), transformers (``device``, ``dtype``, ``licence``).

    Raises ``TeacherError`` for unknown schemes (listing the known ones) and missing keys
    (naming the environment variable), ``PolicyError`` for teachers the policy refuses.
    """
    if not isinstance(spec_or_teacher, str):
        missing = [
            name for name in ("spec", "provider", "model", "decision", "sample") if not hasattr(spec_or_teacher, name)
        ]
        if missing:
            raise TeacherError(
                f"teacher={type(spec_or_teacher).__name__} object is not a Teacher: it lacks {', '.join(missing)}. "
                "Fix: pass a spec string such as 'local:smollm2-135m', or an object implementing "
                "jupyter_distill.teachers.Teacher.",
                field="teacher",
                value=type(spec_or_teacher).__name__,
            )
        return spec_or_teacher
    parsed = parse_spec(spec_or_teacher)
    if parsed.scheme in ("local", "gguf", "hf") and options.pop("batch", False):
        from jupyter_distill.teachers.batch import make_batch_client

        make_batch_client(parsed.scheme, "", None)  # raises: batch APIs are a provider's, not a local model's
    if parsed.scheme in ("local", "gguf"):
        from jupyter_distill.teachers.local import build_llama_teacher

        return build_llama_teacher(parsed, policy=policy, authorization=authorization, **options)
    if parsed.scheme == "hf":
        from jupyter_distill.teachers.hf import build_hf_teacher

        return build_hf_teacher(parsed, policy=policy, authorization=authorization, **options)
    from jupyter_distill.teachers.http_build import build_http_teacher

    return build_http_teacher(
        parsed,
        policy=policy,
        authorization=authorization,
        enforce_distillable=enforce_distillable,
        concurrency=concurrency,
        max_cost=max_cost,
        **options,
    )
