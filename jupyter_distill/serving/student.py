"""``completion(model=alias_or_student, ...)`` and the ``Student``: the payoff of a distillation run.

An app calls ``completion(model="ticket-classifier", messages=[...])`` and gets an OpenAI-shaped
answer from the local student at no per-call cost, so swapping an API model for the student is a
one-word change. Loading a model costs seconds (the first-call column of the serving table in
``docs/benchmarks.md``), so loaded models stay in per-process LRU caches (``runtime.use_llama``
for GGUF files, :data:`_HF_CACHE` for PEFT/HF folders) and only the first call pays the load.

Backends: ``gguf`` (llama-cpp-python, the chat template stored in the GGUF), ``peft``
(transformers + adapter, safetensors only, never ``trust_remote_code``) and ``openai-compatible``
(httpx to ``base_url``; the key comes from the environment variable the alias names).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jupyter_distill.core import runtime
from jupyter_distill.core.errors import AliasError, ConfigError, ExportError
from jupyter_distill.core.hashing import file_sha256
from jupyter_distill.serving import registry

Messages = list[dict[str, Any]]
STUDENT_FORMAT = "jupyter-distill-student"
STUDENT_SCHEMA_VERSION = 1


# ---------------------------------------------------------------------------------------- response objects
class OpenAIObject(dict):
    """A dict that also answers attribute access (``resp.choices[0].message.content``).

    Being a real dict keeps ``json.dumps(resp)`` and ``resp["usage"]`` working; the extras
    ``_cost``, ``_latency_ms`` and ``_routing`` are attributes outside the dict, so serialising a
    response gives a clean OpenAI body.
    """

    def __init__(self, data: dict[str, Any] | None = None, **extras: Any):
        super().__init__({k: _wrap(v) for k, v in (data or {}).items()})
        for key, value in extras.items():
            object.__setattr__(self, key, value)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        if isinstance(key, str) and key.startswith("_") and not dict.__contains__(self, key) and key in self.__dict__:
            return self.__dict__[key]
        return dict.__getitem__(self, key)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self[name] = _wrap(value)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self))


def _wrap(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, OpenAIObject):
        return OpenAIObject(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _messages(messages: Any) -> Messages:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if isinstance(messages, dict):
        return [dict(messages)]
    try:
        out = [dict(m) for m in messages]
    except (TypeError, ValueError):
        raise ConfigError(
            f"messages must be a string or a list of {{'role', 'content'}} dicts, got {type(messages).__name__}.",
            field="messages",
            value=type(messages).__name__,
        ) from None
    for i, m in enumerate(out):
        if "role" not in m or "content" not in m:
            raise ConfigError(
                f"messages[{i}] needs 'role' and 'content', got keys {sorted(m)}. "
                "Fix: e.g. {'role': 'user', 'content': 'Hello'}.",
                field=f"messages[{i}]",
                value=sorted(m),
            )
    return out


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


def _model_name(route: dict[str, Any]) -> str:
    return route.get("name") or route.get("alias") or Path(str(route.get("model_path", "student"))).name


def _routing_info(route: dict[str, Any]) -> dict[str, Any]:
    info = {"backend": route["backend"], "alias": route.get("alias")}
    info["path"] = route.get("model_path") or route.get("base_url")
    if route.get("base_model"):
        info["base_model"] = route["base_model"]
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
    msgs = _messages(messages)
    backend = route["backend"]
    if backend == "gguf":
        result = _gguf_completion(route, msgs, max_tokens, temperature, stream, kw)
    elif backend == "peft":
        result = _hf_completion(route, msgs, max_tokens, temperature, stream, kw)
    elif backend == "openai-compatible":
        result = _remote_completion(route, msgs, max_tokens, temperature, stream, kw)
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


# ---------------------------------------------------------------------------------------- gguf backend
def _gguf_completion(
    route: dict[str, Any], msgs: Messages, max_tokens: int, temperature: float, stream: bool, kw: dict[str, Any]
) -> Any:
    path = route["model_path"]
    n_ctx = int(route.get("n_ctx", 2048))
    threads = route.get("n_threads")  # alias extra: e.g. 1 on a busy shared machine (first load wins)
    n_threads = int(threads) if threads else None
    name = _model_name(route)
    args = {"messages": msgs, "max_tokens": max_tokens, "temperature": temperature, **kw}
    if not stream:
        with runtime.use_llama(path, n_ctx=n_ctx, n_threads=n_threads) as llm:
            out = dict(llm.create_chat_completion(**args))
        out["model"] = name
        out["_cost"] = 0.0
        return out
    runtime.ensure_loaded(path, n_ctx=n_ctx, n_threads=n_threads)  # a bad file fails here, not at a chunk

    def chunks() -> Iterator[dict[str, Any]]:
        # The model is held (locked, never closed by an eviction) until the stream ends or is closed.
        with runtime.use_llama(path, n_ctx=n_ctx, n_threads=n_threads) as llm:
            for chunk in llm.create_chat_completion(stream=True, **args):
                yield {**chunk, "model": name, "_cost": 0.0}

    return chunks()


# ---------------------------------------------------------------------------------------- peft / HF backend
class _HFModel:
    """A loaded transformers model (with its adapter) and the lock to hold while generating."""

    def __init__(self, model: Any, tokenizer: Any, device: str):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.lock = threading.RLock()


_HF_CACHE: OrderedDict[tuple[str, str | None], _HFModel] = OrderedDict()
_HF_CACHE_LOCK = threading.Lock()
_HF_LOAD_LOCK = threading.Lock()
HF_LOAD_COUNT: dict[tuple[str, str | None], int] = {}


def _require_safetensors(folder: Path, what: str) -> None:
    if not any(folder.glob("*.safetensors")):
        raise AliasError(
            f"{what} {str(folder)!r} has no .safetensors weights; pickle (.bin) weights are never loaded. "
            "Fix: re-save it with safe_serialization=True.",
            field="model_path",
            value=str(folder),
        )


def _load_hf(model_path: str, base_model: str | None) -> _HFModel:
    """Load (once per process, LRU-bounded) an adapter on its base, or a plain HF folder."""
    key = (model_path, base_model)
    with _HF_CACHE_LOCK:
        if key in _HF_CACHE:
            _HF_CACHE.move_to_end(key)
            return _HF_CACHE[key]
    with _HF_LOAD_LOCK:
        with _HF_CACHE_LOCK:
            if key in _HF_CACHE:
                return _HF_CACHE[key]
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        folder = Path(model_path)
        is_adapter = (folder / "adapter_config.json").is_file()
        if is_adapter and not base_model:
            named = registry.adapter_base_model(folder)
            if not named or not (Path(named) / "config.json").is_file():
                raise AliasError(
                    f"the adapter {str(folder)!r} names base model {named!r}, which is not a local HF folder. "
                    "Fix: pass base_model=<the local folder it was trained on> (no hub downloads at serve time).",
                    field="base_model",
                    value=named,
                )
            base_model = named
        weights_folder = Path(base_model) if is_adapter and base_model else folder
        _require_safetensors(weights_folder, "model folder")
        model = AutoModelForCausalLM.from_pretrained(
            str(weights_folder), dtype=dtype, trust_remote_code=False, use_safetensors=True
        )
        if is_adapter:
            from peft import PeftModel

            _require_safetensors(folder, "adapter folder")
            model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        model.to(device).eval()
        tok_src = folder if (folder / "tokenizer_config.json").is_file() else weights_folder
        tokenizer = AutoTokenizer.from_pretrained(str(tok_src), trust_remote_code=False)
        loaded = _HFModel(model, tokenizer, device)
        HF_LOAD_COUNT[key] = HF_LOAD_COUNT.get(key, 0) + 1
        with _HF_CACHE_LOCK:
            _HF_CACHE[key] = loaded
            while len(_HF_CACHE) > runtime.MAX_LOADED:
                _HF_CACHE.popitem(last=False)
        return loaded


def loaded_models() -> list[str]:
    """Every model loaded in this process: GGUF files and PEFT/HF folders."""
    with _HF_CACHE_LOCK:
        hf = [path if base is None else f"{path} (on {base})" for path, base in _HF_CACHE]
    return [*runtime.loaded_models(), *hf]


def release_all() -> None:
    """Drop every cached model (tests, freeing memory in a long kernel)."""
    runtime.release_all()
    with _HF_CACHE_LOCK:
        _HF_CACHE.clear()


def _hf_generate(
    loaded: _HFModel, msgs: Messages, max_tokens: int, temperature: float, kw: dict[str, Any]
) -> Iterator[tuple[str, str | None, dict[str, int]]]:
    """Yield (text delta, finish_reason or None, usage) one token at a time.

    One loop serves both streamed and whole answers, so the chunks of a stream always
    concatenate to exactly the non-streamed text. Deltas are cut on whole characters: a token
    that ends inside a UTF-8 sequence waits for the next one.
    """
    import torch

    tok, model = loaded.tokenizer, loaded.model
    if tok.chat_template:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
    else:
        prompt = tok("\n".join(str(m["content"]) for m in msgs))["input_ids"]
    eos = model.generation_config.eos_token_id
    stop_ids = {*(eos if isinstance(eos, list) else [eos]), tok.eos_token_id} - {None}
    top_p = float(kw.get("top_p", 1.0))
    generator = torch.Generator(device=loaded.device)
    if kw.get("seed") is not None:
        generator.manual_seed(int(kw["seed"]))
    usage = {"prompt_tokens": len(prompt), "completion_tokens": 0, "total_tokens": len(prompt)}
    generated: list[int] = []
    emitted = ""
    past = None
    current = torch.tensor([prompt], device=loaded.device)
    finish = "length"
    with loaded.lock, torch.inference_mode():
        for _ in range(max_tokens):
            out = model(input_ids=current, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1].float()
            if temperature <= 0:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                if top_p < 1.0:
                    sorted_p, order = probs.sort(descending=True)
                    keep = sorted_p.cumsum(0) - sorted_p < top_p
                    probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
                token = int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
            if token in stop_ids:
                finish = "stop"
                break
            generated.append(token)
            usage["completion_tokens"] += 1
            usage["total_tokens"] += 1
            text = tok.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            if text.endswith("\ufffd") or not text.startswith(emitted):
                current = torch.tensor([[token]], device=loaded.device)
                continue
            delta, emitted = text[len(emitted) :], text
            if delta:
                yield delta, None, dict(usage)
            current = torch.tensor([[token]], device=loaded.device)
    yield "", finish, dict(usage)


def _hf_completion(
    route: dict[str, Any], msgs: Messages, max_tokens: int, temperature: float, stream: bool, kw: dict[str, Any]
) -> Any:
    loaded = _load_hf(route["model_path"], route.get("base_model"))
    name = _model_name(route)
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if not stream:
        parts: list[str] = []
        finish: str = "length"
        usage: dict[str, int] = {}
        for delta, fin, step_usage in _hf_generate(loaded, msgs, max_tokens, temperature, kw):
            parts.append(delta)
            finish, usage = fin or finish, step_usage
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts)},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
            "_cost": 0.0,
        }

    def chunks() -> Iterator[dict[str, Any]]:
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name, "_cost": 0.0}
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        for delta, fin, _usage in _hf_generate(loaded, msgs, max_tokens, temperature, kw):
            if fin is None:
                yield {**base, "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}]}
            else:
                yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": fin}]}

    return chunks()


# ---------------------------------------------------------------------------------------- remote backend
_HTTP: Any = None
_HTTP_LOCK = threading.Lock()


def _http() -> Any:
    """One pooled httpx client per process: keep-alive makes warm calls cheap."""
    global _HTTP
    import httpx

    with _HTTP_LOCK:
        if _HTTP is None or _HTTP.is_closed:
            _HTTP = httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0))
        return _HTTP


def _remote_headers(route: dict[str, Any]) -> dict[str, str]:
    env = route.get("api_key_env")
    if not env:
        return {}
    key = os.environ.get(env)
    if not key:
        raise AliasError(
            f"alias {route.get('name')!r} reads its API key from the environment variable {env!r}, which is not set. "
            f"Fix: export {env}=... before starting the kernel (or os.environ[{env!r}] = ...).",
            field="api_key_env",
            value=env,
        )
    return {"Authorization": f"Bearer {key}"}


def _remote_cost(route: dict[str, Any], usage: dict[str, Any] | None) -> float | None:
    """The cost the server reports, else the alias's per-million prices, else unknown (None)."""
    usage = usage or {}
    if isinstance(usage.get("cost"), int | float):
        return float(usage["cost"])
    pin, pout = route.get("input_usd_per_m"), route.get("output_usd_per_m")
    if pin is None or pout is None:
        return None
    return (usage.get("prompt_tokens", 0) * float(pin) + usage.get("completion_tokens", 0) * float(pout)) / 1e6


def _remote_secrets(route: dict[str, Any]) -> list[str]:
    env = route.get("api_key_env")
    key = os.environ.get(env) if isinstance(env, str) and env else None
    return [key] if key else []


def _remote_error(route: dict[str, Any], detail: str) -> AliasError:
    # Servers echo the key back ("Incorrect API key provided: sk-..."): never let it through.
    from jupyter_distill.teachers.base import redact

    detail = redact(detail, _remote_secrets(route))
    return AliasError(
        f"alias {route.get('name')!r}: the server at {route['base_url']} failed: {detail}. Fix: check that the "
        f"server runs and serves model {route.get('model')!r}, and the key in ${route.get('api_key_env') or '-'}.",
        field="base_url",
        value=route["base_url"],
    )


def _remote_json(route: dict[str, Any], text: str) -> dict[str, Any]:
    """A JSON object from the upstream server, or the ``AliasError`` that says it sent something else."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise _remote_error(route, f"it answered with a body that is not a JSON object: {text[:120]!r}")
    return data


def _remote_completion(
    route: dict[str, Any], msgs: Messages, max_tokens: int, temperature: float, stream: bool, kw: dict[str, Any]
) -> Any:
    import httpx

    url = f"{route['base_url']}/chat/completions"
    body = {"model": route["model"], "messages": msgs, "max_tokens": max_tokens, "temperature": temperature, **kw}
    headers = _remote_headers(route)
    name = _model_name(route)
    client = _http()
    if not stream:
        try:
            response = client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _remote_error(route, f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise _remote_error(route, f"HTTP {response.status_code}: {response.text[:300]}")
        data = _remote_json(route, response.text)
        data["model"] = name
        data["_cost"] = _remote_cost(route, data.get("usage"))
        return data

    def chunks() -> Iterator[dict[str, Any]]:
        try:
            with client.stream("POST", url, json={**body, "stream": True}, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _remote_error(route, f"HTTP {response.status_code}: {response.text[:300]}")
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = _remote_json(route, payload)
                    chunk["model"] = name
                    chunk["_cost"] = _remote_cost(route, chunk.get("usage")) if chunk.get("usage") else 0.0
                    yield chunk
        except httpx.HTTPError as exc:
            raise _remote_error(route, f"{type(exc).__name__}: {exc}") from None

    return chunks()


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
        adapter_dir: str | Path | None = None,
        base_model: str | Path | None = None,
        merged_dir: str | Path | None = None,
        metrics: dict[str, Any] | None = None,
        name: str | None = None,
        card_path: str | Path | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self.gguf_path = Path(gguf_path).resolve() if gguf_path else None
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
        """The student behind an :class:`~jupyter_distill.export.gguf_export.ExportResult` (GGUF-backed)."""
        merged = dict(metrics or {})
        for qtype, value in result.agreement.items():
            merged.setdefault(f"export_agreement_{qtype}", value)
        return cls(
            result.gguf,
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
            return {"backend": "gguf", "alias": None, "name": self.name, "model_path": str(self.gguf_path)}
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


__all__ = ["OpenAIObject", "Student", "completion", "loaded_models", "release_all"]
