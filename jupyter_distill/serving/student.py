"""``completion(model=alias_or_student, ...)`` and the ``Student``: the payoff of a distillation run.

An app calls ``completion(model="ticket-classifier", messages=[...])`` and gets an OpenAI-shaped
answer from the local student at no per-call cost, so swapping an API model for the student is a
one-word change. Loading a model costs seconds (the first-call column of the serving table in
``docs/benchmarks.md``), so loaded models stay in per-process LRU caches (``runtime.use_llama``
for GGUF files, the cache of :mod:`jupyter_distill.serving.hf_backend` for PEFT/HF folders) and
only the first call pays the load.

Backends: ``gguf`` (llama-cpp-python, the chat template stored in the GGUF), ``peft``
(transformers + adapter, safetensors only, never ``trust_remote_code``) and ``openai-compatible``
(httpx to ``base_url``; the key comes from the environment variable the alias names); each is a
module of this package, and :func:`completion` routes a request to one of them.
"""

from __future__ import annotations

import html
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import AliasError, ExportError
from jupyter_distill.core.hashing import file_sha256
from jupyter_distill.serving import registry
from jupyter_distill.serving.gguf_backend import gguf_completion
from jupyter_distill.serving.hf_backend import hf_completion
from jupyter_distill.serving.remote_backend import remote_completion
from jupyter_distill.serving.response import OpenAIObject, normalize_messages

STUDENT_FORMAT = "jupyter-distill-student"
STUDENT_SCHEMA_VERSION = 1


# ---------------------------------------------------------------------------------------- routing
def _route(model: Any) -> dict[str, Any]:
    """Where a request goes: the alias entry (plus its name), or a Student's own files."""
    if isinstance(model, Student):
        return model._routing()
    if isinstance(model, str | Path):
        text = str(model)
        if text.endswith(".gguf") and Path(text).expanduser().is_file():
            return {"backend": "gguf", "alias": None, "model_path": str(Path(text).expanduser().resolve())}
        if isinstance(model, str):
            return {**registry.get_alias(text), "alias": text}
    raise AliasError(
        f"model must be an alias name, a .gguf path or a Student, got {type(model).__name__}.",
        field="model",
        value=repr(model)[:80],
    )


def _routing_info(route: dict[str, Any]) -> dict[str, Any]:
    info = {"backend": route["backend"], "alias": route.get("alias")}
    info["path"] = route.get("model_path") or route.get("base_url")
    if route.get("base_model"):
        info["base_model"] = route["base_model"]
    if route.get("lora_path"):
        info["lora_path"] = route["lora_path"]
    if route["backend"] == "openai-compatible":
        info["remote_model"] = route.get("model")
    return info


def completion(
    model: Any,
    messages: Any,
    max_tokens: int = 256,
    temperature: float = 0.0,
    stream: bool = False,
    **kw: Any,
) -> Any:
    """An OpenAI-shaped chat completion from an alias, a Student or a .gguf path.

    Returns an :class:`OpenAIObject` (``id``, ``object="chat.completion"``, ``created``, ``model``,
    ``choices[].message``, ``finish_reason``, ``usage``) with ``_cost``, ``_latency_ms`` and
    ``_routing``; with ``stream=True`` an iterator of ``chat.completion.chunk`` objects whose
    ``delta.content`` pieces concatenate to the same answer. Extra keywords (``seed``, ``top_p``,
    ``stop``...) go to the backend.
    """
    t0 = time.perf_counter()
    route = _route(model)
    msgs = normalize_messages(messages)
    backend = route["backend"]
    if backend == "gguf":
        result = gguf_completion(route, msgs, max_tokens, temperature, stream, kw)
    elif backend == "peft":
        result = hf_completion(route, msgs, max_tokens, temperature, stream, kw)
    elif backend == "openai-compatible":
        result = remote_completion(route, msgs, max_tokens, temperature, stream, kw)
    else:
        raise AliasError(
            f"alias {route.get('name')!r} has unknown backend {backend!r}. Fix: set it again with one of "
            f"{', '.join(registry.BACKENDS)}.",
            field="backend",
            value=backend,
        )
    routing = _routing_info(route)
    if stream:
        return _decorate_stream(result, routing, t0)
    cost = result.pop("_cost", 0.0)
    return OpenAIObject(result, _cost=cost, _latency_ms=(time.perf_counter() - t0) * 1000, _routing=routing)


def _decorate_stream(chunks: Iterator[dict[str, Any]], routing: dict[str, Any], t0: float) -> Iterator[OpenAIObject]:
    for chunk in chunks:
        cost = chunk.pop("_cost", 0.0)
        yield OpenAIObject(chunk, _cost=cost, _latency_ms=(time.perf_counter() - t0) * 1000, _routing=routing)


# ---------------------------------------------------------------------------------------- Student
class Student:
    """A distilled model you can call, save, load and deploy under an alias.

    Backed by a GGUF file when one was exported (fast CPU inference through llama.cpp), else by
    a PEFT adapter on its base model, else by a merged HF folder.
    """

    def __init__(
        self,
        gguf_path: str | Path | None = None,
        *,
        lora_path: str | Path | None = None,
        adapter_dir: str | Path | None = None,
        base_model: str | Path | None = None,
        merged_dir: str | Path | None = None,
        metrics: dict[str, Any] | None = None,
        name: str | None = None,
        card_path: str | Path | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self.gguf_path = Path(gguf_path).resolve() if gguf_path else None
        self.lora_path = Path(lora_path).resolve() if lora_path and gguf_path else None  # a LoRA GGUF over gguf_path
        self.adapter_dir = Path(adapter_dir).resolve() if adapter_dir else None
        self.base_model = str(base_model) if base_model else None
        self.merged_dir = Path(merged_dir).resolve() if merged_dir else None
        self.name = name or (self.gguf_path.stem if self.gguf_path else "student")
        self.card_path = Path(card_path).resolve() if card_path else None
        self.metadata = dict(metadata or {})
        self._metrics = dict(metrics or {})
        if not (self.gguf_path or self.adapter_dir or self.merged_dir):
            raise ExportError(
                "a Student needs a model: gguf_path=, adapter_dir= (with base_model=) or merged_dir=.",
                field="gguf_path",
                value=None,
            )

    @classmethod
    def from_export(
        cls,
        result: Any,
        *,
        metrics: dict[str, Any] | None = None,
        base_model: str | Path | None = None,
        name: str | None = None,
    ) -> Student:
        """The student behind an :class:`~jupyter_distill.export.gguf.ExportResult` (GGUF-backed)."""
        merged = dict(metrics or {})
        for qtype, value in result.agreement.items():
            merged.setdefault(f"export_agreement_{qtype}", value)
        return cls(
            result.gguf,
            lora_path=result.files.get("gguf_lora"),
            adapter_dir=result.adapter_dir,
            base_model=base_model,
            merged_dir=result.merged_dir,
            metrics=merged,
            name=name,
            card_path=result.card,
            metadata={"export": result.to_dict()},
        )

    @property
    def metrics(self) -> dict[str, Any]:
        """Training, evaluation and export numbers (a copy)."""
        return dict(self._metrics)

    @property
    def backend(self) -> str:
        return "gguf" if self.gguf_path else "peft"

    def _routing(self) -> dict[str, Any]:
        if self.gguf_path:
            route = {"backend": "gguf", "alias": None, "name": self.name, "model_path": str(self.gguf_path)}
            return {**route, "lora_path": str(self.lora_path)} if self.lora_path else route
        if self.adapter_dir and self.base_model:
            return {
                "backend": "peft",
                "alias": None,
                "name": self.name,
                "model_path": str(self.adapter_dir),
                "base_model": self.base_model,
            }
        path = self.merged_dir or self.adapter_dir
        return {"backend": "peft", "alias": None, "name": self.name, "model_path": str(path)}

    def __call__(
        self, prompt: str | Sequence[dict[str, Any]], *, max_tokens: int = 256, temperature: float = 0.0, **kw: Any
    ) -> str:
        """The student's answer to a prompt string or a list of chat messages."""
        resp = completion(self, prompt, max_tokens=max_tokens, temperature=temperature, **kw)
        return resp.choices[0].message.content or ""

    def completion(self, messages: Any, **kw: Any) -> Any:
        """Same as ``completion(model=self, ...)``."""
        return completion(self, messages, **kw)

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write a self-contained folder: the GGUF, the adapter (if any), README.md, metadata.json.

        The folder is built beside its destination and renamed into place, so an interrupted save
        never leaves a folder that :meth:`load` would accept. An existing non-student folder is
        never overwritten.
        """
        dest = Path(path).expanduser().resolve()
        if dest.exists() and any(dest.iterdir()) and not (dest / "metadata.json").is_file():
            raise ExportError(
                f"{str(dest)!r} exists and is not a saved student (no metadata.json). Fix: choose a new folder.",
                field="path",
                value=str(dest),
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.saving")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        files: dict[str, str] = {}
        meta: dict[str, Any] = {
            "format": STUDENT_FORMAT,
            "schema_version": STUDENT_SCHEMA_VERSION,
            "name": self.name,
            "backend": self.backend,
            "gguf": None,
            "adapter": None,
            "base_model": self.base_model,
            "metrics": self._metrics,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "extra": self.metadata,
        }
        if self.gguf_path:
            shutil.copy2(self.gguf_path, tmp / self.gguf_path.name)
            meta["gguf"] = self.gguf_path.name
        if self.gguf_path and self.lora_path:
            shutil.copy2(self.lora_path, tmp / self.lora_path.name)
            meta["lora"] = self.lora_path.name
        if self.adapter_dir and self.adapter_dir.is_dir():
            shutil.copytree(self.adapter_dir, tmp / "adapter")
            meta["adapter"] = "adapter"
        elif not self.gguf_path and self.merged_dir:
            shutil.copytree(self.merged_dir, tmp / "model")
            meta["merged"] = "model"
        if self.card_path and self.card_path.is_file():
            shutil.copy2(self.card_path, tmp / "README.md")
        else:
            (tmp / "README.md").write_text(self._card_text(), encoding="utf-8")
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                files[str(f.relative_to(tmp))] = file_sha256(f)
        meta["files"] = files
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        return dest

    def _card_text(self) -> str:
        lines = [f"# {self.name}", "", "A student model distilled with jupyter-distill.", ""]
        if self.base_model:
            lines.append(f"- base model: `{self.base_model}`")
        for key, value in self._metrics.items():
            lines.append(f"- {key}: {value}")
        return "\n".join(lines) + "\n"

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Student:
        """Open a folder written by :meth:`save`; ``verify`` re-checks every file's sha256."""
        folder = Path(path).expanduser().resolve()
        meta_path = folder / "metadata.json"
        if not meta_path.is_file():
            raise ExportError(
                f"{str(folder)!r} is not a saved student (no metadata.json). Fix: pass a folder written by "
                "student.save(path).",
                field="path",
                value=str(folder),
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != STUDENT_FORMAT or int(meta.get("schema_version", 0)) > STUDENT_SCHEMA_VERSION:
            raise ExportError(
                f"{str(meta_path)!r} has format {meta.get('format')!r} version {meta.get('schema_version')!r}; this "
                f"jupyter-distill reads {STUDENT_FORMAT!r} up to version {STUDENT_SCHEMA_VERSION}. Fix: upgrade.",
                field="metadata.json",
                value=meta.get("schema_version"),
            )
        for rel, digest in (meta.get("files") or {}).items():
            f = folder / rel
            if not f.is_file() or (verify and file_sha256(f) != digest):
                raise ExportError(
                    f"{str(f)!r} is missing or does not match its sha256 in metadata.json: the folder was modified "
                    "or copied incompletely. Fix: save the student again.",
                    field="files",
                    value=rel,
                )
        return cls(
            folder / meta["gguf"] if meta.get("gguf") else None,
            lora_path=folder / meta["lora"] if meta.get("lora") else None,
            adapter_dir=folder / meta["adapter"] if meta.get("adapter") else None,
            base_model=meta.get("base_model"),
            merged_dir=folder / meta["merged"] if meta.get("merged") else None,
            metrics=meta.get("metrics"),
            name=meta.get("name"),
            card_path=folder / "README.md" if (folder / "README.md").is_file() else None,
            metadata=meta.get("extra"),
        )

    def deploy(self, alias: str, **extra: Any) -> dict[str, Any]:
        """Register this student under ``alias`` so ``completion(model=alias)`` serves it."""
        run = self.metadata.get("run") if isinstance(self.metadata.get("run"), dict) else {}
        info = {"student": self.name, **({"workdir": str(run["workdir"])} if run.get("workdir") else {}), **extra}
        if self.gguf_path:
            if self.lora_path:
                info["lora_path"] = str(self.lora_path)
            return registry.set_alias(alias, backend="gguf", model_path=self.gguf_path, **info)
        route = self._routing()
        return registry.set_alias(
            alias, backend="peft", model_path=route["model_path"], base_model=route.get("base_model"), **info
        )

    # ---------------------------------------------------------------- display
    def _summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "backend": self.backend}
        if self.gguf_path:
            out["gguf"] = str(self.gguf_path)
            if self.lora_path:
                out["lora"] = str(self.lora_path)
            if self.gguf_path.is_file():
                out["size"] = f"{self.gguf_path.stat().st_size / 1e6:.1f} MB"
        if self.adapter_dir:
            out["adapter"] = str(self.adapter_dir)
        if self.base_model:
            out["base_model"] = self.base_model
        return out

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self._summary().items()]
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in list(self._metrics.items())[:6])
        if metrics:
            parts.append(f"metrics={{{metrics}}}")
        return f"Student({', '.join(parts)})"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        rows = [*self._summary().items(), *((k, _fmt(v)) for k, v in self._metrics.items())]
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        return {
            "text/plain": repr(self),
            "text/html": f"<div><b>Student</b> <code>{html.escape(self.name)}</code><table>{body}</table></div>",
        }


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


__all__ = ["Student", "completion"]
