"""Batched llama.cpp decoding: same candidates as one at a time, whatever else shares the batch."""

from __future__ import annotations

import asyncio
import threading

import pytest

from jupyter_distill.errors import TeacherError
from jupyter_distill.llama_batch import ChatJob, batched_chat_completions
from jupyter_distill.models import resolve_local_gguf
from jupyter_distill.runtime import use_llama
from jupyter_distill.teachers import load_teacher

# one thread: on a shared 2-core machine llama.cpp's spinning threads make 2 several times slower
THREADS = 1
PROMPTS = ["Name a colour.", "Give a JSON object with a field x.", "Count to five."]


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def texts(rows: list[list[dict]]) -> list[list[tuple[str, str, int]]]:
    return [
        [
            (r["choices"][0]["message"]["content"], r["choices"][0]["finish_reason"], r["usage"]["completion_tokens"])
            for r in row
        ]
        for row in rows
    ]


@pytest.fixture(scope="module")
def gguf():
    return resolve_local_gguf("smollm2-135m")


def test_a_candidate_alone_equals_the_same_candidate_in_a_full_batch(gguf):
    jobs = [ChatJob(msgs(p), (11 + j, 20, 35), 0.9, 12) for j, p in enumerate(PROMPTS)]
    with use_llama(gguf, n_threads=THREADS) as llm:
        together = texts(batched_chat_completions(llm, jobs))
        alone = [
            [
                texts(batched_chat_completions(llm, [ChatJob(job.messages, (seed,), 0.9, 12)]))[0][0]
                for seed in job.seeds
            ]
            for job in jobs
        ]
        narrow = texts(batched_chat_completions(llm, jobs, sequences=2))  # other batch compositions
    assert together == alone == narrow
    assert all(text for row in together for text, _, _ in row)
    assert len({text for row in together for text, _, _ in row}) > 3  # seeds really differ


def test_batched_candidates_equal_create_chat_completion_on_a_fresh_context(gguf):
    # stop strings, the end-of-generation token and max_tokens all end some of these
    jobs = [ChatJob(msgs(p), (3, 4), 0.8, 16) for p in PROMPTS[:2]]
    with use_llama(gguf, n_threads=THREADS) as llm:
        batched = texts(batched_chat_completions(llm, jobs))
        plain = []
        for job in jobs:
            row = []
            for seed in job.seeds:
                llm.reset()  # a fresh prompt evaluation, as the batch does it
                row.append(
                    llm.create_chat_completion(
                        messages=job.messages, temperature=job.temperature, max_tokens=job.max_tokens, seed=seed
                    )
                )
            plain.append(row)
    assert batched == texts(plain)
    assert {finish for row in batched for _, finish, _ in row} >= {"length"}


def test_a_prompt_longer_than_the_context_fails_alone(gguf):
    with use_llama(gguf, n_threads=THREADS) as llm:
        too_long = ChatJob(msgs("word " * 3000), (1,), 0.8, 8)
        with pytest.raises(ValueError, match="exceed context window"):
            batched_chat_completions(llm, [ChatJob(msgs("Say hi."), (1,), 0.8, 4), too_long])


def test_teacher_batches_concurrent_prompts_and_matches_one_at_a_time(gguf):
    teacher = load_teacher("local:smollm2-135m", n_threads=THREADS)

    async def together():
        return await asyncio.gather(*(teacher.sample(msgs(p), n=3, max_tokens=10, seed=5) for p in PROMPTS))

    batched = asyncio.run(together())
    for prompt, got in zip(PROMPTS, batched, strict=True):
        (alone,) = asyncio.run(teacher.sample(msgs(prompt), n=1, max_tokens=10, seed=7))
        assert alone.text == got[2].text  # candidate 2 has seed 5 + 2
        assert [s.provenance["params"]["seed"] for s in got] == [5, 6, 7]
        assert all(s.provenance["params"]["n_per_request"] == 1 for s in got)
    assert teacher.requests_sent == 3 * 3 + 3


def test_teacher_from_several_threads_at_once(gguf):
    teacher = load_teacher("local:smollm2-135m", n_threads=THREADS)
    expected = {p: [s.text for s in asyncio.run(teacher.sample(msgs(p), n=2, max_tokens=8, seed=1))] for p in PROMPTS}
    barrier = threading.Barrier(6)
    got: list[tuple[str, list[str]]] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        prompt = PROMPTS[i % len(PROMPTS)]
        try:
            barrier.wait()
            for _ in range(2):
                samples = asyncio.run(teacher.sample(msgs(prompt), n=2, max_tokens=8, seed=1))
                got.append((prompt, [s.text for s in samples]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(got) == 12
    assert all(texts_ == expected[prompt] for prompt, texts_ in got)


def test_a_cancelled_caller_does_not_disturb_the_others(gguf):
    teacher = load_teacher("local:smollm2-135m", n_threads=THREADS)

    async def scenario():
        doomed = asyncio.ensure_future(teacher.sample(msgs(PROMPTS[0]), n=4, max_tokens=64, seed=2))
        kept = asyncio.ensure_future(teacher.sample(msgs(PROMPTS[1]), n=2, max_tokens=8, seed=3))
        await asyncio.sleep(0)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return await kept

    kept = asyncio.run(scenario())
    (again,) = asyncio.run(teacher.sample(msgs(PROMPTS[1]), n=1, max_tokens=8, seed=4))
    assert again.text == kept[1].text


def test_teacher_errors_name_the_field(gguf):
    with pytest.raises(TeacherError) as info:
        load_teacher("local:smollm2-135m", sequences=0)
    assert "sequences" in str(info.value) and info.value.field == "sequences"
    teacher = load_teacher("local:smollm2-135m", n_threads=THREADS, n_ctx=256)
    with pytest.raises(TeacherError) as info:
        asyncio.run(teacher.sample(msgs("word " * 400), n=2, max_tokens=8, seed=1))
    assert "n_ctx" in str(info.value)


def test_gguf_responder_answers_in_batches_what_greedy_chat_completion_gives(gguf, tmp_path):
    from jupyter_distill.data import load_dataset
    from jupyter_distill.evaluate import evaluate, llama_responder

    respond = llama_responder(gguf, max_tokens=12)
    prompts = load_dataset([{"prompt": p} for p in PROMPTS])
    calls: list[int] = []
    batch = respond.batch

    def counting(chunk):
        calls.append(len(chunk))
        return batch(chunk)

    respond.batch = counting
    summary = evaluate(None, "r", prompts, respond, lambda row, answer: bool(answer.strip()), "gguf_after")
    assert calls == [3] and summary.n == 3 and summary.pass_rate == 1.0
    with use_llama(gguf) as llm:
        expected = []
        for p in prompts:
            llm.reset()
            out = llm.create_chat_completion(messages=p.messages, temperature=0.0, max_tokens=12)
            expected.append(out["choices"][0]["message"]["content"])
    assert batch([p.messages for p in prompts]) == expected
    assert respond(prompts[1].messages) == expected[1]


def test_a_decode_failure_reaches_every_waiting_caller_and_the_teacher_recovers(gguf, monkeypatch):
    from jupyter_distill.llama_batch import BatchContext

    teacher = load_teacher("local:smollm2-135m", n_threads=THREADS)
    calls = {"n": 0}
    original = BatchContext.decode

    def failing(self, entries):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("llama_decode failed with status -3")
        return original(self, entries)

    monkeypatch.setattr(BatchContext, "decode", failing)

    async def both():
        jobs = (teacher.sample(msgs(p), n=2, max_tokens=16, seed=1) for p in PROMPTS[:2])
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(both())
    assert all(isinstance(r, TeacherError) and "status -3" in str(r) for r in results), results
    monkeypatch.setattr(BatchContext, "decode", original)
    assert len(asyncio.run(teacher.sample(msgs(PROMPTS[0]), n=1, max_tokens=4, seed=1))) == 1


def test_without_a_multi_sequence_context_every_request_is_answered_one_by_one(gguf, monkeypatch):
    import jupyter_distill.llama_batch as llama_batch

    def refuse(*args):
        raise RuntimeError("llama.cpp could not create a batched context")

    with use_llama(gguf, n_threads=THREADS) as llm:
        expected = texts(batched_chat_completions(llm, [ChatJob(msgs(PROMPTS[0]), (1,), 0.8, 6)]))
        monkeypatch.setattr(llama_batch, "batch_context", refuse)
        llm.reset()
        got = texts(batched_chat_completions(llm, [ChatJob(msgs(PROMPTS[0]), (1,), 0.8, 6)]))
    assert got == expected


def test_batched_decoding_threads_default_to_one_unless_told(monkeypatch, gguf):
    from jupyter_distill.llama_batch import batch_context, batch_threads

    monkeypatch.delenv("JUPYTER_DISTILL_LLAMA_THREADS", raising=False)
    assert batch_threads() == 1 and batch_threads(3) == 3
    monkeypatch.setenv("JUPYTER_DISTILL_LLAMA_THREADS", "2")
    assert batch_threads() == 2 and batch_threads(1) == 1
    monkeypatch.setenv("JUPYTER_DISTILL_LLAMA_THREADS", "lots")
    assert batch_threads() == 1
    with use_llama(gguf, n_threads=THREADS) as llm:
        one = batch_context(llm, 2, 256, threads=1)
        assert batch_context(llm, 2, 256, threads=1) is one and one.threads == 1
        two = batch_context(llm, 2, 256, threads=2)  # another thread count: a new context
        assert two is not one and one.closed and two.threads == 2
        batch_context(llm, 2, 256, threads=1)  # leave the cached context as the other tests expect
