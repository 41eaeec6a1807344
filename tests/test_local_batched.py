"""The batched llama.cpp path of the local teacher, on the real SmolLM2-135M GGUF on CPU.

Short by design: a few prompts, a few tokens. Every generation loop is bounded by max_tokens and
every test has a timeout, so a broken decode cannot hang the suite.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from jupyter_distill.core.errors import TeacherError
from jupyter_distill.core.models import resolve_local_gguf
from jupyter_distill.core.runtime import use_llama
from jupyter_distill.teachers import load_teacher
from jupyter_distill.teachers.llama_batch import BatchContext, GenerationStopped, format_chat

pytestmark = pytest.mark.timeout(300)

PROMPTS = [
    "Extract the name from: Ines Ali lives in Chicago. Answer with JSON.",
    "Write one word: the colour of the sky.",
    "Count from one to five.",
]


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def model_path():
    return resolve_local_gguf("smollm2-135m")


def _generate(path, prompts, seeds, **kwargs):
    with use_llama(path, n_threads=1) as llm:
        formatted = [format_chat(llm, _messages(p)) for p in prompts]
        n_ctx = kwargs.pop("n_ctx", 2048)
        with BatchContext(llm, n_seq=sum(len(s) for s in seeds), n_ctx=n_ctx, n_threads=1) as batch:
            return batch.generate([t for t, _ in formatted], seeds, stop_strings=formatted[0][1], **kwargs)


def test_same_seeds_same_texts_and_provenance(model_path):
    teacher = load_teacher("local:smollm2-135m", n_threads=1)
    first = asyncio.run(teacher.sample(_messages(PROMPTS[0]), n=3, temperature=0.9, max_tokens=12, seed=41))
    again = asyncio.run(teacher.sample(_messages(PROMPTS[0]), n=3, temperature=0.9, max_tokens=12, seed=41))
    assert [s.text for s in first] == [s.text for s in again]
    assert len({s.text for s in first}) > 1  # three seeds, three samplers: not one text copied
    for i, s in enumerate(first):
        # The key inputs and provenance of candidate i are what the sequential path recorded.
        assert s.provenance["params"] == {"temperature": 0.9, "max_tokens": 12, "seed": 41 + i, "n_per_request": 1}
        assert s.usage["completion_tokens"] <= 12
        assert s.finish_reason in {"stop", "length"}
        assert "<|im_end|>" not in s.text


def test_greedy_text_does_not_depend_on_batch_companions(model_path):
    alone = _generate(model_path, PROMPTS[:1], [[0]], temperature=0.0, max_tokens=10)
    shared = _generate(model_path, PROMPTS, [[0, 1], [2], [3, 4]], temperature=0.0, max_tokens=10)
    assert shared[0][0].text == alone[0][0].text
    assert shared[0][1].text == alone[0][0].text  # greedy: both candidates of a prompt agree
    assert shared[2][0].text != shared[0][0].text


def test_sampled_texts_reproducible_for_one_batch_layout(model_path):
    seeds = [[5, 6], [7]]
    one = _generate(model_path, PROMPTS[:2], seeds, temperature=1.0, max_tokens=10)
    two = _generate(model_path, PROMPTS[:2], seeds, temperature=1.0, max_tokens=10)
    assert [[g.text for g in p] for p in one] == [[g.text for g in p] for p in two]


def test_max_tokens_bounds_every_candidate(model_path):
    result = _generate(model_path, PROMPTS[2:], [[1, 2, 3]], temperature=1.0, max_tokens=3)
    for g in result[0]:
        assert g.completion_tokens <= 3
        assert g.finish_reason == ("length" if g.completion_tokens == 3 else "stop")


class CountingStop(threading.Event):
    """A stop event that reports set after ``after`` checks: a Stop pressed mid-generation."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after
        self.checks = 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.after


def test_stop_event_ends_generation_within_one_step(model_path):
    stop = CountingStop(after=3)
    with pytest.raises(GenerationStopped):
        _generate(model_path, PROMPTS[:1], [[0, 1]], temperature=1.0, max_tokens=200, stop=stop)
    assert stop.checks == 4  # prompt, two decode steps, then the stop: no further step ran


def test_decode_failure_raises_a_clear_error(model_path):
    with use_llama(model_path, n_threads=1) as llm:
        tokens, stops = format_chat(llm, _messages("word " * 300))
        with (
            BatchContext(llm, n_seq=4, n_ctx=256, n_threads=1) as batch,
            pytest.raises(TeacherError, match="n_ctx") as info,
        ):
            batch.generate([tokens], [[0, 1, 2, 3]], temperature=1.0, max_tokens=50, stop_strings=stops)
    assert "llama_decode failed" in str(info.value)


def test_teacher_shared_between_threads(model_path):
    teacher = load_teacher("local:smollm2-135m", n_threads=1)

    def run(prompt: str) -> list[str]:
        samples = asyncio.run(teacher.sample(_messages(prompt), n=2, temperature=0.8, max_tokens=6, seed=9))
        return [s.text for s in samples]

    expected = {p: run(p) for p in PROMPTS}
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            results[k] = run(PROMPTS[k % len(PROMPTS)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors
    assert all(results[k] == expected[PROMPTS[k % len(PROMPTS)]] for k in range(6))


def test_llama_responder_batches_greedy_answers(model_path):
    from jupyter_distill.evaluation.heldout import llama_responder

    respond = llama_responder(model_path, max_tokens=10)
    batched = respond.batch([_messages(p) for p in PROMPTS])
    with use_llama(model_path) as llm:
        plain = [
            llm.create_chat_completion(_messages(p), temperature=0.0, max_tokens=10)["choices"][0]["message"]["content"]
            for p in PROMPTS
        ]
    assert batched == plain


def test_batched_threads_honours_override_and_stays_in_range(monkeypatch):
    import os

    from jupyter_distill.teachers.llama_batch import batched_threads

    monkeypatch.setenv("JUPYTER_DISTILL_LLAMA_THREADS", "3")
    assert batched_threads() == 3
    monkeypatch.delenv("JUPYTER_DISTILL_LLAMA_THREADS")
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 0.0, 0.0))
    assert batched_threads() == 1  # every core busy: one thread, never zero
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert batched_threads() == max(1, os.cpu_count() or 1)
