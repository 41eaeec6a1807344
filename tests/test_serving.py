"""completion(), the model caches, the three backends and the Student."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_distill.core import runtime
from jupyter_distill.core.errors import AliasError, ConfigError, ExportError
from jupyter_distill.export.gguf import ExportResult
from jupyter_distill.serving import hf_backend, registry
from jupyter_distill.serving.response import OpenAIObject
from jupyter_distill.serving.student import Student, completion

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    hf_backend.release_all()


@pytest.fixture
def tiny(tiny_adapter_export: dict[str, Any]) -> dict[str, Path]:
    return {key: tiny_adapter_export[key] for key in ("root", "base", "adapter")}


@pytest.fixture
def exported(tiny_adapter_export: dict[str, Any]) -> ExportResult:
    return tiny_adapter_export["export"]


def _check_response(resp: OpenAIObject, model: str, routing: dict) -> None:
    assert isinstance(resp["id"], str) and resp.id == resp["id"] and resp.id.startswith("chatcmpl-")
    assert resp.object == resp["object"] == "chat.completion"
    assert isinstance(resp.created, int) and abs(resp.created - time.time()) < 600
    assert resp.model == resp["model"] == model
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0 and choice["index"] == 0
    assert choice.message.role == choice["message"]["role"] == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content == choice["message"]["content"]
    assert choice.finish_reason in ("stop", "length") and choice.finish_reason == choice["finish_reason"]
    usage = resp.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens >= 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens == resp["usage"]["total_tokens"]
    assert resp._cost == 0.0 and resp["_cost"] == 0.0
    assert isinstance(resp._latency_ms, float) and resp._latency_ms > 0
    assert resp._routing == routing
    body = json.loads(json.dumps(resp))  # a plain OpenAI body: the extras are not in it
    assert "_cost" not in body and body["choices"][0]["message"]["role"] == "assistant"


def _stream_text(chunks: Iterator[OpenAIObject], model: str) -> str:
    chunks = list(chunks)
    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" and c.model == model for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.get("role") == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    return "".join(c.choices[0].delta.get("content") or "" for c in chunks)


def test_gguf_completion_shape_and_stream(exported: ExportResult) -> None:
    registry.set_alias("tiny", backend="gguf", model_path=exported.gguf)
    resp = completion(model="tiny", messages=QUESTION, max_tokens=12)
    _check_response(resp, "tiny", {"backend": "gguf", "alias": "tiny", "path": str(exported.gguf)})
    assert resp.usage.completion_tokens <= 12
    streamed = _stream_text(completion(model="tiny", messages=QUESTION, max_tokens=12, stream=True), "tiny")
    assert streamed == resp.choices[0].message.content
    # a plain string prompt is one user message
    assert completion(model="tiny", messages=QUESTION[0]["content"], max_tokens=12).choices[0].message.content == (
        resp.choices[0].message.content
    )


def test_second_call_does_not_reload(exported: ExportResult, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime.release_all()
    loads: list[str] = []
    real = runtime.load_llama

    def counting(path: str, **kw: object) -> object:
        loads.append(path)
        return real(path, **kw)

    monkeypatch.setattr(runtime, "load_llama", counting)
    registry.set_alias("tiny", backend="gguf", model_path=exported.gguf)
    first = completion(model="tiny", messages=QUESTION, max_tokens=4)
    second = completion(model="tiny", messages=QUESTION, max_tokens=4)
    assert loads == [str(exported.gguf)]
    assert str(exported.gguf) in hf_backend.loaded_models()
    assert first.choices[0].message.content == second.choices[0].message.content


def test_unknown_alias_lists_known_ones(exported: ExportResult) -> None:
    registry.set_alias("one", backend="gguf", model_path=exported.gguf)
    registry.set_alias("two", backend="gguf", model_path=exported.gguf)
    with pytest.raises(AliasError) as info:
        completion(model="three", messages=QUESTION)
    assert "'three'" in str(info.value) and "one, two" in str(info.value)
    with pytest.raises(ConfigError, match=r"messages\[0\] needs 'role'"):
        completion(model="one", messages=[{"content": "no role"}])


def test_peft_backend_shape_stream_and_cache(tiny: dict[str, Path]) -> None:
    registry.set_alias("tiny-peft", backend="peft", model_path=tiny["adapter"])
    key = (str(tiny["adapter"].resolve()), str(tiny["base"].resolve()))
    before = hf_backend.HF_LOAD_COUNT.get(key, 0)
    resp = completion(model="tiny-peft", messages=QUESTION, max_tokens=10)
    routing = {
        "backend": "peft",
        "alias": "tiny-peft",
        "path": str(tiny["adapter"].resolve()),
        "base_model": str(tiny["base"].resolve()),
    }
    _check_response(resp, "tiny-peft", routing)
    streamed = _stream_text(completion(model="tiny-peft", messages=QUESTION, max_tokens=10, stream=True), "tiny-peft")
    assert streamed == resp.choices[0].message.content
    assert hf_backend.HF_LOAD_COUNT[key] == before + 1  # three calls, one load
    # sampling with a seed is reproducible
    a = completion(model="tiny-peft", messages=QUESTION, max_tokens=6, temperature=0.9, seed=3)
    b = completion(model="tiny-peft", messages=QUESTION, max_tokens=6, temperature=0.9, seed=3)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_gguf_student_agrees_with_peft_student(tiny: dict[str, Path], exported: ExportResult) -> None:
    """The exported GGUF answers like the adapter it came from (greedy, first tokens)."""
    peft_student = Student(adapter_dir=tiny["adapter"], base_model=tiny["base"], name="p")
    gguf_student = Student(exported.f16_gguf, name="g")
    a = completion(model=peft_student, messages=QUESTION, max_tokens=6)
    b = completion(model=gguf_student, messages=QUESTION, max_tokens=6)
    assert a.usage.prompt_tokens == b.usage.prompt_tokens  # same chat template, same tokens
    assert a.choices[0].message.content[:8] == b.choices[0].message.content[:8]


def test_peft_refuses_pickle_weights(tmp_path: Path, tiny: dict[str, Path]) -> None:
    adapter = tmp_path / "binadapter"
    adapter.mkdir()
    cfg = json.loads((tiny["adapter"] / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    (adapter / "adapter_model.bin").write_bytes(b"not loaded")
    registry.set_alias("pickled", backend="peft", model_path=adapter)
    with pytest.raises(AliasError, match="pickle"):
        completion(model="pickled", messages=QUESTION, max_tokens=2)


def test_student_save_load_deploy_round_trip(exported: ExportResult, tmp_path: Path) -> None:
    student = Student.from_export(exported, metrics={"pass@1": 0.9}, name="tiny-student")
    assert student.gguf_path == exported.gguf and student.adapter_dir == exported.adapter_dir
    assert student.metrics["pass@1"] == 0.9 and student.metrics["export_agreement_f16"] >= 0.95
    answer = student("What is the capital of France?", max_tokens=8)
    assert isinstance(answer, str) and answer == student(QUESTION, max_tokens=8)
    saved = student.save(tmp_path / "saved")
    names = {p.name for p in saved.iterdir()}
    assert {exported.gguf.name, "adapter", "README.md", "metadata.json"} <= names
    meta = json.loads((saved / "metadata.json").read_text())
    assert meta["format"] == "jupyter-distill-student" and meta["gguf"] == exported.gguf.name
    assert "Licence chain" in (saved / "README.md").read_text()
    loaded = Student.load(saved)
    assert loaded.metrics == student.metrics and loaded.gguf_path == saved / exported.gguf.name
    assert loaded("What is the capital of France?", max_tokens=8) == answer
    entry = loaded.deploy("tiny-student")
    assert entry["backend"] == "gguf" and entry["model_path"] == str(saved / exported.gguf.name)
    resp = completion(model="tiny-student", messages=QUESTION, max_tokens=8)
    assert resp.choices[0].message.content == answer and resp._routing["alias"] == "tiny-student"
    assert "tiny-student" in repr(loaded) and "pass@1=0.9" in repr(loaded)
    bundle = loaded._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"} and "<table>" in bundle["text/html"]
    # a tampered file is detected
    (saved / "README.md").write_text("edited")
    with pytest.raises(ExportError, match="sha256"):
        Student.load(saved)
    # saving over a folder that is not a student is refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a saved student"):
        student.save(other)


def test_peft_student_deploys_as_peft_alias(tiny: dict[str, Path]) -> None:
    student = Student(adapter_dir=tiny["adapter"], base_model=tiny["base"], name="ps")
    entry = student.deploy("ps-alias")
    assert entry["backend"] == "peft" and entry["base_model"] == str(tiny["base"].resolve())


def test_openai_compatible_backend(openai_server, monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    openai_server.api_key = "sk-test-123"
    openai_server.usage_cost = 0.0042
    registry.set_alias(
        "remote", backend="openai-compatible", base_url=openai_server.url, model="test-model", api_key_env="REMOTE_KEY"
    )
    assert "sk-test-123" not in (home / "aliases.json").read_text()
    with pytest.raises(AliasError, match="REMOTE_KEY"):
        completion(model="remote", messages=QUESTION)
    monkeypatch.setenv("REMOTE_KEY", "sk-test-123")
    resp = completion(model="remote", messages=QUESTION, max_tokens=20, seed=7)
    expected = openai_server.reply(QUESTION[0]["content"], 0, 7)
    assert resp.choices[0].message.content == expected and resp.model == "remote"
    assert resp._cost == pytest.approx(0.0042)
    assert resp._routing == {
        "backend": "openai-compatible",
        "alias": "remote",
        "path": openai_server.url,
        "remote_model": "test-model",
    }
    assert openai_server.auth_headers[-1] == "Bearer sk-test-123"
    assert openai_server.bodies[-1]["model"] == "test-model" and openai_server.bodies[-1]["max_tokens"] == 20
    openai_server.script = ["500"]
    with pytest.raises(AliasError, match="HTTP 500"):
        completion(model="remote", messages=QUESTION)


class _StreamingServer:
    """A minimal SSE chat server: answers 'one two three' in three chunks (stream) or whole."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    async def _chat(self, request):  # type: ignore[no-untyped-def]
        from aiohttp import web

        body = await request.json()
        words = ["one", " two", " three"]
        base = {"id": "chatcmpl-x", "created": 1, "model": body["model"]}
        message = {"role": "assistant", "content": "".join(words)}
        if not body.get("stream"):
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        deltas = [{"role": "assistant"}, *({"content": w} for w in words), {}]
        for i, delta in enumerate(deltas):
            finish = "stop" if i == len(deltas) - 1 else None
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def __enter__(self) -> _StreamingServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def test_openai_compatible_stream() -> None:
    with _StreamingServer() as server:
        url = f"http://127.0.0.1:{server.port}/v1"
        registry.set_alias("sse", backend="openai-compatible", base_url=url, model="m")
        whole = completion(model="sse", messages=QUESTION)
        assert whole._cost is None  # no price known for this server: unknown, not zero
        streamed = _stream_text(completion(model="sse", messages=QUESTION, stream=True), "sse")
        assert streamed == whole.choices[0].message.content == "one two three"
