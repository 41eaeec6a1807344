"""The typed, validated spec of a distillation run.

``DistillConfig`` holds every argument of :func:`jupyter_distill.distill`. The same model
validates Python keyword arguments, ``%%distill`` YAML cell bodies and magic flags, so a typo is
caught the same way everywhere, before any teacher call is paid for.
"""

from __future__ import annotations

import difflib
import re
import reprlib
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jupyter_distill.core.errors import ConfigError
from jupyter_distill.core.models import student_quantization
from jupyter_distill.core.quant_types import DEFAULT_QUANTIZE, QUANTIZE_TYPES, canonical_quant_name
from jupyter_distill.core.runfolder import run_folder

POLICY_MODES: tuple[str, ...] = ("strict", "warn", "off")
# ``\Z``, not ``$``: ``$`` also matches before a trailing newline, so ``.match("run\\n")`` would pass.
RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# A cell body is a handful of settings (perhaps an inline dataset): anything beyond these bounds is
# an anchor/alias bomb or a mistake, and walking it (validation, errors, the store) would not end.
MAX_YAML_VALUES = 100_000  # scalars and containers after expanding every alias
MAX_YAML_DEPTH = 64
MAX_VALUE_CHARS = 80  # how much of an offending value an error message shows


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
    loss: Literal["sft", "bond", "jbond", "onpolicy"] = Field(
        "bond",
        description=(
            "Training loss: 'sft' (NLL on the chosen only), 'bond' (NLL + preference + KL anchor), "
            "'jbond' (on-policy J-BOND: student samples judged against the teacher's candidates), "
            "'onpolicy' (per-token reverse KL to a teacher that scores the student's tokens with its tokenizer)."
        ),
    )
    jbond_n: int = Field(2, ge=1, le=16, description="jbond/onpolicy: student samples per prompt per step.")
    jbond_anchor_decay: float = Field(
        0.99,
        ge=0.0,
        lt=1.0,
        description="jbond/onpolicy: EMA decay of the anchor's LoRA weights (0 = anchor is the policy).",
    )
    jbond_mix: float = Field(
        0.5, ge=0.0, le=1.0, description="jbond: Jeffreys mix; 0 = forward KL only, 1 = backward KL only."
    )
    jbond_kl: float = Field(0.05, ge=0.0, le=10.0, description="jbond/onpolicy: weight of the KL to the EMA anchor.")
    jbond_max_new_tokens: int = Field(
        64, ge=1, le=4096, description="jbond/onpolicy: longest student sample generated during training."
    )
    bond_beta: float = Field(0.5, ge=0.0, le=1.0)
    bond_gamma: float = Field(0.1, ge=0.0, le=1.0)
    bond_tau: float = Field(0.1, gt=0.0, le=100.0)
    checkpoint_every: int = Field(50, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantization: Literal["4bit", "8bit"] | None = Field(
        None, description="Load the student in 4 or 8 bits (bitsandbytes) and train LoRA on it (QLoRA)."
    )
    engine: Literal["auto", "plain", "fast", "unsloth"] = Field(
        "auto", description="Step engine: the CUDA fast path when available, plain PEFT, or Unsloth's loader."
    )
    num_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Training processes (one per GPU, or CPU processes with gloo); above 1 the training phase "
        "runs in worker processes started with accelerate. The global batch stays batch_size x grad_accum.",
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="With num_processes > 1: 'ddp' (every worker holds the student, gradients are summed) or "
        "'fsdp' (the student's weights are sharded across the workers).",
    )

    heldout_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    max_prompts: int | None = Field(None, ge=1, description="Use at most this many prompts (after dedupe).")

    concurrency: int = Field(16, ge=1, le=1024)
    batch: bool = Field(
        False,
        description="Submit the missing teacher candidates as one provider batch (openai:, anthropic:): "
        "half the price, answers within 24 h; re-run the cell to collect.",
    )
    max_cost: float | None = Field(None, ge=0.0, description="USD budget for teacher and judge calls.")
    policy: Literal["strict", "warn", "off"] = "strict"
    authorization: str | None = Field(None, description="Your written authorisation to distil a closed API.")
    enforce_distillable: bool = Field(True, description="OpenRouter: route only to distillable models.")

    quantize: str | None = Field(
        DEFAULT_QUANTIZE,
        description=f"GGUF quantization type ({', '.join(QUANTIZE_TYPES)}), or None to skip export.",
    )
    export: Literal["merged", "adapter"] = Field(
        "merged",
        description="GGUF export: 'merged' writes the student as one model; 'adapter' writes its LoRA as a "
        "GGUF adapter beside one shared base GGUF (quantized as `quantize` says), so students of one base share it.",
    )
    review: bool = False
    alias: str | None = None
    workdir: str = Field(
        default_factory=run_folder,
        description="Run folder (run store and artifacts); default $JUPYTER_DISTILL_WORKDIR, else .distill.",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not RUN_NAME_PATTERN.fullmatch(value):
            raise ValueError(
                "run names use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)"
            )
        return value

    @field_validator("quantize", mode="before")
    @classmethod
    def _check_quantize(cls, value: Any) -> str | None:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "")) or value is False:
            return None
        if not isinstance(value, str) or canonical_quant_name(value) not in QUANTIZE_TYPES:
            raise ValueError(f"unknown quantization type; use one of {', '.join(QUANTIZE_TYPES)} or None")
        return canonical_quant_name(value)

    @field_validator("quantization", mode="before")
    @classmethod
    def _check_quantization(cls, value: Any) -> str | None:
        found = student_quantization(value)
        if found is False:
            raise ValueError("unknown student quantization; use '4bit', '8bit' or None")
        return found

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

    @model_validator(mode="after")
    def _check_export(self) -> DistillConfig:
        if self.export == "adapter" and self.quantize is None:
            raise ValueError(
                "export='adapter' writes GGUF files, but quantize=None skips the GGUF export; set quantize "
                "(e.g. 'q8_0') or use export='merged'"
            )
        return self

    @model_validator(mode="after")
    def _check_processes(self) -> DistillConfig:
        # The workers split each step's grad_accum micro-batches between them, so the step computes
        # the same gradient whatever num_processes is (see jupyter_distill.train.distributed).
        if self.num_processes > 1 and self.grad_accum % self.num_processes:
            raise ValueError(
                f"grad_accum ({self.grad_accum}) must be a multiple of num_processes ({self.num_processes}): each "
                f"worker takes grad_accum / num_processes micro-batches of every step; e.g. grad_accum: "
                f"{self.num_processes * max(1, self.grad_accum // self.num_processes)}"
            )
        if self.num_processes > 1 and self.loss in ("jbond", "onpolicy"):
            raise ValueError(
                f"loss {self.loss!r} calls the judge or the teacher on the student's samples inside each step, "
                f"which runs in one process only; use num_processes: 1 with {self.loss}, or loss 'bond' / 'sft' "
                "with num_processes"
            )
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
        data, lines = parse_yaml_mapping(text)
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
            if isinstance(value, str):
                out[key] = _USERINFO_RE.sub(r"\1", value)  # 'http://user:KEY@host' must not reach the store
            elif value is None or isinstance(value, int | float | bool):
                out[key] = value
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                out[key] = list(value)
            else:
                out[key] = describe_object(value)
        return out


_USERINFO_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


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


_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class _CellLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two changes for cell bodies.

    Dates stay text (``name: 2024-02-30`` is a run name, not an invalid date), and any error a
    value's constructor raises (``!!float`` with no value, ``!!timestamp foo``, an integer of
    5,000 digits) becomes a YAML error pointing at that value's line, like a syntax error.
    """

    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # Checked while scanning: PyYAML's scanner slows down quadratically with bracket depth
        # (5,000 `[` take seconds), long before the composer would overflow the stack.
        if self.flow_level >= MAX_YAML_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"brackets nest deeper than {MAX_YAML_DEPTH} levels", self.get_mark()
            )
        super().fetch_flow_collection_start(TokenClass)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"cannot read the value {short_repr(node.value if isinstance(node, yaml.ScalarNode) else node.tag)} "
                f"({node.tag.rsplit(':', 1)[-1]}): {short_repr(str(exc), 120, quote=False)}",
                node.start_mark,
            ) from None


def short_repr(value: Any, limit: int = MAX_VALUE_CHARS, *, quote: bool = True) -> str:
    """A bounded ``repr`` for error messages: never walks a whole (possibly huge, shared) value."""
    if isinstance(value, str) and not quote:
        text = value
    else:
        printer = reprlib.Repr()
        printer.maxstring = printer.maxother = printer.maxlong = limit
        printer.maxlevel = 3
        text = printer.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _node_bounds_problem(root: yaml.Node) -> str | None:
    """Why the composed YAML graph is too big or deep to construct, or None.

    Aliases share nodes, so the expanded size is counted once per node (a DAG walk); a node that
    contains itself (``&a [*a]``) is refused too, since validating it would never end.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if done:
            active.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_YAML_VALUES:
                return f"it expands to more than {MAX_YAML_VALUES:,} values (through anchors and aliases)"
            if depth[key] > MAX_YAML_DEPTH:
                return f"it nests deeper than {MAX_YAML_DEPTH} levels"
            continue
        if key in size:
            continue
        if key in active:
            return "an alias refers to a value that contains it"
        active.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in size)
    return None


def _yaml_error(exc: yaml.YAMLError, text: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" on line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    lines = text.splitlines()
    return ConfigError(
        f"YAML error in the cell body{where}: {short_repr(problem, 200, quote=False)}. Fix: write one "
        "`key: value` per line, quoting values that contain ':' or '#'.",
        field="yaml",
        value=short_repr(lines[mark.line], 200, quote=False) if mark is not None and mark.line < len(lines) else None,
        fix="correct the YAML syntax",
    )


def _bounds_error(problem: str) -> ConfigError:
    return ConfigError(
        f"the cell body is too large to read: {problem}. Fix: write the settings out plainly, and pass a "
        "large or deeply nested dataset as a file (dataset: data.jsonl) or a kernel variable ($rows).",
        field="yaml",
        value=None,
        fix="simplify the YAML",
    )


def parse_yaml_mapping(text: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Load a cell body as a YAML mapping and remember the 1-based line of every top-level key.

    Every failure is a ``ConfigError``: syntax, a value that cannot be constructed, nesting that
    overflows the parser, and alias expansion or depth beyond ``MAX_YAML_VALUES``/``MAX_YAML_DEPTH``
    (checked on the composed graph, before any Python value is built).
    """
    if not text.strip():
        return {}, {}
    loader: _CellLoader | None = None
    try:
        loader = _CellLoader(text)  # refuses control characters here
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        problem = _node_bounds_problem(node)
        if problem is not None:
            raise _bounds_error(problem)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text) from None
    except RecursionError:
        raise _bounds_error(f"it nests deeper than {MAX_YAML_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()
    if data is None:
        return {}, {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            f"the cell body must be a YAML mapping of `key: value` lines, got {type(data).__name__}. "
            "Fix: write e.g. `teacher: local:smollm2-135m`.",
            field="yaml",
            value=text[:80],
        )
    lines = {
        str(key_node.value): key_node.start_mark.line + 1
        for key_node, _ in node.value
        if isinstance(key_node, yaml.ScalarNode)
    }
    return {str(k): v for k, v in data.items()}, lines


def _unknown_key_error(key: str, line: int | None) -> ConfigError:
    where = f" on line {line}" if line else ""
    close = difflib.get_close_matches(key, list(DistillConfig.model_fields), n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(
        f"unknown setting '{short_repr(key, quote=False)}'{where}.{hint} "
        f"Known settings: {', '.join(DistillConfig.model_fields)}.",
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
    reason = short_repr(first["msg"].removeprefix("Value error, "), 300, quote=False)
    field_info = DistillConfig.model_fields.get(field)
    known = field_info.get_default(call_default_factory=True) if field_info is not None else None
    default = f" The default is {known!r}." if known is not None else ""
    return ConfigError(
        f"invalid value for '{field}'{where}: {short_repr(value)}: {reason}.{default}",
        field=field,
        value=value,
        fix=reason,
    )
