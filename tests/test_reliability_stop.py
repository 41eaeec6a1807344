"""Stop works in every phase: sampling, judging, training, evaluation and export.

Each test asks the run to stop from an event callback the moment a phase starts (the dashboard's
Stop button calls the same ``Run.stop``), then checks the state, never the clock: the phase did
not do its work, the run is marked ``stopped`` in the store, and the same run resumed finishes.
"""

from __future__ import annotations

import pytest

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.events import Event
from jupyter_distill.core.store import RunStore
from jupyter_distill.judging.verifiers import exact_match
from jupyter_distill.pipeline.run import Run, RunStopped

pytestmark = pytest.mark.slow


def answer(body, index):
    prompt = body["messages"][-1]["content"]
    number = prompt.rsplit(" ", 1)[-1]
    return number if index % 2 == 0 else f"I think it is {number}?"


@pytest.fixture
def tiny_student(tiny_llama_student):
    return tiny_llama_student


def config(tmp_path, openai_server, student, **overrides) -> DistillConfig:
    options = dict(
        dataset=[{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(10)],
        teacher=openai_server.spec("test-model"),
        student=str(student),
        judge=exact_match("expected"),
        n_samples=2,
        top_k=1,
        steps=2,
        batch_size=2,
        max_tokens=8,
        quantize="f16",
        workdir=str(tmp_path / "wd"),
        name="stoppy",
        device="cpu",
    )
    options.update(overrides)
    return DistillConfig.from_kwargs(**options)


def stop_at(phase: str, cfg: DistillConfig) -> tuple[Run, list[Event]]:
    """Run ``cfg`` and press Stop when ``phase`` starts; the run must end with RunStopped."""
    events: list[Event] = []
    run: Run

    def on_progress(event: Event) -> None:
        events.append(event)
        if event.kind == "phase_start" and event.phase == phase:
            run.stop()

    run = Run(cfg, on_progress=on_progress)
    with pytest.raises(RunStopped):
        run.run()
    stored = RunStore(cfg.workdir).get_run(run.name)
    assert stored["status"] == "stopped" and stored["phase"] == phase and run.state.status == "stopped"
    assert [e.data.get("status") for e in events if e.kind == "run_end"] == ["stopped"]
    return run, events


def resume(cfg: DistillConfig) -> RunStore:
    Run(cfg, on_progress=lambda event: None).run()
    store = RunStore(cfg.workdir)
    assert store.get_run(cfg.name)["status"] == "done"
    return store


@pytest.mark.parametrize("phase", ["sampling", "judging", "training"])
def test_stop_at_the_start_of_a_paying_or_training_phase(phase, tmp_path, openai_server, tiny_student):
    openai_server.responder = answer
    # No GGUF export here: a stop and a resume of the export phase have their own test below, and
    # each export converts in a subprocess, which would cost these three runs most of their time.
    cfg = config(tmp_path, openai_server, tiny_student, quantize=None)
    run, _ = stop_at(phase, cfg)
    store = RunStore(cfg.workdir)
    if phase == "sampling":
        assert openai_server.requests_total == 0
    if phase == "judging":
        keys = [s.key for p in store.get_prompts(run.name) for s in store.samples_for_prompt(p.hash)]
        assert keys and store.judgments_for_samples(keys) == []
    if phase == "training":
        assert store.get_metrics(run.name, "loss") == []
    resumed = resume(cfg)
    assert [m["step"] for m in resumed.get_metrics(run.name, "loss")] == [1, 2]


def test_stop_during_evaluation_answers_no_further_prompt(tmp_path, openai_server, tiny_student):
    openai_server.responder = answer
    cfg = config(tmp_path, openai_server, tiny_student)
    run, events = stop_at("eval", cfg)
    store = RunStore(cfg.workdir)
    assert store.get_eval_results(run.name, "student_after") == []  # not a single held-out answer
    assert not [e for e in events if e.kind == "metric" and e.data.get("label") == "student_after"]
    assert "gguf" not in store.get_artifacts(run.name)  # and export never began
    resumed = resume(cfg)
    heldout = resumed.get_prompts(run.name, split="heldout")
    assert len(resumed.get_eval_results(run.name, "student_after")) == len(heldout) > 0


def test_stop_during_export_registers_no_artifact(tmp_path, openai_server, tiny_student):
    openai_server.responder = answer
    openai_server.usage_cost = 0.001  # USD per request, as OpenRouter reports it
    cfg = config(tmp_path, openai_server, tiny_student)
    run, _ = stop_at("export", cfg)
    store = RunStore(cfg.workdir)
    artifacts = store.get_artifacts(run.name)
    assert not {"gguf", "gguf_f16", "model_card", "merged"} & set(artifacts)  # nothing half-made is registered
    assert not list((tmp_path / "wd" / "runs" / run.name / "export").glob("*.gguf"))
    resumed = resume(cfg)
    assert {"gguf", "gguf_f16", "model_card"} <= set(resumed.get_artifacts(run.name))
    summary = resumed.get_run(run.name)["summary"]  # spend shown apart and in total (a verifier judge is free)
    assert summary["teacher_cost"] == pytest.approx(0.001 * openai_server.requests_total)
    assert summary["judge_cost"] == 0.0 and summary["total_cost"] == summary["teacher_cost"]
    card = (tmp_path / "wd" / "runs" / run.name / "export" / "README.md").read_text()
    assert f"teacher spend: ${summary['teacher_cost']:.4f}" in card and "judge spend: $0.0000" in card


def test_a_stop_during_generation_ends_the_batch_at_the_next_token():
    """Held-out answers are generated a batch at a time: Stop must not wait for a whole batch."""
    import threading

    from test_trainer import tiny_student

    from jupyter_distill.evaluation.heldout import HFResponder

    student = tiny_student(seed=0)
    forwards = {"n": 0}
    student.model.register_forward_hook(lambda *args: forwards.__setitem__("n", forwards["n"] + 1))
    stop = threading.Event()
    responder = HFResponder(student.model, student.tokenizer, max_new_tokens=40, stop=stop)
    messages = [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "count to ten"}]]
    responder.batch(messages)
    unstopped, forwards["n"] = forwards["n"], 0
    stop.set()
    responder.batch(messages)
    assert forwards["n"] <= 2 < unstopped  # the prompt's forward and at most one token, not up to 40
