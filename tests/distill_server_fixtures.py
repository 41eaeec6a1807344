"""A run store with one finished and one live run, shared by the server and browser tests.

Written with RunStore exactly as the pipeline writes a run, so the tests see what users see.
"""

from __future__ import annotations

from pathlib import Path

from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.store import PromptRecord, RunStore, SampleRecord


def fixture_prompts() -> list[PromptRecord]:
    """Four prompts: three train (positions 0-2) and one held out."""
    return [
        PromptRecord(
            hash=content_hash("prompt", i),
            messages=[{"role": "user", "content": f"ticket {i}"}],
            row={"expected": "refund" if i % 2 else "other"},
            position=i,
            split="heldout" if i == 3 else "train",
        )
        for i in range(4)
    ]


def sample_key(prompt: PromptRecord, index: int) -> str:
    return content_hash("sample", prompt.hash, index)


def build_fixture_store(workdir: Path) -> RunStore:
    """A finished run ``tickets`` (eval, loss, artifact) and a run ``live`` in training, step 4 of 10."""
    store = RunStore(workdir)
    prompts = fixture_prompts()
    store.create_run("tickets", {"n_samples": 2, "steps": 10, "alias": "ticket-classifier"})
    store.put_prompts("tickets", prompts)
    store.put_samples(
        SampleRecord(
            key=sample_key(p, i),
            prompt_hash=p.hash,
            teacher="local:smollm2-135m",
            params={"temperature": 0.8},
            sample_index=i,
            text=f"answer {i} to {p.messages[0]['content']}",
            cost=0.125,
        )
        for p in prompts[:3]
        for i in range(2)
    )
    for step in range(1, 11):
        store.put_metrics("tickets", step, {"loss": 2.0 / step, "lr": 1e-4})
    heldout = prompts[3].hash
    store.put_eval_results(
        "tickets", "student_before", [{"prompt_hash": heldout, "response": "x", "score": 0.0, "passed": 0}]
    )
    store.put_eval_results(
        "tickets", "student_after", [{"prompt_hash": heldout, "response": "y", "score": 1.0, "passed": 1}]
    )
    store.put_artifact("tickets", "gguf", workdir / "tickets" / "model.q4_k_m.gguf", sha256="ab" * 32, size=123)
    store.put_event("tickets", "run_end", None, "done", {"status": "done"})
    store.update_run(
        "tickets",
        status="done",
        phase="done",
        summary={"teacher_cost": 0.75, "alias": "ticket-classifier", "teacher_best_of_n": {"n": 1, "pass_rate": 1.0}},
    )

    store.create_run("live", {"n_samples": 2, "steps": 10})
    store.put_prompts("live", prompts)
    store.update_run("live", status="running", phase="training")
    for step in range(1, 5):
        store.put_metrics("live", step, {"loss": 3.0 - step * 0.5})
    return store
