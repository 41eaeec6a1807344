"""Hardening: nothing paid is lost silently, money is attributed to whom it was paid, one writer per
run, and an unreachable teacher fails at once instead of retrying every prompt.

Teachers are the real OpenAI-compatible server on 127.0.0.1 (``tests/openai_server.py``); store
failures are injected with a ``RunStore`` subclass that raises SQLite's own error from the write.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from crash_worker import RUN_NAME, crash_options

import jupyter_distill as jd
from jupyter_distill.core.data import load_dataset
from jupyter_distill.core.errors import TeacherError
from jupyter_distill.core.events import Event, fan_out
from jupyter_distill.core.store import JudgmentRecord, PairRecord, RunLock, RunLockedError, RunStore, SampleRecord
from jupyter_distill.export.card import provenance_summary, write_model_card
from jupyter_distill.notebook.dashboard import DashboardState, _stats_html
from jupyter_distill.notebook.plots import LivePlot
from jupyter_distill.sampling.stage import SPOOL_FILE, sample
from jupyter_distill.teachers import Sample, load_teacher

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("crash_worker.py")


def prompts(count: int, prefix: str = "q"):
    return load_dataset([{"prompt": f"{prefix}{i}", "expected": str(i)} for i in range(count)])


class FlakyStore(RunStore):
    """A run store whose sample writes fail with SQLite's 'database is locked'.

    ``fail_times`` writes fail in all (then writes succeed); ``fail_prompt`` limits the failures to
    the samples of one prompt (every write of it fails while ``fail_times`` lasts).
    """

    def __init__(self, workdir: Path, *, fail_times: int, fail_prompt: str | None = None):
        super().__init__(workdir)
        self.fail_times = fail_times
        self.fail_prompt = fail_prompt
        self.refused = 0

    def put_samples(self, samples: Any) -> int:
        samples = list(samples)
        hit = self.fail_prompt is None or any(s.prompt_hash == self.fail_prompt for s in samples)
        if hit and self.refused < self.fail_times:
            self.refused += 1
            raise sqlite3.OperationalError("database is locked")
        return super().put_samples(samples)


# ------------------------------------------------------------------ no silent loss in sampling


def test_a_sample_write_refused_once_is_retried_and_every_prompt_is_stored(openai_server, tmp_path):
    store = FlakyStore(tmp_path / "wd", fail_times=1)
    store.create_run("r1", {})
    teacher = load_teacher(openai_server.spec())
    ps = prompts(5)
    result = sample(store, teacher, ps, n=2, run_id="r1", seed=1)
    assert store.refused == 1  # the fault did happen
    for p in ps:  # every prompt ended in samples: the retried write landed, nothing paid twice
        stored = store.samples_for_prompt(p.hash)
        assert [s.text for s in stored] == [openai_server.reply(p.messages[-1]["content"], i, 1) for i in range(2)]
    assert openai_server.requests_total == 5 and store.get_failures("r1") == []
    assert result.failed == {} and result.unsaved == 0


def test_a_store_that_keeps_refusing_fails_the_prompt_and_keeps_the_paid_text(openai_server, tmp_path, caplog):
    ps = prompts(4)
    victim = ps[2]
    store = FlakyStore(tmp_path / "wd", fail_times=10**6, fail_prompt=victim.hash)
    store.create_run("r1", {})
    teacher = load_teacher(openai_server.spec())
    with caplog.at_level(logging.WARNING, logger="jupyter_distill.sampling.stage"):
        result = sample(store, teacher, ps, n=2, run_id="r1", seed=1)
    paid = [openai_server.reply(victim.messages[-1]["content"], i, 1) for i in range(2)]
    # the prompt is a failure, with the reason, and in the summary's numbers
    assert set(result.failed) == {victim.hash} and "database is locked" in result.failed[victim.hash]
    assert result.unsaved == 2 and [f["key"] for f in store.get_failures("r1", "sampling")] == [victim.hash]
    assert "database is locked" in caplog.text
    # the paid text is kept (in the result and beside the store), never dropped
    assert [s.text for s in result.samples[victim.hash]] == paid
    spool = [json.loads(line) for line in (tmp_path / "wd" / SPOOL_FILE).read_text().splitlines()]
    assert [row["text"] for row in spool] == paid
    assert all(store.samples_for_prompt(p.hash) for p in ps if p is not victim)

    # the next call over the workdir imports it and pays for nothing again
    sent = openai_server.requests_total
    healthy = RunStore(tmp_path / "wd")
    again = sample(healthy, teacher, ps, n=2, run_id="r1", seed=1)
    assert openai_server.requests_total == sent and again.failed == {} and again.cached == 8
    assert [s.text for s in healthy.samples_for_prompt(victim.hash)] == paid
    assert not (tmp_path / "wd" / SPOOL_FILE).exists() and healthy.get_failures("r1") == []


def test_an_error_outside_the_teacher_fails_its_prompt_and_never_vanishes(tmp_path):
    """A teacher object handing back something that is not a candidate broke the worker past the
    teacher call: the worker died silently and every prompt still queued behind it was neither
    stored nor failed. Now that prompt alone fails, listed with its reason, and the rest are sampled."""
    ps = prompts(6)
    victim = ps[1]

    class OddTeacher:
        spec = "custom:odd"
        concurrency = 1  # one worker: a dead worker would strand every later prompt
        requests_sent = 0

        async def sample(self, messages, n=4, temperature=0.8, max_tokens=256, seed=None):
            self.requests_sent += 1
            if messages == victim.messages:
                return [object()] * n  # no .text: breaks record building, outside teacher.sample
            return [Sample(text=f"answer {seed}", usage={}, cost=0.0, provenance={})] * n

        async def aclose(self) -> None:
            return None

    store = RunStore(tmp_path / "wd")
    store.create_run("r1", {})
    result = sample(store, OddTeacher(), ps, n=1, run_id="r1")
    assert set(result.failed) == {victim.hash} and "AttributeError" in result.failed[victim.hash]
    assert [f["key"] for f in store.get_failures("r1", "sampling")] == [victim.hash]
    for p in ps:  # every prompt ends in samples or in failures
        assert store.samples_for_prompt(p.hash) or p is victim


def test_a_broken_progress_callback_fails_no_prompt(openai_server, tmp_path):
    def emit(event: Event) -> None:
        if event.kind == "progress":
            raise ValueError("widget gone")

    store = RunStore(tmp_path / "wd")
    store.create_run("r1", {})
    ps = prompts(4)
    result = sample(store, load_teacher(openai_server.spec(), concurrency=1), ps, n=1, run_id="r1", emit=emit)
    assert result.failed == {} and all(store.samples_for_prompt(p.hash) for p in ps)


def test_a_failing_event_sink_is_logged_counted_and_announced(caplog):
    seen: list[Event] = []

    def store_writer(event: Event) -> None:
        raise sqlite3.OperationalError("database is locked")

    emit = fan_out([store_writer, seen.append], announce_failures=True)  # as the pipeline builds it
    with caplog.at_level(logging.WARNING, logger="jupyter_distill.core.events"):
        for i in range(3):
            emit(Event("progress", phase="sampling", run="r", current=i))
    assert emit.failed == 4  # three progress events and the warning about them
    assert list(emit.failures.values()) == [4] and "database is locked" in next(iter(emit.last_errors.values()))
    warnings = [e for e in seen if e.kind == "warning"]
    assert len(warnings) == 1 and "database is locked" in warnings[0].message  # once, not per event
    assert [e.current for e in seen if e.kind == "progress"] == [0, 1, 2]
    assert "database is locked" in caplog.text


def test_a_failing_plot_sink_is_counted_and_logged(caplog):
    def on_render(png: bytes) -> None:
        raise OSError("comm closed")

    plot = LivePlot(display=False, on_render=on_render, min_interval=0.0)
    with caplog.at_level(logging.WARNING, logger="jupyter_distill.notebook.plots"):
        plot(Event("metric", phase="training", step=1, data={"loss": 1.0}))
        plot.flush()
    assert plot.stats["render_errors"] >= 1 and "comm closed" in (plot.last_render_error or "")
    assert "comm closed" in caplog.text


# ------------------------------------------------------------------ money and terms


def _sample(prompt_hash: str, teacher: str, index: int, cost: float, verdict: str) -> SampleRecord:
    return SampleRecord(
        key=f"{teacher}-{prompt_hash}-{index}",
        prompt_hash=prompt_hash,
        teacher=teacher,
        params={"temperature": 0.8},
        sample_index=index,
        text=f"{teacher} says {index}",
        cost=cost,
        provenance={"provider": teacher.split(":")[0], "policy": {"verdict": verdict, "terms_version": teacher}},
    )


@pytest.fixture
def two_teachers(tmp_path) -> RunStore:
    """Two runs on the same prompts: run 'a' with a cheap teacher, run 'b' with a dear one."""
    store = RunStore(tmp_path / "wd")
    ps = prompts(3)
    for run, teacher, judge, cost in (("a", "local:cheap", "judge-a", 0.001), ("b", "openrouter:dear", "judge-b", 0.1)):
        store.create_run(run, {"teacher": teacher})
        store.update_run(run, summary={"teacher": teacher, "judge": judge})
        store.put_prompts(run, ps)
        records = [_sample(p.hash, teacher, i, cost, f"verdict-{run}") for p in ps for i in range(2)]
        store.put_samples(records)
        store.put_judgments(
            JudgmentRecord(key=f"{judge}-{r.key}", sample_key=r.key, judge=judge, score=1.0, cost=cost / 10)
            for r in records
        )
        store.put_pairs(run, [PairRecord(p.hash, 0, f"{teacher} says 0", None, f"{teacher}-{p.hash}-0") for p in ps])
    return store


def test_teacher_and_judge_spend_are_the_run_own_and_apart(two_teachers):
    store = two_teachers
    assert store.teacher_cost("a") == pytest.approx(6 * 0.001)  # not the other teacher's 0.6 too
    assert store.teacher_cost("b") == pytest.approx(6 * 0.1)
    assert store.judge_cost("a") == pytest.approx(6 * 0.0001)
    assert store.judge_cost("b") == pytest.approx(6 * 0.01)


def test_the_model_card_names_the_terms_of_the_teacher_trained_on(two_teachers, tmp_path):
    provenance = provenance_summary(two_teachers, "a")
    assert list(provenance["teachers"]) == ["local:cheap"]
    assert provenance["teachers"]["local:cheap"]["verdict"] == "verdict-a"
    card = write_model_card(tmp_path / "README.md", {"student": "tiny", "provenance": provenance}).read_text()
    assert "local:cheap" in card and "openrouter:dear" not in card and "verdict-b" not in card
    assert "teacher spend: $0.0060" in card and "judge spend: $0.0006" in card and "total spend: $0.0066" in card


def test_the_dashboard_keeps_teacher_and_judge_cost_apart():
    state = DashboardState(run="r")
    state.apply(Event("phase_start", phase="sampling", run="r"))
    state.apply(Event("progress", phase="sampling", run="r", data={"cost": 0.04, "requests": 8}))
    state.apply(Event("phase_start", phase="judging", run="r"))
    state.apply(Event("progress", phase="judging", run="r", data={"cost": 0.01}))
    html = _stats_html(state)
    html = html.replace("&#36;", "$")  # dollar signs are escaped so MathJax leaves them alone
    assert "teacher cost $0.0400" in html and "judge cost $0.0100" in html and "total $0.0500" in html


# ------------------------------------------------------------------ unreachable teacher


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_teacher_fails_fast_naming_the_endpoint(tmp_path):
    port = _closed_port()
    teacher = load_teacher(
        f"openai-compatible:http://127.0.0.1:{port}/v1#m", concurrency=4, backoff_base=0.01, backoff_max=0.02
    )
    store = RunStore(tmp_path / "wd")
    store.create_run("r1", {})
    with pytest.raises(TeacherError) as info:
        sample(store, teacher, prompts(200), n=2, run_id="r1")
    assert f"127.0.0.1:{port}/v1/chat/completions" in str(info.value) and info.value.field == "teacher"
    # bounded: at most two connection attempts per request slot, not 6 attempts x 200 prompts
    assert 1 <= teacher.requests_sent <= 2 * 4
    assert store.get_failures("r1") == []  # the endpoint failed, not 200 prompts


def test_a_teacher_that_answered_before_still_retries_a_dropped_server(openai_server, tmp_path):
    """Fail-fast is for an endpoint that never answered: a server restarting mid-run is retried."""
    teacher = load_teacher(openai_server.spec(), concurrency=2, backoff_base=0.01, backoff_max=0.02, max_retries=2)
    store = RunStore(tmp_path / "wd")
    store.create_run("r1", {})
    sample(store, teacher, prompts(2), n=1, run_id="r1")
    openai_server.stop()
    result = sample(store, teacher, prompts(3, prefix="later"), n=1, run_id="r1")
    assert len(result.failed) == 3  # each prompt failed after its retries, recorded, not fatal
    assert all("failed after 3 attempts" in message for message in result.failed.values())


# ------------------------------------------------------------------ one run, one writer


def test_a_second_writer_in_this_process_is_refused_naming_the_holder(tmp_path):
    with RunLock(tmp_path, "r1"):
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path, "r1").acquire()
        assert "'r1'" in str(info.value) and f"process {os.getpid()}" in str(info.value)
        assert socket.gethostname() in str(info.value) and info.value.field == "name"
        RunLock(tmp_path, "r2").acquire().release()  # another run is not blocked
    RunLock(tmp_path, "r1").acquire().release()  # released with the first holder


def _wait_for(predicate: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


@pytest.mark.slow
def test_two_processes_starting_one_run_second_gets_a_clear_error(openai_server, tmp_path, tiny_llama_student):
    student = tiny_llama_student
    workdir = tmp_path / "wd"
    release = threading.Event()
    openai_server.responder = lambda body, index: (release.wait(60), "1")[1]  # hold the first writer in sampling
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), "--workdir", str(workdir), "--url", openai_server.url, "--student", str(student)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: openai_server.requests_total > 0 or worker.poll() is not None)
        assert worker.poll() is None, worker.communicate()
        sent = openai_server.requests_total
        with pytest.raises(RunLockedError) as info:
            jd.distill(on_progress=lambda event: None, **crash_options(str(workdir), openai_server.url, str(student)))
        message = str(info.value)
        assert repr(RUN_NAME) in message and f"process {worker.pid}" in message and socket.gethostname() in message
        assert openai_server.requests_total == sent  # the second writer sent nothing
        assert RunStore(workdir).get_run(RUN_NAME)["status"] == "running"  # the holder's run is untouched
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
        release.set()
    # the OS dropped the dead holder's lock: a resume is never blocked by a crashed kernel
    RunLock(workdir, RUN_NAME).acquire().release()


def test_fan_out_counts_every_failure_from_many_threads():
    """The run thread emits while the notebook thread attaches a dashboard: no event or count is lost."""
    received: list[Event] = []
    lock = threading.Lock()

    def broken(event: Event) -> None:
        raise sqlite3.OperationalError("database is locked")

    def keep(event: Event) -> None:
        with lock:
            received.append(event)

    emit = fan_out([broken, keep], announce_failures=True)
    barrier = threading.Barrier(8)

    def hammer(offset: int) -> None:
        barrier.wait()
        for i in range(250):
            emit(Event("progress", phase="sampling", current=offset * 1000 + i))
            if i == 100:
                emit.add(lambda event: None)  # a listener attached mid-run

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    progress = sorted(e.current for e in received if e.kind == "progress")
    assert progress == sorted(k * 1000 + i for k in range(8) for i in range(250))
    warnings = [e for e in received if e.kind == "warning"]
    assert len(warnings) == 1  # announced once, by whichever thread met the first failure
    assert emit.failed == 8 * 250 + len(warnings)  # every event the broken sink missed is counted


def test_one_run_lock_between_many_threads(tmp_path):
    """Two kernels in one process (two threads) race for one run: exactly one wins."""
    barrier = threading.Barrier(6)
    outcomes: list[str] = []
    held: list[RunLock] = []
    guard = threading.Lock()

    def contend() -> None:
        barrier.wait()
        try:
            lock = RunLock(tmp_path, "r1").acquire()
        except RunLockedError:
            outcome = "refused"
        else:
            outcome = "won"
            held.append(lock)
        with guard:
            outcomes.append(outcome)

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 5 + ["won"]
    held[0].release()
