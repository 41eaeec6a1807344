"""``distill(num_processes=2)``: the whole pipeline with its training phase in two accelerate workers.

The same tiny run as ``tests/test_pipeline.py`` (a local OpenAI-shaped teacher, an exact-match
verifier, a tiny Llama student), checked for what a front end sees: every phase, the step metrics
in the store, the dashboard's step counter fed by the relayed events, and both evaluations.
"""

from __future__ import annotations

import pytest
from tiny_models import build_tiny_llama

import jupyter_distill as jd
from jupyter_distill.core.store import RunStore
from jupyter_distill.judging.verifiers import exact_match
from jupyter_distill.notebook.dashboard import DashboardState


def answer(body, index):
    number = body["messages"][-1]["content"].rsplit(" ", 1)[-1]
    return number if index % 2 == 0 else f"I think it is {number}?"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_distill_trains_in_two_workers(tmp_path, monkeypatch, openai_server):
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    openai_server.responder = answer
    student_folder = build_tiny_llama(tmp_path / "student")
    events = []
    jd.distill(
        dataset=[{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(10)],
        teacher=openai_server.spec("test-model"),
        student=str(student_folder),
        judge=exact_match("expected"),
        n_samples=4,
        top_k=1,
        steps=3,
        batch_size=2,
        grad_accum=2,
        num_processes=2,
        device="cpu",
        max_tokens=8,
        quantize=None,
        workdir=str(tmp_path / "wd"),
        name="numbers",
        on_progress=events.append,
    )
    phases = [e.phase for e in events if e.kind == "phase_end"]
    assert phases == ["sampling", "judging", "review", "training", "eval", "export", "alias"]
    assert any("starting 2 training processes" in e.message for e in events)
    state = DashboardState(run="numbers")
    for event in events:
        state.apply(event)
    assert state.step == 3 and state.phases["training"].current == 3
    store = RunStore(tmp_path / "wd")
    run = store.get_run("numbers")
    assert run["status"] == "done"
    assert run["summary"]["student_before"]["n"] == run["summary"]["student_after"]["n"] == 2
    assert [m["step"] for m in store.get_metrics("numbers", "loss")] == [1, 2, 3]
    assert "adapter" in store.get_artifacts("numbers")
    # the stored event log (the lab panel's feed) has the training phase as in-process runs do
    stored = [(e["kind"], e["phase"]) for e in store.get_events("numbers")]
    assert ("phase_end", "training") in stored
