"""Which step engine trains: the CUDA fast path where it can, the plain PEFT engine otherwise.

Kept apart from :mod:`.engines` because the fast path builds on the plain engine
(:mod:`.fast` imports :mod:`.engines`); choosing between them here keeps the imports one-way.
``jupyter_distill.train.fast`` is imported only when it may be used, so a CPU install never
pays for (or fails on) GPU-only imports.
"""

from __future__ import annotations

from typing import Any

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.train.engines import PlainEngine, StepEngine

#: What ``engine=`` accepts (``DistillConfig.engine`` and :func:`select_engine`).
ENGINES: tuple[str, ...] = ("auto", "plain", "fast", "unsloth")


def _try_fast(device: str, options: dict[str, Any]) -> tuple[StepEngine | None, str]:
    try:
        from jupyter_distill.train import fast  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, f"the CUDA fast path is not importable ({exc})"
    create = getattr(fast, "create_engine", None)
    if create is None:
        return None, "jupyter_distill.train.fast has no create_engine(device, **options)"
    engine, reason = create(device, **options)
    return engine, reason


def select_engine(device: str, preference: str = "auto", **options: Any) -> tuple[StepEngine, str]:
    """Pick the step engine for ``device``; returns ``(engine, reason)`` for the user to see.

    ``preference``: ``auto`` (the CUDA fast path on CUDA when it imports, else plain), ``plain``,
    ``fast`` (the fast path or an error saying why not; allowed on CPU so its code paths can be
    tested without a GPU) or ``unsloth`` (the fast engine over a student Unsloth loaded, which it
    detects; the student's loader decides whether Unsloth's kernels are in the model). ``options``
    (``beta``, ``gamma``, ``tau``, ``pad_token_id``) go to the engine's constructor.
    """
    device = str(device)
    if preference not in ENGINES:
        raise TrainingError(
            f"unknown engine preference {preference!r}. Fix: use one of {', '.join(map(repr, ENGINES))}.",
            field="engine",
            value=preference,
            fix="use 'auto', 'plain', 'fast' or 'unsloth'",
        )
    if preference == "plain":
        return PlainEngine(**options), "plain PEFT engine (asked for with engine='plain')"
    if preference == "unsloth":
        from jupyter_distill.train.unsloth_loader import check_unsloth

        check_unsloth(preference, device)
        engine, why = _try_fast(device, options)
        if engine is None:
            raise TrainingError(
                f"engine='unsloth' trains with the fast engine, but {why}.",
                field="engine",
                value=preference,
                fix="use engine='plain'",
            )
        return engine, f"Unsloth-loaded student, BOND loss through the fast engine: {why}"
    if preference == "fast" or device.startswith("cuda"):
        engine, why = _try_fast(device, options)
        if engine is not None:
            return engine, why
        if preference == "fast":
            raise TrainingError(
                f"engine='fast' was asked for but {why}. Fix: use engine='auto' or 'plain'; the fast path ships "
                "with the package and needs only a CUDA device and a CUDA build of torch.",
                field="engine",
                value=preference,
                fix="use engine='auto' or 'plain'",
            )
        return PlainEngine(**options), f"plain PEFT engine on {device}: {why}"
    return PlainEngine(**options), f"plain PEFT engine on {device} (the fast path needs a CUDA device)"


def student_loader(engine: str, device: str) -> str:
    """How the student is loaded for ``engine``: through Unsloth for ``unsloth``, and for ``auto``
    when Unsloth imports and the device is CUDA; through transformers otherwise."""
    from jupyter_distill.train.unsloth_loader import unsloth_status

    if engine == "unsloth" or (engine == "auto" and unsloth_status(device)[0]):
        return "unsloth"
    return "transformers"


__all__ = ["ENGINES", "select_engine", "student_loader"]
