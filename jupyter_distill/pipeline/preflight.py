"""What can be checked before the first teacher request, checked then.

Sampling is the step that costs money; everything after it (training, export, the alias) used
to discover its own problems only when it ran, after the teacher had been paid. These checks
read metadata only: ``STUDENT_MODEL_MAP``, a folder's ``config.json`` and file names, a GGUF's
header through the ``gguf`` package's reader, the file system. None loads weights, so a bad
student costs milliseconds instead of a paid sampling phase.

What is checked, in order (the first problem raises its ``DistillError``):

0. the loss: ``onpolicy`` needs a teacher that scores tokens with the student's tokenizer (the one
   check that loads something: a local teacher's GGUF and the student's tokenizer, no request
   sent), and ``jbond``/``onpolicy`` the plain engine;
1. the student: a map key, an HF folder or a ``.gguf`` file that exists and is what it claims;
2. its architecture can be exported for the chosen ``quantize`` (``export.check_exportable``);
3. it can be loaded here: weights available offline, safetensors, a tokenizer, an architecture
   transformers trains without remote code, the device exists, the quantization (bitsandbytes)
   and the engine (Unsloth) run on it (that its prompts can be rendered,
   with its own chat template or its family's, is ``train.student.student_preflight``'s check,
   which the pipeline runs just before these);
4. the alias name and the registry folder it will be written to;
5. the judge: a verifier must accept ``(row, response)`` (a ``json_valid`` schema is checked earlier
   still, when ``json_valid`` is called: ``schema_score.compile_schema``);
6. the workdir: run outputs can be written under ``workdir/runs/NAME``.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_distill.core import models
from jupyter_distill.core.config import DistillConfig, short_repr
from jupyter_distill.core.errors import ConfigError, JudgeError, TrainingError


@dataclass(frozen=True)
class StudentPlan:
    """What the student spec points at, read without loading weights."""

    spec: str
    source: str  # "map" | "folder" | "gguf"
    architecture: str | None  # transformers model_type; a GGUF's general.architecture
    entry: models.StudentModel | None = None
    path: Path | None = None


def check_run(config: DistillConfig, run_name: str, judge: Any = None, teacher: Any = None) -> StudentPlan:
    """Every check above for ``config``; returns what the student is. Raises the first problem."""
    from jupyter_distill.export.gguf import check_exportable

    check_loss(config, teacher)
    plan = read_student(config.student)
    check_exportable(plan.architecture, config.quantize)
    check_loadable(plan, config.device)
    check_training_options(config)
    if config.alias is not None:
        check_alias(config.alias)
    if judge is not None:
        check_judge(judge)
    check_workdir(config.workdir, run_name)
    return plan


# ---------------------------------------------------------------------------------- the loss
def check_loss(config: DistillConfig, teacher: Any = None) -> None:
    """The loss can be trained with this teacher, said before the teacher is paid for samples.

    ``onpolicy`` needs a teacher that scores the student's own tokens with the student's
    tokenizer (:func:`check_scoring_teacher`); refused, it suggests the loss that works with any
    teacher, ``jbond``. Then the trainer's own refusal runs (``jbond``/``onpolicy`` on the fast
    engine), so a combination it cannot train never reaches it after a paid sampling phase.
    """
    from jupyter_distill.train.trainer import check_trainable_loss

    if config.loss == "onpolicy":
        check_scoring_teacher(config, teacher)
    check_trainable_loss(config.loss, config.engine)


def _refuse_onpolicy(teacher: str, why: str) -> ConfigError:
    return ConfigError(
        f"loss='onpolicy' needs a teacher that scores the student's tokens (per-token log-probs with the "
        f"student's tokenizer), and the teacher {short_repr(teacher)} cannot: {why}. "
        "Fix: use loss='jbond', which judges the student's samples against the teacher's candidates "
        "and works with any teacher; or a teacher with the student's tokenizer that scores tokens: a local GGUF "
        "(local:NAME, gguf:PATH) or an OpenAI-compatible server returning prompt log-probs (vLLM).",
        field="loss",
        value="onpolicy",
        fix="use loss='jbond'",
    )


def check_scoring_teacher(config: DistillConfig, teacher: Any = None) -> None:
    """``loss: onpolicy``: the teacher can score tokens and reads them with the student's tokenizer.

    Without a loaded teacher only what the spec says is checked (a scheme that returns text only
    is refused). With one, its :class:`~jupyter_distill.teachers.base.TokenScorer` support, then
    the tokenizer fingerprints (vocabulary size and the ids of fixed probe texts) of the teacher
    and of the student's tokenizer are compared. A local teacher computes its fingerprint here
    (the model is loaded, nothing is sent); the student's tokenizer is loaded without its weights.
    """
    from jupyter_distill.core.loops import run_sync
    from jupyter_distill.core.tokenizer_id import mismatch
    from jupyter_distill.teachers.base import parse_spec, scoring_refusal
    from jupyter_distill.train.teacher_logprobs import student_fingerprint

    shown = config.teacher if isinstance(config.teacher, str) else getattr(config.teacher, "spec", None)
    shown = shown or type(config.teacher).__name__
    if teacher is None:
        if isinstance(config.teacher, str) and parse_spec(config.teacher).scheme not in SCORING_SCHEMES:
            raise _refuse_onpolicy(shown, "its API returns text only (no log-probs of given tokens)")
        return
    why = scoring_refusal(teacher)
    if why is not None:
        raise _refuse_onpolicy(shown, why)
    from jupyter_distill.core.errors import TeacherError

    try:
        theirs = run_sync(teacher.tokenizer_fingerprint, thread_name="jupyter-distill-preflight")
    except TeacherError as exc:
        raise _refuse_onpolicy(
            shown, f"its tokenizer cannot be read to compare it with the student's ({exc})"
        ) from None
    mine = student_fingerprint(config.student)
    differs = mismatch(mine, theirs)
    if differs is not None:
        raise _refuse_onpolicy(shown, f"its tokenizer is not the student {short_repr(config.student)}'s: {differs}")


#: teacher schemes whose teachers can score given tokens: llama.cpp evaluates any token sequence,
#: and a self-hosted OpenAI-compatible server may return prompt log-probs (vLLM does)
SCORING_SCHEMES: tuple[str, ...] = ("local", "gguf", "openai-compatible")


# ---------------------------------------------------------------------------------- the student
def check_training_options(config: DistillConfig) -> None:
    """The student's quantization and the engine can run on the device training will use."""
    from jupyter_distill.train.quantized import check_quantization
    from jupyter_distill.train.student import resolve_device
    from jupyter_distill.train.unsloth_loader import check_unsloth

    device = resolve_device(config.device)
    check_quantization(config.quantization, device)
    check_unsloth(config.engine, device)


def _student_error(message: str, spec: str, fix: str) -> TrainingError:
    return TrainingError(message, field="student", value=spec, fix=fix)


def read_student(spec: str) -> StudentPlan:
    """Identify the student and its architecture: the map, ``config.json`` or the GGUF header."""
    entry = models.STUDENT_MODEL_MAP.get(spec)
    if entry is not None:
        return StudentPlan(spec, "map", entry.architecture, entry=entry)
    try:
        path = Path(spec).expanduser()
        is_gguf = path.suffix.lower() == ".gguf"
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError):  # a NUL byte, a name too long for the file system
        exists = is_dir = is_gguf = False
        path = Path(".")
    if is_gguf:
        if not exists or is_dir:
            raise _student_error(
                f"student GGUF {short_repr(spec)} does not exist. Fix: check the path.", spec, "pass an existing .gguf"
            )
        return StudentPlan(spec, "gguf", _gguf_architecture(path, spec), path=path.resolve())
    if is_dir:
        return StudentPlan(spec, "folder", _folder_architecture(path, spec), path=path.resolve())
    raise _student_error(
        f"unknown student {short_repr(spec)}: not a STUDENT_MODEL_MAP key, not an HF folder and not a .gguf file. "
        f"Known keys: {', '.join(models.STUDENT_MODEL_MAP)}. Fix: use one of them, a local folder with config.json + "
        "*.safetensors, or a path to a .gguf file.",
        spec,
        "use a known key, an HF folder or a .gguf path",
    )


def _folder_architecture(folder: Path, spec: str) -> str:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _student_error(
            f"student folder {short_repr(str(folder))} has no config.json. Fix: pass a Hugging Face model folder "
            "(config.json, tokenizer files, *.safetensors).",
            spec,
            "pass a complete HF folder",
        ) from None
    except (OSError, ValueError) as exc:
        raise _student_error(
            f"student folder {short_repr(str(folder))}: config.json cannot be read "
            f"({short_repr(str(exc), quote=False)}). Fix: restore the folder's config.json.",
            spec,
            "restore config.json",
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or not model_type:
        raise _student_error(
            f"student folder {short_repr(str(folder))}: config.json names no model_type. Fix: pass a folder saved "
            "by transformers (save_pretrained).",
            spec,
            "pass a folder saved by transformers",
        )
    return model_type


@functools.lru_cache(maxsize=8)
def _gguf_metadata(path: str, size: int, mtime_ns: int) -> tuple[str | None, bool]:
    """``(general.architecture, has a chat template)`` of a GGUF, cached per file version.

    The reader parses every metadata field (the vocabulary too): seconds for a large file, so
    it is read once per file and change, not once per check.
    """
    from gguf import GGUFReader

    reader = GGUFReader(path)
    field = reader.fields.get("general.architecture")
    architecture = field.contents() if field is not None else None
    template = reader.fields.get("tokenizer.chat_template")
    return (architecture if isinstance(architecture, str) else None), bool(template and template.contents())


def _read_gguf(path: Path, spec: str) -> tuple[str, bool]:
    try:
        stat = path.stat()
        architecture, has_template = _gguf_metadata(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except Exception as exc:  # the reader raises ValueError, struct and numpy errors on non-GGUF bytes
        raise _student_error(
            f"student {short_repr(spec)} is not a readable GGUF file ({type(exc).__name__}: "
            f"{short_repr(str(exc), quote=False)}). Fix: pass a .gguf file written by llama.cpp or the gguf package.",
            spec,
            "pass a valid .gguf file",
        ) from None
    if not architecture:
        raise _student_error(
            f"student GGUF {short_repr(spec)} names no general.architecture. Fix: pass a GGUF of a model.",
            spec,
            "pass a GGUF of a model",
        )
    return architecture, has_template


def _gguf_architecture(path: Path, spec: str) -> str:
    return _read_gguf(path, spec)[0]


def check_loadable(plan: StudentPlan, device: str) -> None:
    """Can the trainer load this student here: weights offline, files, architecture, device.

    Whether its prompts can be rendered (its own chat template, its family's default for a base
    model, or the ``chat_template`` setting) is checked in one place,
    ``train.student.student_preflight``, which the pipeline runs first."""
    from jupyter_distill.train.student import resolve_device

    if plan.source == "map":
        location = _map_entry_location(plan)
        if location.suffix.lower() != ".gguf":  # a package's GGUF is an instruct model the map vouches for
            _check_folder_student(location, plan.spec)
    elif plan.source == "gguf":
        _check_gguf_student(plan.path, plan.spec)  # type: ignore[arg-type]
    else:
        _check_folder_student(plan.path, plan.spec)  # type: ignore[arg-type]
    resolve_device(device)


def _map_entry_location(plan: StudentPlan) -> Path:
    """The GGUF a package ships or the hub-cache folder of a map entry, found without loading it."""
    from jupyter_distill.train.student import _folder_for_map_entry, _hub_cache_folder

    entry = plan.entry
    assert entry is not None
    local = next((m for m in models.LOCAL_MODELS.values() if m.student_key == entry.key and m.instruct), None)
    if entry.offline_source and local is not None:
        try:
            return models.resolve_local_gguf(local.name)
        except ConfigError as exc:
            raise _student_error(str(exc), entry.key, exc.fix or "install the package") from None
    cached = _hub_cache_folder(entry.hf_id)
    if cached is not None:
        return cached
    # Neither a package GGUF nor a cached snapshot: the trainer's own lookup raises its
    # "not available offline" error (with the download command) without loading anything.
    folder, *_ = _folder_for_map_entry(entry)
    return folder


def _check_folder_student(folder: Path, spec: str) -> None:
    architecture = _folder_architecture(folder, spec)
    if not any(folder.glob("*.safetensors")):
        raise _student_error(
            f"student folder {short_repr(str(folder))} has no *.safetensors weights. jupyter-distill loads only "
            "safetensors (pickled .bin weights can run code when loaded). Fix: convert the weights, e.g. "
            "`model.save_pretrained(folder, safe_serialization=True)` in a trusted environment.",
            spec,
            "provide safetensors weights",
        )
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise _student_error(
            f"student folder {short_repr(str(folder))} has no tokenizer files. Fix: save the tokenizer into it "
            "(tokenizer.save_pretrained(folder)).",
            spec,
            "save the tokenizer into the folder",
        )
    _check_trainable_architecture(architecture, spec)


def _check_gguf_student(path: Path, spec: str) -> None:
    architecture, _ = _read_gguf(path, spec)
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES as readable
    except ImportError:  # another transformers layout: the trainer reports it when it loads
        readable = [architecture]
    if architecture not in readable:
        raise _student_error(
            f"student GGUF {short_repr(spec)} has architecture {architecture!r}, which transformers cannot turn into "
            f"a trainable model. Fix: use a GGUF of {', '.join(sorted(readable)[:12])}, ... or "
            "pass an HF folder.",
            spec,
            "pass an HF folder with safetensors weights",
        )


def _check_trainable_architecture(architecture: str, spec: str) -> None:
    """transformers must know the architecture as a causal LM: remote code is never run."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # another transformers layout: the trainer reports it when it loads
        return
    if architecture not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise _student_error(
            f"student {short_repr(spec)} has architecture {architecture!r}, which the installed transformers cannot "
            "train as a causal language model (and remote code is never run). Fix: use a supported architecture "
            "(llama, qwen2, qwen3, gemma3, ...) or upgrade transformers.",
            spec,
            "use a supported architecture",
        )


# ---------------------------------------------------------------------------------- the rest
def check_alias(alias: str) -> None:
    """The registry's own name rules, and a registry folder that can be written."""
    from jupyter_distill.serving.registry import registry_dir, validate_name

    validate_name(alias)
    _check_writable(registry_dir(), "alias", alias, "set JUPYTER_DISTILL_HOME to a folder you can write to")


def check_judge(judge: Any) -> None:
    """A verifier is called as ``fn(row, response)``: one that cannot be would fail every judgment."""
    verifier = getattr(judge, "verifier", None)
    fn = getattr(verifier, "fn", None)
    if fn is None:
        return
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: it is called and judged as it goes
        return
    try:
        signature.bind({}, "")
    except TypeError:
        name = getattr(judge, "id", None) or type(fn).__name__
        raise JudgeError(
            f"the verifier {short_repr(name)} cannot be called as verifier(row, response): its signature is "
            f"{short_repr(str(signature), quote=False)}. Fix: define it as `def check(row, response) -> float | bool`.",
            field="judge",
            value=name,
            fix="accept (row, response)",
        ) from None


def check_workdir(workdir: str | os.PathLike[str], run_name: str) -> None:
    """Run outputs go to ``workdir/runs/NAME``: it (or its nearest existing folder) must be writable."""
    _check_writable(Path(workdir).expanduser() / "runs" / run_name, "workdir", str(workdir), "pass another workdir=")


def _check_writable(target: Path, field: str, value: str, fix: str) -> None:
    existing = target.absolute()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{field} {short_repr(value)}: {short_repr(str(existing))} is a file, so {short_repr(str(target))} "
            f"cannot be created. Fix: move the file aside or {fix}.",
            field=field,
            value=value,
            fix=fix,
        )
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".jd-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"{field} {short_repr(value)}: cannot write in {short_repr(str(existing))} ({exc.strerror}). Fix: {fix}.",
            field=field,
            value=value,
            fix=fix,
        ) from None


__all__ = [
    "StudentPlan",
    "check_alias",
    "check_judge",
    "check_loadable",
    "check_run",
    "check_scoring_teacher",
    "check_workdir",
    "read_student",
]
