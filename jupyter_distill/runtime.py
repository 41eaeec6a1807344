"""One llama.cpp model per file per process, shared by local teachers, evaluation and serving.

Loading a GGUF costs 0.1 s to seconds and hundreds of MB; the reference tool reloaded the model
on every completion call. Here every caller asks :func:`get_llama` and gets the same
``llama_cpp.Llama`` back, bounded by an LRU so a long-lived kernel does not accumulate models.
llama.cpp contexts are not re-entrant, so callers hold :func:`llama_lock` while generating.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from jupyter_distill.errors import ExportError

MAX_LOADED = int(os.environ.get("JUPYTER_DISTILL_MAX_LOADED_MODELS", "3"))
# llama.cpp's CPU "extra buffer types" (weight repacking, AMX) crash with a segfault on
# multi-token batches in llama-cpp-python 0.3.36 on AMX-capable CPUs; plain buffers are safe and
# barely slower for small models. Set JUPYTER_DISTILL_LLAMA_EXTRA_BUFTS=1 to turn them back on.
USE_EXTRA_BUFTS = os.environ.get("JUPYTER_DISTILL_LLAMA_EXTRA_BUFTS", "0") == "1"

_cache: OrderedDict[tuple[str, int], Any] = OrderedDict()
_locks: dict[tuple[str, int], threading.RLock] = {}
_cache_lock = threading.Lock()
_construct_lock = threading.Lock()


def _key(path: str | Path, n_ctx: int) -> tuple[str, int]:
    return (str(Path(path).resolve()), n_ctx)


def get_llama(path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None) -> Any:
    """The cached ``llama_cpp.Llama`` for ``path``; loads it on first use.

    Raises ``ExportError`` naming the file when llama.cpp cannot load it (missing file, not a
    GGUF, unsupported architecture), never a bare ``ValueError`` from llama.cpp.
    """
    key = _key(path, n_ctx)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    if not Path(key[0]).is_file():
        raise ExportError(
            f"GGUF file {key[0]!r} does not exist. Fix: check the path, or re-export the model.",
            field="model_path",
            value=key[0],
        )
    try:
        llm = load_llama(key[0], n_ctx=n_ctx, n_threads=n_threads)
    except Exception as exc:  # llama.cpp raises ValueError/RuntimeError with little detail
        raise ExportError(
            f"llama.cpp could not load {key[0]!r}: {exc}. Fix: check that the file is a complete GGUF "
            "(re-export it) and that its architecture is supported by llama-cpp-python.",
            field="model_path",
            value=key[0],
        ) from None
    with _cache_lock:
        if key in _cache:  # another thread won the race; keep one copy
            llm.close()
            return _cache[key]
        _cache[key] = llm
        _locks.setdefault(key, threading.RLock())
        while len(_cache) > MAX_LOADED:
            old_key, old = _cache.popitem(last=False)
            _locks.pop(old_key, None)
            old.close()
    return llm


def default_threads() -> int:
    """llama.cpp threads: ``JUPYTER_DISTILL_LLAMA_THREADS`` if set, else every core.

    On a machine shared with other busy processes fewer threads are faster (llama.cpp threads
    spin-wait for each other), so the override is there for such hosts.
    """
    value = os.environ.get("JUPYTER_DISTILL_LLAMA_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else max(1, os.cpu_count() or 1)


def load_llama(path: str, *, n_ctx: int = 2048, n_threads: int | None = None, **kwargs: Any) -> Any:
    """Construct a ``llama_cpp.Llama`` (uncached) with the safe buffer settings described above.

    ``Llama.__init__`` takes no argument for ``use_extra_bufts``, so the default model params
    are wrapped for the duration of the constructor, under a lock.
    """
    import llama_cpp
    import llama_cpp.llama as llama_module

    with _construct_lock:
        original = llama_module.llama_cpp.llama_model_default_params

        def safe_defaults() -> Any:
            params = original()
            params.use_extra_bufts = USE_EXTRA_BUFTS
            return params

        llama_module.llama_cpp.llama_model_default_params = safe_defaults
        try:
            return llama_cpp.Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_threads=n_threads or default_threads(),
                verbose=False,
                **kwargs,
            )
        finally:
            llama_module.llama_cpp.llama_model_default_params = original


def llama_lock(path: str | Path, *, n_ctx: int = 2048) -> threading.RLock:
    """The lock to hold while generating with the model of ``path``."""
    key = _key(path, n_ctx)
    with _cache_lock:
        return _locks.setdefault(key, threading.RLock())


def loaded_models() -> list[str]:
    """Paths of the models currently loaded (for status displays and tests)."""
    with _cache_lock:
        return [path for path, _ in _cache]


def release_all() -> None:
    """Close every cached model (tests, kernel shutdown)."""
    with _cache_lock:
        while _cache:
            _, llm = _cache.popitem()
            llm.close()
        _locks.clear()


# llama.cpp models closed by the garbage collector during interpreter shutdown find their free
# functions already torn down and print a TypeError traceback; close them while Python still runs.
atexit.register(release_all)
