"""The distillation policy: may outputs of this teacher be used to train the student?

A dated, versioned table of provider terms (``TERMS``) decides before any request is sent.
Closed APIs whose terms forbid training competing models are refused unless the user records
an explicit authorisation; OpenRouter is allowed only while its ``enforce_distillable_text``
routing flag is on; open-weight and self-hosted teachers pass with their licence recorded.
Every sample carries the decision and the terms version it was made under, so a later change
of terms can be traced to the data it affects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from jupyter_distill.core.errors import ConfigError, PolicyError

TERMS_VERSION = "2026-11-01"
_WARN = "WARNING (policy='warn'): "

PolicyMode = Literal["strict", "warn", "off"]
Verdict = Literal["allowed", "prohibited", "check-licence", "routed-distillable"]


@dataclass(frozen=True)
class ProviderTerms:
    """What a provider's terms say about training models on its outputs."""

    provider: str
    verdict: Verdict
    summary: str
    source: str


TERMS: dict[str, ProviderTerms] = {
    t.provider: t
    for t in [
        ProviderTerms(
            "openai",
            "prohibited",
            "Usage policies prohibit using outputs to develop models that compete with OpenAI.",
            "OpenAI terms of use / usage policies",
        ),
        ProviderTerms(
            "anthropic",
            "prohibited",
            "Acceptable use policy prohibits using inputs and outputs to train an AI model "
            "('model distillation') without prior authorisation from Anthropic.",
            "Anthropic acceptable use policy",
        ),
        ProviderTerms(
            "google",
            "prohibited",
            "Gemini API terms prohibit using the services to develop models that compete with Gemini.",
            "Gemini API additional terms of service",
        ),
        ProviderTerms(
            "openrouter",
            "routed-distillable",
            "Allowed while every request carries provider.enforce_distillable_text=true, which routes only "
            "to models whose authors permit text distillation (best-effort; verify the model's licence).",
            "OpenRouter distillable-model routing",
        ),
        ProviderTerms(
            "local",
            "allowed",
            "A model run on your own machine: outputs may be used for training, subject to the model's licence.",
            "model licence",
        ),
        ProviderTerms(
            "openai-compatible",
            "check-licence",
            "A self-hosted or third-party OpenAI-compatible server: allowed when the served model is open-weight "
            "and its licence permits training on outputs; check the licence.",
            "model licence",
        ),
    ]
}


@dataclass(frozen=True)
class PolicyDecision:
    """The verdict recorded in every sample's provenance."""

    allowed: bool
    verdict: Verdict
    provider: str
    model: str
    mode: PolicyMode
    terms_version: str
    reason: str
    licence: str = ""
    authorization: str | None = None
    enforce_distillable: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    provider: str,
    model: str,
    *,
    mode: PolicyMode = "strict",
    authorization: str | None = None,
    enforce_distillable: bool = True,
    licence: str = "",
    model_terms: str | None = None,
) -> PolicyDecision:
    """Decide whether sampling ``model`` from ``provider`` for training is allowed.

    ``model_terms`` is the teacher map's verdict for this exact model when known (for example
    an open-weight model served by OpenRouter); it refines the provider-level verdict.
    Raises ``PolicyError`` in strict mode when the answer is no; in ``warn`` mode returns a
    decision with ``allowed=True`` and a reason the pipeline surfaces as a warning.
    """
    if mode not in ("strict", "warn", "off"):
        raise ConfigError(
            f"invalid value for 'policy': {mode!r}. Fix: use 'strict' (default), 'warn' or 'off'.",
            field="policy",
            value=mode,
        )
    terms = TERMS.get(provider)
    if terms is None:
        raise ConfigError(
            f"no distillation terms recorded for provider {provider!r}. Known providers: {', '.join(TERMS)}.",
            field="teacher",
            value=provider,
        )
    common = {
        "provider": provider,
        "model": model,
        "mode": mode,
        "terms_version": TERMS_VERSION,
        "licence": licence,
        "authorization": authorization,
    }
    if mode == "off":
        return PolicyDecision(
            allowed=True, verdict=terms.verdict, reason="policy checks turned off by the user (policy='off')", **common
        )

    if terms.verdict == "prohibited":
        if authorization:
            return PolicyDecision(
                allowed=True,
                verdict="prohibited",
                reason=f"{terms.summary} Proceeding under the recorded authorisation.",
                **common,
            )
        message = (
            f"teacher '{provider}/{model}' is refused: {terms.summary} (terms version {TERMS_VERSION}). "
            "Fix: use an open-weight teacher (e.g. 'openrouter:meta-llama/llama-3.3-70b-instruct' or "
            "'local:smollm2-135m'), or, if you hold written permission from the provider, pass "
            "authorization='<who granted it, when, reference>' (recorded in every sample's provenance)."
        )
        if mode == "strict":
            raise PolicyError(message, field="teacher", value=f"{provider}/{model}", fix="choose another teacher")
        return PolicyDecision(allowed=True, verdict="prohibited", reason=_WARN + message, **common)

    if terms.verdict == "routed-distillable":
        if model_terms == "prohibited" and not authorization:
            message = (
                f"teacher 'openrouter:{model}' is a closed model whose terms prohibit distillation; OpenRouter's "
                "distillable routing would refuse it. Fix: choose a model marked distillable on OpenRouter, or pass "
                "authorization='...' if you hold permission."
            )
            if mode == "strict":
                raise PolicyError(message, field="teacher", value=f"openrouter:{model}")
            return PolicyDecision(
                allowed=True,
                verdict="prohibited",
                reason=_WARN + message,
                enforce_distillable=enforce_distillable,
                **common,
            )
        if not enforce_distillable and not authorization:
            message = (
                f"teacher 'openrouter:{model}' with enforce_distillable=False may be routed to a model whose terms "
                "forbid distillation. Fix: keep enforce_distillable=True (the default), or pass authorization='...'."
            )
            if mode == "strict":
                raise PolicyError(message, field="enforce_distillable", value=False)
            return PolicyDecision(
                allowed=True,
                verdict="check-licence",
                reason=_WARN + message,
                enforce_distillable=False,
                **common,
            )
        return PolicyDecision(
            allowed=True,
            verdict="routed-distillable",
            reason=terms.summary,
            enforce_distillable=enforce_distillable,
            **common,
        )

    if model_terms == "prohibited" and not authorization:
        message = (
            f"teacher '{model}' is a closed model whose terms prohibit distillation, even when served through "
            f"'{provider}'. Fix: choose an open-weight model or pass authorization='...'."
        )
        if mode == "strict":
            raise PolicyError(message, field="teacher", value=model)
        return PolicyDecision(allowed=True, verdict="prohibited", reason=_WARN + message, **common)
    return PolicyDecision(allowed=True, verdict=terms.verdict, reason=terms.summary, **common)
