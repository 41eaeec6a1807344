"""Judges: verifiers, LLM-judge parsing/repair/failure, caching in the store, real model output."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from jupyter_distill.core.errors import BudgetExceeded, JudgeError
from jupyter_distill.core.events import Event
from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.policy import decide
from jupyter_distill.core.store import PromptRecord, RunStore, SampleRecord
from jupyter_distill.judging.llm_judge import DEFAULT_RUBRIC, LLMJudge, load_judge, parse_judge_output
from jupyter_distill.judging.stage import judge, judgment_key
from jupyter_distill.judging.verifiers import (
    JudgeResult,
    Verifier,
    VerifierJudge,
    callable_id,
    combine,
    exact_match,
    extract_json,
    json_valid,
    regex,
    verifier,
)
from jupyter_distill.teachers import Sample


# ---------------------------------------------------------------------------- helpers
class ScriptedTeacher:
    """A Teacher whose answers are scripted; records every request it gets."""

    provider = "openai-compatible"
    model = "scripted"

    def __init__(self, replies, spec="openai-compatible:http://127.0.0.1:1/v1#scripted", cost=0.001):
        self.replies = list(replies)
        self.spec = spec
        self.decision = decide("openai-compatible", "scripted")
        self.calls: list[dict] = []
        self.cost = cost
        self.closed = 0

    async def sample(self, messages, n=4, temperature=0.8, max_tokens=256, seed=None):
        self.calls.append({"messages": messages, "n": n, "temperature": temperature, "max_tokens": max_tokens})
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, BaseException):
            raise reply
        return [Sample(text=reply, usage={}, cost=self.cost, provenance={"teacher": self.spec})]

    async def aclose(self):
        self.closed += 1


def prompt(i=0, **row):
    return PromptRecord(
        hash=f"p{i}", messages=[{"role": "user", "content": f"question {i}"}], row=row or {"expected": "4"}, position=i
    )


def sample(prompt_hash, index, text):
    return SampleRecord(
        key=f"{prompt_hash}-s{index}",
        prompt_hash=prompt_hash,
        teacher="local:x",
        params={"temperature": 0.8},
        sample_index=index,
        text=text,
    )


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path)
    s.create_run("r", {})
    return s


def setup_run(store, texts_by_prompt, rows=None):
    prompts = [prompt(i, **(rows[i] if rows else {"expected": "4"})) for i in range(len(texts_by_prompt))]
    store.put_prompts("r", prompts)
    samples = {
        p.hash: [sample(p.hash, j, t) for j, t in enumerate(texts)]
        for p, texts in zip(prompts, texts_by_prompt, strict=True)
    }
    store.put_samples([s for group in samples.values() for s in group])
    return prompts, samples


# ---------------------------------------------------------------------------- verifiers
def test_exact_match_normalises_and_accepts_lists():
    check = exact_match()
    assert check({"expected": "Refund"}, "  refund. ") == 1.0
    assert check({"expected": "Refund"}, "refunds") == 0.0
    assert check({"expected": ["yes", "y"]}, "Y") == 1.0
    assert check({"expected": 4}, "4") == 1.0
    strict = exact_match(normalize=False)
    assert strict({"expected": "Refund"}, "refund") == 0.0
    assert strict({"expected": "Refund"}, "Refund") == 1.0
    assert check.id != strict.id


def test_exact_match_missing_field_names_it_and_the_fix():
    with pytest.raises(JudgeError) as info:
        exact_match(field="answer")({"expected": "4", "id": 3}, "4")
    message = str(info.value)
    assert "'answer'" in message and "expected, id" in message and "Fix:" in message


def test_regex_search_and_field_extraction():
    assert regex(r"\d+")({}, "it is 42") == 1.0
    assert regex(r"\d+")({}, "no digits") == 0.0
    answer = regex(r"Answer:\s*(\w+)", field="expected")
    assert answer({"expected": "42"}, "work... Answer: 42") == 1.0
    assert answer({"expected": "42"}, "work... Answer: 41") == 0.0
    assert regex(r"\d+", fullmatch=True)({}, " 42 ") == 1.0
    assert regex(r"\d+", fullmatch=True)({}, "42 apples") == 0.0
    with pytest.raises(JudgeError, match="does not compile"):
        regex("(unclosed")


def test_extract_json_tolerates_fences_and_prose():
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Sure! Here it is: {"a": {"b": [1, 2]}} hope it helps') == {"a": {"b": [1, 2]}}
    assert extract_json("[1, 2]") == [1, 2]
    assert extract_json('{broken {"ok": true}') == {"ok": True}
    with pytest.raises(ValueError):
        extract_json("no json here")
    with pytest.raises(ValueError):
        extract_json('text {"a": 1}', strict=True)
    assert extract_json('```\n{"a": 1}\n```', strict=True) == {"a": 1}


def test_json_valid_python_type_schema_and_partial_credit():
    check = json_valid({"label": str, "priority": int})
    assert check({}, '{"label": "refund", "priority": 2}') == 1.0
    assert check({}, '```json\n{"label": "refund", "priority": 2}\n```') == 1.0
    # label ok, priority missing: parsed but failing checks -> below 0.5, above unparsable
    partial = check({}, '{"label": "refund"}')
    assert 0.0 < partial < 0.5
    assert check({}, '{"label": 3, "priority": "high"}') < partial
    assert check({}, "label: refund") == 0.0
    assert json_valid({"label": str}, partial=False)({}, '{"label": 1}') == 0.0
    assert json_valid()({}, "[1, 2, 3]") == 1.0
    assert json_valid(required=["a"])({}, '{"a": null}') == 1.0
    assert json_valid(required=["a"])({}, '{"b": 1}') < 0.5
    assert json_valid({"x": float})({}, '{"x": 3}') == 1.0  # an int is a number
    assert json_valid({"x": int})({}, '{"x": true}') < 1.0  # a bool is not an int


def test_json_valid_json_schema_form():
    schema = {
        "type": "object",
        "required": ["label"],
        "properties": {
            "label": {"type": "string", "enum": ["refund", "bug"]},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "additionalProperties": False,
    }
    check = json_valid(schema)
    assert check({}, '{"label": "bug", "tags": ["a"]}') == 1.0
    assert check({}, '{"label": "other"}') < 0.5
    assert check({}, '{"label": "bug", "tags": [1]}') < 0.5
    assert check({}, '{"label": "bug", "extra": 1}') < 0.5
    assert json_valid(schema, strict=True)({}, 'ok: {"label": "bug"}') == 0.0


def test_json_valid_rejects_bad_schemas_with_the_field():
    with pytest.raises(JudgeError, match=r"'label'.*set"):
        json_valid({"label": set})
    with pytest.raises(JudgeError, match="unknown type 'text'"):
        json_valid({"type": "object", "properties": {"a": {"type": "text"}}})


def test_combine_weights_and_validation():
    both = combine(json_valid({"label": str}), exact_match(), weights=[1, 3])
    assert both({"expected": '{"label": "x"}'}, '{"label": "x"}') == 1.0
    assert both({"expected": "nope"}, '{"label": "x"}') == pytest.approx(0.25)
    assert "1*json_valid" in both.id and "3*exact_match" in both.id
    assert combine(lambda r, x: True, lambda r, x: 0.0)({}, "") == 0.5
    with pytest.raises(JudgeError, match="2 verifiers but 1 weights"):
        combine(exact_match(), regex("a"), weights=[1])
    with pytest.raises(JudgeError, match="positive sum"):
        combine(exact_match(), weights=[0])
    with pytest.raises(JudgeError, match="at least one"):
        combine()


def test_verifier_scores_bool_clip_and_bad_returns():
    assert verifier(lambda r, x: True)({}, "") == 1.0
    assert verifier(lambda r, x: 7)({}, "") == 1.0
    assert verifier(lambda r, x: -2.5)({}, "") == 0.0
    assert verifier(lambda r, x: 0.25)({}, "") == 0.25
    with pytest.raises(JudgeError, match="returned 'yes'"):
        verifier(lambda r, x: "yes")({}, "")
    with pytest.raises(JudgeError, match="NaN"):
        verifier(lambda r, x: float("nan"))({}, "")


def test_callable_ids_are_stable_and_change_with_code():
    def check_a(row, response):
        return response == "a"

    def check_b(row, response):
        return response == "b"

    assert callable_id(check_a) == callable_id(check_a)
    assert callable_id(check_a) != callable_id(check_b)
    assert "check_a" in callable_id(check_a)
    check_b.id = "my-check-v1"
    assert callable_id(check_b) == "my-check-v1"
    assert verifier(check_a, id="pinned").id == "pinned"

    class Callable:
        def __call__(self, row, response):
            return 1.0

    assert "Callable" in callable_id(Callable())


def test_verifier_judge_records_exceptions_as_failures():
    def boom(row, response):
        raise ZeroDivisionError("division by zero in my check")

    result = asyncio.run(VerifierJudge(boom).score(prompt(), "x"))
    assert result.status == "failed" and result.score is None
    assert "ZeroDivisionError" in result.rationale and "division by zero in my check" in result.rationale
    missing = asyncio.run(VerifierJudge(exact_match(field="gold")).score(prompt(), "4"))
    assert missing.status == "failed" and "'gold'" in missing.rationale


# ---------------------------------------------------------------------------- LLM judge
def test_parse_judge_output_forms():
    assert parse_judge_output('{"score": 7, "rationale": "good"}') == (7.0, "good")
    assert parse_judge_output('```json\n{"Score": "9", "reason": "fine"}\n```') == (9.0, "fine")
    assert parse_judge_output('I think {"score": 3, "rationale": "wrong"} overall') == (3.0, "wrong")
    assert parse_judge_output("Score: 8/10\nRationale: mostly right") == (8.0, "mostly right")
    for bad in ["", "great answer!", '{"score": 11}', '{"score": 0}', '{"score": "high"}', '{"rationale": "x"}']:
        with pytest.raises(ValueError):
            parse_judge_output(bad)


def test_llm_judge_scores_normalised_with_default_rubric():
    teacher = ScriptedTeacher(['{"score": 10, "rationale": "perfect"}'])
    j = LLMJudge(teacher)
    result = asyncio.run(j.score(prompt(expected="4"), "4"))
    assert result == JudgeResult(
        score=1.0, rationale="perfect", raw='{"score": 10, "rationale": "perfect"}', cost=0.001
    )
    call = teacher.calls[0]
    assert call["temperature"] == 0 and call["n"] == 1
    system, user = call["messages"]
    assert DEFAULT_RUBRIC.splitlines()[0] in system["content"] and '"score"' in system["content"]
    assert "question 0" in user["content"] and '"expected": "4"' in user["content"]
    assert user["content"].rstrip().endswith("only the JSON object.")
    assert asyncio.run(LLMJudge(ScriptedTeacher(['{"score": 1}'])).score(prompt(), "x")).score == 0.0
    assert asyncio.run(LLMJudge(ScriptedTeacher(['{"score": 4}'])).score(prompt(), "x")).score == pytest.approx(1 / 3)


def test_llm_judge_custom_rubric_changes_identity_and_prompt():
    teacher = ScriptedTeacher(['{"score": 5, "rationale": "ok"}'])
    default, custom = LLMJudge(teacher), LLMJudge(teacher, rubric="Only valid JSON tickets score above 5.")
    assert default.id != custom.id and default.id.startswith(f"llm:{teacher.spec}#")
    asyncio.run(custom.score(prompt(), "x"))
    assert "Only valid JSON tickets" in teacher.calls[-1]["messages"][0]["content"]
    with pytest.raises(JudgeError, match="rubric is empty"):
        LLMJudge(teacher, rubric="  ")


def test_llm_judge_repairs_once_then_succeeds():
    teacher = ScriptedTeacher(["This answer is great.", '{"score": 8, "rationale": "right"}'])
    result = asyncio.run(LLMJudge(teacher).score(prompt(), "4"))
    assert result.status == "ok" and result.score == pytest.approx(7 / 9)
    assert len(teacher.calls) == 2
    repair = teacher.calls[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": "This answer is great."}
    assert "could not be read" in repair[-1]["content"]
    assert json.loads(result.raw)["attempts"] == ["This answer is great.", '{"score": 8, "rationale": "right"}']
    assert result.cost == pytest.approx(0.002)


def test_llm_judge_records_failure_after_one_repair_never_a_default():
    teacher = ScriptedTeacher(["great!", "still no json"])
    result = asyncio.run(LLMJudge(teacher).score(prompt(), "4"))
    assert result.status == "failed" and result.score is None
    assert len(teacher.calls) == 2  # exactly one repair
    assert "unparsable after one repair" in result.rationale
    assert json.loads(result.raw)["attempts"] == ["great!", "still no json"]


def test_llm_judge_request_errors_fail_but_budget_stops():
    failing = asyncio.run(LLMJudge(ScriptedTeacher([ConnectionError("refused")])).score(prompt(), "x"))
    assert failing.status == "failed" and "ConnectionError: refused" in failing.rationale
    with pytest.raises(BudgetExceeded):
        asyncio.run(LLMJudge(ScriptedTeacher([BudgetExceeded("over budget")])).score(prompt(), "x"))


def test_load_judge_dispatch():
    teacher = ScriptedTeacher(['{"score": 5}'])
    assert isinstance(load_judge(None, teacher=teacher), LLMJudge)
    assert isinstance(load_judge(teacher), LLMJudge)
    v = load_judge(exact_match())
    assert isinstance(v, VerifierJudge) and v.id == exact_match().id
    assert isinstance(load_judge(lambda r, x: True), VerifierJudge)
    existing = VerifierJudge(regex("a"))
    assert load_judge(existing) is existing
    local = load_judge("local:smollm2-135m", rubric="be strict")
    assert isinstance(local, LLMJudge) and local.id.startswith("llm:local:smollm2-135m#")
    with pytest.raises(JudgeError, match="no teacher was given"):
        load_judge(None)
    with pytest.raises(JudgeError, match="not a judge"):
        load_judge(42)
    with pytest.raises(JudgeError, match="empty string"):
        load_judge("  ")


# ---------------------------------------------------------------------------- the judging stage
def test_judge_stage_stores_keys_by_identity_and_emits_progress(store):
    prompts, samples = setup_run(store, [["4", "5"], ["four", "4."]])
    events: list[Event] = []
    check = exact_match()
    results = judge(store, check, prompts, samples, run_id="r", emit=events.append)
    assert {k: r.score for k, r in results.items()} == {"p0-s0": 1.0, "p0-s1": 0.0, "p1-s0": 0.0, "p1-s1": 1.0}
    key = content_hash("judgment", "p0-s0", check.id)
    assert key == judgment_key("p0-s0", check.id) and results["p0-s0"].key == key
    assert store.get_judgments([key])[key].judge == check.id
    kinds = [e.kind for e in events]
    assert kinds[0] == "phase_start" and kinds[-1] == "phase_end" and {e.phase for e in events} == {"judging"}
    assert events[-2].current == 4 and events[-2].total == 4


def test_judge_stage_caches_ok_and_retries_failed(store):
    prompts, samples = setup_run(store, [["a", "b"]])
    teacher = ScriptedTeacher(['{"score": 9, "rationale": "ok"}', "garbage", "garbage", '{"score": 2}'])
    llm = LLMJudge(teacher)
    first = judge(store, llm, prompts, samples, run_id="r", concurrency=1)
    assert first["p0-s0"].status == "ok" and first["p0-s1"].status == "failed" and first["p0-s1"].score is None
    assert len(teacher.calls) == 3
    failures = store.get_failures("r", stage="judging")
    assert [f["key"] for f in failures] == [first["p0-s1"].key]

    again = judge(store, llm, prompts, samples, run_id="r")
    assert len(teacher.calls) == 4  # only the failed one asked again, and it parsed
    assert again["p0-s1"].status == "ok" and again["p0-s1"].score == pytest.approx(1 / 9)
    assert again["p0-s0"].score == first["p0-s0"].score
    assert store.get_failures("r", stage="judging") == []
    assert teacher.closed >= 2  # the per-call loop's connections are released

    judge(store, llm, prompts, samples, run_id="r")
    assert len(teacher.calls) == 4  # everything cached now


def test_judge_stage_verifier_exception_is_a_failed_judgment_not_a_crash(store):
    prompts, samples = setup_run(store, [["1", "x"]])
    events: list[Event] = []
    results = judge(store, lambda row, response: 1 / int(response), prompts, samples, run_id="r", emit=events.append)
    assert results["p0-s0"].score == 1.0
    assert results["p0-s1"].status == "failed" and "ValueError" in results["p0-s1"].rationale
    warnings = [e for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and "1 of 2 judgments failed" in warnings[0].message


def test_judge_stage_stop_and_concurrency_validation(store):
    prompts, samples = setup_run(store, [["4", "4"]])
    stop = threading.Event()
    stop.set()
    events: list[Event] = []
    assert judge(store, exact_match(), prompts, samples, run_id="r", stop=stop, emit=events.append) == {}
    assert events[-1].message == "stopped"
    with pytest.raises(JudgeError, match="concurrency"):
        judge(store, exact_match(), prompts, samples, run_id="r", concurrency=0)


def test_judge_stage_runs_inside_a_running_event_loop(store):
    """In Jupyter a loop is already running in the kernel's thread: the stage still works."""
    prompts, samples = setup_run(store, [["4"]])

    async def inside():
        return judge(store, exact_match(), prompts, samples, run_id="r")

    assert asyncio.run(inside())["p0-s0"].score == 1.0


def test_judge_stage_budget_error_propagates(store):
    prompts, samples = setup_run(store, [["a"]])
    with pytest.raises(BudgetExceeded):
        judge(store, LLMJudge(ScriptedTeacher([BudgetExceeded("over")])), prompts, samples, run_id="r")


# ---------------------------------------------------------------------------- real model output
@pytest.fixture(scope="module")
def local_teacher():
    from jupyter_distill.teachers import load_teacher

    try:
        return load_teacher("local:smollm2-135m")
    except Exception as exc:  # the package ships with `make install`; say so when it is missing
        pytest.skip(f"local SmolLM2 GGUF unavailable: {exc}")


class CountingTeacher:
    """Wraps a real teacher, keeping the texts it produced."""

    def __init__(self, inner):
        self.inner, self.spec, self.texts = inner, inner.spec, []

    async def sample(self, messages, **kwargs):
        out = await self.inner.sample(messages, **kwargs)
        self.texts.extend(s.text for s in out)
        return out

    async def aclose(self):
        await self.inner.aclose()


@pytest.mark.slow  # ~3 s alone; far longer when the 2 cores are shared
def test_llm_judge_on_real_local_model_output(local_teacher):
    """SmolLM2-135M as judge: whatever it writes, the verdict is a parsed score or a recorded failure."""
    counting = CountingTeacher(local_teacher)
    j = LLMJudge(counting, max_tokens=48)
    p = PromptRecord("q", [{"role": "user", "content": "What is 2+2? Answer with a number."}], {"expected": "4"})
    for response in ["The answer is 5."]:
        before = len(counting.texts)
        result = asyncio.run(j.score(p, response))
        produced = counting.texts[before:]
        assert produced and all(isinstance(t, str) for t in produced)
        if result.status == "ok":
            raw_score, _ = parse_judge_output(produced[-1])
            assert result.score == pytest.approx((raw_score - 1) / 9) and 0.0 <= result.score <= 1.0
            assert len(produced) in (1, 2)
        else:
            assert result.score is None and len(produced) == 2  # one repair, then a recorded failure
            assert json.loads(result.raw)["attempts"] == produced
            for text in produced:
                with pytest.raises(ValueError):
                    parse_judge_output(text)


@pytest.mark.slow
def test_verifiers_on_real_local_model_output(local_teacher):
    """Real generations through json_valid agree with an independent parse of the same text."""
    messages = [
        {
            "role": "user",
            "content": 'Reply with only a JSON object with a string field "city". Which city is the capital of France?',
        }
    ]
    samples = asyncio.run(local_teacher.sample(messages, n=2, temperature=0.8, max_tokens=32, seed=1))
    check = json_valid({"city": str})
    for s in samples:
        try:
            value = extract_json(s.text)
        except ValueError:
            value = None
        expected = 1.0 if isinstance(value, dict) and isinstance(value.get("city"), str) else None
        score = check({}, s.text)
        if expected is not None:
            assert score == 1.0
        else:
            assert score < 0.5, s.text
        assert isinstance(Verifier(check, "x")({}, s.text), float)


# ---------------------------------------------------------------------------- against the OpenAI-compatible server
def _graded_text(body):
    """The response under grading, as the judge's user message carries it."""
    user = next(m for m in body["messages"] if m["role"] == "user")["content"]
    return user.split("## Response to grade\n", 1)[1].split("\n\nGrade the response.", 1)[0]


def test_rubric_judge_over_http(store, openai_server):
    """The LLM judge runs through the real HTTP teacher: concurrent, temperature 0, rubric sent."""

    openai_server.latency = 0.05

    def responder(body, index):
        return json.dumps({"score": 10 if _graded_text(body) == "4" else 2, "rationale": "checked against 4"})

    openai_server.responder = responder
    prompts, samples = setup_run(store, [["4", "5"], ["4", "22"], ["five", "4"]])
    llm = load_judge(openai_server.spec(), rubric="The answer must equal the reference exactly.")
    assert isinstance(llm, LLMJudge) and llm.id.startswith(f"llm:{openai_server.spec()}#")
    results = judge(store, llm, prompts, samples, run_id="r", concurrency=4)
    scores = {k: r.score for k, r in results.items()}
    assert scores == {
        "p0-s0": 1.0,
        "p0-s1": pytest.approx(1 / 9),
        "p1-s0": 1.0,
        "p1-s1": pytest.approx(1 / 9),
        "p2-s0": pytest.approx(1 / 9),
        "p2-s1": 1.0,
    }
    assert all(r.rationale == "checked against 4" and json.loads(r.raw)["score"] in (2, 10) for r in results.values())
    assert openai_server.requests_total == 6 and openai_server.max_in_flight > 1
    body = openai_server.bodies[0]
    assert body["temperature"] == 0 and body.get("n", 1) == 1
    assert "The answer must equal the reference exactly." in body["messages"][0]["content"]
    stored = store.get_judgments([r.key for r in results.values()])
    assert {r.sample_key: r.score for r in stored.values()} == scores

    judge(store, llm, prompts, samples, run_id="r")
    assert openai_server.requests_total == 6  # cached by (sample, judge identity)
    other = load_judge(openai_server.spec(), rubric="A different rubric.")
    judge(store, other, prompts, samples, run_id="r")
    assert openai_server.requests_total == 12  # another judge identity: judged again, stored apart


def test_rubric_judge_over_http_repair_then_recorded_failure(store, openai_server):
    def responder(body, index):
        repairing = any(m["role"] == "assistant" for m in body["messages"])
        text = _graded_text(body)
        if text == "fixable":
            return '{"score": 6, "rationale": "fine"}' if repairing else "I would say six out of ten"
        return "no idea, sorry"

    openai_server.responder = responder
    prompts, samples = setup_run(store, [["fixable", "hopeless"]])
    results = judge(store, load_judge(openai_server.spec()), prompts, samples, run_id="r", concurrency=1)
    assert results["p0-s0"].status == "ok" and results["p0-s0"].score == pytest.approx(5 / 9)
    failed = results["p0-s1"]
    assert failed.status == "failed" and failed.score is None
    assert json.loads(failed.raw)["attempts"] == ["no idea, sorry", "no idea, sorry"]
    assert openai_server.requests_total == 4  # one repair each, no more
    assert [f["key"] for f in store.get_failures("r", "judging")] == [failed.key]


def test_callable_ids_include_closed_over_values():
    """Factories share source code; their verdicts must not share cached judgments."""
    import functools

    def make_check(threshold):
        def check(row, response):
            return len(response) > threshold

        return check

    assert callable_id(make_check(3)) == callable_id(make_check(3))
    assert callable_id(make_check(3)) != callable_id(make_check(9))

    def with_default(row, response, limit=3):
        return len(response) > limit

    base = callable_id(with_default)
    assert callable_id(functools.partial(with_default, limit=4)) != callable_id(
        functools.partial(with_default, limit=5)
    )
    assert callable_id(functools.partial(with_default, limit=4)).startswith(base)

    class Threshold:
        def __init__(self, t):
            self.t = t

        def __call__(self, row, response):
            return len(response) > self.t

    assert callable_id(Threshold(1)) != callable_id(Threshold(2))

    def recursive(row, response):
        return recursive(row, response[1:]) if response else 1.0

    assert callable_id(recursive) == callable_id(recursive)  # a self-reference does not recurse forever


def test_judge_stage_accepts_a_user_made_judge_object(store):
    class LengthJudge:
        id = "length-judge-v1"

        async def score(self, prompt, response):
            if response == "crash":
                raise RuntimeError("cannot grade this")
            return JudgeResult(score=min(1.0, len(response) / 10), rationale="by length")

    prompts, samples = setup_run(store, [["12345", "crash"]])
    the_judge = LengthJudge()
    assert load_judge(the_judge) is the_judge
    results = judge(store, the_judge, prompts, samples, run_id="r")
    assert results["p0-s0"].score == 0.5 and results["p0-s0"].judge == "length-judge-v1"
    assert results["p0-s1"].status == "failed" and "cannot grade this" in results["p0-s1"].rationale
