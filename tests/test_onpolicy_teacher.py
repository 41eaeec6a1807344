"""A local GGUF teacher scores the student's tokens (llama.cpp), tokenizers are compared, and the
pre-flight check refuses ``loss: onpolicy`` before any request where the teacher cannot score."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch
from tiny_models import build_tiny_llama, build_tiny_qwen, smol_hf_folder

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.errors import ConfigError
from jupyter_distill.core.tokenizer_id import TokenizerFingerprint, mismatch
from jupyter_distill.pipeline.preflight import check_loss
from jupyter_distill.teachers import load_teacher
from jupyter_distill.teachers.base import scoring_refusal
from jupyter_distill.train.teacher_logprobs import TeacherLogprobs, student_fingerprint

MESSAGES = [{"role": "user", "content": "What is 2+2? Answer with one word."}]


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("local:smollm2-135m", n_threads=1)


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smol_hf_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def test_local_teacher_scores_match_the_same_weights_in_float32(teacher, hf) -> None:
    """The GGUF (Q4_1) teacher's log-probs of given tokens agree with its own dequantized weights
    run by transformers in float32, up to the quantization of its activations."""
    model, tok = hf
    prompt = tok(
        tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True), add_special_tokens=False
    )["input_ids"]
    completions = [
        tok("Four.", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")],
        tok("The answer is 4, of course", add_special_tokens=False)["input_ids"],
        tok("Paris", add_special_tokens=False)["input_ids"],
    ]
    scored = asyncio.run(teacher.token_logprobs(prompt, completions))
    assert scored.cost == 0.0 and scored.prompt_tokens == len(prompt) + sum(map(len, completions))
    diffs = []
    for ids, got in zip(completions, scored.logprobs, strict=True):
        assert len(got) == len(ids) and all(v <= 0.0 and math.isfinite(v) for v in got)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + ids])).logits[0].double(), dim=-1)
        want = [logp[len(prompt) + j - 1, t].item() for j, t in enumerate(ids)]
        diffs += [abs(a - b) for a, b in zip(got, want, strict=True)]
    assert max(diffs) < 0.4 and sum(diffs) / len(diffs) < 0.1, diffs
    # a right answer is likelier than a wrong one under the teacher
    assert sum(scored.logprobs[0]) / len(completions[0]) > sum(scored.logprobs[2]) / len(completions[2])
    # deterministic, and a completion scored alone gets the numbers it got in the shared batch
    again = asyncio.run(teacher.token_logprobs(prompt, completions))
    assert again.logprobs == scored.logprobs
    alone = asyncio.run(teacher.token_logprobs(prompt, completions[1:2]))
    assert alone.logprobs[0] == scored.logprobs[1]


def test_scores_are_cached_counted_and_carried_through_state(teacher) -> None:
    prompt, ids = [1, 9690, 198], [[504, 3060], [504, 3060], [1024]]
    scores = TeacherLogprobs(teacher)
    first = scores.score([(prompt, i) for i in ids])
    assert scores.calls == 1 and scores.hits == 0 and scores.tokens == 3 and scores.cost == 0.0
    assert first[0] == first[1]
    assert scores.score([(prompt, ids[2])]) == [first[2]] and scores.calls == 1 and scores.hits == 1
    restored = TeacherLogprobs(teacher)
    restored.load_state_dict(scores.state_dict())
    assert restored.score([(prompt, ids[0])]) == [first[0]] and restored.calls == 1


def test_fingerprints_agree_for_the_same_tokenizer_and_differ_otherwise(teacher, tmp_path) -> None:
    theirs = asyncio.run(teacher.tokenizer_fingerprint())
    assert theirs.vocab_size == 49152
    same = student_fingerprint(str(build_tiny_llama(tmp_path / "llama")))
    assert same == theirs and mismatch(same, theirs) is None
    other = student_fingerprint(str(build_tiny_qwen(tmp_path / "qwen")))
    assert "tokenizers differ" in (mismatch(other, theirs) or "")
    bigger = TokenizerFingerprint(60000, theirs.probe_ids)
    assert "fewer than the student's 60000" in (mismatch(bigger, theirs) or "")
    assert mismatch(theirs, TokenizerFingerprint(None, theirs.probe_ids)) is None  # unknown size: the probes decide


def test_preflight_refuses_onpolicy_where_the_teacher_cannot_score(teacher, tmp_path, openai_server) -> None:
    with pytest.raises(ConfigError) as info:  # from the spec alone: a text-only API
        check_loss(DistillConfig(loss="onpolicy", teacher="openrouter:some/model"))
    assert info.value.field == "loss" and "jbond" in info.value.fix and "text only" in str(info.value)

    assert scoring_refusal(load_teacher("gemini:gemini-2.5-flash", api_key="x", policy="off")) is not None
    http = load_teacher(openai_server.spec("m"))  # may score, but this server has no /tokenize to check with
    with pytest.raises(ConfigError) as info:
        check_loss(DistillConfig(loss="onpolicy", teacher=openai_server.spec("m")), http)
    assert "cannot be read" in str(info.value) and "jbond" in str(info.value)
    assert openai_server.requests_total == 0

    llama = str(build_tiny_llama(tmp_path / "llama"))
    check_loss(DistillConfig(loss="onpolicy", teacher="local:smollm2-135m", student=llama), teacher)
    qwen = str(build_tiny_qwen(tmp_path / "qwen"))
    with pytest.raises(ConfigError) as info:
        check_loss(DistillConfig(loss="onpolicy", teacher="local:smollm2-135m", student=qwen), teacher)
    assert "tokenizers differ" in str(info.value) and info.value.fix == "use loss='jbond'"
