"""Crash and resume: a run SIGKILLed during sampling, judging or training finishes on resume,
without paying twice for anything, losing nothing, and training on from its last checkpoint.

The pipeline runs in a subprocess (``tests/crash_worker.py``) so the kill is real: no
``finally`` blocks, no flushes, the SQLite write lock possibly held. The OpenAI-compatible test
server runs here, in the test process, so its request counts survive the kill. The server can
*hold* requests of one kind (sampling or judging) after the first ``K``: the test then knows
exactly which requests were answered (paid) before the kill and which were merely in flight.
A request in flight when the process dies was never answered, so asking for it again on resume
is not a double payment; asking again for an *answered* one is, and the tests assert that never
happens.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from crash_worker import N_PROMPTS, RUN_NAME, crash_options
from openai_server import OpenAIServer

import jupyter_distill as jd
from jupyter_distill.core.events import Event
from jupyter_distill.core.store import RunStore
from jupyter_distill.judging.review import ReviewSession

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("crash_worker.py")
REPO = Path(__file__).resolve().parent.parent


def request_kind(body: dict[str, Any]) -> str:
    """``judge`` for the LLM judge's grading requests, ``sample`` for teacher sampling."""
    messages = body.get("messages") or []
    first = messages[0] if messages else {}
    return "judge" if first.get("role") == "system" and "grader" in str(first.get("content")) else "sample"


def request_key(body: dict[str, Any]) -> tuple[str, str]:
    """What makes two requests the same paid question: its kind and its last user message."""
    messages = body.get("messages") or []
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    return request_kind(body), str(last.get("content"))


def respond(body: dict[str, Any], index: int) -> str:
    """Teacher: four distinct candidates, only the first is right. Judge: 9 for right, 2 for wrong."""
    kind, content = request_key(body)
    number = re.search(r"Repeat the number (\d+)", content)
    assert number is not None, content
    if kind == "judge":
        graded = content.split("## Response to grade\n", 1)[1].split("\n\nGrade the response.", 1)[0].strip()
        score = 9 if graded == number.group(1) else 2
        return json.dumps({"score": score, "rationale": f"graded {graded!r}"})
    return [number.group(1), f"I think it is {number.group(1)}?", f"{number.group(1)}!", f"maybe {number.group(1)}"][
        index % 4
    ]


class GatedServer(OpenAIServer):
    """The test server plus a gate: after ``limits[kind]`` requests of a kind, hold the rest.

    ``answered`` counts requests that got a 200 answer (what a provider bills) by
    :func:`request_key`; ``held`` is how many requests wait at the gate right now. A held request
    whose client dies is cancelled (``handler_cancellation``) and never answered.
    """

    def reset(self) -> None:
        super().reset()
        self.limits: dict[str, int] = {}
        self.admitted: Counter[str] = Counter()
        self.answered: Counter[tuple[str, str]] = Counter()
        self.arrived: Counter[tuple[str, str]] = Counter()
        self.held = 0

    async def _answer(self, request: Any) -> Any:
        body = await request.json()  # aiohttp caches the body: the parent handler reads it again
        key = request_key(body)
        self.arrived[key] += 1
        kind = key[0]
        if kind in self.limits and self.admitted[kind] >= self.limits[kind]:
            self.held += 1
            try:
                while kind in self.limits:
                    if request.transport is None or request.transport.is_closing():
                        raise asyncio.CancelledError  # the client died: nothing is answered
                    await asyncio.sleep(0.01)
            finally:
                self.held -= 1
        self.admitted[kind] += 1
        response = await super()._answer(request)
        if response.status == 200:
            self.answered[key] += 1
        return response


@pytest.fixture
def server() -> Iterator[GatedServer]:
    gated = GatedServer().start()
    gated.responder = respond
    try:
        yield gated
    finally:
        gated.stop()


@pytest.fixture
def tiny_student(tiny_llama_student: Path) -> Path:
    return tiny_llama_student


def count(db: Path, sql: str) -> int:
    """One integer from the store, read with a plain connection (the worker may hold the write lock)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute(sql).fetchone()[0] or 0)
    except sqlite3.OperationalError:  # tables not created yet
        return 0
    finally:
        conn.close()


def rows(db: Path, sql: str) -> dict[Any, tuple[Any, ...]]:
    """``{first column: the other columns}`` for a snapshot of stored rows."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {row[0]: tuple(row[1:]) for row in conn.execute(sql)}
    finally:
        conn.close()


def run_until_killed(
    workdir: Path, url: str, student: Path, ready: Callable[[], bool], overrides: dict[str, Any] | None = None
) -> None:
    """Start the worker, SIGKILL it as soon as ``ready()`` holds; fail if it ends first."""
    command = [sys.executable, str(WORKER), "--workdir", str(workdir), "--url", url, "--student", str(student)]
    command += ["--overrides", json.dumps(overrides or {})]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while not ready():
            if proc.poll() is not None:
                output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"the worker ended (rc {proc.returncode}) before the kill point:\n{output[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the worker never reached the kill point")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def resume(workdir: Path, server: GatedServer, student: Path, **overrides: Any) -> list[Event]:
    """The same call again, in this process, to completion; returns its events."""
    events: list[Event] = []
    jd.distill(on_progress=events.append, **crash_options(str(workdir), server.url, str(student), **overrides))
    run = RunStore(workdir).get_run(RUN_NAME)
    assert run is not None and run["status"] == "done", run
    return events


def assert_everything_paid_once(server: GatedServer, db: Path) -> None:
    """Every sampling and judging question was answered exactly once, and all answers are stored."""
    samples = [k for k in server.answered if k[0] == "sample"]
    judged = [k for k in server.answered if k[0] == "judge"]
    assert len(samples) == N_PROMPTS and len(judged) == N_PROMPTS * 4
    duplicates = {k: n for k, n in server.answered.items() if n > 1}
    assert duplicates == {}, f"paid twice: {duplicates}"
    assert count(db, "SELECT COUNT(*) FROM samples") == N_PROMPTS * 4
    assert count(db, "SELECT COUNT(*) FROM judgments WHERE status='ok'") == N_PROMPTS * 4
    assert count(db, "SELECT COUNT(*) FROM failures") == 0


def test_killed_during_sampling_resumes_without_paying_twice(
    tmp_path: Path, server: GatedServer, tiny_student: Path
) -> None:
    """Kill with 4 prompts answered and stored and the next ones in flight at the server."""
    db = tmp_path / "runs.db"
    server.limits = {"sample": 4}
    run_until_killed(
        tmp_path,
        server.url,
        tiny_student,
        lambda: count(db, "SELECT COUNT(*) FROM samples") == 16 and server.held >= 1,
    )
    assert count(db, f"SELECT COUNT(*) FROM runs WHERE id='{RUN_NAME}' AND status='running'") == 1
    before = rows(db, "SELECT key, created_at, text FROM samples")
    in_flight = sum(server.arrived.values()) - sum(server.answered.values())
    assert len(before) == 16 and 1 <= in_flight <= 2  # concurrency=2: at most two requests were lost
    server.limits = {}

    resume(tmp_path, server, tiny_student)

    after = rows(db, "SELECT key, created_at, text FROM samples")
    assert {k: after[k] for k in before} == before  # nothing paid for before the kill was lost or redone
    assert_everything_paid_once(server, db)


def test_killed_during_judging_resumes_without_paying_twice(
    tmp_path: Path, server: GatedServer, tiny_student: Path
) -> None:
    """Kill with 10 verdicts stored and the next judge requests in flight; a review decision made
    before the resume is kept and honoured."""
    db = tmp_path / "runs.db"
    server.limits = {"judge": 10}
    run_until_killed(
        tmp_path,
        server.url,
        tiny_student,
        lambda: count(db, "SELECT COUNT(*) FROM judgments") == 10 and server.held >= 1,
    )
    judged_before = rows(db, "SELECT key, created_at, score, status FROM judgments")
    samples_before = rows(db, "SELECT key, created_at FROM samples")
    assert len(judged_before) == 10 and len(samples_before) == N_PROMPTS * 4
    server.limits = {}
    # Between the crash and the resume a human overrides the judge on one prompt: the decision is
    # in the store at once and must survive the resume and win over the judge's scores.
    session = ReviewSession(RunStore(tmp_path), RUN_NAME)
    item = session.items()[0]
    human_pick = item.candidates[1]  # "I think it is N?": the judge will score it 2 of 10
    session.choose_best(item.prompt_hash, human_pick.key)
    reviews_before = session.store.get_reviews(RUN_NAME)
    session.store.close()

    resume(tmp_path, server, tiny_student)

    judged_after = rows(db, "SELECT key, created_at, score, status FROM judgments")
    assert {k: judged_after[k] for k in judged_before} == judged_before  # decisions kept as they were
    assert rows(db, "SELECT key, created_at FROM samples") == samples_before
    assert_everything_paid_once(server, db)
    pairs = RunStore(tmp_path).get_pairs(RUN_NAME)
    assert len(pairs) == N_PROMPTS  # top_k=1: one chosen answer per prompt
    chosen = {p.prompt_hash: p.chosen_text for p in pairs}
    assert chosen.pop(item.prompt_hash) == human_pick.text  # the human decision survived and won
    assert all(re.fullmatch(r"\d+", text) for text in chosen.values())  # elsewhere the judge's pick
    assert RunStore(tmp_path).get_reviews(RUN_NAME) == reviews_before


def _checkpoint_state(workdir: Path) -> dict[str, Any]:
    path = workdir / "runs" / RUN_NAME / "train" / "checkpoint" / "trainer_state.pt"
    return torch.load(path, map_location="cpu", weights_only=True)


def test_killed_during_training_continues_from_the_checkpoint(
    tmp_path: Path, server: GatedServer, tiny_student: Path
) -> None:
    """Kill after step 5 of 12 (checkpoints every 4); resume must start at the checkpoint's step
    with its optimizer and scheduler state, keep the metrics of the steps before it, rewrite
    only the ones after, end exactly where an uninterrupted training ends, and pay for nothing
    twice (the held-out "before" evaluation, judged by the LLM before the kill, included)."""
    db = tmp_path / "runs.db"
    steps = 12
    overrides = {"steps": steps, "checkpoint_every": 4, "heldout_fraction": 0.25}  # eval judged by the LLM
    loss_steps = f"SELECT MAX(step) FROM metrics WHERE run_id='{RUN_NAME}' AND name='loss'"
    run_until_killed(tmp_path, server.url, tiny_student, lambda: count(db, loss_steps) >= 5, overrides)
    killed_at = time.time()
    checkpoint = _checkpoint_state(tmp_path)
    saved = int(checkpoint["step"])
    assert saved >= 4 and saved % 4 == 0 and saved < steps
    metrics_before = rows(db, f"SELECT step, value, time FROM metrics WHERE run_id='{RUN_NAME}' AND name='loss'")
    requests_before = server.requests_total
    assert requests_before > 0

    events = resume(tmp_path, server, tiny_student, **overrides)

    heldout = count(db, f"SELECT COUNT(*) FROM run_prompts WHERE run_id='{RUN_NAME}' AND split='heldout'")
    assert heldout == 3
    # Sampling, judging and the "before" evaluation were paid for before the kill and are all
    # re-used; the only new requests judge the trained student's answers ("after").
    assert server.requests_total - requests_before == heldout
    start = next(e for e in events if e.phase == "training" and e.kind == "progress" and "engine" in e.data)
    assert start.current == saved  # the step counter continued from the checkpoint
    trained = sorted(e.step for e in events if e.kind == "metric" and e.phase == "training" and e.step)
    assert trained == list(range(saved + 1, steps + 1))  # only the steps after the checkpoint were run again

    after = rows(db, f"SELECT step, value, time FROM metrics WHERE run_id='{RUN_NAME}' AND name='loss'")
    assert sorted(after) == list(range(1, steps + 1))  # every step once: none lost, none twice
    for step in range(1, saved + 1):
        assert after[step] == metrics_before[step]  # kept from the killed process, not recomputed
    assert all(after[step][1] > killed_at for step in range(saved + 1, steps + 1))

    final = _checkpoint_state(tmp_path)
    assert final["step"] == steps and final["scheduler"]["last_epoch"] == steps
    adam_steps = {float(s["step"]) for s in final["optimizer"]["state"].values()}
    assert adam_steps == {float(steps)}  # AdamW's moments were restored, not restarted at the checkpoint

    # An uninterrupted training on the same pairs gives the same losses at every step.
    from jupyter_distill.core.config import DistillConfig
    from jupyter_distill.train.student import load_student
    from jupyter_distill.train.trainer import BondTrainer, TrainPair, TrainSettings

    store = RunStore(tmp_path)
    config = DistillConfig.from_kwargs(**crash_options(str(tmp_path), server.url, str(tiny_student), **overrides))
    pairs = TrainPair.from_records(store.get_pairs(RUN_NAME), store.get_prompts(RUN_NAME))
    reference = BondTrainer(
        load_student(str(tiny_student), device="cpu"),
        pairs,
        TrainSettings.from_config(config),
        output_dir=tmp_path / "reference",
    ).train(resume=False)
    expected = [h["loss"] for h in reference.history]
    got = [after[step][0] for step in range(1, steps + 1)]
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)
