"""Teachers against a real OpenAI-compatible server on 127.0.0.1 (tests/openai_server.py), and local models."""

from __future__ import annotations

import asyncio
import json

import pytest

from jupyter_distill.core.errors import PolicyError, TeacherError
from jupyter_distill.core.policy import TERMS_VERSION
from jupyter_distill.teachers import FatalTeacherError, Sample, Teacher, load_teacher

PLANTED = "sk-" + "test-PLANTED-123456789"  # a fake key, assembled so scanners do not flag the file
FAST = {"backoff_base": 0.01, "backoff_max": 0.05}


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def run(coro):
    return asyncio.run(coro)


async def sample_and_close(teacher, *args, **kwargs) -> list[Sample]:
    try:
        return await teacher.sample(*args, **kwargs)
    finally:
        await teacher.aclose()


# ---------------------------------------------------------------------- specs, keys, policy


def test_unknown_scheme_lists_known_schemes():
    with pytest.raises(TeacherError) as info:
        load_teacher("ollama:llama3")
    message = str(info.value)
    assert "'ollama'" in message
    for scheme in ("local:", "gguf:", "hf:", "openrouter:", "openai-compatible:"):
        assert scheme in message


def test_missing_key_names_the_env_var(monkeypatch):
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    with pytest.raises(TeacherError) as info:
        load_teacher("openrouter:meta-llama/llama-3.3-70b-instruct")
    assert "OPENROUTER_API_KEY" in str(info.value) and info.value.field == "api_key"


@pytest.mark.parametrize(
    ("spec", "env"),
    [
        ("openai:gpt-4o-mini", "OPENAI_API_KEY"),
        ("anthropic:claude-sonnet-4", "ANTHROPIC_API_KEY"),
        ("gemini:gemini-2.5-flash", "GEMINI_API_KEY"),
        ("openrouter:openai/gpt-4o-mini", "OPENROUTER_API_KEY"),
    ],
)
def test_closed_apis_are_refused_by_default(monkeypatch, spec, env):
    monkeypatch.setenv(env, PLANTED)
    with pytest.raises(PolicyError) as info:
        load_teacher(spec)
    assert "authorization=" in str(info.value) and PLANTED not in str(info.value)
    teacher = load_teacher(spec, authorization="Enterprise agreement #42")
    assert teacher.decision.allowed and teacher.decision.authorization == "Enterprise agreement #42"
    assert PLANTED not in repr(teacher) and PLANTED not in teacher.spec


@pytest.mark.parametrize(
    "spec",
    [
        "openai:gpt-4o-mini",
        "anthropic:claude-3.5-haiku",
        "gemini:gemini-2.5-flash",
        "openrouter:meta-llama/llama-3.3-70b-instruct",
        "openrouter:google/gemma-3-27b-it",
        "openai-compatible:http://127.0.0.1:9/v1#qwen/qwen3-235b-a22b",
        "openai:not-in-the-map",
    ],
)
def test_the_teacher_and_the_estimate_price_a_spec_the_same_way(spec):
    """One lookup (models.teacher_price / find_teacher_model): an estimate prices what a run counts."""
    from jupyter_distill.core.models import teacher_price

    teacher = load_teacher(spec, api_key=PLANTED, policy="off", check_models=False)
    assert teacher.prices == teacher_price(spec)
    if spec.endswith("not-in-the-map"):
        assert teacher_price(spec) is None
    else:
        assert teacher_price(spec) is not None
    assert teacher_price("local:smollm2-135m") is None and teacher_price("") is None


def test_closed_api_default_endpoints_and_env_overrides(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", PLANTED)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    teacher = load_teacher("anthropic:claude-sonnet-4", authorization="ok")
    assert teacher.endpoint == "https://api.anthropic.com/v1/chat/completions"
    monkeypatch.setenv("GEMINI_API_KEY", PLANTED)
    monkeypatch.setenv("GEMINI_BASE_URL", "http://127.0.0.1:9/gem")
    assert load_teacher("gemini:gemini-2.5-flash", policy="warn").endpoint == "http://127.0.0.1:9/gem/chat/completions"


def test_openai_compatible_spec_strips_credentials(openai_server):
    url = openai_server.url.replace("http://", f"http://user:{PLANTED}@")
    teacher = load_teacher(f"openai-compatible:{url}#test-model")
    assert PLANTED not in teacher.spec and PLANTED not in teacher.endpoint
    assert teacher.spec == openai_server.spec()
    with pytest.raises(TeacherError) as info:
        load_teacher(f"openai-compatible:{openai_server.url}?api_key={PLANTED}#m")
    assert PLANTED not in str(info.value)
    with pytest.raises(TeacherError):
        load_teacher(f"openai-compatible:{openai_server.url}")  # no '#model'


def test_a_teacher_object_is_passed_through_and_checked():
    class Custom:
        spec = "custom:x"

    with pytest.raises(TeacherError) as info:
        load_teacher(Custom())  # type: ignore[arg-type]
    assert "decision" in str(info.value)


# ---------------------------------------------------------------------- HTTP behaviour


def test_samples_carry_usage_cost_and_provenance(openai_server):
    teacher = load_teacher(openai_server.spec("meta-llama/llama-3.3-70b-instruct"))
    assert isinstance(teacher, Teacher)
    samples = run(sample_and_close(teacher, msgs("hello"), n=3, temperature=0.5, max_tokens=32, seed=11))
    assert [s.text for s in samples] == [openai_server.reply("hello", i, 11) for i in range(3)]
    assert openai_server.requests_total == 1 and openai_server.bodies[0]["n"] == 3
    usage = openai_server_usage = samples[0].usage
    assert usage["prompt_tokens"] == 2 and "estimated" not in openai_server_usage
    assert sum(s.usage["completion_tokens"] for s in samples) == 3 * 4  # 4 words per default reply
    expected_cost = (2 * 0.13 + 12 * 0.40) / 1e6  # TEACHER_MODEL_MAP prices of the Llama 3.3 70B
    assert sum(s.cost for s in samples) == pytest.approx(expected_cost)
    prov = samples[1].provenance
    assert prov["provider"] == "openai-compatible" and prov["endpoint"] == openai_server.url + "/chat/completions"
    assert prov["params"] == {"temperature": 0.5, "max_tokens": 32, "seed": 11, "n_per_request": 3, "choice_index": 1}
    assert prov["policy"]["terms_version"] == TERMS_VERSION and prov["licence"] == "Llama 3.3 Community License"
    assert prov["time"].endswith("Z") and prov["usage_estimated"] is False
    assert teacher.spent == pytest.approx(expected_cost)


def test_missing_usage_is_estimated_and_flagged(openai_server):
    openai_server.usage = False
    teacher = load_teacher(openai_server.spec("meta-llama/llama-3.3-70b-instruct"))
    (sample,) = run(sample_and_close(teacher, msgs("hello there"), n=1))
    assert sample.usage["estimated"] is True and sample.provenance["usage_estimated"] is True
    assert sample.usage["completion_tokens"] > 0 and sample.cost > 0


def test_reported_usage_cost_wins(openai_server):
    openai_server.usage_cost = 0.01
    teacher = load_teacher(openai_server.spec())
    samples = run(sample_and_close(teacher, msgs("x"), n=2))
    assert sum(s.cost for s in samples) == pytest.approx(0.01)
    assert samples[0].provenance["price_source"] == "response usage.cost"


def test_concurrency_is_bounded(openai_server):
    openai_server.latency = 0.3
    teacher = load_teacher(openai_server.spec(), concurrency=4)

    async def many():
        try:
            return await asyncio.gather(*(teacher.sample(msgs(f"p{i}"), n=1) for i in range(16)))
        finally:
            await teacher.aclose()

    results = run(many())
    assert len(results) == 16 and openai_server.requests_total == 16
    assert openai_server.max_in_flight == 4  # parallel, and never more than asked


def test_connections_are_reused_and_closed_with_the_loop(openai_server, caplog):
    """A bare ``asyncio.run(teacher.sample(...))`` per cell: keep-alive inside a loop, no leak warnings after."""
    import gc
    import logging

    teacher = load_teacher(openai_server.spec(), concurrency=4)

    async def three(teacher: Teacher) -> None:
        for i in range(3):
            await teacher.sample(msgs(f"p{i}"), n=1)

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        for _ in range(2):
            asyncio.run(three(teacher))  # no aclose(): the loop's shutdown closes this loop's connections
        del teacher
        gc.collect()
    assert openai_server.requests_total == 6
    assert openai_server.connections_opened == 2  # one keep-alive connection per loop, not per request
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]


def test_429_honours_retry_after(openai_server):
    openai_server.script = ["429", "429"]
    openai_server.retry_after = "0.6"
    teacher = load_teacher(openai_server.spec(), **FAST)
    (sample,) = run(sample_and_close(teacher, msgs("q"), n=1))
    arrivals = openai_server.arrivals
    assert openai_server.requests_total == 3 and sample.provenance["attempts"] == 3
    assert arrivals[1] - arrivals[0] >= 0.6 and arrivals[2] - arrivals[1] >= 0.6


def test_retries_through_500_timeout_malformed_and_dropped_connection(openai_server):
    openai_server.script = ["500", "timeout", "malformed", "drop", "503"]
    openai_server.timeout_sleep = 2.0
    teacher = load_teacher(openai_server.spec(), timeout=0.4, **FAST)
    (sample,) = run(sample_and_close(teacher, msgs("q"), n=1, seed=3))
    assert sample.text == openai_server.reply("q", 0, 3)
    assert openai_server.requests_total == 6 and sample.provenance["attempts"] == 6


def test_retries_exhausted_is_a_teacher_error(openai_server):
    openai_server.script = ["500"] * 3
    teacher = load_teacher(openai_server.spec(), max_retries=2, **FAST)
    with pytest.raises(TeacherError) as info:
        run(sample_and_close(teacher, msgs("q"), n=1))
    assert not isinstance(info.value, FatalTeacherError)
    assert "3 attempts" in str(info.value) and "HTTP 500" in str(info.value)


def test_falls_back_to_one_request_per_candidate_when_n_is_ignored(openai_server):
    openai_server.support_n = False
    teacher = load_teacher(openai_server.spec())
    samples = run(sample_and_close(teacher, msgs("q"), n=3, seed=5))
    assert len({s.text for s in samples}) == 3 and openai_server.requests_total == 3
    assert teacher.supports_n is False
    assert [s.text for s in samples] == [openai_server.reply("q", 0, 5 + i) for i in range(3)]
    run(sample_and_close(teacher, msgs("r"), n=3))
    assert openai_server.requests_total == 6 and all("n" not in b for b in openai_server.bodies[3:])


def test_falls_back_when_n_is_rejected(openai_server):
    openai_server.reject_n = True
    teacher = load_teacher(openai_server.spec())
    samples = run(sample_and_close(teacher, msgs("q"), n=2, seed=1))
    assert len(samples) == 2 and teacher.supports_n is False
    assert openai_server.requests_total == 3 and [b.get("n") for b in openai_server.bodies] == [2, None, None]


def test_budget_stops_before_it_would_be_exceeded(openai_server):
    # 1000 USD per M tokens: a request of 1 prompt char + 10 tokens is at most ~0.018 USD worst case.
    teacher = load_teacher(openai_server.spec(), max_cost=0.05, input_usd_per_m=1000.0, output_usd_per_m=1000.0, **FAST)

    async def until_refused():
        try:
            for i in range(10):
                await teacher.sample(msgs(str(i)), n=1, max_tokens=10)
        finally:
            await teacher.aclose()

    from jupyter_distill.core.errors import BudgetExceeded

    with pytest.raises(BudgetExceeded) as info:
        run(until_refused())
    assert "max_cost=0.05" in str(info.value) and info.value.field == "max_cost"
    assert 0 < teacher.spent <= 0.05 and openai_server.requests_total >= 2


def test_auth_failure_is_fatal_and_never_shows_the_key(openai_server):
    openai_server.api_key = "the-right-key"
    openai_server.echo_auth = True
    teacher = load_teacher(openai_server.spec(), api_key=PLANTED)
    with pytest.raises(FatalTeacherError) as info:
        run(sample_and_close(teacher, msgs("q"), n=1))
    assert openai_server.auth_headers == [f"Bearer {PLANTED}"]  # the key was sent, in the header only
    assert "OPENAI_COMPATIBLE_API_KEY" in str(info.value) and "401" in str(info.value)
    assert PLANTED not in str(info.value) and PLANTED[-12:] not in str(info.value)
    assert PLANTED not in json.dumps(openai_server.bodies)


# ---------------------------------------------------------------------- OpenRouter routing


def openrouter(monkeypatch, server, model="meta-llama/llama-3.3-70b-instruct", **kwargs) -> Teacher:
    monkeypatch.setenv("OPENROUTER_BASE_URL", server.url)
    monkeypatch.setenv("OPENROUTER_API_KEY", PLANTED)
    return load_teacher(f"openrouter:{model}", **FAST, **kwargs)


def test_openrouter_sends_the_distillable_flag(openai_server, monkeypatch):
    openai_server.require_distillable = True
    openai_server.api_key = PLANTED
    teacher = openrouter(monkeypatch, openai_server)
    samples = run(sample_and_close(teacher, msgs("q"), n=2))
    assert len(samples) == 2
    assert openai_server.bodies[0]["provider"] == {"enforce_distillable_text": True}
    assert samples[0].provenance["enforce_distillable_text"] is True
    assert samples[0].provenance["policy"]["verdict"] == "routed-distillable"


def test_openrouter_opt_out_needs_authorization_and_a_refusal_is_a_policy_error(openai_server, monkeypatch):
    with pytest.raises(PolicyError):
        openrouter(monkeypatch, openai_server, enforce_distillable=False)
    openai_server.require_distillable = True
    teacher = openrouter(monkeypatch, openai_server, enforce_distillable=False, authorization="licence deal 7")
    with pytest.raises(PolicyError) as info:
        run(sample_and_close(teacher, msgs("q"), n=1))
    assert "provider" not in openai_server.bodies[0]
    message = str(info.value)
    assert "distillable" in message and "Fix:" in message and openai_server.requests_total == 1


def test_openrouter_routing_refusal_with_the_flag_is_a_policy_error(openai_server, monkeypatch):
    openai_server.refuse_distillable = True
    teacher = openrouter(monkeypatch, openai_server)
    with pytest.raises(PolicyError) as info:
        run(sample_and_close(teacher, msgs("q"), n=1))
    assert "refused" in str(info.value) and PLANTED not in str(info.value)


def test_openrouter_models_list_marks_a_model_not_distillable(openai_server, monkeypatch):
    teacher = openrouter(monkeypatch, openai_server, model="qwen/qwen3-235b-a22b")  # the map says allowed

    async def several_prompts_at_once():
        try:
            return await asyncio.gather(*(teacher.sample(msgs(f"q{i}"), n=1) for i in range(5)))
        finally:
            await teacher.aclose()

    with pytest.raises(PolicyError) as info:
        run(several_prompts_at_once())
    assert "is_trainable_text" in str(info.value)
    assert openai_server.requests_total == 0  # refused before any paid request


# ---------------------------------------------------------------------- local teachers


def test_local_gguf_teacher_samples_reproducibly_with_licence():
    # one thread: on a shared 2-core machine llama.cpp's spinning threads make 2 several times slower
    teacher = load_teacher("local:smollm2-135m", n_threads=1)
    samples = run(teacher.sample(msgs("Name a colour."), n=2, temperature=0.8, max_tokens=16, seed=7))
    assert len(samples) == 2 and all(s.text.strip() for s in samples)
    assert all(0 < s.usage["completion_tokens"] <= 16 for s in samples) and samples[0].cost == 0.0
    prov = samples[1].provenance
    assert prov["licence"] == "apache-2.0" and prov["policy"]["verdict"] == "allowed"
    assert prov["params"]["seed"] == 8 and prov["model_sha256"] and len(prov["model_sha256"]) == 64
    (again,) = run(teacher.sample(msgs("Name a colour."), n=1, temperature=0.8, max_tokens=16, seed=8))
    assert again.text == samples[1].text  # candidate i is reproducible on its own


def test_gguf_teacher_missing_file(tmp_path):
    with pytest.raises(TeacherError) as info:
        load_teacher(f"gguf:{tmp_path / 'nope.gguf'}")
    assert "nope.gguf" in str(info.value)


def _tiny_hf_model(folder):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(62)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, eos_token_id=1, bos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")


def test_hf_teacher_on_a_tiny_model(tmp_path):
    _tiny_hf_model(tmp_path)
    teacher = load_teacher(f"hf:{tmp_path}", device="cpu")
    assert teacher.decision.licence == "mit"
    samples = run(teacher.sample(msgs("w1 w2 w3"), n=2, temperature=1.0, max_tokens=6, seed=1))
    assert len(samples) == 2 and all(0 < s.usage["completion_tokens"] <= 6 for s in samples)
    (again,) = run(teacher.sample(msgs("w1 w2 w3"), n=1, temperature=1.0, max_tokens=6, seed=2))
    assert again.text == samples[1].text
