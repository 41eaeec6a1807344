"""``jd.distill(loss='jbond')`` end to end on CPU: an HTTP teacher on 127.0.0.1, a verifier judge, a
tiny random-init llama student that samples and is judged while it trains."""

from __future__ import annotations

from pathlib import Path

import pytest

import jupyter_distill as jd
from jupyter_distill.core.store import RunStore
from jupyter_distill.judging.verifiers import exact_match


def answer(body: dict, index: int) -> str:
    """Half of the teacher's candidates are right."""
    number = body["messages"][-1]["content"].rsplit(" ", 1)[-1]
    return number if index % 2 == 0 else f"I think it is {number}?"


@pytest.fixture
def tiny_student(tiny_llama_student: Path) -> Path:
    return tiny_llama_student


def test_distill_with_jbond_records_on_policy_metrics_and_pays_the_teacher_only_for_sampling(
    tmp_path, monkeypatch, openai_server, tiny_student
) -> None:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    openai_server.responder = answer
    options = dict(
        dataset=[{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(6)],
        teacher=openai_server.spec("test-model"),
        student=str(tiny_student),
        judge=exact_match("expected"),
        loss="jbond",
        jbond_n=2,
        jbond_max_new_tokens=4,
        n_samples=4,
        top_k=1,
        steps=2,
        batch_size=2,
        max_tokens=8,
        quantize=None,
        workdir=str(tmp_path / "wd"),
        name="jbond-numbers",
    )
    jd.distill(on_progress=lambda event: None, **options)
    store = RunStore(tmp_path / "wd")
    assert store.get_run("jbond-numbers")["status"] == "done"
    sampled = openai_server.requests_total
    assert sampled > 0
    for name in ("loss", "reward", "win_rate", "kl_anchor", "pg", "fwd"):
        assert [m["step"] for m in store.get_metrics("jbond-numbers", name)] == [1, 2], name
    for m in store.get_metrics("jbond-numbers", "win_rate"):
        assert 0.0 <= m["value"] <= 1.0
    summary = store.get_run("jbond-numbers")["summary"]
    # the judge's calls during training are counted (2 steps x 2 prompts x jbond_n=2 samples at most)
    assert 0 < summary["train_judge_calls"] <= 8, summary
    assert summary["train_judge_cost"] == 0.0 and summary["judge_cost"] == 0.0  # a verifier is free
    # the verifier judged the student's samples: no teacher request was added by training
    jd.distill(on_progress=lambda event: None, **options)
    assert openai_server.requests_total == sampled
    store.close()
