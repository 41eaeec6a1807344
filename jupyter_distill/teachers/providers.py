"""The HTTP providers a teacher spec can name: policy provider, key and URL variables, endpoint.

Why a table of its own: the policy gate, the key lookup, the batch clients and the docs all ask
"what is ``openrouter:``?"; one frozen entry per scheme answers them all. Prices live next to
the models in :mod:`jupyter_distill.core.models`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass


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
