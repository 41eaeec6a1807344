"""The typed, validated spec of a distillation run.

``DistillConfig`` holds every argument of :func:`jupyter_distill.distill`. The same model
validates Python keyword arguments, ``%%distill`` YAML cell bodies and magic flags, so a typo is
caught the same way everywhere, before any teacher call is paid for.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jupyter_distill.errors import ConfigError

QUANTIZE_TYPES: tuple[str, ...] = ("q4_k_m", "q5_k_m", "q8_0", "q4_0", "f16")
POLICY_MODES: tuple[str, ...] = ("strict", "warn", "off")
RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class DistillConfig(BaseModel):
    """Every knob of a run, with defaults that work on a 2-core CPU with no API key."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True)

    name: str | None = Field(None, description="Run name; the key of the run in the store.")
    dataset: Any = Field(None, description="Path, list of dicts, DataFrame, datasets.Dataset or callable.")
    prompt_field: str = Field("prompt", description="Row field holding the prompt text.")
    system_prompt: str | None = Field(None, description="System message prepended to every prompt.")
    teacher: Any = Field("local:smollm2-135m", description="Teacher spec string or a Teacher object.")
    student: str = Field("smollm2-135m", description="STUDENT_MODEL_MAP key, HF folder or .gguf path.")
    chat_template: str | None = Field(
        None, description="Jinja chat template overriding the student's (a base model gets its family's)."
    )
    judge: Any = Field(None, description="None (teacher as judge), a model spec, or a verifier callable.")
    rubric: str | None = Field(None, description="Custom rubric for the LLM judge.")

    n_samples: int = Field(4, ge=1, le=64, description="Teacher candidates per prompt.")
    top_k: int = Field(2, ge=1, le=64, description="Candidates kept per prompt after judging.")
    min_score: float | None = Field(
        0.5, ge=0.0, le=1.0, description="A candidate must score at least this (0-1) to be trained on; None keeps all."
    )
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=1, le=32768)
    seed: int = Field(0, ge=0)

    steps: int = Field(100, ge=1, le=1_000_000)
    batch_size: int = Field(4, ge=1, le=1024)
    grad_accum: int = Field(1, ge=1, le=1024)
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0)
    warmup_steps: int = Field(5, ge=0)
    lora_r: int = Field(16, ge=1, le=1024)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="LoRA targets; None = per-architecture default.")
    bond_beta: float = Field(0.5, ge=0.0, le=1.0)
    bond_gamma: float = Field(0.1, ge=0.0, le=1.0)
    bond_tau: float = Field(0.1, gt=0.0, le=100.0)
    checkpoint_every: int = Field(50, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    heldout_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    max_prompts: int | None = Field(None, ge=1, description="Use at most this many prompts (after dedupe).")

    concurrency: int = Field(16, ge=1, le=1024)
    max_cost: float | None = Field(None, ge=0.0, description="USD budget for teacher and judge calls.")
    policy: Literal["strict", "warn", "off"] = "strict"
    authorization: str | None = Field(None, description="Your written authorisation to distil a closed API.")
    enforce_distillable: bool = Field(True, description="OpenRouter: route only to distillable models.")

    quantize: str | None = Field("q4_k_m", description="GGUF quantization type, or None to skip export.")
    review: bool = False
    alias: str | None = None
    workdir: str = ".distill"

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not RUN_NAME_PATTERN.match(value):
            raise ValueError(
                "run names use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)"
            )
        return value

    @field_validator("quantize", mode="before")
    @classmethod
    def _check_quantize(cls, value: Any) -> str | None:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "")) or value is False:
            return None
        if not isinstance(value, str) or value.lower() not in QUANTIZE_TYPES:
            raise ValueError(f"unknown quantization type; use one of {', '.join(QUANTIZE_TYPES)} or None")
        return value.lower()

    @field_validator("alias")
    @classmethod
    def _check_alias(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", value):
            raise ValueError("alias names use only letters, digits, '.', '_' and '-' (no path separators)")
        return value

    @model_validator(mode="after")
    def _check_top_k(self) -> DistillConfig:
        if self.top_k > self.n_samples:
            raise ValueError(f"top_k ({self.top_k}) must be <= n_samples ({self.n_samples})")
        return self

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> DistillConfig:
        """Validate Python keyword arguments, turning pydantic's errors into ``ConfigError``."""
        unknown = [key for key in kwargs if key not in cls.model_fields]
        if unknown:
            raise _unknown_key_error(unknown[0], line=None)
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            raise _validation_error(exc, kwargs, lines={}) from None

    @classmethod
    def from_yaml(cls, text: str, **overrides: Any) -> DistillConfig:
        """Parse a ``%%distill`` cell body; ``overrides`` (magic flags) win over the body.

        YAML syntax errors, unknown keys and invalid values raise ``ConfigError`` naming the
        line of the cell body, the key and the fix.
        """
        data, lines = _parse_yaml_mapping(text)
        for key in data:
            if key not in cls.model_fields:
                raise _unknown_key_error(key, line=lines.get(key))
        merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        for key in overrides:
            if key not in cls.model_fields:
                raise _unknown_key_error(key, line=None)
        try:
            return cls(**merged)
        except ValidationError as exc:
            raise _validation_error(exc, merged, lines={k: v for k, v in lines.items() if k not in overrides}) from None

    def to_public_dict(self) -> dict[str, Any]:
        """A JSON-safe view for the store and the UI: callables and objects become descriptions."""
        out: dict[str, Any] = {}
        for key, value in self.model_dump().items():
            if value is None or isinstance(value, str | int | float | bool):
                out[key] = value
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                out[key] = list(value)
            else:
                out[key] = describe_object(value)
        return out


def describe_object(value: Any) -> str:
    """A short, stable, secret-free description of a non-JSON value (dataset, callable, object)."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"<callable {getattr(value, '__module__', '?')}.{value.__qualname__}>"
    spec = getattr(value, "spec", None)
    if isinstance(spec, str):
        return spec
    if isinstance(value, list):
        return f"<list of {len(value)} rows>"
    return f"<{type(value).__module__}.{type(value).__name__}>"


def _parse_yaml_mapping(text: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Load a YAML mapping and remember the 1-based line of every top-level key."""
    if not text.strip():
        return {}, {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" on line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"YAML error in the cell body{where}: {problem}. Fix: write one `key: value` per line, "
            "quoting values that contain ':' or '#'.",
            field="yaml",
            value=text.splitlines()[mark.line] if mark is not None and mark.line < len(text.splitlines()) else None,
            fix="correct the YAML syntax",
        ) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict) or node is None or not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            f"the cell body must be a YAML mapping of `key: value` lines, got {type(data).__name__}. "
            "Fix: write e.g. `teacher: local:smollm2-135m`.",
            field="yaml",
            value=text[:80],
        )
    lines = {key_node.value: key_node.start_mark.line + 1 for key_node, _ in node.value}
    return {str(k): v for k, v in data.items()}, lines


def _unknown_key_error(key: str, line: int | None) -> ConfigError:
    where = f" on line {line}" if line else ""
    close = difflib.get_close_matches(key, list(DistillConfig.model_fields), n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(
        f"unknown setting '{key}'{where}.{hint} Known settings: {', '.join(DistillConfig.model_fields)}.",
        field=key,
        value=key,
        fix=f"rename it to '{close[0]}'" if close else "remove it",
    )


def _validation_error(exc: ValidationError, given: dict[str, Any], lines: dict[str, int]) -> ConfigError:
    first = exc.errors()[0]
    if first["loc"]:
        field = str(first["loc"][0])
    else:  # a model-level check: name the first field its message mentions
        mentioned = [(first["msg"].find(name), name) for name in DistillConfig.model_fields if name in first["msg"]]
        field = min(mentioned)[1] if mentioned else "config"
    value = given.get(field, first.get("input"))
    where = f" (line {lines[field]})" if field in lines else ""
    reason = first["msg"].removeprefix("Value error, ")
    field_info = DistillConfig.model_fields.get(field)
    default = (
        f" The default is {field_info.default!r}." if field_info is not None and field_info.default is not None else ""
    )
    return ConfigError(
        f"invalid value for '{field}'{where}: {value!r}: {reason}.{default}",
        field=field,
        value=value,
        fix=reason,
    )
