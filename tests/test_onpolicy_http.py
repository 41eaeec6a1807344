"""An OpenAI-compatible teacher scores the student's tokens through prompt log-probs (vLLM's form and the
legacy echo form), priced and held to max_cost, against the real local server on 127.0.0.1; the
tokenizer check goes through the server's /tokenize."""

from __future__ import annotations

import asyncio

import pytest
from openai_server import OpenAIServer
from tiny_models import build_tiny_llama, smol_hf_folder

import jupyter_distill as jd
from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.errors import BudgetExceeded, ConfigError, TeacherError
from jupyter_distill.core.store import RunStore
from jupyter_distill.pipeline.preflight import check_loss
from jupyter_distill.teachers import load_teacher
from jupyter_distill.train.teacher_logprobs import TeacherLogprobs

PROMPT = [1, 9690, 198, 1060]
COMPLETIONS = [[504, 3060, 2], [17, 2]]


def table(ids: list[int], start: int) -> list[float]:
    return [OpenAIServer.table_logprob(a, b, 49152) for a, b in zip(ids[start - 1 : -1], ids[start:], strict=True)]


@pytest.mark.parametrize("form", ["vllm", "echo"])
def test_scores_come_back_per_token_priced_in_one_request(openai_server: OpenAIServer, form: str) -> None:
    openai_server.prompt_logprobs = form
    teacher = load_teacher(openai_server.spec("m"), input_usd_per_m=2.0, output_usd_per_m=10.0)
    assert teacher.can_score
    got = asyncio.run(teacher.token_logprobs(PROMPT, COMPLETIONS))
    for ids, values in zip(COMPLETIONS, got.logprobs, strict=True):
        assert values == pytest.approx(table(PROMPT + ids, len(PROMPT)), abs=1e-12)
    assert len(openai_server.scoring_bodies) == 1
    body = openai_server.scoring_bodies[0]
    assert body["prompt"] == [PROMPT + c for c in COMPLETIONS] and body["max_tokens"] == 1
    assert body["prompt_logprobs"] == 0 and body["echo"] is True
    tokens = 2 * len(PROMPT) + sum(map(len, COMPLETIONS))
    assert got.prompt_tokens == tokens
    assert got.cost == pytest.approx((tokens * 2.0 + 2 * 10.0) / 1e6)
    assert teacher.spent == pytest.approx(got.cost)
    assert openai_server.requests_total == 0  # no chat request: scoring is not sampling


def test_a_server_without_prompt_logprobs_is_named_with_jbond_as_the_fix(openai_server: OpenAIServer) -> None:
    teacher = load_teacher(openai_server.spec("m"))
    with pytest.raises(TeacherError) as info:
        asyncio.run(teacher.token_logprobs(PROMPT, COMPLETIONS))
    assert "prompt log-probs" in str(info.value) and info.value.fix == "use loss='jbond'"
    assert teacher.spent == 0.0


def test_scoring_respects_max_cost_before_sending(openai_server: OpenAIServer) -> None:
    openai_server.prompt_logprobs = "vllm"
    teacher = load_teacher(openai_server.spec("m"), max_cost=0.0001, input_usd_per_m=10.0, output_usd_per_m=10.0)
    scores = TeacherLogprobs(teacher)
    scores.score([(PROMPT, COMPLETIONS[1])])  # 6 tokens: 0.00007 USD
    assert scores.calls == 1 and scores.cost == pytest.approx(7 * 10.0 / 1e6)
    assert scores.score([(PROMPT, COMPLETIONS[1])]) and scores.calls == 1 and scores.hits == 1  # cached: free
    with pytest.raises(BudgetExceeded) as info:
        scores.score([(PROMPT, COMPLETIONS[0])])
    assert info.value.field == "max_cost"
    assert len(openai_server.scoring_bodies) == 1  # refused before the request


def _smol_encode():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_hf_folder())
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


def test_preflight_compares_the_servers_tokenizer(openai_server: OpenAIServer, tmp_path) -> None:
    student = str(build_tiny_llama(tmp_path / "llama"))
    config = DistillConfig(loss="onpolicy", teacher=openai_server.spec("m"), student=student)
    teacher = load_teacher(openai_server.spec("m"))
    with pytest.raises(ConfigError) as info:  # no /tokenize: the tokenizers cannot be compared
        check_loss(config, teacher)
    assert "cannot be read" in str(info.value) and info.value.fix == "use loss='jbond'"
    openai_server.tokenizer = lambda text: list(text.encode("utf-8"))  # a byte-level tokenizer: not the student's
    with pytest.raises(ConfigError) as info:
        check_loss(config, teacher)
    assert "tokenizers differ" in str(info.value)
    openai_server.tokenizer = _smol_encode()
    check_loss(config, teacher)
    assert openai_server.requests_total == 0 and not openai_server.scoring_bodies  # nothing paid
    with pytest.raises(ConfigError) as info:  # a hosted API: refused from the spec, nothing sent
        check_loss(DistillConfig(loss="onpolicy", teacher="gemini:gemini-2.5-flash"), None)
    assert "text only" in str(info.value)


def test_distill_with_onpolicy_through_a_server_counts_and_prices_the_scoring(
    tmp_path, monkeypatch, openai_server: OpenAIServer
) -> None:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    openai_server.tokenizer = _smol_encode()
    openai_server.prompt_logprobs = "vllm"
    openai_server.usage_cost = 0.001  # the server reports each request's cost, as OpenRouter does
    teacher = load_teacher(openai_server.spec("m"))
    student = build_tiny_llama(tmp_path / "student")
    jd.distill(
        dataset=[{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(4)],
        teacher=teacher,
        student=str(student),
        judge=lambda row, response: 1.0,
        loss="onpolicy",
        jbond_n=2,
        jbond_max_new_tokens=3,
        n_samples=1,
        top_k=1,
        steps=2,
        batch_size=2,
        max_tokens=8,
        heldout_fraction=0.0,
        quantize=None,
        workdir=str(tmp_path / "wd"),
        name="onpolicy-http",
        on_progress=lambda event: None,
    )
    store = RunStore(tmp_path / "wd")
    run = store.get_run("onpolicy-http")
    assert run["status"] == "done"
    calls = sum(m["value"] for m in store.get_metrics("onpolicy-http", "teacher_calls"))
    assert calls == len(openai_server.scoring_bodies) >= 2
    summary = run["summary"]
    assert summary["teacher_scoring_calls"] == calls
    assert summary["teacher_scoring_cost"] == pytest.approx(0.001 * calls)
    assert summary["total_cost"] >= summary["teacher_scoring_cost"] + summary["teacher_cost"] - 1e-9
    for m in store.get_metrics("onpolicy-http", "reverse_kl"):
        assert m["value"] == m["value"]  # finite numbers recorded
    store.close()


def test_scores_shared_by_eight_threads_score_each_sample_once(openai_server: OpenAIServer) -> None:
    """A notebook reads the counters while training scores: eight threads scoring overlapping samples
    at once get the same numbers, each distinct sample is paid for once, and the counters add up."""
    import threading

    openai_server.prompt_logprobs = "vllm"
    scores = TeacherLogprobs(load_teacher(openai_server.spec("m"), input_usd_per_m=1.0))
    items = [(PROMPT, [i, i + 1]) for i in range(10, 22)]
    results: list[list[list[float]]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(offset: int) -> None:
        try:
            start.wait()
            mine = items[offset:] + items[:offset]
            got = scores.score(mine)
            results.append(got[len(items) - offset :] + got[: len(items) - offset])
            scores.state_dict()  # a concurrent reader
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 8
    assert all(r == results[0] for r in results)
    for (prompt, ids), values in zip(items, results[0], strict=True):
        assert values == pytest.approx(table(prompt + ids, len(prompt)), abs=1e-12)
    scored = [c for body in openai_server.scoring_bodies for c in body["prompt"]]
    assert sorted(map(tuple, scored)) == sorted(tuple(p + i) for p, i in items)  # each sample paid once
    assert scores.tokens == sum(len(ids) for _, ids in items) and scores.hits == 7 * len(items)
    assert scores.cost == pytest.approx(sum(len(p + i) for p, i in items) / 1e6)
