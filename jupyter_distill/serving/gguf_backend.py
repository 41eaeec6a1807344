"""The ``gguf`` backend: a chat completion from a GGUF file through llama-cpp-python.

The chat template stored in the GGUF renders the prompt. Loaded files stay in the per-process LRU
cache of :mod:`jupyter_distill.core.runtime`, so only the first call pays the load.

An alias may name a LoRA GGUF (``lora_path``) over its base GGUF (``model_path``). Several such
aliases share one loaded base: llama.cpp loads each adapter once onto the base model
(``llama_adapter_lora_init``) and a request switches the context's adapter set
(``llama_set_adapters_lora``, a no-op when it is already the one asked for). Giving each alias its
own ``Llama(lora_path=...)`` would load the base once per alias, and without mmap (the
constructor turns mmap off when it is given a LoRA).

The base model is shared with every other caller of ``runtime.use_llama`` (held-out evaluation,
a local teacher, a plain alias of the same file), so a request that applies an adapter removes it
and forgets the evaluated tokens before it gives the model's lock back: outside such a block the
model is always the plain base, and no cached KV state computed under one adapter is reused under
another.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jupyter_distill.core import runtime
from jupyter_distill.core.errors import ExportError
from jupyter_distill.serving.response import Messages, model_name

# Loaded adapters per base model: llama.cpp frees them with the model, so they live exactly as long
# as the ``Llama`` they were loaded onto, and the map forgets a model once it is collected.
_adapters: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_adapters_lock = threading.Lock()


def _adapter(llm: Any, lora_path: str) -> Any:
    """The adapter ``lora_path`` loaded onto ``llm``'s model (loaded on first use). Call under the model's lock."""
    import llama_cpp

    key = str(Path(lora_path).resolve())
    with _adapters_lock:
        loaded = _adapters.setdefault(llm, {})
        if key in loaded:
            return loaded[key]
    if not Path(key).is_file():
        raise ExportError(
            f"LoRA GGUF {key!r} does not exist. Fix: re-export the adapter (export='adapter') and set the alias again.",
            field="lora_path",
            value=key,
        )
    adapter = llama_cpp.llama_adapter_lora_init(llm.model, key.encode("utf-8"))
    if not adapter:
        raise ExportError(
            f"llama.cpp could not load the LoRA GGUF {key!r} onto {llm.model_path!r} (an adapter of another "
            "base model, or not a LoRA GGUF). Fix: point the alias at the base GGUF the adapter was exported with.",
            field="lora_path",
            value=key,
        )
    with _adapters_lock:
        _adapters.setdefault(llm, {})[key] = adapter
    return adapter


def _set_adapters(llm: Any, adapters: list[Any], scales: list[float]) -> None:
    import ctypes

    import llama_cpp

    if adapters:
        array = (llama_cpp.llama_adapter_lora_p_ctypes * len(adapters))(*adapters)
        weights = (ctypes.c_float * len(scales))(*scales)
        rc = llama_cpp.llama_set_adapters_lora(llm.ctx, array, len(adapters), weights)
    else:
        rc = llama_cpp.llama_set_adapters_lora(llm.ctx, None, 0, None)
    if rc != 0:
        raise ExportError(
            f"llama.cpp refused to apply the LoRA adapters to {llm.model_path!r} (return code {rc}).",
            field="lora_path",
            value=rc,
        )


@contextmanager
def use_gguf(
    path: str, *, lora_path: str | None = None, lora_scale: float = 1.0, n_ctx: int = 2048, n_threads: int | None = None
) -> Iterator[Any]:
    """The cached base model of ``path`` with ``lora_path`` applied, held exclusively for the block.

    Without ``lora_path`` this is ``runtime.use_llama``. With it, the adapter is applied for the
    block only: on the way out it is removed and the evaluated tokens are dropped, so the next
    user of the shared base (another adapter, the plain base) starts from a clean context.
    """
    with runtime.use_llama(path, n_ctx=n_ctx, n_threads=n_threads) as llm:
        if not lora_path:
            yield llm
            return
        adapter = _adapter(llm, lora_path)
        llm.reset()  # tokens evaluated without this adapter are not a prefix to reuse under it
        _set_adapters(llm, [adapter], [float(lora_scale)])
        try:
            yield llm
        finally:
            _set_adapters(llm, [], [])
            llm.reset()


def loaded_adapters(path: str, *, n_ctx: int = 2048) -> list[str]:
    """The LoRA GGUFs loaded onto the cached base model of ``path`` (status displays and tests)."""
    with runtime.use_llama(path, n_ctx=n_ctx) as llm, _adapters_lock:
        return sorted(_adapters.get(llm, {}))


def gguf_completion(
    route: dict[str, Any], msgs: Messages, max_tokens: int, temperature: float, stream: bool, kw: dict[str, Any]
) -> Any:
    path = route["model_path"]
    n_ctx = int(route.get("n_ctx", 2048))
    threads = route.get("n_threads")  # alias extra: e.g. 1 on a busy shared machine (first load wins)
    n_threads = int(threads) if threads else None
    lora = {"lora_path": route.get("lora_path"), "lora_scale": float(route.get("lora_scale", 1.0))}
    name = model_name(route)
    args = {"messages": msgs, "max_tokens": max_tokens, "temperature": temperature, **kw}
    if not stream:
        with use_gguf(path, n_ctx=n_ctx, n_threads=n_threads, **lora) as llm:
            out = dict(llm.create_chat_completion(**args))
        out["model"] = name
        out["_cost"] = 0.0
        return out
    runtime.ensure_loaded(path, n_ctx=n_ctx, n_threads=n_threads)  # a bad file fails here, not at a chunk

    def chunks() -> Iterator[dict[str, Any]]:
        # The model is held (locked, never closed by an eviction) until the stream ends or is closed.
        with use_gguf(path, n_ctx=n_ctx, n_threads=n_threads, **lora) as llm:
            for chunk in llm.create_chat_completion(stream=True, **args):
                yield {**chunk, "model": name, "_cost": 0.0}

    return chunks()


__all__ = ["gguf_completion", "loaded_adapters", "use_gguf"]
