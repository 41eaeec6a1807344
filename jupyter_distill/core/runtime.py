"""One llama.cpp model per file per process, shared by local teachers, evaluation and serving.

Loading a GGUF costs 0.1 s to seconds and hundreds of MB, so every caller asks :func:`use_llama`
and gets the same ``llama_cpp.Llama`` back, bounded by an LRU so a long-lived kernel does not
accumulate models. llama.cpp contexts are not re-entrant, so :func:`use_llama` holds the model's
lock for its block, and counts its users so that an eviction never closes a model in use.

The model lock is a plain (non re-entrant) lock on purpose: a streamed completion holds it inside a
generator, and a generator may be advanced, closed or garbage-collected on another thread than
the one that started it (``asyncio.to_thread(next, stream)``); a re-entrant lock can only be
released by its owner, so such a stream would leave the model locked forever. The price: a thread
that opens a second block on the same model inside the first (generating on a model while its
own stream is still open) waits for itself, so finish or ``close()`` a stream first.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import ExportError

MAX_LOADED = int(os.environ.get("JUPYTER_DISTILL_MAX_LOADED_MODELS", "3"))
# llama.cpp's CPU "extra buffer types" (weight repacking, AMX) crash with a segfault on
# multi-token batches in llama-cpp-python 0.3.36 on AMX-capable CPUs; plain buffers are safe and
# barely slower for small models. Set JUPYTER_DISTILL_LLAMA_EXTRA_BUFTS=1 to turn them back on.
USE_EXTRA_BUFTS = os.environ.get("JUPYTER_DISTILL_LLAMA_EXTRA_BUFTS", "0") == "1"


class _Entry:
    """A loaded model, the lock that serialises generation on it, and how many callers use it.

    Eviction only unlinks an entry from the cache; the entry is closed by whoever drops its last
    user, so a model is never freed while another thread generates on it.
    """

    __slots__ = ("closed", "evicted", "llm", "lock", "users")

    def __init__(self, llm: Any):
        self.llm = llm
        self.lock = threading.Lock()
        self.users = 0
        self.evicted = False
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.llm.close()


_cache: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
_cache_lock = threading.Lock()
_construct_lock = threading.Lock()


def _key(path: str | Path, n_ctx: int) -> tuple[str, int]:
    return (str(Path(path).resolve()), n_ctx)


def _load_checked(path: str, n_ctx: int, n_threads: int | None) -> Any:
    if not Path(path).is_file():
        raise ExportError(
            f"GGUF file {path!r} does not exist. Fix: check the path, or re-export the model.",
            field="model_path",
            value=path,
        )
    try:
        return load_llama(path, n_ctx=n_ctx, n_threads=n_threads)
    except Exception as exc:  # llama.cpp raises ValueError/RuntimeError with little detail
        raise ExportError(
            f"llama.cpp could not load {path!r}: {exc}. Fix: check that the file is a complete GGUF "
            "(re-export it) and that its architecture is supported by llama-cpp-python.",
            field="model_path",
            value=path,
        ) from None


def _acquire(path: str | Path, n_ctx: int, n_threads: int | None) -> _Entry:
    """The cached entry for ``path`` with one more user counted; loads the model on first use."""
    key = _key(path, n_ctx)
    with _cache_lock:
        entry = _cache.get(key)
        if entry is not None:
            _cache.move_to_end(key)
            entry.users += 1
            return entry
    llm = _load_checked(key[0], n_ctx, n_threads)
    doomed: list[_Entry] = []
    with _cache_lock:
        entry = _cache.get(key)
        if entry is not None:  # another thread won the race; keep one copy
            doomed_llm = llm
        else:
            doomed_llm = None
            entry = _cache[key] = _Entry(llm)
        _cache.move_to_end(key)
        entry.users += 1
        while len(_cache) > MAX_LOADED:
            _, old = _cache.popitem(last=False)
            old.evicted = True
            if old.users == 0:
                doomed.append(old)
    if doomed_llm is not None:
        doomed_llm.close()
    for old in doomed:
        old.close()
    return entry


def _release(entry: _Entry) -> None:
    with _cache_lock:
        entry.users -= 1
        close_now = entry.evicted and entry.users == 0
    if close_now:
        entry.close()


def ensure_loaded(path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None) -> None:
    """Load ``path`` into the cache (or find it there) without waiting for the model's lock.

    A stream calls this before returning its iterator, so a missing or broken file fails at the
    call; taking the lock instead would make it wait behind every generation already running.
    """
    _release(_acquire(path, n_ctx, n_threads))


@contextmanager
def use_llama(path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None) -> Iterator[Any]:
    """The cached ``llama_cpp.Llama`` for ``path``, held exclusively for the ``with`` block.

    The model's lock is held for the whole block (a llama.cpp context is not re-entrant) and the
    model cannot be closed by an eviction until the block ends. Raises ``ExportError`` naming the
    file when llama.cpp cannot load it (missing file, not a GGUF, unsupported architecture), never
    a bare ``ValueError`` from llama.cpp.
    """
    entry = _acquire(path, n_ctx, n_threads)
    try:
        with entry.lock:
            yield entry.llm
    finally:
        _release(entry)


def model_metadata(path: str | Path, *, n_ctx: int = 2048) -> dict[str, str]:
    """The GGUF metadata of ``path`` (loading the model into the cache if needed)."""
    with use_llama(path, n_ctx=n_ctx) as llm:
        return dict(llm.metadata)


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

    from jupyter_distill.core.capture import route_llama_log

    route_llama_log()  # its warnings reach the log of the run that loads it, not a notebook cell
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


def loaded_models() -> list[str]:
    """Paths of the models currently loaded (for status displays and tests)."""
    with _cache_lock:
        return [path for path, _ in _cache]


def release_all() -> None:
    """Close every cached model (tests, kernel shutdown); one in use closes when its user is done."""
    with _cache_lock:
        entries = list(_cache.values())
        _cache.clear()
        for entry in entries:
            entry.evicted = True
        idle = [entry for entry in entries if entry.users == 0]
    for entry in idle:
        entry.close()


# llama.cpp models closed by the garbage collector during interpreter shutdown find their free
# functions already torn down and print a TypeError traceback; close them while Python still runs.
atexit.register(release_all)
