"""The HTTP teacher's parts on their own: the spend budget, response reading, retry rules."""

from __future__ import annotations

import threading

import httpx
import pytest

from jupyter_distill.core.errors import BudgetExceeded
from jupyter_distill.teachers.chat_response import apportion, error_message, mentions_n, samples_from_response
from jupyter_distill.teachers.http_retry import backoff_delay, cannot_connect, retry_after_seconds
from jupyter_distill.teachers.spend import SpendBudget

MESSAGES = [{"role": "user", "content": "x" * 200}]  # 100 prompt tokens + 8 by the worst-case rule


def test_budget_hammered_from_threads_never_passes_its_limit() -> None:
    """8 threads reserve and settle at once: what passes never exceeds max_cost, nothing is lost."""
    prices = (1_000_000.0, 0.0)  # 1 USD per prompt token: each reservation is 108 USD
    budget = SpendBudget(max_cost=108 * 50, spec="t")
    admitted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(20):
            try:
                held = budget.reserve(MESSAGES, 1, 1, prices)
            except BudgetExceeded:
                with lock:
                    refused.append(1)
                continue
            budget.settle(held, held)  # the real cost equals the worst case: spend only grows
            with lock:
                admitted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 50 and len(refused) == 8 * 20 - 50
    assert budget.spent == pytest.approx(108 * 50) and budget.reserved == pytest.approx(0.0)


def test_budget_error_names_field_and_fix() -> None:
    budget = SpendBudget(max_cost=0.0, spec="openai:gpt")
    with pytest.raises(BudgetExceeded) as caught:
        budget.reserve(MESSAGES, 2, 10, (1.0, 1.0))
    assert caught.value.field == "max_cost" and "raise max_cost" in str(caught.value)
    assert budget.reserved == 0.0


@pytest.mark.parametrize(("total", "weights"), [(10, [1, 1, 1]), (7, [5, 1]), (0, [2, 3]), (101, [3, 3, 3, 1])])
def test_apportion_adds_up_and_follows_weights(total: int, weights: list[int]) -> None:
    parts = apportion(total, weights)
    assert sum(parts) == total and len(parts) == len(weights)
    exact = [total * w / sum(weights) for w in weights]
    assert all(abs(p - e) < 1 for p, e in zip(parts, exact, strict=True))


def test_reported_cost_is_split_over_choices() -> None:
    body = {
        "id": "r1",
        "choices": [{"index": 1, "message": {"content": "bb bb"}}, {"index": 0, "message": {"content": "a"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 6, "cost": 0.5},
    }
    provenance = {
        "teacher": "t",
        "model": "m",
        "provider": "p",
        "scheme": "openai",
        "endpoint": "e",
        "policy": {},
        "terms_version": "v",
        "licence": "",
    }
    samples, total = samples_from_response(
        body,
        MESSAGES,
        temperature=0.5,
        max_tokens=8,
        seed=None,
        n=2,
        attempts=1,
        prices=(1.0, 2.0),
        price_source="table",
        provenance=provenance,
    )
    assert [s.text for s in samples] == ["a", "bb bb"]  # ordered by index
    assert total == 0.5 and sum(s.cost for s in samples) == pytest.approx(0.5)
    assert sum(s.usage["completion_tokens"] for s in samples) == 6
    assert all(s.provenance["price_source"] == "response usage.cost" for s in samples)


def test_error_text_and_n_detection() -> None:
    assert error_message({"error": {"message": "bad", "metadata": {"raw": "why"}}}) == "bad why"
    assert error_message({"message": "plain"}) == "plain"
    assert mentions_n("Invalid value for 'n': must be 1") and not mentions_n("context too long")


def test_retry_after_and_backoff() -> None:
    assert retry_after_seconds("2.5") == 2.5 and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now
    for attempt in range(6):
        delay = backoff_delay(attempt, None, backoff_base=0.5, backoff_max=4.0, retry_after_max=300)
        assert 0.25 * 2**attempt * 0.999 <= delay or delay >= 2.0
        assert delay <= 4.0
    assert 100 <= backoff_delay(0, 500, backoff_base=0.5, backoff_max=4.0, retry_after_max=100) <= 110
    assert cannot_connect(httpx.ConnectError("refused"))
    assert not cannot_connect(httpx.ReadTimeout("slow"))
