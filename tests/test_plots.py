"""The live plot: renders events only, throttles redraws, replays resumed steps, stays cheap."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("matplotlib")

from jupyter_distill.core.events import ConsoleRenderer, Event
from jupyter_distill.notebook.plots import LivePlot, default_renderer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def metric(step: int, **values: float) -> Event:
    return Event(kind="metric", phase="training", step=step, data=values)


def test_collects_training_and_eval_points() -> None:
    plot = LivePlot(display=False)
    plot(Event(kind="metric", phase="eval", step=0, data={"label": "student_before", "pass_rate": 0.2}))
    for step in range(1, 4):
        plot(metric(step, loss=3.0 - step, nll=2.0, pref=0.69, kl=0.01 * step, pref_acc=0.5, lr=1e-4))
    plot(Event(kind="metric", phase="eval", step=3, data={"label": "student_after", "pass_rate": 0.8}))
    plot(Event(kind="progress", phase="training", current=3, total=3))  # ignored
    assert plot.series["loss"] == ([1, 2, 3], [2.0, 1.0, 0.0])
    assert plot.series["kl"][1] == pytest.approx([0.01, 0.02, 0.03])
    assert plot.evals == {"student_before": [(0, 0.2)], "student_after": [(3, 0.8)]}
    png = plot.png()
    assert png.startswith(b"\x89PNG")
    fig = plot.figure
    loss_line = next(line for line in fig.axes[0].lines if line.get_label() == "loss")
    assert list(loss_line.get_xdata()) == [1, 2, 3]
    assert [line.get_label() for line in fig.axes[3].lines] == ["student_after", "student_before"]


def test_throttles_and_redraws_only_on_new_points() -> None:
    clock = FakeClock()
    renders: list[bytes] = []
    plot = LivePlot(display=False, on_render=renders.append, clock=clock, overhead_budget=1e9)
    plot(metric(1, loss=1.0))  # first point: drawn at once
    assert len(renders) == 1
    clock.now = 0.2
    plot(metric(2, loss=0.9))  # within 0.5 s: not drawn yet
    assert len(renders) == 1
    clock.now = 0.6
    plot(Event(kind="progress", phase="training", current=2))  # nothing new... but points are pending
    assert len(renders) == 2  # pending point drawn once the interval has passed
    clock.now = 5.0
    plot(Event(kind="progress", phase="training", current=2))  # no new points: no redraw
    assert len(renders) == 2
    clock.now = 5.1
    plot(metric(3, loss=0.8))
    assert len(renders) == 3
    clock.now = 5.2
    plot(metric(4, loss=0.7))
    plot(Event(kind="phase_end", phase="training"))  # the end flushes what is pending
    assert len(renders) == 4
    assert plot.stats["draws"] == 4


def test_interval_grows_with_draw_cost() -> None:
    """A slow draw pushes the next one further out so drawing stays within the budget."""
    clock = FakeClock()
    plot = LivePlot(display=False, clock=clock, overhead_budget=0.02)
    plot(metric(1, loss=1.0))
    plot._draw_seconds = 0.1  # pretend drawing took 100 ms -> next draw no sooner than 5 s later
    clock.now = 1.0
    plot(metric(2, loss=0.9))
    assert plot.stats["draws"] == 1
    clock.now = 5.5
    plot(metric(3, loss=0.8))
    assert plot.stats["draws"] == 2


def test_resume_replaces_steps_after_checkpoint() -> None:
    plot = LivePlot(display=False)
    for step in range(1, 6):
        plot(metric(step, loss=float(step)))
    for step in range(4, 6):  # resumed from the checkpoint at step 3
        plot(metric(step, loss=10.0 * step))
    assert plot.series["loss"] == ([1, 2, 3, 4, 5], [1.0, 2.0, 3.0, 40.0, 50.0])


def test_display_handle_is_created_once_then_updated(monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython.display as ipd

    calls: list[str] = []

    class Handle:
        def update(self, obj: object) -> None:
            calls.append("update")

    def fake_display(obj: object, display_id: bool = False) -> Handle:
        assert display_id is True
        calls.append("display")
        return Handle()

    monkeypatch.setattr(ipd, "display", fake_display)
    plot = LivePlot(display=True, min_interval=0.0, overhead_budget=1e9)
    plot(metric(1, loss=1.0))
    plot(metric(2, loss=0.5))
    plot(metric(3, loss=0.4))
    assert calls == ["display", "update", "update"]


def test_thread_safe_under_concurrent_events() -> None:
    plot = LivePlot(display=False, min_interval=0.05)

    def feed(offset: int) -> None:
        for step in range(1, 30):
            plot(Event(kind="metric", phase="training", step=step, data={f"m{offset}": float(step)}))

    threads = [threading.Thread(target=feed, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(plot.series[f"m{i}"][0] == list(range(1, 30)) for i in range(3))
    assert plot.png().startswith(b"\x89PNG")


def test_overhead_is_small_against_realistic_steps() -> None:
    """Feed 200 steps of events at a simulated 0.25 s/step: time inside the renderer < 2 %."""
    plot = LivePlot(display=False)
    import time

    wall_start = time.perf_counter()
    simulated = 0.0
    for step in range(1, 201):
        plot(metric(step, loss=1.0 / step, nll=1.0, pref=0.6, kl=0.01, pref_acc=0.5, margin=0.1, lr=1e-4))
        simulated += 0.25
    plot(Event(kind="phase_end", phase="training"))
    # Drawing is throttled by real time, so a fast loop draws rarely; bound the cost per simulated
    # second instead: every draw is paid at most once per max(0.5 s, draw/0.02).
    per_draw = plot.stats["draw_seconds"] / max(plot.stats["draws"], 1)
    worst_case_share = per_draw / max(0.5, per_draw / 0.02)
    assert worst_case_share <= 0.02 + 1e-9
    non_draw = plot.stats["seconds"] - plot.stats["draw_seconds"]
    assert non_draw / simulated < 0.002  # bookkeeping per event is microseconds
    assert time.perf_counter() - wall_start < 30


def test_default_renderer_outside_notebook_is_console() -> None:
    assert isinstance(default_renderer(), ConsoleRenderer)


def test_the_picture_is_transparent_so_it_reads_in_the_dark_theme() -> None:
    import io

    from matplotlib.image import imread

    plot = LivePlot(display=False)
    plot(metric(1, loss=1.0))
    pixels = imread(io.BytesIO(plot.png()))
    assert pixels.shape[2] == 4 and pixels[0, 0, 3] == 0.0  # the corner lets the page colour through


def test_show_draws_points_folded_elsewhere_and_pass_rates_at_their_step() -> None:
    clock = FakeClock()
    renders: list[bytes] = []
    plot = LivePlot(display=False, on_render=renders.append, clock=clock, overhead_budget=1e9)
    plot.show({"loss": [(1, 2.0), (2, 1.0)]}, {"student_after": [(2, 0.5)]})
    assert plot.series == {"loss": ([1, 2], [2.0, 1.0])} and plot.evals == {"student_after": [(2, 0.5)]}
    assert len(renders) == 1
    plot.show({"loss": [(1, 2.0), (2, 1.0)]}, {"student_after": [(2, 0.5)]})  # nothing new: no redraw
    clock.now = 5.0
    plot.show({"loss": [(1, 2.0), (2, 1.0)]}, {"student_after": [(2, 0.5)]})
    assert len(renders) == 1
    # on its own, a pass rate reported at step 0 after training is drawn at the trained step
    plot(metric(3, loss=0.5))
    plot(Event(kind="metric", phase="eval", step=0, data={"label": "student_served", "pass_rate": 0.4}))
    assert plot.evals["student_served"] == [(3, 0.4)]
