"""A stand-in for the heavy part of ``pipeline.Run`` in notebook-layer tests.

``fake_run`` replaces only ``Run.run`` (the stages: teacher calls, training, export). It keeps
the real control flow around it: ``Run._phase`` (stop checks, phase events), the real store
writes a run makes (run row, prompts, metrics, artifacts, summary) and the same event stream,
so the magics, the dashboard and the kernel-responsiveness checks see what a real run shows.
Training is real CPU work (matrix products in torch, which release the GIL like real training)
for ``FAKE_TRAIN_SECONDS`` seconds, emitting a ``loss`` metric per step.

Used in-process by tests and, via ``install()``, inside a kernel started by a test.
"""

from __future__ import annotations

import os
import time
from typing import Any

from jupyter_distill.core.events import PHASES, Event
from jupyter_distill.core.store import PromptRecord

FAKE_SUMMARY = {
    "prompts": 10,
    "train_prompts": 8,
    "heldout": 2,
    "teacher": "local:smollm2-135m",
    "judge": "verifier:fake",
    "teacher_requests": 32,
    "teacher_cost": 0.0,
    "pairs": 8,
    "steps": 6,
    "engine": "peft",
    "student_before": {"label": "student_before", "n": 2, "pass_rate": 0.5, "mean_score": 0.5},
    "teacher_best_of_n": {"label": "teacher_best_of_n", "n": 2, "pass_rate": 1.0, "mean_score": 1.0},
    "student_after": {"label": "student_after", "n": 2, "pass_rate": 1.0, "mean_score": 0.9},
}


def _train_step(seconds: float) -> None:
    """CPU work that behaves like a training step (long native ops, GIL released)."""
    if seconds <= 0:
        return
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        time.sleep(seconds)
        return
    end = time.monotonic() + seconds
    a = torch.randn(256, 256)
    while time.monotonic() < end:
        a = torch.tanh(a @ a.T / 256.0)


def fake_run(self: Any) -> Any:
    """``Run.run`` without teachers or models: every phase, events, store rows, a summary."""
    steps = int(os.environ.get("FAKE_STEPS", "6"))
    train_seconds = float(os.environ.get("FAKE_TRAIN_SECONDS", "0"))
    self.state.status = "running"
    self.store.create_run(self.name, self.config.to_public_dict())
    self.store.update_run(self.name, status="running")
    self.emit(Event("run_start", run=self.name, data=self.config.to_public_dict()))
    prompts = [
        PromptRecord(hash=f"p{i}", messages=[{"role": "user", "content": f"prompt {i}"}], row={}, position=i,
                     split="heldout" if i >= 8 else "train")
        for i in range(10)
    ]  # fmt: skip
    self.store.put_prompts(self.name, prompts)

    def work(phase: str) -> None:
        if phase == "review" and self.config.review:  # what Run._select_and_review does
            self.state.status = "waiting-review"
            self.store.update_run(self.name, status="waiting-review")
            self.emit(Event("progress", run=self.name, phase="review", message="waiting for review"))
            if self._review_handler is not None:
                self._review_handler(self)
            self._review_done.wait()
            self.state.status = "running"
            self.store.update_run(self.name, status="running")
            return
        if phase == "training":
            for step in range(1, steps + 1):
                _train_step(train_seconds / steps)
                loss = 2.0 / step
                self.store.put_metrics(self.name, step, {"loss": loss})
                self.emit(Event("metric", run=self.name, phase="training", step=step, data={"loss": loss}))
                self.emit(Event("progress", run=self.name, phase="training", current=step, total=steps))
                if self._stop.is_set():
                    return
            self.store.put_artifact(self.name, "adapter", str(self.store.workdir / "adapter"))
            return
        for i in range(1, 3):
            self.emit(
                Event("progress", run=self.name, phase=phase, current=i, total=2,
                      data={"requests": 16 * i, "cost": 0.0} if phase == "sampling" else {})
            )  # fmt: skip

    from jupyter_distill.pipeline.run import RunStopped

    try:
        for phase in PHASES:
            self._phase(phase, lambda phase=phase: work(phase))
    except RunStopped as exc:  # what Run.run does on stop
        self.state.status = "stopped"
        self.store.update_run(self.name, status="stopped")
        self.emit(Event("run_end", run=self.name, message=str(exc), data={"status": "stopped"}))
        raise
    summary = dict(FAKE_SUMMARY, steps=steps)
    if self.config.alias:
        summary["alias"] = self.config.alias
    self.store.update_run(self.name, status="done", phase="done", summary=summary)
    self.state.status = "done"
    self.emit(Event("run_end", run=self.name, message="done", data=summary))
    self.result = "fake-student"
    return self.result


def install() -> None:
    """Patch ``Run.run`` in this process (a kernel started by a test calls this)."""
    from jupyter_distill.pipeline import run as pipeline

    pipeline.Run.run = fake_run  # type: ignore[method-assign]
