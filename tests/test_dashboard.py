"""The run dashboard, driven by synthetic events and checked through widget traits."""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import jsonschema
import pytest
from distill_fakes import FAKE_SUMMARY, fake_run

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.events import PHASES, Event
from jupyter_distill.core.runcard import RUN_CARD_SCHEMA
from jupyter_distill.core.store import JudgmentRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.judging.stage import judgment_key
from jupyter_distill.notebook.dashboard import (
    RUN_MIME_TYPE,
    DashboardState,
    PhaseProgress,
    RunDashboard,
    RunSummary,
    loss_svg,
)


def full_run_events(name: str = "r", steps: int = 5) -> list[Event]:
    """What a finished run emits, phase by phase, in order."""
    events = [Event("run_start", run=name)]
    for phase in PHASES:
        events.append(Event("phase_start", run=name, phase=phase, total=steps if phase == "training" else 4))
        if phase == "sampling":
            for i in range(1, 5):
                events.append(
                    Event(
                        "progress",
                        run=name,
                        phase=phase,
                        current=i,
                        total=4,
                        data={"requests": i * 4, "cost": 0.01 * i},
                    )
                )
        elif phase == "training":
            for step in range(1, steps + 1):
                events.append(Event("metric", run=name, phase=phase, step=step, data={"loss": 3.0 / step, "kl": 0.01}))
                events.append(Event("progress", run=name, phase=phase, current=step, total=steps))
        else:
            events.append(Event("progress", run=name, phase=phase, current=4, total=4))
        events.append(Event("phase_end", run=name, phase=phase))
    summary = dict(FAKE_SUMMARY, teacher_cost=0.04, teacher_requests=16, alias="ticket-bot")
    events.append(Event("run_end", run=name, message="done", data=summary))
    return events


class FakeRun:
    """What the dashboard needs from a Run: listeners, stop(), running, state, error, result."""

    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self.stopped = False
        self.running = True
        self.state = type("S", (), {"status": "running"})()
        self.error: BaseException | None = None
        self.result = None

    def add_listener(self, sink: Any) -> None:
        self.listeners.append(sink)

    def stop(self) -> None:
        self.stopped = True


def test_finished_run_fills_every_panel() -> None:
    dashboard = RunDashboard("r", min_interval=0.05)
    finals: list[RunDashboard] = []
    dashboard.on_final.append(finals.append)
    for event in full_run_events():
        dashboard.sink(event)
    assert dashboard.wait_rendered(5.0)

    for phase in PHASES:
        assert dashboard.phase_bars[phase].value == 1.0, phase
        assert dashboard.phase_bars[phase].bar_style == "success"
        assert "#2e7d32" in dashboard.phase_labels[phase].value  # the "done" colour
        assert f"✓ {phase}" in dashboard.timeline.value
    assert "5/5" in dashboard.phase_texts["training"].value
    assert "requests 16" in dashboard.stats.value  # the summary's count wins at the end
    assert "teacher cost $0.0400" in html.unescape(dashboard.stats.value)
    assert "loss 0.6" in dashboard.stats.value and "step 5/5" in dashboard.stats.value
    assert ">done<" in dashboard.header.value
    assert dashboard.stop_button.disabled and dashboard.stop_button.description == "Done"
    card = dashboard.summary_card.value
    assert "student before 50% · teacher best-of-N 100% · student after 100%" in card
    assert "ticket-bot" in card and "jd.completion(model=&#x27;ticket-bot&#x27;" in card
    assert "cost per 1k calls" in card
    assert finals == [dashboard]  # on_final ran once


def test_loss_plot_gets_the_points() -> None:
    dashboard = RunDashboard("r", min_interval=0.05)
    for event in full_run_events(steps=8):
        dashboard.sink(event)
    dashboard.wait_rendered(5.0)
    assert [p[0] for p in dashboard.state.series["loss"]] == list(range(1, 9))
    plot = dashboard.plot.widget
    assert isinstance(plot, widgets.HTML) and plot.layout.display == "block"
    svg = plot.value
    assert svg.startswith("<svg") and "loss 0.375 (step 8)" in svg
    assert svg.count("class='jd-raw'") == 8  # every raw point, under one smoothed line
    assert svg.count("class='jd-smooth'") == 1 and "<polyline class='jd-smooth'" in svg


def test_the_plot_appears_with_its_first_point_and_follows_the_theme() -> None:
    dashboard = RunDashboard("r", min_interval=0.05)
    dashboard.flush()
    assert dashboard.plot.widget.layout.display == "none" and dashboard.plot.widget.value == ""  # no empty axes
    dashboard.sink(Event("metric", phase="training", step=1, data={"loss": 2.5}))
    dashboard.flush()
    svg = dashboard.plot.widget.value
    assert dashboard.plot.widget.layout.display == "block" and "loss 2.5 (step 1)" in svg
    assert "<circle class='jd-smooth'" in svg and "nan" not in svg  # one point: a dot, not an empty frame
    # colours come from JupyterLab's theme variables (in style attributes, where var() resolves)
    assert "fill:var(--jp-ui-font-color1" in svg and "background:var(--jp-layout-color1" in svg
    assert "fill='#" not in svg and "stroke='#" not in svg and "#ffffff" not in svg.lower()
    assert svg in dashboard.fallback_html()  # a saved notebook shows the same drawing


def test_loss_svg_handles_flat_and_short_series() -> None:
    assert loss_svg([]) == "" and loss_svg([(1, 2.0)]) == ""
    flat = loss_svg([(1, 1.0), (2, 1.0)])
    assert "<polyline" in flat and "nan" not in flat


def test_progress_bar_eta_per_phase() -> None:
    p = PhaseProgress(status="active", current=5, total=20, started=100.0)
    assert p.fraction == 0.25
    assert p.eta(110.0) == pytest.approx(30.0)  # 5 units in 10 s, 15 left
    assert PhaseProgress(status="active", current=0, total=20, started=100.0).eta(110.0) is None
    assert PhaseProgress(status="done").fraction == 1.0

    dashboard = RunDashboard("r", min_interval=0.05)
    now = time.time()
    dashboard.sink(Event("run_start", run="r", time=now - 10))
    dashboard.sink(Event("phase_start", run="r", phase="sampling", total=20, time=now - 10))
    dashboard.sink(Event("progress", run="r", phase="sampling", current=5, total=20))
    dashboard.flush()
    assert dashboard.phase_bars["sampling"].value == 0.25
    text = dashboard.phase_texts["sampling"].value
    assert text.startswith("5/20 · 0:10") and "ETA 0:3" in text
    assert "● sampling" in dashboard.timeline.value and "○ training" in dashboard.timeline.value


def test_renders_are_throttled_and_the_last_state_is_drawn() -> None:
    interval = 0.2
    dashboard = RunDashboard("r", min_interval=interval)
    dashboard.sink(Event("phase_start", run="r", phase="training", total=3000))
    started = time.monotonic()
    for step in range(1, 3001):
        dashboard.sink(Event("progress", run="r", phase="training", current=step, total=3000))
        if step % 100 == 0:
            time.sleep(0.01)
    elapsed = time.monotonic() - started
    time.sleep(interval * 2.5)  # the renderer catches up with the last event
    assert dashboard.render_count <= (elapsed + interval * 2.5) / interval + 3
    assert dashboard.render_count >= 2
    assert dashboard.phase_bars["training"].value == 1.0
    assert dashboard.phase_texts["training"].value.startswith("3000/3000")


def test_stop_button_stops_the_run() -> None:
    run = FakeRun()
    dashboard = RunDashboard("r").attach(run)
    assert run.listeners == [dashboard.sink]
    assert not dashboard.stop_button.disabled
    dashboard.stop_button.click()
    assert run.stopped
    assert dashboard.stop_button.disabled and dashboard.stop_button.description == "Stopping…"


def test_error_event_marks_the_phase_failed_and_shows_the_message() -> None:
    dashboard = RunDashboard("r", min_interval=0.05)
    dashboard.sink(Event("run_start", run="r"))
    dashboard.sink(Event("phase_start", run="r", phase="sampling", total=4))
    dashboard.sink(Event("warning", run="r", phase="sampling", message="2 prompt(s) failed"))
    dashboard.sink(Event("error", run="r", phase="sampling", message="teacher 'x' refused: key missing"))
    assert dashboard.wait_rendered(5.0)
    assert dashboard.state.status == "failed"
    assert dashboard.phase_bars["sampling"].bar_style == "danger"
    assert "✗ sampling" in dashboard.timeline.value
    assert "warning: 2 prompt(s) failed" in dashboard.messages.value
    assert "error: teacher &#x27;x&#x27; refused: key missing" in dashboard.messages.value
    assert dashboard.stop_button.description == "Failed"
    assert "key missing" in dashboard.summary_card.value


def test_stopped_run_and_review_wait() -> None:
    dashboard = RunDashboard("r", min_interval=0.05)
    dashboard.sink(Event("run_start", run="r"))
    dashboard.sink(Event("phase_start", run="r", phase="review"))
    dashboard.sink(Event("progress", run="r", phase="review", message="waiting for review"))
    dashboard.flush()
    assert dashboard.state.status == "waiting-review"
    assert "waiting for review" in dashboard.phase_texts["review"].value
    dashboard.show_review(widgets.Label("review here"))
    assert dashboard.review_slot.children[0].value == "review here"
    dashboard.sink(Event("run_end", run="r", message="stopped during review", data={"status": "stopped"}))
    assert dashboard.wait_rendered(5.0)
    assert dashboard.phase_bars["review"].bar_style == "warning"
    assert dashboard.stop_button.description == "Stopped"


def test_renderer_notices_a_run_thread_that_died_silently() -> None:
    run = FakeRun()
    dashboard = RunDashboard("r", min_interval=0.05).attach(run)
    dashboard.sink(Event("run_start", run="r"))
    dashboard.sink(Event("phase_start", run="r", phase="training", total=10))
    run.error = KeyboardInterrupt("interrupted")
    run.state.status = "running"
    run.running = False
    assert dashboard.wait_rendered(5.0)
    assert dashboard.state.status == "failed"
    assert "KeyboardInterrupt" in dashboard.messages.value


def test_state_ignores_non_numeric_metrics_and_thins_long_series() -> None:
    state = DashboardState(run="r")
    state.apply(Event("metric", phase="training", step=1, data={"loss": float("nan"), "note": "x", "ok": True}))
    assert state.series == {}
    for step in range(1, 5001):
        state.apply(Event("metric", phase="training", step=step, data={"loss": 1.0}))
    points = state.series["loss"]
    assert len(points) <= 4000 and points[0][0] == 1 and points[-1][0] == 5000


def test_mime_bundle_has_widget_view_and_kernel_free_fallback() -> None:
    dashboard = RunDashboard("r", min_interval=0.05)
    live = dashboard._repr_mimebundle_()
    assert live["application/vnd.jupyter.widget-view+json"]["model_id"] == dashboard.widget.model_id
    assert "needs a running kernel" in live["text/html"]
    assert RUN_MIME_TYPE not in live
    for event in full_run_events():
        dashboard.sink(event)
    dashboard.wait_rendered(5.0)
    final = dashboard._repr_mimebundle_()
    assert final[RUN_MIME_TYPE]["alias"] == "ticket-bot"
    assert "ticket-bot" in final["text/html"] and "ticket-bot" in final["text/plain"]


def test_no_output_widgets_are_written_from_threads() -> None:
    """Structural guard for the threading rule: the dashboard updates traits only, no Output captures."""
    dashboard = RunDashboard("r")

    def walk(w: widgets.Widget) -> list[widgets.Widget]:
        return [w, *[c for child in getattr(w, "children", ()) for c in walk(child)]]

    assert not any(isinstance(w, widgets.Output) for w in walk(dashboard.widget))


def test_attached_to_a_real_run_reads_artifacts_from_the_store(tmp_path: Path, monkeypatch: Any) -> None:
    from jupyter_distill.pipeline import run as pipeline

    monkeypatch.setattr(pipeline.Run, "run", fake_run)
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "0")
    config = DistillConfig.from_kwargs(name="real", dataset=[{"prompt": "a"}], workdir=str(tmp_path), alias="bot")
    run = pipeline.Run(config)
    dashboard = RunDashboard("real", min_interval=0.05).attach(run)
    run.start()
    assert run.wait(10) == "fake-student"
    assert dashboard.wait_rendered(5.0)
    summary = dashboard.summary
    assert isinstance(summary, RunSummary) and summary.student == "fake-student"
    assert summary.artifacts["adapter"]["path"].endswith("adapter")
    assert "adapter" in dashboard.summary_card.value
    card = summary.to_json()
    assert card["status"] == "done"
    jsonschema.validate(card, RUN_CARD_SCHEMA)


def test_sink_is_cheap_and_thread_safe() -> None:
    dashboard = RunDashboard("r", min_interval=0.05)
    dashboard.sink(Event("phase_start", run="r", phase="sampling", total=4000))

    def worker(offset: int) -> None:
        for i in range(1000):
            dashboard.sink(Event("progress", run="r", phase="sampling", data={"requests": offset + i}))

    threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started < 5.0
    assert dashboard.state.events == 4001


def test_dollar_signs_stay_literal_in_every_html_output() -> None:
    """JupyterLab typesets ``$...$`` in HTML outputs and HTML widgets: every one carries MathJax's
    ignore classes inside the typeset element, and no raw ``$`` is left in its source."""
    from jupyter_distill.notebook.htmltext import NO_MATH_CLASSES

    dashboard = RunDashboard("r", min_interval=0.05)
    for event in full_run_events():
        dashboard.sink(event)
    dashboard.sink(Event("warning", run="r", message="budget $5 of $10 used"))
    assert dashboard.wait_rendered(5.0)
    outputs = {
        "stats": dashboard.stats.value,
        "messages": dashboard.messages.value,
        "header": dashboard.header.value,
        "timeline": dashboard.timeline.value,
        "card": dashboard.summary_card.value,
        "bundle": dashboard._repr_mimebundle_()["text/html"],
        "live fallback": RunDashboard("x").fallback_html(),
    }
    for name, value in outputs.items():
        assert "$" not in value, name
        assert f"class='{NO_MATH_CLASSES}" in value or f" {NO_MATH_CLASSES}'" in value, name
    assert "total $0.0400" in html.unescape(outputs["stats"])
    assert "budget $5 of $10 used" in html.unescape(outputs["messages"])
    assert "teacher $" in html.unescape(outputs["card"])  # cost per 1k calls


def test_stopped_and_failed_cards_say_how_to_resume_in_the_magic_syntax() -> None:
    stopped = RunSummary(run={"id": "tickets", "status": "stopped", "summary": {}})
    assert "%distill resume tickets" in repr(stopped) and "%distill resume tickets" in stopped.html()
    failed = RunSummary(run={"id": "tickets", "status": "failed", "summary": {"error": "teacher down"}})
    assert "then %distill resume tickets" in repr(failed)
    done = RunSummary(run={"id": "tickets", "status": "done", "summary": {}})
    assert "resume" not in repr(done)


def _reviewed_store(workdir: Path, name: str = "cal", judge: str = "judge-a") -> RunStore:
    """A finished run whose judge agrees with the reviewer on prompt 0 and gets prompt 1 backwards."""
    store = RunStore(workdir)
    store.create_run(name, {"teacher": "t"})
    store.update_run(name, status="done", phase="done", summary={"teacher": "t", "judge": judge})
    prompts = [
        PromptRecord(hash=f"h{i}", messages=[{"role": "user", "content": f"question {i}"}], row={}, position=i)
        for i in range(3)
    ]
    store.put_prompts(name, prompts)
    scores = {"h0-s0": 0.9, "h0-s1": 0.2, "h1-s0": 0.8, "h1-s1": 0.1, "h2-s0": 0.5, "h2-s1": 0.5}
    store.put_samples([SampleRecord(key, key[:2], "t", {}, int(key[-1]), f"answer {key}") for key in scores])
    store.put_judgments([JudgmentRecord(judgment_key(key, judge), key, judge, score) for key, score in scores.items()])
    return store


def test_the_card_shows_judge_agreement_once_a_human_reviewed(tmp_path: Path) -> None:
    store = _reviewed_store(tmp_path / "wd")
    before = RunSummary.from_store(store, "cal")
    assert before.agreement is None and "judge agreement" not in repr(before)  # nobody reviewed yet
    for prompt, best, worse in (("h0", "h0-s0", "h0-s1"), ("h1", "h1-s1", "h1-s0")):
        store.add_review("cal", prompt, "choose", best)
        store.add_review("cal", prompt, "reject", worse)

    summary = RunSummary.from_store(store, "cal")
    # items (human, judge): h0-s0 (T,T) h0-s1 (F,F) h1-s1 (T,F) h1-s0 (F,T): p_o = 0.5 = p_e, kappa 0
    assert summary.agreement is not None and summary.agreement.kappa == pytest.approx(0.0)
    text = repr(summary)
    assert (
        "judge agreement (judge-a) 50% of 4 labelled candidates · Cohen's kappa 0.00 · 2 reviewed prompts "
        "· judge's top pick is the reviewer's best on 50%" in text
    )
    assert 'disagreement 1     "question 1": reviewer best chosen, 1 rejected; judge ranks another answer first' in text
    assert "disagreement 2" not in text  # prompt 0: judge and reviewer agree
    assert "question 1" in html.unescape(summary.html())

    dashboard = RunDashboard("cal", store=store, min_interval=0.05)
    for event in (Event("run_start", run="cal"), Event("phase_start", run="cal", phase="review")):
        dashboard.sink(event)
    dashboard.flush()
    assert dashboard.calibration.value == ""  # the review is still going on
    dashboard.sink(Event("phase_end", run="cal", phase="review"))
    dashboard.flush()  # training has not begun, and the dashboard shows how the judge did
    assert "50% of 4 labelled candidates" in dashboard.calibration.value
    assert "&quot;question 1&quot;" in dashboard.calibration.value
    dashboard.sink(Event("run_end", run="cal", data={"judge": "judge-a"}))
    assert dashboard.wait_rendered(5.0)
    assert "Cohen&#x27;s kappa 0.00" in dashboard.summary_card.value
    assert "judge agreement" in dashboard._repr_mimebundle_()["text/plain"]


def test_the_card_shows_the_served_file_next_to_fp32_and_what_quantization_cost() -> None:
    after = {"label": "student_after", "n": 20, "pass_rate": 0.8, "mean_score": 0.75}
    served = {"label": "student_served", "n": 20, "pass_rate": 0.7, "mean_score": 0.66, "quantize": "q4_k_m"}
    warning = (
        "quantize='q4_k_m' costs 10 points of held-out pass rate (0.80 in fp32, 0.70 served); quantize='q8_0' keeps it"
    )
    run = {"id": "q", "status": "done", "summary": {"student_after": after, "student_served": served}}

    derived = RunSummary(run=run)  # a summary without the pipeline's line still says what it cost
    assert "served model       q4_k_m GGUF: pass rate 70% · mean score 0.66 (fp32: 80% · 0.75)" in repr(derived)
    assert "quantization       quantize='q4_k_m' costs 10 points of held-out pass rate" in repr(derived)
    card = derived.to_json()
    jsonschema.validate(card, RUN_CARD_SCHEMA)
    assert card["pass_rates"]["student_served"] == {"n": 20, "pass_rate": 0.7, "mean_score": 0.66}

    named = RunSummary(run={**run, "summary": {**run["summary"], "quantization_warning": warning}})
    assert f"quantization       {warning}" in repr(named)
    assert "quantize=&#x27;q8_0&#x27; keeps it" in named.html()

    close = RunSummary(
        run={**run, "summary": {"student_after": after, "student_served": {**served, "pass_rate": 0.76}}}
    )
    assert "served model" in repr(close) and "quantization" not in repr(close)  # 4 points: within the 5 allowed
    assert "served model" not in repr(
        RunSummary(run={"id": "x", "status": "done", "summary": {"student_after": after}})
    )


def test_the_final_card_without_a_store_is_drawn_from_the_dashboard_state() -> None:
    dashboard = RunDashboard("r", min_interval=0.05)
    for event in full_run_events(steps=4):
        dashboard.sink(event)
    assert dashboard.wait_rendered(5.0)
    assert dashboard.summary is not None
    assert dashboard.summary.loss == [[float(s), v] for s, v in dashboard.state.series["loss"]]
    assert dashboard.summary.metrics["loss"]["last"] == dashboard.state.latest["loss"]
    assert dashboard.summary.to_json()["pass_rates"]["student_after"]["pass_rate"] == 1.0


def test_the_plot_draws_the_state_and_pass_rates_at_the_step_they_measured() -> None:
    """The evaluation reports step 0 unless told; a pass rate of the trained model is drawn at the
    last training step, and a resumed run's replayed steps replace the old points."""
    dashboard = RunDashboard("r", min_interval=0.05)
    events = [
        Event("run_start"),
        Event("metric", phase="eval", step=0, data={"label": "student_before", "pass_rate": 0.2}),
        *[Event("metric", phase="training", step=s, data={"loss": 1.0 / s}) for s in range(1, 6)],
        *[Event("metric", phase="training", step=s, data={"loss": 2.0}) for s in (4, 5)],  # resumed at step 3
        Event("metric", phase="eval", step=0, data={"eval/student_after/pass_rate": 0.7}),
        Event("metric", phase="eval", step=0, data={"label": "student_served", "pass_rate": 0.6}),
    ]
    for event in events:
        dashboard.sink(event)
    dashboard.flush()
    state = dashboard.state
    assert state.series["loss"] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3), (4, 2.0), (5, 2.0)]
    assert state.evals == {"student_before": [(0, 0.2)], "student_after": [(5, 0.7)], "student_served": [(5, 0.6)]}
    assert state.step == 5 and "eval/student_after/pass_rate" not in state.series
    svg = dashboard.plot.widget.value  # the plot draws the state's points, not a fold of its own
    assert "loss 2 (step 5)" in svg and svg.count("class='jd-raw'") == 5
    assert "data-label='student_after' data-step='5'" in svg and "data-label='student_before' data-step='0'" in svg
    assert "student_served 60% (step 5)" in svg


def test_a_long_curve_is_thinned_for_drawing_but_smoothed_over_every_point() -> None:
    from jupyter_distill.notebook.plot_svg import HEIGHT, MAX_DRAWN_POINTS, PAD_BOTTOM, PAD_TOP, metrics_svg

    points = [(step, 1.0 if step % 2 else 0.0) for step in range(1, 4001)]
    svg = metrics_svg({"loss": points}, {})
    assert svg.count("class='jd-raw'") == MAX_DRAWN_POINTS and "step 4000" in svg
    smoothed = svg.split("<polyline class='jd-smooth' points='")[1].split("'")[0].split()
    assert len(smoothed) == MAX_DRAWN_POINTS
    ys = [float(p.split(",")[1]) for p in smoothed[10:]]
    # the raw 0/1 zigzag spans the whole panel; the smoothed line stays within the middle half of it
    assert max(ys) - min(ys) < 0.5 * (HEIGHT - PAD_TOP - PAD_BOTTOM)


@pytest.mark.parametrize(
    ("loss", "signal"),
    [("jbond", "win_rate"), ("onpolicy", "reverse_kl"), ("bond", None)],
)
def test_on_policy_runs_plot_their_signal_next_to_the_loss(loss: str, signal: str | None) -> None:
    from jupyter_distill.notebook.plot_svg import PANEL_WIDTH, metrics_svg

    metrics = {
        "jbond": {"loss": 1.0, "fwd": 0.8, "win_rate": 0.25, "reward": -0.4},
        "onpolicy": {"loss": 1.0, "pg": 0.1, "reverse_kl": 0.9},
        "bond": {"loss": 1.0, "nll": 0.9, "pref": 0.1},
    }[loss]
    series = {name: [(step, value + 0.05 * step) for step in (1, 2, 3)] for name, value in metrics.items()}
    svg = metrics_svg(series, {"student_after": [(3, 0.5)]})
    panels = 3 if signal else 2
    assert f"width='{PANEL_WIDTH * panels}'" in svg
    assert svg.count("class='jd-smooth'") == panels - 1  # the loss and the signal are curves; pass rates are dots
    if signal:
        value = metrics[signal] + 0.15
        assert f"{signal} {value:.4g} (step 3)" in svg
    assert "student_after 50% (step 3)" in svg
