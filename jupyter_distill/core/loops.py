"""Run a coroutine to completion from synchronous code, in a script and in a notebook alike.

The stages are async inside (many teacher requests in flight) but are called from plain functions.
``asyncio.run`` refuses to start while a loop is running in the thread, which is always the case
in a Jupyter cell (the kernel's loop runs the cell). So with a running loop the coroutine gets its
own loop in a short-lived worker thread, and the caller's thread waits for it: loops are never
nested and the kernel's loop is never touched.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(
    factory: Callable[[], Awaitable[T]],
    *,
    thread_name: str = "jupyter-distill-loop",
    on_worker_exit: Callable[[], None] | None = None,
) -> T:
    """Await ``factory()`` on a fresh event loop and return its result (or raise its exception).

    ``factory`` is called on the loop that runs it, so the coroutine and anything it binds to a
    loop (locks, connection pools) belong to that loop. With no loop running in this thread
    ``asyncio.run`` is used here; inside a running loop it runs in a worker thread named
    ``thread_name`` with a copy of the caller's context variables (a run's output route goes with
    it), and ``on_worker_exit`` then runs in that thread after the loop has closed, to
    release what belongs to the thread (a per-thread SQLite connection, for example). Exceptions,
    ``KeyboardInterrupt`` included, are re-raised in the caller's thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_call(factory))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(_call(factory))
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc
        finally:
            if on_worker_exit is not None:
                try:
                    on_worker_exit()
                except Exception as exc:
                    box.setdefault("error", exc)

    context = contextvars.copy_context()  # the worker acts for the caller
    thread = threading.Thread(target=context.run, args=(target,), name=thread_name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _call(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


__all__ = ["run_sync"]
