"""loops.run_sync: one way to run a coroutine from sync code, with and without a running loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from jupyter_distill.core.loops import run_sync
from jupyter_distill.pipeline.run import run_async_safely


async def _where(delay: float = 0.0) -> tuple[str, int]:
    await asyncio.sleep(delay)
    return threading.current_thread().name, id(asyncio.get_running_loop())


def test_without_a_running_loop_it_runs_here() -> None:
    exits: list[str] = []
    name, _ = run_sync(_where, on_worker_exit=lambda: exits.append("x"))
    assert name == threading.current_thread().name
    assert exits == []  # no worker thread, nothing of its own to release


def test_inside_a_running_loop_it_runs_on_its_own_loop_in_a_worker_thread() -> None:
    """A notebook cell: the kernel's loop is running in this thread while the cell calls sync code."""
    exits: list[str] = []

    async def cell() -> tuple[tuple[str, int], int, str]:
        result = run_sync(
            _where,
            thread_name="jd-test-worker",
            on_worker_exit=lambda: exits.append(threading.current_thread().name),
        )
        return result, id(asyncio.get_running_loop()), threading.current_thread().name

    (name, inner_loop), outer_loop, caller = asyncio.run(cell())
    assert name == "jd-test-worker" and name != caller
    assert inner_loop != outer_loop
    assert exits == ["jd-test-worker"]


def test_errors_reach_the_caller_with_and_without_a_loop() -> None:
    async def boom() -> None:
        raise KeyError("bad")

    with pytest.raises(KeyError, match="bad"):
        run_sync(boom)

    async def cell() -> None:
        run_sync(boom)

    with pytest.raises(KeyError, match="bad"):
        asyncio.run(cell())


def test_the_factory_is_called_on_the_loop_that_runs_it() -> None:
    """Loop-bound objects made by the factory (locks, pools) belong to the loop that awaits them."""

    async def make() -> bool:
        lock = asyncio.Lock()
        async with lock:
            return True

    async def cell() -> bool:
        return run_sync(make)

    assert asyncio.run(cell()) is True


def test_a_failing_cleanup_is_reported_unless_the_work_failed_first() -> None:
    def cleanup() -> None:
        raise OSError("cannot close")

    async def ok() -> int:
        return 1

    async def fails() -> int:
        raise ValueError("work")

    async def cell(factory: Callable[[], Awaitable[int]]) -> int:
        return run_sync(factory, on_worker_exit=cleanup)

    with pytest.raises(OSError, match="cannot close"):
        asyncio.run(cell(ok))
    with pytest.raises(ValueError, match="work"):
        asyncio.run(cell(fails))


def test_many_threads_with_running_loops_each_get_their_own_result() -> None:
    """Several notebook-like threads call it at once; every call gets its own loop and answer."""
    results: dict[int, int] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def caller(index: int) -> None:
        async def value() -> int:
            await asyncio.sleep(0.001)
            return index * index

        async def cell() -> int:
            return run_sync(value)

        try:
            start.wait()
            for _ in range(20):
                results[index] = asyncio.run(cell()) if index % 2 else run_sync(value)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == {i: i * i for i in range(8)}


def test_the_old_pipeline_name_still_works_and_says_it_is_deprecated() -> None:
    async def one() -> int:
        return 1

    with pytest.warns(DeprecationWarning, match="run_sync"):
        assert run_async_safely(one()) == 1
