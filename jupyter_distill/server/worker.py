"""GGUF generation in child processes that the server extension supervises.

llama.cpp is native code: a fault there (a bad file, a bug, the kernel's out-of-memory killer)
ends the process it runs in. Inside the Jupyter server that process carries every user's
notebooks and kernels, so the server runs llama.cpp only in spawned worker processes. A worker
that dies mid-request costs that request a 503 and nothing else: the next request starts a fresh
worker. ``spawn`` (not ``fork``) because the server is multi-threaded and forking a process that
holds other threads' locks can deadlock the child.

One request is in flight per worker; ``DistillServer.model_workers`` sets how many workers run at
once (each loads its own copy of the models it serves). Requests and chunks cross a
``multiprocessing`` pipe as plain dicts. The PEFT and ``openai-compatible`` backends stay in the
server process: they are Python (torch, httpx) and raise exceptions instead of crashing.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

SPAWN = multiprocessing.get_context("spawn")
_POLL_S = 1.0  # how often a waiting parent checks that its worker still lives

log = logging.getLogger(__name__)


class WorkerCrashed(Exception):
    """The worker process died before it answered (crash, kill, out of memory)."""

    def __init__(self, pid: int | None, exitcode: int | None):
        self.pid = pid
        self.exitcode = exitcode
        super().__init__(f"model worker process {pid} stopped while generating (exit code {exitcode})")


class WorkerError(Exception):
    """The worker answered with an error; ``user`` is True for a DistillError (the caller's to fix)."""

    def __init__(self, message: str, *, user: bool):
        self.user = user
        super().__init__(message)


def worker_main(conn: Connection) -> None:
    """The child's loop: one request at a time until the parent sends ``None`` or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the server: the parent stops us
    from jupyter_distill.core.errors import DistillError
    from jupyter_distill.serving import student as serving

    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        if request == "cancel":  # a cancel that arrived after its request had finished
            continue
        try:
            os.environ["JUPYTER_DISTILL_HOME"] = request["home"]
            _serve(conn, serving, request["kwargs"])
        except DistillError as exc:
            conn.send(("error", {"user": True, "message": str(exc)}))
        except (EOFError, OSError, BrokenPipeError):
            return
        except Exception as exc:
            traceback.print_exc()  # the server's stderr: the worker's log
            conn.send(("error", {"user": False, "message": type(exc).__name__}))


def _serve(conn: Connection, serving: Any, kwargs: dict[str, Any]) -> None:
    if not kwargs.get("stream"):
        conn.send(("result", serving.completion(**kwargs).to_dict()))
        return
    chunks = serving.completion(**kwargs)
    try:
        for chunk in chunks:
            conn.send(("chunk", chunk.to_dict()))
            if conn.poll() and conn.recv() == "cancel":
                break
    finally:
        chunks.close()  # frees the model at once, also on cancel
    conn.send(("end", None))


class ModelWorker:
    """One spawned worker process and the parent's end of its pipe."""

    def __init__(self) -> None:
        parent, child = SPAWN.Pipe()
        self.process = SPAWN.Process(target=worker_main, args=(child,), name="jupyter-distill-model", daemon=True)
        self.process.start()
        child.close()  # only the child holds its end now: its death reads as EOF here
        self.conn = parent
        self.broken = False
        self.pending = False  # a request was sent and its last message not read yet

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def usable(self) -> bool:
        return not self.broken and self.process.is_alive()

    def run(self, request: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        """Send one request; yield ``("chunk", dict)``... then ``("result", dict)`` or ``("end", None)``."""
        try:
            self.conn.send(request)
        except (OSError, ValueError):
            raise self._crashed() from None
        self.pending = True
        while True:
            kind, payload = self._receive()
            if kind in ("error", "result", "end"):
                self.pending = False
            if kind == "error":
                raise WorkerError(str(payload["message"]), user=bool(payload["user"]))
            yield kind, payload
            if kind in ("result", "end"):
                return

    def _receive(self) -> tuple[str, Any]:
        try:
            while not self.conn.poll(_POLL_S):
                if not self.process.is_alive():
                    raise EOFError
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            raise self._crashed() from None
        return str(kind), payload

    def _crashed(self) -> WorkerCrashed:
        self.broken = True
        self.pending = False
        self.process.join(timeout=5)
        return WorkerCrashed(self.pid, self.process.exitcode)

    def cancel(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send("cancel")

    def stop(self) -> None:
        """Ask the worker to exit, then make sure it did."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class ModelWorkers:
    """A pool of at most ``size`` workers, started on demand and replaced when one dies."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._idle: list[ModelWorker] = []
        self._busy: set[ModelWorker] = set()
        self.started = 0  # workers started so far (a restart shows as one more)
        self._closed = False

    def busy_pids(self) -> list[int]:
        """Pids of the workers generating now (for status pages and tests)."""
        with self._lock:
            return [w.pid for w in self._busy if w.pid is not None]

    def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """A whole completion (``request["kwargs"]["stream"]`` is False) from a worker."""
        with self._lease() as worker:
            for kind, payload in worker.run(request):
                if kind == "result":
                    return dict(payload)
        raise WorkerError("the model worker ended a request without an answer", user=False)

    def stream(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The chunks of a streamed completion; closing the iterator early cancels the generation."""
        with self._lease() as worker:
            try:
                for kind, payload in worker.run(request):
                    if kind == "chunk":
                        yield dict(payload)
            finally:
                if worker.pending:  # closed early: stop the generation, keep the worker
                    worker.cancel()
                    self._drain(worker)

    @staticmethod
    def _drain(worker: ModelWorker) -> None:
        """Read a cancelled request's last messages so the worker is ready for the next one."""
        try:
            while worker.pending:
                kind, _ = worker._receive()
                if kind in ("end", "result", "error"):
                    worker.pending = False
        except WorkerCrashed:
            return

    @contextlib.contextmanager
    def _lease(self) -> Iterator[ModelWorker]:
        self._slots.acquire()
        try:
            worker = self._take()
            try:
                yield worker
            finally:
                self._give_back(worker)
        finally:
            self._slots.release()

    def _take(self) -> ModelWorker:
        with self._lock:
            if self._closed:
                raise WorkerCrashed(None, None)
            while self._idle:
                worker = self._idle.pop()
                if worker.usable():
                    self._busy.add(worker)
                    return worker
                log.warning(
                    "jupyter-distill: model worker %s had stopped (exit code %s)", worker.pid, worker.process.exitcode
                )
                worker.stop()
            self.started += 1
        worker = ModelWorker()
        with self._lock:
            self._busy.add(worker)
        return worker

    def _give_back(self, worker: ModelWorker) -> None:
        with self._lock:
            self._busy.discard(worker)
            if worker.usable() and not worker.pending and not self._closed:
                self._idle.append(worker)
                return
        if worker.broken:
            log.error(
                "jupyter-distill: model worker %s stopped while generating (exit code %s); "
                "the next request starts a new one",
                worker.pid,
                worker.process.exitcode,
            )
        worker.stop()

    def shutdown(self) -> None:
        """Stop every idle worker; busy ones stop when their request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()
