"""REST handlers behind Jupyter's own auth: runs and aliases for the lab panel, and an
OpenAI-compatible chat endpoint that serves aliases to any OpenAI client.

Why a thread pool everywhere: SQLite reads can wait on a kernel's write lock and model calls
take seconds; neither may block the server's event loop, which also carries every notebook's
kernel traffic. Why JSON errors everywhere: the panel and OpenAI clients parse error bodies.
Why no exception text in a 500 and no server paths in any error: a traceback or an absolute path
tells a remote caller how the server's disk is laid out and helps nobody fix the request, so
unexpected failures are logged on the server and answered with a fixed sentence, and every
error message goes through :func:`public_message`, which cuts absolute paths down to their last
component (``'/home/u/.distill/x/model.gguf'`` becomes ``'model.gguf'``) and bounds the length.

Why ``@authorized`` with a resource per area: a jupyter_server ``Authorizer`` can then let a user
read runs (``jupyter_distill.runs``) and aliases (``jupyter_distill.aliases``, ``read``) without
letting them delete aliases (``write``) or run models (``jupyter_distill.models``, ``execute``).

GGUF generation runs in worker processes (:mod:`jupyter_distill.server.worker`), so a crash in
llama.cpp costs one request a 503 instead of taking the server down.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from http.client import responses
from pathlib import Path
from typing import Any, TypeVar

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado.iostream import StreamClosedError
from traitlets import Float, Int, List, Unicode
from traitlets.config import Configurable

from jupyter_distill.core.config import RUN_NAME_PATTERN
from jupyter_distill.core.errors import DistillError
from jupyter_distill.core.runfolder import resolve_run_folder
from jupyter_distill.core.store import RunStore, StoreError
from jupyter_distill.server.aliasinfo import AuditCache, alias_detail
from jupyter_distill.server.notebooks import find_run_notebooks
from jupyter_distill.server.public import public_message
from jupyter_distill.server.summary import run_counts, run_detail, run_summary
from jupyter_distill.server.workdir import choose_workdir, share_run_folder
from jupyter_distill.server.worker import ModelWorkers, WorkerCrashed, WorkerError

T = TypeVar("T")

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
MAX_TOKENS_LIMIT = 8192
INTERNAL_ERROR = "internal error in jupyter-distill; see the server log"

# Authorization resources (``Authorizer.is_authorized(handler, user, action, resource)``).
RUNS_RESOURCE = "jupyter_distill.runs"  # read: list runs, run detail, metrics
ALIASES_RESOURCE = "jupyter_distill.aliases"  # read: list; write: delete
MODELS_RESOURCE = "jupyter_distill.models"  # read: list models; execute: chat completions


class DistillServer(Configurable):
    """Settings of the server extension (``c.DistillServer.workdir = ...`` in jupyter_server_config)."""

    workdir = Unicode(
        "",
        config=True,
        help="Run folder the panel shows and the kernels this server starts write to (exported to them as "
        "$JUPYTER_DISTILL_WORKDIR). Relative paths are resolved against the server's root_dir. "
        "Empty: $JUPYTER_DISTILL_WORKDIR, else '.distill'.",
    )
    allowed_workdirs = List(
        Unicode(),
        default_value=[],
        config=True,
        help="Folders outside the server's root_dir that the panel may switch the run folder to (with their "
        "sub-folders). Relative paths are resolved against root_dir. Folders under root_dir are always allowed.",
    )
    poll_interval = Float(
        2.0,
        config=True,
        help="Seconds between panel refreshes while a run is live (sent to the panel with each run list).",
    )
    model_workers = Int(
        1,
        config=True,
        help="Worker processes that run GGUF (llama.cpp) generation for the chat endpoint, each with its own "
        "loaded models; a crashed worker is replaced. 0 runs llama.cpp inside the server process (a crash in "
        "native code then stops the server).",
    )

    def resolve_workdir(self, root_dir: str | os.PathLike[str]) -> Path:
        """The absolute workdir: the trait, else the run-folder setting (:mod:`jupyter_distill.core.runfolder`),
        relative to root_dir."""
        return resolve_run_folder(self.workdir or None, root_dir)


class DistillContext:
    """What every handler shares: the resolved workdir, one RunStore per workdir, the alias audit verdicts.

    The workdir is the configured one until the panel switches it (:meth:`switch_workdir`); the
    switch lasts while this server runs and is shared with the kernels it starts afterwards.
    """

    def __init__(self, settings: DistillServer, root_dir: str | os.PathLike[str]):
        self.settings = settings
        self.root_dir = Path(root_dir)
        self._stores: dict[Path, RunStore] = {}
        self._lock = threading.Lock()
        self._chosen: Path | None = None
        # Resolved once: the server exports it to its kernels' environment, which a switch then changes.
        self._configured = settings.resolve_workdir(self.root_dir)
        self.audits = AuditCache()
        self.workers: ModelWorkers | None = ModelWorkers(settings.model_workers) if settings.model_workers > 0 else None

    def shutdown(self) -> None:
        """Stop the model workers (the server is stopping)."""
        if self.workers is not None:
            self.workers.shutdown()

    @property
    def configured_workdir(self) -> Path:
        """The run folder the server was started with (settings, environment, default)."""
        return self._configured

    @property
    def workdir(self) -> Path:
        """The run folder the panel shows now: the one switched to, else the configured one."""
        with self._lock:
            chosen = self._chosen
        return chosen if chosen is not None else self.configured_workdir

    def switch_workdir(self, folder: str | None) -> Path:
        """Show ``folder`` (validated by :func:`choose_workdir`; None: the configured one) from now on,
        and start new kernels with it. Returns the folder shown."""
        chosen = None if folder is None else choose_workdir(folder, self.root_dir, self.settings.allowed_workdirs)
        with self._lock:
            self._chosen = chosen
            shown = chosen if chosen is not None else self.configured_workdir
            share_run_folder(shown)  # under the lock: the environment always names the folder shown
        return shown

    def workdir_state(self) -> dict[str, Any]:
        """What the panel's folder field shows: the folder, the configured one, whether it was switched."""
        with self._lock:
            chosen = self._chosen
        configured = self.configured_workdir
        return {
            "workdir": str(chosen if chosen is not None else configured),
            "configured": str(configured),
            "switched": chosen is not None,
        }

    def store(self) -> RunStore | None:
        """The workdir's store, or None when no run was ever made there (never create files on a GET)."""
        workdir = self.workdir
        if not (workdir / "runs.db").is_file():
            return None
        with self._lock:
            store = self._stores.get(workdir)
            if store is None:
                store = self._stores[workdir] = RunStore(workdir)
            return store


def _check_run_id(run_id: str) -> str:
    """A run id is a run name (``%%distill NAME``); anything else is a bad request, not a lookup."""
    if not RUN_NAME_PATTERN.fullmatch(run_id):  # fullmatch: '$' would let 'r1\n' through
        raise tornado.web.HTTPError(
            400,
            f"invalid run id {run_id[:80]!r}: run names use letters, digits, '.', '_' and '-' "
            "(at most 64, starting with a letter or digit)",
        )
    return run_id


class DistillHandler(APIHandler):
    """Base: JSON errors without tracebacks, and blocking work off the event loop."""

    @property
    def distill(self) -> DistillContext:
        return self.settings["jupyter_distill"]

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the default thread pool; user errors become 400s, the rest 500s."""
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        except tornado.web.HTTPError:
            raise
        except StoreError as exc:  # the server's own state is broken, not the request
            self.log.error("jupyter-distill: %s", exc)
            raise tornado.web.HTTPError(500, public_message(str(exc))) from exc
        except DistillError as exc:
            raise tornado.web.HTTPError(400, public_message(str(exc))) from exc
        except Exception as exc:
            self.log.exception("jupyter-distill: %s %s failed", self.request.method, self.request.path)
            raise tornado.web.HTTPError(500, INTERNAL_ERROR) from exc

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """``{"message", "reason"}`` like Jupyter's APIHandler, but never a traceback."""
        self.set_header("Content-Type", "application/json")
        message = responses.get(status_code, "Unknown HTTP Error")
        reason: str | None = None
        exc_info = kwargs.get("exc_info")
        if exc_info:
            exc = exc_info[1]
            if isinstance(exc, tornado.web.HTTPError):
                message = public_message(exc.log_message or message)
                reason = exc.reason
            else:
                message = INTERNAL_ERROR
        self.finish(json.dumps({"message": message, "reason": reason}))


class RunsHandler(DistillHandler):
    """``GET /jupyter-distill/runs``: one summary per run, newest first."""

    auth_resource = RUNS_RESOURCE

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        def work() -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
            store = self.distill.store()
            if store is None:
                return [], {}
            return [run_summary(store, run) for run in store.list_runs()], run_counts(store)

        runs, counts = await self.blocking(work)
        self.finish(
            json.dumps(
                {
                    **self.distill.workdir_state(),
                    "poll_interval": self.distill.settings.poll_interval,
                    "runs": runs,
                    "counts": counts,
                }
            )
        )


class RunHandler(DistillHandler):
    """``GET /jupyter-distill/runs/{id}``: config, summary, counts, artifacts, recent events."""

    auth_resource = RUNS_RESOURCE

    @tornado.web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        _check_run_id(run_id)

        def work() -> dict[str, Any]:
            store = self.distill.store()
            run = store.get_run(run_id) if store is not None else None
            if store is None or run is None:
                raise tornado.web.HTTPError(404, f"no run {run_id!r} in the server's workdir")
            return run_detail(store, run)

        self.finish(json.dumps(await self.blocking(work)))


class RunMetricsHandler(DistillHandler):
    """``GET /jupyter-distill/runs/{id}/metrics[?name=loss&after=STEP]``: series by metric name.

    ``after`` lets a live view fetch only the steps it has not drawn yet.
    """

    auth_resource = RUNS_RESOURCE

    @tornado.web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        _check_run_id(run_id)
        name = self.get_query_argument("name", None)
        after_raw = self.get_query_argument("after", None)
        try:
            after = int(after_raw) if after_raw is not None else None
        except ValueError:
            raise tornado.web.HTTPError(400, f"after={after_raw[:40]!r} is not an integer step") from None

        def work() -> dict[str, Any]:
            store = self.distill.store()
            if store is None or store.get_run(run_id) is None:
                raise tornado.web.HTTPError(404, f"no run {run_id!r} in the server's workdir")
            series: dict[str, list[list[float]]] = {}
            for row in store.get_metrics(run_id, name):
                if after is not None and row["step"] <= after:
                    continue
                series.setdefault(row["name"], []).append([row["step"], row["value"]])
            return {"run": run_id, "metrics": series}

        self.finish(json.dumps(await self.blocking(work)))


class RunNotebooksHandler(DistillHandler):
    """``GET /jupyter-distill/runs/{id}/notebooks``: notebooks under the server root that start the run.

    Newest first, as paths relative to the root (what JupyterLab opens). ``complete`` is false when
    the search stopped at its file limit.
    """

    auth_resource = RUNS_RESOURCE

    @tornado.web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        _check_run_id(run_id)
        root = self.distill.root_dir
        found = await self.blocking(lambda: find_run_notebooks(root, run_id))
        self.finish(json.dumps({"run": run_id, **found}))


class WorkdirHandler(DistillHandler):
    """``/jupyter-distill/workdir``: the run folder the panel shows.

    GET: ``{workdir, configured, switched}``. PUT ``{"path": "..."}``: show another existing folder
    under the server root (or an allowed one) for as long as the server runs; kernels started after
    the switch write there. DELETE: back to the configured folder.
    """

    auth_resource = RUNS_RESOURCE

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(json.dumps(self.distill.workdir_state()))

    @tornado.web.authenticated
    @authorized
    async def put(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise tornado.web.HTTPError(400, 'the request body must be JSON: {"path": "<folder>"}') from None
        if not isinstance(body, dict) or "path" not in body:
            raise tornado.web.HTTPError(400, 'the request body must be {"path": "<folder>"}')
        await self.blocking(self.distill.switch_workdir, body["path"])
        self.finish(json.dumps(self.distill.workdir_state()))

    @tornado.web.authenticated
    @authorized
    async def delete(self) -> None:
        await self.blocking(self.distill.switch_workdir, None)
        self.finish(json.dumps(self.distill.workdir_state()))


def _registry() -> Any:
    # Imported on first use: the registry module pulls in file locking, which the panel-only
    # endpoints never need, and a broken model stack must not stop the server from starting.
    from jupyter_distill.serving import registry

    return registry


def _alias_rows(raw: Any) -> list[dict[str, Any]]:
    """``list_aliases()`` as a list of ``{"name": ..., **record}``, whatever mapping it returns."""
    rows: list[dict[str, Any]] = []
    items = raw.items() if isinstance(raw, Mapping) else ((None, entry) for entry in raw)
    for name, entry in items:
        record = _plain(entry)
        if not isinstance(record, dict):
            record = {"value": record}
        if name is not None:
            record = {"name": name, **record}
        rows.append(record)
    return sorted(rows, key=lambda r: str(r.get("name", "")))


class AliasesHandler(DistillHandler):
    """``GET /jupyter-distill/aliases``: the alias registry."""

    auth_resource = ALIASES_RESOURCE

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        rows = await self.blocking(lambda: _alias_rows(_registry().list_aliases()))
        self.finish(json.dumps({"aliases": rows}))


class AliasHandler(DistillHandler):
    """``/jupyter-distill/aliases/{name}``: one alias.

    GET: ``{name, current, version, history, audit}``: its target now, its recorded versions
    (newest first) and the audit verdict of the run that made its target. DELETE: unset it (the
    model files stay).
    """

    auth_resource = ALIASES_RESOURCE

    @tornado.web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        context = self.distill

        def work() -> dict[str, Any]:
            detail = alias_detail(name, context.audits, context.workdir)
            if detail is None:
                raise tornado.web.HTTPError(404, f"no alias {name[:130]!r}")
            return _plain(detail)

        self.finish(json.dumps(await self.blocking(work)))

    @tornado.web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        def work() -> None:
            registry = _registry()
            registry.validate_name(name)  # AliasError -> 400 before any lookup
            names = {row.get("name") for row in _alias_rows(registry.list_aliases())}
            if name not in names:
                raise tornado.web.HTTPError(404, f"no alias {name[:130]!r}")
            registry.unset_alias(name)

        await self.blocking(work)
        self.set_status(204)
        self.finish()


# ---------------------------------------------------------------------- OpenAI-compatible API


class OpenAIError(Exception):
    """An error answered in OpenAI's shape, which the official clients turn into typed exceptions."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _plain(obj: Any) -> Any:
    """A JSON-ready copy of a response object, chunk or record (pydantic, dataclass, mapping)."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    elif hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    elif hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def parse_chat_request(body: bytes) -> dict[str, Any]:
    """Validate an OpenAI chat request; returns ``serving.completion`` keyword arguments + ``stream``.

    Supported: model, messages, max_tokens / max_completion_tokens, temperature, stream,
    stream_options.include_usage (a final usage chunk when the backend reports usage; llama.cpp
    streams do not), n (1 only). Other OpenAI fields are accepted and ignored,
    as most local servers do, so stock clients that send defaults keep working.
    """
    try:
        request = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise OpenAIError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise OpenAIError(400, "the request body is nested too deeply") from None
    if not isinstance(request, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    model = request.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise OpenAIError(
            400, "'model' is required: the name of an alias (GET /jupyter-distill/aliases)", param="model"
        )
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "'messages' must be a non-empty list of {role, content}", param="messages")
    clean: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in ROLES:
            raise OpenAIError(400, f"messages[{i}] needs a 'role' in {sorted(ROLES)}", param=f"messages[{i}].role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
            content = "".join(texts) if all(isinstance(t, str) for t in texts) else None
        if not isinstance(content, str):
            raise OpenAIError(
                400,
                f"messages[{i}].content must be a string (or a list of {{'type': 'text', 'text': str}} parts)",
                param=f"messages[{i}].content",
            )
        clean.append({"role": "system" if role == "developer" else role, "content": content})
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    if max_tokens is None:
        max_tokens = 256
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise OpenAIError(400, f"'max_tokens' must be an integer in 1..{MAX_TOKENS_LIMIT}", param="max_tokens")
    temperature = request.get("temperature")
    if temperature is None:
        temperature = 0.0
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise OpenAIError(400, "'temperature' must be a number in 0..2", param="temperature")
    n = request.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n != 1):
        raise OpenAIError(400, "only n=1 is supported", param="n")
    stream = request.get("stream") or False
    if not isinstance(stream, bool):
        raise OpenAIError(400, "'stream' must be true or false", param="stream")
    options = request.get("stream_options") or {}
    return {
        "model": model,
        "messages": clean,
        "max_tokens": int(max_tokens),
        "temperature": float(temperature),
        "stream": stream,
        "include_usage": bool(isinstance(options, dict) and options.get("include_usage")),
    }


def _completion_dict(response: Any, model: str) -> dict[str, Any]:
    data = _plain(response)
    if not isinstance(data, dict):
        data = {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": str(data)}, "finish_reason": "stop"}]
        }
    data.setdefault("id", f"chatcmpl-{uuid.uuid4().hex}")
    data.setdefault("object", "chat.completion")
    data.setdefault("created", int(time.time()))
    data["model"] = model
    return data


def _chunk_dict(chunk: Any, model: str, ident: str, created: int) -> dict[str, Any]:
    data = _plain(chunk)
    if isinstance(data, str):  # a bare text delta
        data = {"choices": [{"index": 0, "delta": {"content": data}, "finish_reason": None}]}
    data.setdefault("id", ident)
    data.setdefault("object", "chat.completion.chunk")
    data.setdefault("created", created)
    data["model"] = model
    return data


class ChatCompletionsHandler(DistillHandler):
    """``POST /jupyter-distill/v1/chat/completions``: OpenAI chat completions served from aliases.

    Point any OpenAI client at ``{server}/jupyter-distill/v1`` with the Jupyter token as the API
    key. ``stream: true`` answers Server-Sent Events ending in ``data: [DONE]``.
    """

    _closed: threading.Event
    _streaming = False

    def prepare(self) -> Any:
        self._closed = threading.Event()
        return super().prepare()

    def on_connection_close(self) -> None:
        # The generating thread checks this between tokens, so a client that hangs up frees the model.
        self._closed.set()
        super().on_connection_close()

    def openai_error(self, error: OpenAIError) -> None:
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        if error.status == 503:
            self.set_header("Retry-After", "1")
        self.finish(json.dumps(error.body()))

    auth_resource = MODELS_RESOURCE

    @tornado.web.authenticated
    @authorized("execute", resource=MODELS_RESOURCE)
    async def post(self) -> None:
        try:
            request = parse_chat_request(self.request.body)
            backend = await self._check_model(request["model"])
            workers = self.distill.workers if backend == "gguf" else None
            if request["stream"]:
                await self._stream(request, workers)
            else:
                await self._complete(request, workers)
        except OpenAIError as error:
            if not self._streaming:
                self.openai_error(error)

    async def _check_model(self, model: str) -> str:
        """The alias's backend; a 404 listing the known aliases when there is none of that name."""

        def known() -> dict[str, str]:
            return {str(row.get("name")): str(row.get("backend")) for row in _alias_rows(_registry().list_aliases())}

        names = await self._call(known)
        if model not in names:
            raise OpenAIError(
                404,
                f"the model {model!r} does not exist: no alias has that name. "
                f"Known: {', '.join(sorted(names)) or 'none'}. "
                "Fix: deploy a student with student.deploy(name) or jd.set_alias(name, ...).",
                param="model",
                code="model_not_found",
            )
        return names[model]

    def _openai_error(self, exc: BaseException) -> OpenAIError:
        """The OpenAI-shaped error for an exception raised by the registry or a model."""
        if isinstance(exc, OpenAIError):
            return exc
        if isinstance(exc, WorkerCrashed):
            self.log.error("jupyter-distill: %s; a new worker starts with the next request", exc)
            return OpenAIError(
                503,
                "the model worker process stopped while generating (it crashed or was killed); the server is "
                "unaffected and starts a new worker for the next request. Fix: retry; if it happens again, see "
                "the server log.",
                code="worker_crashed",
            )
        if isinstance(exc, DistillError) or (isinstance(exc, WorkerError) and exc.user):
            # Unknown names were answered 404 before the call; an AliasError now is a broken
            # backend (unreachable server, missing file): the message says how to fix it.
            return OpenAIError(400, public_message(str(exc)))
        self.log.error("jupyter-distill: chat completion failed", exc_info=exc)
        return OpenAIError(500, INTERNAL_ERROR)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking registry or model work in the thread pool; errors become OpenAI errors."""
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        except Exception as exc:
            raise self._openai_error(exc) from exc

    @staticmethod
    def _serving_kwargs(request: dict[str, Any], stream: bool) -> dict[str, Any]:
        return {
            "model": request["model"],
            "messages": request["messages"],
            "max_tokens": request["max_tokens"],
            "temperature": request["temperature"],
            "stream": stream,
        }

    @staticmethod
    def _worker_request(request: dict[str, Any], stream: bool) -> dict[str, Any]:
        """What a model worker needs: the call, and the registry this server reads."""
        home = str(_registry().registry_dir())
        return {"home": home, "kwargs": ChatCompletionsHandler._serving_kwargs(request, stream)}

    async def _complete(self, request: dict[str, Any], workers: ModelWorkers | None) -> None:
        from jupyter_distill.serving import student as serving

        if workers is not None:
            response = await self._call(lambda: workers.complete(self._worker_request(request, False)))
        else:
            response = await self._call(lambda: serving.completion(**self._serving_kwargs(request, False)))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(_completion_dict(response, request["model"])))

    async def _stream(self, request: dict[str, Any], workers: ModelWorkers | None) -> None:
        from jupyter_distill.serving import student as serving

        ident, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), request["model"]
        include_usage = request["include_usage"]
        kwargs = self._serving_kwargs(request, True)
        closed = self._closed
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(kind: str, item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, item))

        def produce() -> None:
            # One thread runs the whole generator and always closes it, so the model (or the
            # worker process) it holds is freed as soon as the client leaves.
            iterator: Iterator[Any] | None = None
            try:
                if workers is not None:
                    iterator = workers.stream(self._worker_request(request, True))
                else:
                    iterator = iter(serving.completion(**kwargs))
                for chunk in iterator:
                    if closed.is_set():
                        break
                    put("chunk", chunk)
            except Exception as exc:
                put("error", exc)
            finally:
                close = getattr(iterator, "close", None)
                if callable(close):
                    close()
                put("end", None)

        producer = loop.run_in_executor(None, produce)
        try:
            kind, item = await queue.get()
            if kind == "error":
                # Nothing is sent yet, so a model that cannot load still gets a real HTTP status.
                raise self._openai_error(item)
            self._streaming = True
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")
            usage: Any = None
            while kind != "end":
                if kind == "error":
                    error = self._openai_error(item)
                    await self._send(error.body())
                    break
                usage = await self._send_chunk(item, model, ident, created) or usage
                kind, item = await queue.get()
            if include_usage and usage is not None:
                await self._send(
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            self.write("data: [DONE]\n\n")
            await self.flush()
            self.finish()
        except StreamClosedError:
            pass
        finally:
            closed.set()  # stop the producer if we leave early; harmless when it is done
            await producer

    async def _send_chunk(self, chunk: Any, model: str, ident: str, created: int) -> Any:
        """Send one chunk; returns its usage (sent last, as OpenAI does, only when asked for)."""
        data = _chunk_dict(chunk, model, ident, created)
        usage = data.pop("usage", None)
        if data.get("choices"):
            await self._send(data)
        return usage

    async def _send(self, data: dict[str, Any]) -> None:
        self.write(f"data: {json.dumps(data)}\n\n")
        await self.flush()


class ModelsHandler(DistillHandler):
    """``GET /jupyter-distill/v1/models``: aliases as OpenAI models, so clients can list them."""

    auth_resource = MODELS_RESOURCE

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        rows = await self.blocking(lambda: _alias_rows(_registry().list_aliases()))
        now = int(time.time())
        models = [
            {
                "id": row.get("name"),
                "object": "model",
                "created": int(row.get("created_at") or now),
                "owned_by": "jupyter-distill",
            }
            for row in rows
        ]
        self.finish(json.dumps({"object": "list", "data": models}))


def handlers(base_url: str) -> list[tuple[str, type[APIHandler]]]:
    """Routes under ``base_url``; ids are matched loosely and validated by the handler (400, not 404)."""
    from jupyter_server.utils import url_path_join

    prefix = url_path_join(base_url, "jupyter-distill")
    return [
        (url_path_join(prefix, "runs"), RunsHandler),
        (url_path_join(prefix, "runs", "([^/]+)"), RunHandler),
        (url_path_join(prefix, "runs", "([^/]+)", "metrics"), RunMetricsHandler),
        (url_path_join(prefix, "runs", "([^/]+)", "notebooks"), RunNotebooksHandler),
        (url_path_join(prefix, "workdir"), WorkdirHandler),
        (url_path_join(prefix, "aliases"), AliasesHandler),
        (url_path_join(prefix, "aliases", "([^/]+)"), AliasHandler),
        (url_path_join(prefix, "v1", "chat", "completions"), ChatCompletionsHandler),
        (url_path_join(prefix, "v1", "models"), ModelsHandler),
    ]
