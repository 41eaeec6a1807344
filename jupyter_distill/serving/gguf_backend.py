"""The ``gguf`` backend: a chat completion from a GGUF file through llama-cpp-python.

The chat template stored in the GGUF renders the prompt. Loaded files stay in the per-process LRU
cache of :mod:`jupyter_distill.core.runtime`, so only the first call pays the load.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jupyter_distill.core import runtime
from jupyter_distill.serving.response import Messages, model_name


def gguf_completion(
    route: dict[str, Any], msgs: Messages, max_tokens: int, temperature: float, stream: bool, kw: dict[str, Any]
) -> Any:
    path = route["model_path"]
    n_ctx = int(route.get("n_ctx", 2048))
    threads = route.get("n_threads")  # alias extra: e.g. 1 on a busy shared machine (first load wins)
    n_threads = int(threads) if threads else None
    name = model_name(route)
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


__all__ = ["gguf_completion"]
