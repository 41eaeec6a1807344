"""Batch sampling against a real local server speaking the OpenAI and Anthropic batch APIs."""

from __future__ import annotations

import threading

import pytest

from jupyter_distill.core.data import load_dataset
from jupyter_distill.core.errors import ConfigError, PolicyError, TeacherError
from jupyter_distill.core.store import RunStore
from jupyter_distill.pipeline.estimate import estimate
from jupyter_distill.sampling.stage import BatchPending, sample, sample_key
from jupyter_distill.teachers import load_teacher
from tests.batch_server import BatchServer, reply

AUTH = "written permission from the provider, 2026-12-01"
PRICES = {"input_usd_per_m": 1.0, "output_usd_per_m": 2.0}
ONLINE_COST = (10 * 1.0 + 20 * 2.0) / 1e6  # per candidate: the server reports 10 prompt + 20 completion tokens


def prompts(count: int):
    return load_dataset([{"prompt": f"q{i}", "expected": str(i)} for i in range(count)])


@pytest.fixture
def server():
    s = BatchServer().start()
    yield s
    s.stop()


def teacher(server: BatchServer, scheme: str = "openai", batch: bool = True):
    options = {"batch": True} if batch else {}
    return load_teacher(f"{scheme}:m", authorization=AUTH, base_url=server.url, api_key="k-123456", **PRICES, **options)


def open_store(tmp_path) -> RunStore:
    store = RunStore(tmp_path / "wd")
    store.create_run("r1", {})
    return store


@pytest.mark.parametrize("scheme", ["openai", "anthropic", "openrouter"])
def test_batch_is_submitted_once_polled_after_a_restart_and_stored_like_online(server, tmp_path, scheme):
    server.polls_until_done = 2
    data = prompts(3)
    events = []
    store = open_store(tmp_path)
    with pytest.raises(BatchPending) as pending:
        sample(store, teacher(server, scheme), data, 2, run_id="r1", emit=events.append)
    assert pending.value.batch_id == "batch_1" and "waiting for batch batch_1 (0 of 6 done)" in str(pending.value)
    assert any(e.kind == "batch_waiting" and e.message == "waiting for batch batch_1 (0 of 6 done)" for e in events)
    [row] = store.list_batches("r1")
    assert (row["batch_id"], row["provider"], row["status"]) == ("batch_1", scheme, "submitted")
    assert row["endpoint"] == server.url
    assert sorted(e["key"] for e in row["keys"].values()) == sorted(
        sample_key(p.hash, f"{scheme}:m", {"temperature": 0.8, "max_tokens": 256, "seed": 0}, i)
        for p in data
        for i in range(2)
    )
    assert store.existing_sample_keys(e["key"] for e in row["keys"].values()) == set()
    store.close()

    # a new kernel: a new store object and a new teacher on the same workdir poll the same batch
    store = open_store(tmp_path)
    result = sample(store, teacher(server, scheme), data, 2, run_id="r1")
    assert server.submissions == 1 and server.chat_requests == 0
    assert result.new == 6 and result.requests_sent == 0
    assert result.cost == pytest.approx(6 * ONLINE_COST * 0.5)
    for p in data:
        texts = [s.text for s in result.samples[p.hash]]
        seeds = ["none", "none"] if scheme == "anthropic" else [0, 1]  # the Messages API takes no seed
        assert texts == [reply(p.messages[-1]["content"], s) for s in seeds]
        prov = result.samples[p.hash][0].provenance
        assert prov["batch"]["id"] == "batch_1" and prov["batch"]["provider"] == scheme
        assert prov["policy"]["authorization"] == AUTH and prov["teacher"] == f"{scheme}:m"
        assert "batch price factor 0.5" in prov["price_source"]
    assert store.list_batches("r1")[0]["status"] == "collected"

    # the same teacher online finds every candidate: nothing is sent
    again = sample(store, teacher(server, scheme, batch=False), data, 2, run_id="r1")
    assert again.requests_sent == 0 and again.cached == 6 and server.chat_requests == 0
    # and the batch teacher does not submit again either
    sample(store, teacher(server, scheme), data, 2, run_id="r1")
    assert server.submissions == 1
    store.close()


@pytest.mark.parametrize("scheme", ["openai", "anthropic"])
def test_failed_batch_items_are_retried_online(server, tmp_path, scheme):
    server.polls_until_done = 2
    data = prompts(2)
    store = open_store(tmp_path)
    with pytest.raises(BatchPending):
        sample(store, teacher(server, scheme), data, 2, run_id="r1")
    failing = sorted(store.list_batches("r1")[0]["keys"])[:1]
    server.fail_ids = set(failing)
    result = sample(store, teacher(server, scheme), data, 2, run_id="r1")
    assert server.submissions == 1 and server.chat_requests == 1
    assert result.new == 4 and not result.failed
    assert result.cost == pytest.approx(3 * ONLINE_COST * 0.5 + ONLINE_COST)
    batch_ids = [s.provenance.get("batch") for ss in result.samples.values() for s in ss]
    assert sum(b is None for b in batch_ids) == 1
    store.close()


@pytest.mark.parametrize("scheme", ["openai", "anthropic"])
def test_an_expired_batch_keeps_its_answers_and_fetches_the_rest_online(server, tmp_path, scheme):
    server.expire, server.expire_after, server.polls_until_done = True, 3, 2
    data = prompts(3)
    store = open_store(tmp_path)
    with pytest.raises(BatchPending):
        sample(store, teacher(server, scheme), data, 2, run_id="r1")
    result = sample(store, teacher(server, scheme), data, 2, run_id="r1")
    assert server.submissions == 1 and server.chat_requests == 3
    assert result.new == 6 and sum(len(v) for v in result.samples.values()) == 6
    store.close()


@pytest.mark.parametrize("inline", [True, False])
def test_openrouter_batch_carries_the_distillable_flag_and_reads_results_inline_or_by_page(server, tmp_path, inline):
    """OpenRouter: inline requests, the distillable-only routing in every body, results either way."""
    server.polls_until_done = 2
    server.inline_results_limit = 10**6 if inline else 0
    server.distillable = {"m": True}
    server.expire, server.expire_after = True, 4  # the last 2 requests expire: they go online
    store = open_store(tmp_path)
    router = teacher(server, "openrouter")
    with pytest.raises(BatchPending):
        sample(store, router, prompts(3), 2, run_id="r1")
    assert server.submissions == 1 and len(server.bodies) == 6
    assert all(b["provider"] == {"enforce_distillable_text": True} for b in server.bodies)
    result = sample(store, teacher(server, "openrouter"), prompts(3), 2, run_id="r1")
    assert result.new == 6 and server.chat_requests == 2 and server.submissions == 1
    candidates = [s for v in result.samples.values() for s in v]
    assert sorted(s.text for s in candidates) == sorted(reply(f"q{i}", seed) for i in range(3) for seed in (0, 1))
    assert sum(1 for s in candidates if s.provenance.get("batch", {}).get("provider") == "openrouter") == 4
    store.close()


def test_openrouter_batch_is_refused_before_submitting_for_a_model_listed_not_distillable(server, tmp_path):
    server.distillable = {"m": False}
    store = open_store(tmp_path)
    router = load_teacher("openrouter:m", base_url=server.url, api_key="k-123456", batch=True, **PRICES)
    with pytest.raises(PolicyError, match="not distillable"):
        sample(store, router, prompts(2), 2, run_id="r1")
    assert server.submissions == 0 and store.list_batches("r1") == []
    store.close()


def test_a_teacher_the_policy_refuses_never_reaches_the_batch_api(server):
    with pytest.raises(PolicyError):
        load_teacher("openai:m", base_url=server.url, api_key="k-123456", batch=True)
    assert server.submissions == 0 and server.uploads == 0 and server.headers == []


def test_eight_threads_share_one_batch(server, tmp_path):
    """Eight kernels' worth of callers on one workdir: one submission, then one set of samples."""
    server.polls_until_done = 10**6
    data = prompts(4)
    open_store(tmp_path).close()
    barrier = threading.Barrier(8)
    outcomes: list[object] = []
    lock = threading.Lock()

    def call() -> None:
        store = RunStore(tmp_path / "wd")
        barrier.wait()
        try:
            outcome: object = sample(store, teacher(server), data, 2, run_id="r1")
        except Exception as exc:
            outcome = exc
        finally:
            store.close()
        with lock:
            outcomes.append(outcome)

    for round_ in range(2):
        outcomes.clear()
        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert server.submissions == 1 and server.uploads == 1
        if round_ == 0:
            assert all(isinstance(o, BatchPending) for o in outcomes), outcomes
            server.polls_until_done = 0
    assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    assert server.chat_requests == 0
    # the batch was collected by one caller: its candidates are new (and paid) once, cached for the rest
    assert sum(o.new for o in outcomes) == 8 and sum(o.cached for o in outcomes) == 7 * 8
    assert sum(o.cost for o in outcomes) == pytest.approx(8 * ONLINE_COST * 0.5)
    assert all(sum(len(v) for v in o.samples.values()) == 8 for o in outcomes)
    store = RunStore(tmp_path / "wd")
    assert len(store.existing_sample_keys(e["key"] for e in store.list_batches("r1")[0]["keys"].values())) == 8
    assert [b["status"] for b in store.list_batches("r1")] == ["collected"]
    store.close()


def test_estimate_shows_online_and_batch_cost_and_the_wait():
    data = [{"prompt": f"question {i}"} for i in range(20)]
    online = estimate(data, teacher="openai:gpt-4o-mini", student="smollm2-135m", n_samples=4)
    batched = estimate(data, teacher="openai:gpt-4o-mini", student="smollm2-135m", n_samples=4, batch=True)
    assert online.teacher_only_cost_online and online.teacher_only_cost_online > 0
    assert online.teacher_only_cost_batch == pytest.approx(online.teacher_only_cost_online * 0.5, rel=1e-3)
    assert "set batch: true" in repr(online) and "batch: true (chosen)" in repr(batched)
    assert "up to 24 h" in repr(batched) and "online vs batch" in repr(batched)
    local = estimate(data, teacher="local:smollm2-135m", student="smollm2-135m")
    assert local.teacher_only_cost_batch is None and "online vs batch" not in repr(local)
    router = estimate(data, teacher="openrouter:openai/gpt-4o-mini", student="smollm2-135m")
    assert router.teacher_only_cost_batch == pytest.approx(router.teacher_only_cost_online * 0.5, rel=1e-3)


def test_local_teachers_refuse_batch_naming_the_supported_providers():
    with pytest.raises(ConfigError) as err:
        load_teacher("local:smollm2-135m", batch=True)
    assert err.value.field == "batch" and "openai:" in str(err.value)


@pytest.mark.parametrize("scheme", ["openai", "anthropic"])
def test_a_failed_submission_frees_the_claim_and_a_rerun_submits(server, tmp_path, scheme):
    server.reject_create, server.polls_until_done = 1, 2
    store = open_store(tmp_path)
    with pytest.raises(TeacherError) as err:
        sample(store, teacher(server, scheme), prompts(2), 2, run_id="r1")
    assert "HTTP 500" in str(err.value) and "k-123456" not in str(err.value)
    assert [b["status"] for b in store.list_batches("r1")] == ["abandoned"]
    with pytest.raises(BatchPending):
        sample(store, teacher(server, scheme), prompts(2), 2, run_id="r1")
    assert server.submissions == 1 and [b["status"] for b in store.list_batches("r1")] == ["abandoned", "submitted"]
    store.close()


def test_distill_with_batch_true_ends_waiting_then_a_rerun_collects_and_goes_on(server, tmp_path, monkeypatch):
    """The config route: batch: true reaches the teacher, the run waits, the re-run polls the same batch."""
    import jupyter_distill as jd
    from jupyter_distill.judging.verifiers import exact_match

    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "k-123456")
    server.polls_until_done = 2
    options = dict(
        dataset=[{"prompt": f"q{i}", "expected": "x"} for i in range(3)],
        teacher="openai:m",
        authorization=AUTH,
        batch=True,
        student="smollm2-135m",
        judge=exact_match("expected"),
        n_samples=2,
        max_tokens=8,
        workdir=str(tmp_path / "wd"),
        name="batched",
    )
    with pytest.raises(BatchPending, match="waiting for batch batch_1"):
        jd.distill(on_progress=lambda e: None, **options)
    store = RunStore(tmp_path / "wd")
    assert store.get_run("batched")["status"] == "waiting-batch"
    store.close()
    with pytest.raises(Exception) as later:  # sampling completes; no candidate matches "x", so selection stops the run
        jd.distill(on_progress=lambda e: None, **options)
    assert not isinstance(later.value, BatchPending), later.value
    assert "pass" in str(later.value).lower() or "candidate" in str(later.value).lower(), later.value
    assert server.submissions == 1 and server.chat_requests == 0
    store = RunStore(tmp_path / "wd")
    assert [b["status"] for b in store.list_batches()] == ["collected"]
    store.close()


def _stale_claim(store: RunStore, server: BatchServer, who: dict, age_s: float = 0.0) -> int:
    """A 'submitting' row as a caller leaves it when it dies between claim and submission."""
    import time

    from jupyter_distill.sampling.batched import batch_group

    group = batch_group("openai:m", {"temperature": 0.8, "max_tokens": 256, "seed": 0})
    row = store.claim_batch(group, "r1", "openai:m", "openai", server.url, who)
    assert row is not None
    with store.transaction() as conn:
        conn.execute("UPDATE batches SET updated_at=? WHERE id=?", (time.time() - age_s, row))
    return row


def test_a_claim_whose_process_died_is_expired_and_the_rerun_submits(server, tmp_path):
    """A kernel killed between claim and submit must not block the teacher's batches for ever."""
    import socket
    import subprocess
    import sys

    server.polls_until_done = 2
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = open_store(tmp_path)
    _stale_claim(store, server, {"host": socket.gethostname(), "pid": dead.pid})
    with pytest.raises(BatchPending) as pending:
        sample(store, teacher(server), prompts(2), 2, run_id="r1")
    assert pending.value.batch_id == "batch_1" and server.submissions == 1
    first, second = store.list_batches("r1")
    assert (first["status"], second["status"]) == ("abandoned", "submitted")
    assert f"process {dead.pid}" in first["info"]["expired"]
    store.close()


def test_a_live_claim_is_waited_for_and_an_old_one_from_elsewhere_expires(server, tmp_path):
    import os
    import socket

    server.polls_until_done = 2
    store = open_store(tmp_path)
    live = _stale_claim(store, server, {"host": socket.gethostname(), "pid": os.getppid()})
    with pytest.raises(BatchPending, match="another sampling call is submitting"):
        sample(store, teacher(server), prompts(2), 2, run_id="r1")
    assert server.submissions == 0
    store.set_batch_status(live, "abandoned")
    _stale_claim(store, server, {"host": "another-host", "pid": 1}, age_s=31 * 60)
    with pytest.raises(BatchPending):
        sample(store, teacher(server), prompts(2), 2, run_id="r1")
    assert server.submissions == 1 and [b["status"] for b in store.list_batches("r1")][-1] == "submitted"
    assert "never submitted" in store.list_batches("r1")[1]["info"]["expired"]
    store.close()


def test_a_submission_that_lands_after_its_claim_expired_is_recorded_not_collected(server, tmp_path):
    store = open_store(tmp_path)
    row = _stale_claim(store, server, {"host": "another-host", "pid": 1})
    assert store.expire_claim(row, "test") and not store.expire_claim(row, "twice")
    assert not store.batch_submitted(row, "batch_late", {"c": {"key": "k"}}, {"requests": 1})
    [closed] = store.list_batches("r1")
    assert (closed["status"], closed["batch_id"]) == ("abandoned", "batch_late")
    assert closed["info"]["submitted_after_expiry"] and store.open_batch(closed["group_key"]) is None
    store.close()
