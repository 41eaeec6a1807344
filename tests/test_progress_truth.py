"""Progress tells the truth: the event sequence a real run emits (the pipeline's, the trainer's, the
evaluation's and the export's, in their order) folded into the dashboard state and the console bars.

- training's preparation (loading the student, the held-out evaluation before training, reference
  log-probs) is shown as preparation: no full bar, no ETA, no "step 0/13";
- evaluation events outside the eval phase never fill the eval bar or reset the step counter;
- export names its steps (merge, f16, quantize, check) with their count and no guessed ETA.
"""

from __future__ import annotations

import html
import io

from jupyter_distill.core.events import ConsoleRenderer, Event, is_preparation, stage_text
from jupyter_distill.notebook.dashboard import DashboardState, PhaseProgress, RunDashboard, _phase_text

STEPS = 13
HELDOUT = 10


def heldout_eval(label: str, t: float, step: int = 0) -> list[Event]:
    """What ``evaluate.evaluate`` emits for one label (phase ``eval`` whatever phase runs it)."""
    events = [Event("progress", phase="eval", message=label, current=i, total=HELDOUT, time=t + i) for i in range(4)]
    events.append(
        Event(
            "metric", phase="eval", step=step, message=f"{label}: pass rate 0.30", data={f"eval/{label}/pass_rate": 0.3}
        )
    )
    return events


def training_until_preparation(t: float = 1000.0) -> list[Event]:
    """phase_start, the pipeline's preparation, the eval before training, the trainer's preparation."""
    return [
        Event("phase_start", phase="training", time=t),
        Event("progress", phase="training", message="loading the student", data={"stage": "prepare"}, time=t + 1),
        Event(
            "progress",
            phase="training",
            message="measuring the student before training",
            data={"stage": "prepare"},
            time=t + 20,
        ),
        *heldout_eval("student_before", t + 21),
        Event(
            "progress",
            phase="training",
            message="training with the plain engine: no CUDA GPU here",
            current=0,
            total=STEPS,
            data={"engine": "plain"},
            time=t + 40,
        ),
        *[
            Event(
                "progress",
                phase="training",
                message="reference log-probs (adapter disabled)",
                current=n,
                total=STEPS,
                data={"stage": "reference"},
                time=t + 40 + n,
            )
            for n in (8, 13)
        ],
    ]


def steps(first: int, last: int, t: float) -> list[Event]:
    out: list[Event] = []
    for step in range(first, last + 1):
        out.append(Event("metric", phase="training", step=step, data={"loss": 1.0 / step}, time=t + step))
        out.append(Event("progress", phase="training", step=step, current=step, total=STEPS, time=t + step))
    return out


def fold(events: list[Event], state: DashboardState | None = None) -> DashboardState:
    state = state or DashboardState(run="r")
    for event in events:
        state.apply(event)
    return state


def test_preparation_is_its_own_step() -> None:
    state = fold([Event("run_start", time=990.0), *training_until_preparation()])
    training = state.phases["training"]
    assert training.preparing and training.current == 0 and training.total == STEPS
    assert training.fraction == 0.0  # not "13/13" from the reference log-probs
    assert training.eta(2000.0) is None
    text = _phase_text(training, 1060.0)
    assert text.startswith("0/13 · preparing: reference log-probs (adapter disabled) 13/13")
    assert "ETA" not in text
    assert state.step is None  # no "step 0/13" from the evaluation's step-0 metric

    fold(steps(1, 1, 1100.0), state)
    assert not training.preparing and training.stage == ""
    assert state.step == 1 and training.eta(1102.0) is None  # one step since preparation: no rate yet
    fold(steps(2, 3, 1100.0), state)
    # 2 steps in 2 s after preparation ended: 10 left take 10 s (the 100 s of preparation are not counted)
    assert training.eta(1103.0) == 10.0


def test_the_evaluation_before_training_shows_on_training_not_on_eval() -> None:
    state = fold([Event("run_start"), *training_until_preparation()[:6]])  # mid student_before
    eval_phase = state.phases["eval"]
    assert eval_phase.status == "pending" and eval_phase.current is None and eval_phase.fraction == 0.0
    assert state.phases["training"].stage == "preparing: student_before 2/10"
    assert _phase_text(eval_phase, 2000.0) == ""
    assert "eval/student_before/pass_rate" in fold(heldout_eval("student_before", 1021.0), state).latest


def test_eval_events_after_eval_never_reset_the_step_or_refill_bars() -> None:
    state = fold([Event("run_start"), *training_until_preparation(), *steps(1, STEPS, 1100.0)])
    fold([Event("phase_end", phase="training"), Event("phase_start", phase="eval")], state)
    fold(heldout_eval("student_after", 1200.0, step=STEPS), state)
    assert state.phases["eval"].current == 3  # its own events move its own bar
    fold([Event("phase_end", phase="eval"), Event("phase_start", phase="export", time=1300.0)], state)
    fold(heldout_eval("student_served", 1400.0), state)  # measured inside export, at step 0
    assert state.step == STEPS  # not 0
    assert state.phases["eval"].status == "done" and state.phases["eval"].current == HELDOUT
    assert state.phases["export"].stage == "student_served 3/10"


def test_export_names_its_steps_without_a_guessed_eta() -> None:
    state = fold([Event("run_start"), Event("phase_start", phase="export", time=100.0)])
    names = ["merging the adapter", "writing the f16 GGUF", "quantizing to q4_k_m", "checking the GGUF"]
    for i, name in enumerate(names):
        state.apply(Event("progress", phase="export", message=name, current=i, total=5, time=100.0 + 10 * i))
        assert state.phases["export"].stage == name
    dashboard = RunDashboard("r", min_interval=0.05)
    for event in [Event("run_start"), Event("phase_start", phase="export", time=100.0)]:
        dashboard.sink(event)
    dashboard.sink(Event("progress", phase="export", message="quantizing to q4_k_m", current=2, total=5, time=120.0))
    dashboard.flush()
    text = dashboard.phase_texts["export"].value
    assert text.startswith("2/5 · quantizing to q4_k_m · ") and "ETA" not in text
    assert dashboard.phase_bars["export"].value == 0.4


def test_stage_text_is_one_short_line() -> None:
    prep = Event(
        "progress", message="reference  log-probs\n(adapter disabled)", current=3, total=9, data={"stage": "reference"}
    )
    assert is_preparation(prep) and stage_text(prep) == "preparing: reference log-probs (adapter disabled) 3/9"
    assert not is_preparation(Event("progress", current=3, data={"stage": "other"}))
    assert len(stage_text(Event("progress", message="x" * 500))) <= 80
    assert PhaseProgress(status="active", current=5, total=20, started=100.0, preparing=True).eta(110.0) is None


def test_console_bars_count_only_the_phase_work() -> None:
    stream = io.StringIO()
    render = ConsoleRenderer(stream=stream, min_interval=0)
    for event in training_until_preparation():
        render(event)
    assert render._bars["training"].n == 0 and render._bars["training"].total == STEPS
    assert "preparing: reference log-probs" in html.unescape(stream.getvalue())
    assert "eval" not in render._bars  # the evaluation inside training draws no bar of its own
    for event in steps(1, 4, 1100.0):
        render(event)
    assert render._bars["training"].n == 4
    render(Event("phase_end", phase="training"))
    render(Event("phase_start", phase="export", total=5))
    render(Event("progress", phase="export", message="writing the f16 GGUF", current=1, total=5))
    assert "writing the f16 GGUF" in stream.getvalue()
    render.close()
