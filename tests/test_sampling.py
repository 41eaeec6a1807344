"""sampling.sample against a real OpenAI-compatible server on 127.0.0.1 (tests/openai_server.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from jupyter_distill.core.data import load_dataset
from jupyter_distill.core.errors import BudgetExceeded, PolicyError
from jupyter_distill.core.events import Event
from jupyter_distill.core.policy import TERMS_VERSION
from jupyter_distill.core.store import RunStore
from jupyter_distill.sampling.stage import SamplingResult, asample, decoding_params, sample, sample_key
from jupyter_distill.teachers import load_teacher

PLANTED = "sk-" + "test-PLANTED-123456789"  # a fake key, assembled so scanners do not flag the file
FAST = {"backoff_base": 0.01, "backoff_max": 0.05}


def prompts(count: int, prefix: str = "q"):
    return load_dataset([{"prompt": f"{prefix}{i}", "expected": str(i)} for i in range(count)])


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "wd")
    s.create_run("r1", {})
    yield s
    s.close()


def test_samples_are_stored_with_provenance_and_a_rerun_sends_nothing(openai_server, store):
    teacher = load_teacher(openai_server.spec("meta-llama/llama-3.3-70b-instruct"))
    ps = prompts(6)
    events: list[Event] = []
    result = sample(store, teacher, ps, n=4, run_id="r1", temperature=0.7, max_tokens=64, seed=3, emit=events.append)
    assert isinstance(result, SamplingResult)
    assert result.requests_sent == 6 == openai_server.requests_total and result.new == 24 and result.cached == 0
    assert result.failed == {} and result.cost > 0
    params = decoding_params(0.7, 64, 3)
    for p in ps:
        stored = store.samples_for_prompt(p.hash)
        assert [s.sample_index for s in stored] == [0, 1, 2, 3]
        assert [s.key for s in stored] == [sample_key(p.hash, teacher.spec, params, i) for i in range(4)]
        assert [s.text for s in stored] == [openai_server.reply(p.messages[-1]["content"], i, 3) for i in range(4)]
        assert result.samples[p.hash] == stored
    prov = store.samples_for_prompt(ps[0].hash)[2].provenance
    assert prov["teacher"] == teacher.spec and prov["provider"] == "openai-compatible"
    assert prov["endpoint"] == openai_server.url + "/chat/completions" and prov["time"].endswith("Z")
    assert prov["params"]["temperature"] == 0.7 and prov["params"]["max_tokens"] == 64
    assert prov["policy"]["allowed"] is True and prov["terms_version"] == TERMS_VERSION
    assert prov["usage"]["completion_tokens"] > 0 and prov["cost_usd"] > 0 and prov["sample_index"] == 2
    assert store.teacher_cost("r1") == 0.0  # no run_prompts yet: cost is attributed through the run's prompts
    kinds = [e.kind for e in events]
    assert kinds[0] == "phase_start" and kinds[-1] == "phase_end" and kinds.count("progress") == 6
    assert all(e.phase == "sampling" and e.run == "r1" for e in events)
    assert events[-1].data["requests"] == 6 and events[-1].data["cost"] == pytest.approx(result.cost)
    assert events[-1].current == events[-1].total == 24

    again = sample(store, teacher, ps, n=4, run_id="r1", temperature=0.7, max_tokens=64, seed=3)
    assert again.requests_sent == 0 and openai_server.requests_total == 6
    assert again.cached == 24 and again.new == 0 and again.samples == result.samples


def test_more_candidates_later_pays_only_for_the_new_ones(openai_server, store):
    teacher = load_teacher(openai_server.spec())
    ps = prompts(3)
    sample(store, teacher, ps, n=2, run_id="r1", seed=10)
    result = sample(store, teacher, ps, n=4, run_id="r1", seed=10)
    assert result.cached == 6 and result.new == 6 and result.requests_sent == 3
    later = openai_server.bodies[3:]
    assert all(b["n"] == 2 and b["seed"] == 12 for b in later)  # indices 2 and 3, seeded as in a full run
    assert [len(v) for v in result.samples.values()] == [4, 4, 4]


def test_an_interrupted_run_resends_only_what_is_missing(openai_server, store):
    openai_server.latency = 0.5
    # Each run sends its own key, so the server's count for the second run cannot include a request
    # the first run sent just before Stop that reached the (loaded) server only after the first run
    # returned: both sides count that request, the server merely counts it later.
    teacher = load_teacher(openai_server.spec(), concurrency=2, api_key="first-run")
    ps = prompts(12)
    stop = threading.Event()
    stopped_at: list[float] = []

    def emit(event: Event) -> None:
        if event.kind == "progress" and event.data["new"] >= 4 * 2 and not stop.is_set():
            stop.set()
            stopped_at.append(time.monotonic())

    first = sample(store, teacher, ps, n=4, run_id="r1", emit=emit, stop=stop)
    assert first.stopped and 0 < first.new < 48 and first.new % 4 == 0
    assert time.monotonic() - stopped_at[0] < 1.0  # promptly: the rest would take >= 2 s
    done = {h for h, s in first.samples.items() if len(s) == 4}

    again = load_teacher(openai_server.spec(), concurrency=2, api_key="second-run")
    second = sample(store, again, ps, n=4, run_id="r1")
    assert second.cached == first.new and second.new == 48 - first.new and not second.stopped
    received_second = openai_server.auth_headers.count("Bearer second-run")
    assert second.requests_sent == received_second == 12 - len(done)
    by_prompt = {p.hash: openai_server.requests_by_prompt[p.messages[-1]["content"]] for p in ps}
    assert all(by_prompt[h] == 1 for h in done)  # nothing paid for twice
    assert all(len(v) == 4 for v in second.samples.values())


def test_failing_prompts_are_recorded_and_cleared_later(openai_server, store):
    teacher = load_teacher(openai_server.spec(), max_retries=1, **FAST)
    ps = prompts(5)
    openai_server.prompt_scripts["q2"] = ["500", "500"]
    result = sample(store, teacher, ps, n=2, run_id="r1")
    bad = ps[2].hash
    assert set(result.failed) == {bad} and "HTTP 500" in result.failed[bad]
    assert result.samples[bad] == [] and all(len(result.samples[p.hash]) == 2 for p in ps if p.hash != bad)
    (failure,) = store.get_failures("r1", "sampling")
    assert failure["key"] == bad and failure["prompt_hash"] == bad and "HTTP 500" in failure["error"]

    again = sample(store, teacher, ps, n=2, run_id="r1")
    assert again.failed == {} and again.requests_sent == 1 and len(again.samples[bad]) == 2
    assert store.get_failures("r1", "sampling") == []


def test_a_flaky_server_still_yields_every_candidate(openai_server, store):
    openai_server.error_rates = {"429": 0.25, "500": 0.15, "malformed": 0.1}
    openai_server.retry_after = "0"
    teacher = load_teacher(openai_server.spec(), max_retries=8, concurrency=8, **FAST)
    result = sample(store, teacher, prompts(30), n=2, run_id="r1")
    assert result.failed == {} and result.new == 60
    assert openai_server.requests_total == result.requests_sent > 30  # some were retried
    assert set(openai_server.directives) >= {"ok", "429", "500"}


def test_partial_candidates_are_kept_when_the_others_fail(openai_server, store):
    openai_server.support_n = False
    teacher = load_teacher(openai_server.spec(), max_retries=0, **FAST)
    ps = prompts(1)
    openai_server.script = ["ok", "ok", "500"]  # candidate 0 (n ignored), candidate 1, candidate 2 fails
    result = sample(store, teacher, ps, n=3, run_id="r1")
    assert len(result.samples[ps[0].hash]) == 2 and ps[0].hash in result.failed
    again = sample(store, teacher, ps, n=3, run_id="r1")
    assert again.requests_sent == 1 and len(again.samples[ps[0].hash]) == 3 and again.failed == {}


def test_budget_exhaustion_stops_the_run_and_keeps_what_was_paid_for(openai_server, store):
    openai_server.latency = 0.05
    prices = {"input_usd_per_m": 1000.0, "output_usd_per_m": 1000.0}
    teacher = load_teacher(openai_server.spec(), max_cost=0.2, concurrency=4, **prices)
    ps = prompts(20)
    with pytest.raises(BudgetExceeded) as info:
        sample(store, teacher, ps, n=2, run_id="r1", max_tokens=10)
    partial = info.value.result
    assert 0 < partial.new < 40 and partial.cost <= 0.2 and teacher.spent <= 0.2
    stored = [s for p in ps for s in store.samples_for_prompt(p.hash)]
    assert len(stored) == partial.new and sum(s.cost for s in stored) <= 0.2
    assert store.get_failures("r1") == []  # a budget stop is not a per-prompt failure

    richer = load_teacher(openai_server.spec(), max_cost=10.0, **prices)
    before = openai_server.requests_total
    rest = sample(store, richer, ps, n=2, run_id="r1", max_tokens=10)
    assert rest.cached == partial.new and rest.new == 40 - partial.new
    assert openai_server.requests_total - before == rest.requests_sent == 20 - partial.new // 2


def test_a_routing_refusal_stops_the_run_with_a_policy_error(openai_server, store, monkeypatch):
    monkeypatch.setenv("OPENROUTER_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENROUTER_API_KEY", PLANTED)
    openai_server.require_distillable = True
    teacher = load_teacher(
        "openrouter:meta-llama/llama-3.3-70b-instruct", enforce_distillable=False, authorization="deal #1"
    )
    with pytest.raises(PolicyError):
        sample(store, teacher, prompts(8), n=2, run_id="r1")
    assert store.get_failures("r1") == [] and openai_server.requests_total <= teacher.concurrency


def test_the_api_key_never_reaches_store_events_or_errors(openai_server, store, monkeypatch):
    monkeypatch.setenv("OPENROUTER_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENROUTER_API_KEY", PLANTED)
    openai_server.api_key = PLANTED
    openai_server.echo_auth = True
    openai_server.prompt_scripts["q1"] = ["400"]  # an error message that echoes the Authorization header
    teacher = load_teacher("openrouter:meta-llama/llama-3.3-70b-instruct", **FAST)
    events: list[Event] = []
    result = sample(store, teacher, prompts(3), n=2, run_id="r1", emit=events.append)
    assert len(result.failed) == 1 and "***" in next(iter(result.failed.values()))
    assert openai_server.auth_headers[0] == f"Bearer {PLANTED}"

    openai_server.api_key = "another-key"  # now every request is refused, echoing what it got
    with pytest.raises(Exception) as info:
        sample(store, teacher, prompts(2, "z"), n=2, run_id="r1", emit=events.append)
    for store_event in events:
        store.put_event("r1", store_event.kind, store_event.phase, store_event.message, store_event.data)
    store.close()
    leaks = [PLANTED, PLANTED[-12:]]
    blob = b"".join(p.read_bytes() for p in store.workdir.iterdir() if p.is_file())
    texts = [str(info.value), repr(teacher), json.dumps([e.to_dict() for e in events], default=str)]
    texts += [json.dumps(store.get_failures("r1"))]
    for leak in leaks:
        assert leak.encode() not in blob
        assert all(leak not in text for text in texts)


def test_sync_sample_works_inside_a_running_event_loop(openai_server, store):
    teacher = load_teacher(openai_server.spec())

    async def notebook_cell() -> SamplingResult:
        return sample(store, teacher, prompts(3), n=2, run_id="r1")  # a Jupyter cell calls it like this

    result = asyncio.run(notebook_cell())
    assert result.new == 6 and openai_server.requests_total == 3


def test_async_sample_bounds_concurrency_across_prompts(openai_server, store):
    openai_server.latency = 0.25
    teacher = load_teacher(openai_server.spec(), concurrency=4)

    async def go() -> SamplingResult:
        try:
            return await asample(store, teacher, prompts(16), n=4, run_id="r1")
        finally:
            await teacher.aclose()

    started = time.monotonic()
    result = asyncio.run(go())
    elapsed = time.monotonic() - started
    assert result.new == 64 and openai_server.max_in_flight == 4 and openai_server.requests_total == 16
    assert elapsed < 16 * 0.25 * 0.6  # far better than one at a time (4 s); ideal 1 s


def test_local_teacher_through_sampling_records_the_licence(store):
    teacher = load_teacher("local:smollm2-135m", n_threads=1)
    ps = load_dataset([{"prompt": "Say hi."}])
    result = sample(store, teacher, ps, n=2, run_id="r1", max_tokens=8, seed=1)
    stored = result.samples[ps[0].hash]
    assert len(stored) == 2 and result.requests_sent == 2 and result.cost == 0.0
    prov = stored[0].provenance
    assert prov["licence"] == "apache-2.0" and prov["provider"] == "local" and prov["endpoint"].startswith("llama.cpp:")
    assert sample(store, teacher, ps, n=2, run_id="r1", max_tokens=8, seed=1).requests_sent == 0
