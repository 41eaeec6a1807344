"""The whole pipeline, end to end, on real components: an HTTP teacher on 127.0.0.1, a verifier
judge, a tiny random-init llama student trained with BOND, f16 GGUF export and an alias."""

from __future__ import annotations

import pytest

import jupyter_distill as jd
from jupyter_distill.core.errors import ConfigError, DatasetError, PolicyError, ReviewError
from jupyter_distill.core.events import is_preparation
from jupyter_distill.core.store import RunStore
from jupyter_distill.judging.verifiers import exact_match
from jupyter_distill.notebook.dashboard import DashboardState


def answer(body, index):
    """Half of the teacher's candidates are right: index 0 and 2 answer the number, 1 and 3 do not."""
    prompt = body["messages"][-1]["content"]
    number = prompt.rsplit(" ", 1)[-1]
    return number if index % 2 == 0 else f"I think it is {number}?"


@pytest.fixture
def tiny_student(tiny_llama_student):
    return tiny_llama_student


def dataset(n=10):
    return [{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(n)]


def test_distill_end_to_end_then_rerun_pays_nothing(tmp_path, monkeypatch, openai_server, tiny_student):
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    openai_server.responder = answer
    events = []
    options = dict(
        dataset=dataset(),
        teacher=openai_server.spec("test-model"),
        student=str(tiny_student),
        judge=exact_match("expected"),
        n_samples=4,
        top_k=1,
        steps=3,
        batch_size=2,
        max_tokens=8,
        quantize="f16",
        alias="tiny-numbers",
        workdir=str(tmp_path / "wd"),
        name="numbers",
    )
    student = jd.distill(on_progress=events.append, **options)

    phases = [e.phase for e in events if e.kind == "phase_end"]
    assert phases == ["sampling", "judging", "review", "training", "eval", "export", "alias"]
    # progress tells the truth on the real event stream: training prepares before it counts steps,
    # and the evaluations inside training and export move neither the eval bar nor the step counter
    preparing = [e.message for e in events if e.phase == "training" and is_preparation(e)]
    assert preparing[:2] == ["loading the student", "measuring the student before training"]
    state = DashboardState(run="numbers")
    for event in list(events):
        state.apply(event)
    assert state.step == 3 and all(p.status == "done" for p in state.phases.values())
    assert state.phases["eval"].current == 2 and state.phases["training"].current == 3
    # export shows its steps as they happen; the pass rates of the trained model plot at its step
    export_steps = [e.message for e in events if e.phase == "export" and e.kind == "progress"]
    assert export_steps[:2] == ["merging the adapter", "writing the f16 GGUF"]
    assert "checking the GGUF against the HF model" in export_steps and export_steps[-1] == "export done"
    assert [step for step, _ in state.evals["student_before"]] == [0]
    assert state.evals["student_after"][0][0] == 3 and state.evals["student_served"][0][0] == 3
    assert openai_server.requests_total > 0
    store = RunStore(tmp_path / "wd")
    run = store.get_run("numbers")
    assert run["status"] == "done"
    summary = run["summary"]
    assert summary["teacher_best_of_n"]["pass_rate"] == 1.0  # a right answer is always among 4 candidates
    assert summary["student_before"]["n"] == summary["student_after"]["n"] == 2
    # the file the alias serves is measured too, next to the fp32 figure
    assert summary["student_served"]["n"] == 2 and summary["student_served"]["quantize"] == "f16"
    assert student.metrics["student_served"] == summary["student_served"]
    assert summary["pairs"] == 8 and summary["pairs_with_rejected"] == 8
    assert {"adapter", "gguf"} <= set(store.get_artifacts("numbers"))
    assert [m["step"] for m in store.get_metrics("numbers", "loss")] == [1, 2, 3]
    # the stored pass rates sit at the step of the model they measured, as the plot draws them
    stored_at = {
        label: [m["step"] for m in store.get_metrics("numbers", f"eval/{label}/pass_rate")]
        for label in ("student_before", "student_after", "student_served")
    }
    assert stored_at == {"student_before": [0], "student_after": [3], "student_served": [3]}

    reply = jd.completion(model="tiny-numbers", messages=[{"role": "user", "content": "Repeat the number 3"}])
    assert reply.choices[0].message.role == "assistant" and reply._cost == 0.0
    assert isinstance(student("Repeat the number 4"), str)
    assert "tiny-numbers" in {a["name"] if isinstance(a, dict) else a for a in jd.list_aliases()}

    sent = openai_server.requests_total
    jd.distill(on_progress=events.append, **options)
    assert openai_server.requests_total == sent  # every sample re-used: nothing paid twice


def test_bad_input_fails_before_any_request(tmp_path, openai_server):
    base = dict(dataset=dataset(4), teacher=openai_server.spec("m"), workdir=str(tmp_path), on_progress=lambda e: None)
    with pytest.raises(ConfigError):
        jd.distill(**{**base, "n_samples": 2, "top_k": 3})
    with pytest.raises(DatasetError):
        jd.distill(**{**base, "dataset": [{"text": "no prompt field"}]})
    with pytest.raises(PolicyError):
        jd.distill(**{**base, "teacher": "openai:gpt-4o-mini"})
    assert openai_server.requests_total == 0


def test_review_true_in_a_script_explains_how_to_review(tmp_path, openai_server, tiny_student):
    openai_server.responder = answer
    with pytest.raises(ReviewError, match="%distill review"):
        jd.distill(
            dataset=dataset(4), teacher=openai_server.spec("m"), student=str(tiny_student),
            judge=exact_match("expected"), n_samples=2, top_k=1, steps=1, max_tokens=8, review=True,
            workdir=str(tmp_path), on_progress=lambda e: None,
        )  # fmt: skip
