"""Distillation policy decisions."""

import pytest

from jupyter_distill.core.errors import ConfigError, PolicyError
from jupyter_distill.core.policy import TERMS_VERSION, decide


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_closed_apis_refused_by_default_with_a_fix(provider):
    with pytest.raises(PolicyError) as info:
        decide(provider, "model-x")
    message = str(info.value)
    assert "authorization=" in message and TERMS_VERSION in message


def test_authorization_is_recorded_verbatim():
    decision = decide("openai", "gpt-4o", authorization="Enterprise agreement #42, 2026-10-01")
    assert decision.allowed and decision.authorization == "Enterprise agreement #42, 2026-10-01"


def test_warn_and_off_modes():
    warned = decide("anthropic", "claude", mode="warn")
    assert warned.allowed and warned.reason.startswith("WARNING")
    assert decide("openai", "gpt", mode="off").allowed
    with pytest.raises(ConfigError):
        decide("openai", "gpt", mode="lenient")


def test_openrouter_needs_the_enforce_flag():
    assert decide("openrouter", "meta-llama/llama-3.3-70b-instruct").verdict == "routed-distillable"
    with pytest.raises(PolicyError, match="enforce_distillable"):
        decide("openrouter", "x", enforce_distillable=False)
    with pytest.raises(PolicyError):
        decide("openrouter", "openai/gpt-4o", model_terms="prohibited")


def test_local_and_self_hosted_pass_with_licence():
    decision = decide("local", "smollm2-135m", licence="apache-2.0")
    assert decision.allowed and decision.licence == "apache-2.0" and decision.terms_version == TERMS_VERSION
    assert decide("openai-compatible", "my-model").verdict == "check-licence"
    with pytest.raises(PolicyError):
        decide("openai-compatible", "gpt-4o", model_terms="prohibited")
