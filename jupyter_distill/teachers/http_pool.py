"""One event loop's keep-alive connections to a teacher, and the bound on its requests in flight.

Why apart from the teacher: a teacher is shared by several event loops (a notebook's and a worker
thread's), and each loop needs its own sockets and semaphore, opened on first use and closed with
the loop; this module owns that life cycle and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import httpx
from httpx_aiohttp import AiohttpTransport


def make_client(
    *,
    base_url: str,
    headers: dict[str, str],
    timeout: float,
    connections: int,
    ssl_context: ssl.SSLContext,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` over the aiohttp transport, or over ``transport`` when given.

    httpcore's own pool re-scans every connection on each request start and end. With 64
    requests in flight against a 200 ms server (2 cores), one plain 64-connection client reached
    0.33-0.47 of the ideal throughput, eight 8-connection clients 0.75, and the aiohttp transport
    0.84 with the whole sampling loop around it (``benchmarks/sampling.py``). Errors still arrive
    as ``httpx`` exceptions, so retries and messages do not change.
    """
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
        limits=limits,
        transport=transport or AiohttpTransport(verify=ssl_context, limits=limits),
        verify=ssl_context,
    )


class ConnectionPool:
    """One event loop's client and the semaphore bounding its requests in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient, concurrency: int):
        self.loop = loop
        self.client = client
        self.semaphore = asyncio.Semaphore(concurrency)
        self.models_check: asyncio.Future[bool | None] | None = None
        # aiohttp logs "Unclosed client session" for a session whose loop ended first, which a
        # bare ``asyncio.run(teacher.sample(...))`` would do. A suspended async generator is
        # closed by the loop's ``shutdown_asyncgens()`` (``asyncio.run`` calls it) while the
        # loop still runs, so its ``finally`` can close the connections properly.
        self._closer = self._close_when_loop_ends()
        with contextlib.suppress(StopIteration):
            self._closer.__anext__().send(None)  # run to the yield: registers with the running loop

    async def _close_when_loop_ends(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.client.aclose()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[httpx.AsyncClient]:
        """The client, once fewer than ``concurrency`` requests of this loop are in flight."""
        async with self.semaphore:
            yield self.client

    async def aclose(self) -> None:
        await self._closer.aclose()  # runs the finally above once; a second aclose() is a no-op
