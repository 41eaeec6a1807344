"""Route what third-party libraries print during a run into that run's log, never into a cell.

Why: a run executes on a background thread of the kernel. What libraries print there (llama.cpp's
log, Python warnings, transformers' logging, progress bars) would otherwise reach the kernel's
shared stdout/stderr, which ipykernel sends to whichever cell happens to be executing. So while a
run executes, its thread carries a *route* (a context variable: the asyncio tasks of the run and
the ``asyncio.to_thread`` workers it starts copy it) and each source is redirected where it starts:

- llama.cpp: one log callback for the process (``llama_log_set``); a routed thread's lines go to
  its route, every other thread's to llama-cpp-python's own callback, as before.
- ``sys.stdout``/``sys.stderr``: a thin proxy that sends a routed thread's writes to the route and
  passes every other thread's writes to the stream it wraps (``print``, ``warnings``, tqdm bars of
  libraries without a switch). It is installed while a route is active and removed afterwards.
- ``logging``: a filter on each console handler takes a routed thread's records (transformers
  keeps its own handler, which holds the stream it found when it was configured).
- progress bars of transformers, datasets and huggingface_hub: off for routed threads only, through
  each library's own switch, so another cell loading a model meanwhile still shows its bars.

No file descriptor is redirected: fd 2 is shared by every thread of the kernel (redirecting it
would swallow other cells' output), llama.cpp's messages all pass its log callback, and the GGUF
converter, the one part that writes to fd 2 itself, runs as a subprocess whose pipes its caller reads.
"""

from __future__ import annotations

import contextvars
import ctypes
import logging
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TextIO


class Route(Protocol):
    """Where a run's captured text goes (:class:`jupyter_distill.core.runlog.RunLog`)."""

    def write(self, source: str, text: str) -> None: ...


_ROUTE: contextvars.ContextVar[Route | None] = contextvars.ContextVar("jupyter_distill_route", default=None)
_lock = threading.RLock()
_active = 0  # routes currently open, over all threads
_filters: list[tuple[logging.Handler, logging.Filter]] = []
_restore: list[Any] = []  # undo callables for the library switches, run when the last route closes
_retired: deque[RoutedStream] = deque(maxlen=64)  # proxies taken out, kept alive: see _uninstall

# ggml's log levels (ggml.h): lines below WARN (the loader's metadata dump, per-tensor sizes) are
# left out of a run's log; CONT continues the previous line at its level.
GGML_LOG_LEVEL_WARN = 3
GGML_LOG_LEVEL_CONT = 5
_llama_state = threading.local()
_llama_callback: Any = None  # the ctypes callback, kept alive for as long as llama.cpp may call it
_llama_previous: Any = None


def current_route() -> Route | None:
    """The route of the calling thread or task, or None (output goes where it always went)."""
    return _ROUTE.get()


@contextmanager
def routed_output(route: Route) -> Iterator[None]:
    """Send what the calling thread (and what copies its context) prints to ``route`` until exit."""
    global _active
    token = _ROUTE.set(route)
    with _lock:
        _active += 1
        if _active == 1:
            _install_streams()
        refresh()
    try:
        yield
    finally:
        _ROUTE.reset(token)
        with _lock:
            _active -= 1
            if _active == 0:
                _uninstall()


def refresh() -> None:
    """Hook the libraries imported since the route opened (the pipeline calls this at each phase).

    Cheap and idempotent; does nothing while no route is open.
    """
    with _lock:
        if _active == 0:
            return
        _filter_console_handlers()
        if "llama_cpp" in sys.modules:
            route_llama_log()
        _switch_progress_bars()


# ---------------------------------------------------------------------------------------- streams
class RoutedStream:
    """``sys.stdout``/``sys.stderr`` while a route is open: a routed thread's text goes to its route."""

    def __init__(self, wrapped: TextIO, name: str):
        self.wrapped = wrapped
        self.name = name

    def write(self, text: str) -> int:
        route = _ROUTE.get()
        if route is None:
            return self.wrapped.write(text)
        route.write(self.name, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _ROUTE.get() is None:
            self.wrapped.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, ipykernel's set_parent...
        return getattr(self.wrapped, name)


def unrouted(stream: TextIO) -> TextIO:
    """The stream under a :class:`RoutedStream` (a console renderer must print, even on a run's thread)."""
    while isinstance(stream, RoutedStream):
        stream = stream.wrapped
    return stream


def _install_streams() -> None:
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RoutedStream):
            setattr(sys, name, RoutedStream(stream, name))


def _uninstall() -> None:
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, RoutedStream):  # someone who replaced it since keeps theirs
            # CPython 3.11's print() holds sys.stdout as a borrowed reference while it writes: a
            # proxy freed at that moment (another thread printing) crashes the process, so the
            # proxies taken out stay referenced here.
            _retired.append(stream)
            setattr(sys, name, stream.wrapped)
    for handler, log_filter in _filters:
        handler.removeFilter(log_filter)
    _filters.clear()
    while _restore:
        _restore.pop()()


# ---------------------------------------------------------------------------------------- logging
class _RouteFilter(logging.Filter):
    """On a console handler: a routed thread's record goes to its route, formatted as the handler would."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        route = _ROUTE.get()
        if route is None:
            return True
        if not getattr(record, "_jupyter_distill_routed", False):  # propagated to several handlers: once
            record._jupyter_distill_routed = True
            try:
                text = self.handler.format(record)
            except Exception:
                text = record.getMessage()
            route.write(f"logging:{record.name}", text + "\n")
        return False


def _filter_console_handlers() -> None:
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    done = {id(handler) for handler, _ in _filters}
    for lg in loggers:
        for handler in list(lg.handlers):
            if id(handler) in done or not _is_console(handler):
                continue
            log_filter = _RouteFilter(handler)
            handler.addFilter(log_filter)
            _filters.append((handler, log_filter))
            done.add(id(handler))


def _is_console(handler: logging.Handler) -> bool:
    """A handler writing to the process's stdout/stderr (file handlers keep every record)."""
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    stream = unrouted(getattr(handler, "stream", None))
    consoles = {id(unrouted(s)) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s is not None}
    return id(stream) in consoles or type(stream).__name__ == "OutStream"


# ---------------------------------------------------------------------------------------- llama.cpp
def route_llama_log() -> None:
    """Install the process's llama.cpp log callback (once); see the module docstring.

    Called before llama.cpp work (loading a model, quantizing) and when a route opens with
    llama_cpp imported. Lines of unrouted threads go to llama-cpp-python's callback unchanged.
    """
    global _llama_callback, _llama_previous
    with _lock:
        if _llama_callback is not None:
            return
        import llama_cpp

        try:
            from llama_cpp import _logger
        except ImportError:  # pragma: no cover - an older layout: its own callback prints to stderr
            _logger = None
        _llama_previous = getattr(_logger, "llama_log_callback", None)

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            _llama_line(level, text, user_data)

        _llama_callback = callback
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def _llama_line(level: int, text: bytes | None, user_data: Any) -> None:
    try:
        route = _ROUTE.get()
        if route is None:
            if _llama_previous is not None:
                _llama_previous(level, text, user_data)
            return
        if level == GGML_LOG_LEVEL_CONT:
            level = getattr(_llama_state, "level", 0)
        _llama_state.level = level
        if level >= GGML_LOG_LEVEL_WARN and text:
            route.write("llama.cpp", text.decode("utf-8", errors="replace"))
    except Exception:  # an exception must never cross back into C
        pass


# ---------------------------------------------------------------------------------------- progress bars
def _switch_progress_bars() -> None:
    """Progress bars off for routed threads, through each library's own switch (idempotent)."""
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None and hasattr(transformers_logging, "set_tqdm_hook"):
        _hook_transformers(transformers_logging)
    for module_name in ("datasets.utils.tqdm", "huggingface_hub.utils.tqdm"):
        module = sys.modules.get(module_name)
        if module is not None and callable(getattr(module, "are_progress_bars_disabled", None)):
            _wrap_disabled(module)


def _hook_transformers(module: Any) -> None:
    previous = module._tqdm_hook if hasattr(module, "_tqdm_hook") else None
    if getattr(previous, "_jupyter_distill", False):
        return

    def hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _ROUTE.get() is not None:
            return factory(*args, **{**kwargs, "disable": True})
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    hook._jupyter_distill = True  # type: ignore[attr-defined]
    module.set_tqdm_hook(hook)

    def restore() -> None:
        if getattr(module, "_tqdm_hook", None) is hook:
            module.set_tqdm_hook(previous)

    _restore.append(restore)


def _wrap_disabled(module: Any) -> None:
    original = module.are_progress_bars_disabled
    if getattr(original, "_jupyter_distill", False):
        return

    def are_progress_bars_disabled(*args: Any, **kwargs: Any) -> bool:
        return _ROUTE.get() is not None or original(*args, **kwargs)

    are_progress_bars_disabled._jupyter_distill = True  # type: ignore[attr-defined]
    module.are_progress_bars_disabled = are_progress_bars_disabled

    def restore() -> None:
        if module.are_progress_bars_disabled is are_progress_bars_disabled:
            module.are_progress_bars_disabled = original

    _restore.append(restore)


__all__ = ["Route", "RoutedStream", "current_route", "refresh", "route_llama_log", "routed_output", "unrouted"]
