"""The llama.cpp model cache under contention: eviction never frees a model that is generating.

Eight threads stream and complete across more aliases than ``runtime.MAX_LOADED`` holds, so the
LRU evicts constantly while other threads generate. Each alias is its own copy of the SmolLM2
GGUF (the cache keys on the resolved path), so every eviction closes a real llama.cpp model. A
model closed under a generating thread crashes the process or fails the call; here every answer
must arrive complete and equal to a single-threaded greedy answer of the same model.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_distill.core import runtime
from jupyter_distill.core.models import resolve_local_gguf
from jupyter_distill.serving import hf_backend, registry
from jupyter_distill.serving import student as serving

THREADS = 8
ROUNDS = 4  # requests per thread: a bounded run, whatever the machine's speed
ALIASES = 4
MESSAGES = [{"role": "user", "content": "Name a colour."}]
MAX_TOKENS = 5


@pytest.fixture
def aliases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(runtime, "MAX_LOADED", 2)
    source = resolve_local_gguf("smollm2-135m")
    names = []
    for i in range(ALIASES):
        copy = tmp_path / f"copy{i}" / "smol.gguf"
        copy.parent.mkdir()
        try:
            os.link(source, copy)  # a hard link is another path to the cache, and costs no disk
        except OSError:
            shutil.copyfile(source, copy)
        name = f"smol-{i}"
        registry.set_alias(name, backend="gguf", model_path=copy, n_ctx=256, n_threads=1)
        names.append(name)
    runtime.release_all()
    yield names
    hf_backend.release_all()


def _answer(alias: str, stream: bool) -> tuple[str, str]:
    """(text, finish_reason) of one greedy request; a stream's pieces are joined."""
    if not stream:
        resp = serving.completion(model=alias, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0.0)
        return resp.choices[0].message.content, resp.choices[0].finish_reason
    chunks = list(serving.completion(model=alias, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert len(finishes) == 1 and chunks[-1].choices[0].finish_reason, "a stream must end with one finish chunk"
    return "".join(c.choices[0].delta.get("content") or "" for c in chunks), finishes[0]


def test_eviction_never_frees_a_model_in_use(aliases: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Greedy answers depend on whether llama.cpp re-evaluates the prompt from scratch (just
    # loaded) or reuses its cached prefix (batch sizes change the sums), so both are valid.
    expected = {_answer(aliases[0], stream=False), _answer(aliases[0], stream=False)}
    assert all(text and finish in ("stop", "length") for text, finish in expected)

    loads: list[str] = []
    real_load = runtime.load_llama

    def counting_load(path: str, **kw: object) -> object:
        loads.append(path)
        return real_load(path, **kw)

    monkeypatch.setattr(runtime, "load_llama", counting_load)
    start = threading.Barrier(THREADS)
    results: list[tuple[str, bool, tuple[str, str]]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        try:
            start.wait()
            for r in range(ROUNDS):
                alias = aliases[(t + r) % len(aliases)]
                stream = (t + r) % 2 == 0
                answer = _answer(alias, stream)
                with lock:
                    results.append((alias, stream, answer))
        except BaseException as exc:  # collected and re-raised in the main thread
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads), "a generation hung"
    assert not errors, errors
    assert len(results) == THREADS * ROUNDS
    for alias, stream, answer in results:
        assert answer in expected, (alias, stream, answer)  # complete, and a greedy answer of this model
    # The cache really was evicting under the threads: more loads than distinct files.
    assert len(loads) > len(aliases)
    assert len(runtime.loaded_models()) <= runtime.MAX_LOADED


def test_a_stream_advanced_on_other_threads_releases_its_model(aliases: list[str]) -> None:
    """A stream pulled on one thread and closed on another leaves the model usable.

    The pulling thread stays alive meanwhile, so no later thread can inherit its identity (and,
    with it, ownership of a re-entrant lock it left behind).
    """
    stream = serving.completion(model=aliases[0], messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True)
    first: list[object] = []
    pulled, finish = threading.Event(), threading.Event()

    def pull() -> None:
        first.append(next(stream))
        pulled.set()
        finish.wait(timeout=300)

    puller = threading.Thread(target=pull, daemon=True)
    puller.start()
    try:
        assert pulled.wait(timeout=120) and first
        closer = threading.Thread(target=stream.close)  # closed on a third thread
        closer.start()
        closer.join()
        done: list[tuple[str, str]] = []
        follower = threading.Thread(target=lambda: done.append(_answer(aliases[0], stream=False)), daemon=True)
        follower.start()
        follower.join(timeout=60)
        assert done, "the model stayed locked after its stream was closed on another thread"
    finally:
        finish.set()


def test_release_all_while_generating_closes_after_the_last_user(aliases: list[str]) -> None:
    stream = serving.completion(model=aliases[1], messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True)
    head = next(stream)
    hf_backend.release_all()  # the streaming model is in use: it must stay open until the stream ends
    rest = list(stream)
    assert rest and rest[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.get("content") or "" for c in [head, *rest])
    assert text and text in {_answer(aliases[1], stream=False)[0], _answer(aliases[1], stream=False)[0]}
    assert runtime.loaded_models() == [str(Path(registry.get_alias(aliases[1])["model_path"]))]
