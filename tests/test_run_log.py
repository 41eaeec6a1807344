"""A run's log: third-party output on the run's thread goes to ``log`` events, never to a cell.

Real components throughout: llama.cpp's own quantizer, Python's ``warnings`` and ``logging``,
transformers' tqdm switch, and a whole tiny run against a local HTTP teacher with pytest's fd
capture watching file descriptor 2.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from tiny_models import build_tiny_llama

import jupyter_distill as jd
from jupyter_distill.core import capture
from jupyter_distill.core.events import Event
from jupyter_distill.core.runlog import RunLog, fallback_summary
from jupyter_distill.core.store import RunStore
from jupyter_distill.judging.verifiers import exact_match
from jupyter_distill.notebook.dashboard_state import MAX_LOG_LINES, DashboardState

FALLBACK = (
    "warning: blk.{i}.attn_k.weight                  - ncols    576 not divisible by 256 "
    "(required for type    {want}) ",
    "-> falling back to    {used}\n",
)


def test_fallback_lines_fold_into_one_summary_line() -> None:
    events: list[Event] = []
    log = RunLog(events.append, "r")
    log.write("llama.cpp", "llama_model_quantize_impl: model size = 256 MB\n")
    for i in range(30):  # llama.cpp sends each warning in two calls, as here
        want, used = ("q6_K", "q8_0") if i % 6 == 0 else ("q4_K", "q5_0")
        log.write("llama.cpp", FALLBACK[0].format(i=i, want=want))
        log.write("llama.cpp", FALLBACK[1].format(used=used))
    log.write("llama.cpp", "llama_model_quantize_impl: WARNING: 30 of 41 tensor(s) required fallback quantization\n")
    assert [e.message for e in events] == ["llama_model_quantize_impl: model size = 256 MB"]
    log.flush()
    assert len(events) == 2
    summary = events[-1]
    assert summary.kind == "log" and summary.run == "r"
    assert summary.message.startswith("30 of 41 tensors fell back to q5_0/q8_0 because their row size (576)")
    assert "not a multiple of 256" in summary.message
    assert summary.data["fallbacks"] == {"q5_0": 25, "q8_0": 5} and summary.data["folded"] == 30
    log.flush()
    assert len(events) == 2  # a summary is sent once


def test_fallback_summary_names_every_width_and_type() -> None:
    text = fallback_summary(Counter({"q8_0": 1}), {"256"}, {"960", "576"})
    assert text.startswith("1 tensor fell back to q8_0 because their row size (576, 960)")


def test_log_keeps_whole_lines_last_bar_state_and_a_bounded_count() -> None:
    events: list[Event] = []
    log = RunLog(events.append, "r", max_events=3)
    log.write("stderr", "Loading:  10%|#   | 1/10\rLoading: 100%|####| 10/10\n")
    log.write("stdout", "half a ")
    log.write("stdout", "line\n\n")
    log.write("stdout", "no newline")
    log.flush()
    assert [e.message for e in events] == ["Loading: 100%|####| 10/10", "half a line", "no newline"]
    for i in range(5):
        log.write("stderr", f"spam {i}\n")
    log.flush()
    assert events[-1].message == "5 more log lines were not kept (the log keeps 3)"
    assert len(events) == 4


def test_routed_thread_output_reaches_its_log_never_the_main_threads_stream(capfd) -> None:
    """Output on a run's thread after the starting cell returned goes to the run's log; the main
    thread (the next cell) printing at the same time keeps its own output."""
    events: list[Event] = []
    log = RunLog(events.append, "bg")
    cell_returned, printed = threading.Event(), threading.Event()

    def run_thread() -> None:
        with capture.routed_output(log):
            cell_returned.wait(5)
            print("from the run's thread")
            sys.stderr.write("stderr from the run's thread\n")
            printed.set()
            cell_returned.wait(5)
        log.flush()

    thread = threading.Thread(target=run_thread)
    thread.start()
    cell_returned.set()  # the cell that started the run has returned; the next cell prints
    print("the next cell's own output")
    printed.wait(5)
    thread.join(5)
    out = capfd.readouterr()  # Python's streams and file descriptors 1 and 2
    assert out.out == "the next cell's own output\n" and out.err == ""
    messages = [e.message for e in events]
    assert "from the run's thread" in messages and "stderr from the run's thread" in messages
    assert not isinstance(sys.stdout, capture.RoutedStream)  # removed with the last route


def test_logging_handler_made_before_the_run_routes_by_thread(capsys) -> None:
    """A library handler holding the raw stream (transformers configures one at import)."""
    logger = logging.getLogger("jd_test_library")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        events: list[Event] = []
        log = RunLog(events.append, "r")
        thread = threading.Thread(target=lambda: _log_routed(log, logger))
        thread.start()
        thread.join(5)
        logger.warning("outside the run")
        assert [e.message for e in events] == ["WARNING jd_test_library: inside the run"]
        assert events[0].data["source"] == "logging:jd_test_library"
        assert capsys.readouterr().err == "WARNING jd_test_library: outside the run\n"
        assert not handler.filters  # the filter leaves with the last route
    finally:
        logger.removeHandler(handler)


def _log_routed(log: RunLog, logger: logging.Logger) -> None:
    with capture.routed_output(log):
        logger.warning("inside the run")


def test_transformers_bars_are_off_on_routed_threads_only() -> None:
    from transformers.utils import logging as hf_logging

    seen: dict[str, bool] = {}

    def make(key: str) -> None:
        bar = hf_logging.tqdm(range(3), disable=False)
        seen[key] = bool(getattr(bar, "disable", True))
        bar.close()

    log = RunLog(lambda e: None, "r")

    def routed() -> None:
        with capture.routed_output(log):
            make("routed")
            side = threading.Thread(target=make, args=("other thread",))  # no route: its bar stays
            side.start()
            side.join(5)

    thread = threading.Thread(target=routed)
    thread.start()
    thread.join(10)
    assert seen == {"routed": True, "other thread": False}
    assert getattr(hf_logging, "_tqdm_hook", None) is None  # restored


def test_routes_on_many_threads_keep_their_own_lines() -> None:
    logs = {n: [] for n in range(6)}

    def work(n: int) -> None:
        log = RunLog(logs[n].append, f"run{n}")
        with capture.routed_output(log):
            for i in range(200):
                print(f"run{n} line {i}")
        log.flush()

    threads = [threading.Thread(target=work, args=(n,)) for n in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for n, events in logs.items():
        assert [e.message for e in events] == [f"run{n} line {i}" for i in range(200)]
    assert not isinstance(sys.stdout, capture.RoutedStream)


def test_dashboard_state_keeps_a_bounded_log() -> None:
    state = DashboardState(run="r")
    for i in range(MAX_LOG_LINES + 5):
        state.apply(Event("log", run="r", phase="export", message=f"line {i}", data={"source": "llama.cpp"}))
    assert len(state.log) == MAX_LOG_LINES and state.log_total == MAX_LOG_LINES + 5
    assert state.log[-1] == ("llama.cpp", f"line {MAX_LOG_LINES + 4}")
    assert state.messages == []  # a library's line is not a run warning


@pytest.fixture
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("student"))


def test_a_quantizing_run_writes_nothing_to_fd2_and_logs_the_fallbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openai_server, tiny_student: Path, capfd
) -> None:
    """A whole run on its background thread, quantized to a k-quant (the tiny student's rows are
    64 wide, so llama.cpp falls back per tensor): file descriptor 2 stays empty, the fallbacks are
    one line of the run's stored log."""
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    openai_server.responder = lambda body, index: body["messages"][-1]["content"].rsplit(" ", 1)[-1]
    config = jd.DistillConfig.from_kwargs(
        dataset=[{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(6)],
        teacher=openai_server.spec("test-model"),
        student=str(tiny_student),
        judge=exact_match("expected"),
        n_samples=2,
        top_k=1,
        steps=2,
        batch_size=2,
        max_tokens=8,
        quantize="q4_k_m",
        workdir=str(tmp_path / "wd"),
        name="quiet",
    )
    from jupyter_distill.pipeline.run import Run

    capfd.readouterr()
    run = Run(config).start()
    run.wait(600)
    assert run.state.status == "done", run.state.error
    captured = capfd.readouterr()
    assert captured.err == "", captured.err[-2000:]
    assert captured.out == "", captured.out[-2000:]
    logged = [e for e in RunStore(tmp_path / "wd").get_events("quiet", limit=5000) if e["kind"] == "log"]
    folded = [e for e in logged if "fell back to" in e["message"]]
    assert len(folded) == 1 and folded[0]["phase"] == "export", [e["message"] for e in logged]
    assert not any("falling back to" in e["message"] for e in logged)


def test_dashboard_shows_the_log_collapsed_and_escaped() -> None:
    from jupyter_distill.notebook.dashboard import RunDashboard

    dashboard = RunDashboard("r", min_interval=0.05)
    dashboard.flush()
    assert dashboard.run_log.widget.layout.display == "none"  # no log yet: nothing drawn
    dashboard.sink(Event("run_start", run="r"))
    dashboard.sink(Event("log", run="r", message="cost <b>$1</b>", data={"source": "stderr"}))
    dashboard.sink(Event("log", run="r", message="180 tensors fell back to q5_0", data={"source": "llama.cpp"}))
    dashboard.flush()
    view = dashboard.run_log.widget
    assert view.layout.display == "" and view.selected_index is None  # shown, closed
    assert view.get_title(0) == "log (2 lines)"
    assert "[stderr] cost &lt;b&gt;&#36;1&lt;/b&gt;" in dashboard.run_log.lines.value
    assert "[llama.cpp] 180 tensors fell back to q5_0" in dashboard.run_log.lines.value
    saved = dashboard.fallback_html()
    assert "<details class='jd-run-log'><summary>log (2 lines)</summary>" in saved


def test_run_sync_worker_and_to_thread_print_into_the_callers_route() -> None:
    """A stage called from a running loop gets a worker thread, which acts for the run's thread."""
    import asyncio

    from jupyter_distill.core.loops import run_sync

    events: list[Event] = []
    log = RunLog(events.append, "r")

    async def stage() -> None:
        print("from the stage's loop")
        await asyncio.to_thread(print, "from a to_thread worker")

    async def caller() -> None:  # a loop runs in this thread, so run_sync uses a worker thread
        with capture.routed_output(log):
            run_sync(stage, thread_name="jd-test-loop")

    thread = threading.Thread(target=asyncio.run, args=(caller(),))
    thread.start()
    thread.join(30)
    log.flush()
    assert [e.message for e in events] == ["from the stage's loop", "from a to_thread worker"]
