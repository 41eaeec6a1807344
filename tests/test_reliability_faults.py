"""Faults: a teacher that fails 30 % of the time still yields every sample; a prompt that always
fails is listed in the run summary and the store's failures table, and a re-run retries it.

Real HTTP against the local test server (``tests/openai_server.py``): 429 with a small
Retry-After, 500, timeouts, 200s whose body is not JSON, and dropped connections, drawn at
random. Small client timeouts and backoffs keep the test to seconds.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from openai_server import OpenAIServer

import jupyter_distill as jd
from jupyter_distill.core.data import load_dataset
from jupyter_distill.core.events import Event
from jupyter_distill.core.store import RunStore
from jupyter_distill.judging.verifiers import exact_match
from jupyter_distill.teachers import load_teacher

pytestmark = pytest.mark.slow

FAULTS = {"429": 0.06, "500": 0.06, "timeout": 0.06, "malformed": 0.06, "drop": 0.06}  # 30 % in all
DOOMED = "Repeat the number 7"
N_PROMPTS, N_SAMPLES = 40, 3


def answer(body: dict[str, Any], index: int) -> str:
    """Candidate 0 is right, the others are not, so the verifier always finds a best one."""
    number = body["messages"][-1]["content"].rsplit(" ", 1)[-1]
    return number if index == 0 else f"{number}?{index}"


def fast_teacher(server: OpenAIServer) -> Any:
    """The HTTP teacher with test-sized timeouts: 0.3 s per attempt, up to 11 attempts, ms backoff."""
    return load_teacher(
        server.spec("test-model"), timeout=0.3, max_retries=10, backoff_base=0.01, backoff_max=0.05, concurrency=4
    )


@pytest.fixture
def tiny_student(tiny_llama_student: Path) -> Path:
    return tiny_llama_student


def test_thirty_percent_faults_lose_no_sample_and_permanent_failures_are_listed(
    tmp_path: Path, openai_server: OpenAIServer, tiny_student: Path
) -> None:
    openai_server.responder = answer
    openai_server.script = list(FAULTS)  # each kind of fault at least once, then 30 % at random
    openai_server.error_rates = dict(FAULTS)
    openai_server.retry_after = "0.05"
    openai_server.timeout_sleep = 1.0
    openai_server.prompt_scripts[DOOMED] = ["500"] * 1000
    rows = [{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(N_PROMPTS)]
    events: list[Event] = []
    options: dict[str, Any] = dict(
        dataset=rows,
        student=str(tiny_student),
        judge=exact_match("expected"),
        n_samples=N_SAMPLES,
        top_k=1,
        steps=1,
        batch_size=2,
        max_tokens=8,
        heldout_fraction=0.0,
        quantize=None,
        workdir=str(tmp_path),
        name="faulty",
        device="cpu",
    )
    jd.distill(teacher=fast_teacher(openai_server), on_progress=events.append, **options)

    seen = Counter(openai_server.directives)
    for fault in FAULTS:
        assert seen[fault] > 0, f"the server never injected {fault!r}: {seen}"
    injected = sum(seen[f] for f in FAULTS) - openai_server.requests_by_prompt[DOOMED]
    assert injected >= 0.2 * (openai_server.requests_total - openai_server.requests_by_prompt[DOOMED])

    store = RunStore(tmp_path)
    prompts = {p.messages[-1]["content"]: p.hash for p in load_dataset(rows)}
    doomed = prompts[DOOMED]
    for text, digest in prompts.items():
        stored = store.samples_for_prompt(digest)
        if text == DOOMED:
            assert stored == []
        else:
            assert sorted(s.sample_index for s in stored) == list(range(N_SAMPLES)), text
    run = store.get_run("faulty")
    assert run is not None and run["status"] == "done"
    assert run["summary"]["failed"] == [doomed] and run["summary"]["failed_prompts"] == [doomed]
    failures = store.get_failures("faulty", stage="sampling")
    assert [f["prompt_hash"] for f in failures] == [doomed]
    assert "HTTP 500" in failures[0]["error"] and "11 attempts" in failures[0]["error"]
    warnings = [e for e in events if e.kind == "warning" and e.phase == "sampling"]
    assert warnings and doomed in warnings[0].data["failed"]
    assert store.conn.execute("SELECT COUNT(*) FROM pairs WHERE run_id='faulty'").fetchone()[0] == N_PROMPTS - 1

    # The server recovers; the same call again asks only for the failed prompt and clears its failure.
    openai_server.error_rates = {}
    openai_server.prompt_scripts.clear()
    before = Counter(openai_server.requests_by_prompt)
    jd.distill(teacher=fast_teacher(openai_server), on_progress=events.append, **options)
    sent = Counter(openai_server.requests_by_prompt) - before
    restarts = [e for e in events if e.kind == "warning" and e.phase == "training"]
    assert any("pairs changed" in e.message for e in restarts)  # new pairs: training starts over, no error
    assert set(sent) == {DOOMED}
    assert len(store.samples_for_prompt(doomed)) == N_SAMPLES
    assert store.get_failures("faulty") == []
    run = store.get_run("faulty")
    assert run is not None and run["status"] == "done" and run["summary"]["failed"] == []
    assert store.conn.execute("SELECT COUNT(*) FROM pairs WHERE run_id='faulty'").fetchone()[0] == N_PROMPTS
