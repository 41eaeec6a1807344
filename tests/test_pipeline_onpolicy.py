"""``jd.distill(loss='onpolicy')`` end to end on CPU: the local SmolLM2 GGUF teacher samples the
candidates and then scores the tokens a tiny random-init llama student (same tokenizer) samples
while it trains."""

from __future__ import annotations

import pytest
from tiny_models import build_tiny_llama

import jupyter_distill as jd
from jupyter_distill.core.store import RunStore
from jupyter_distill.judging.verifiers import exact_match


def test_distill_with_onpolicy_records_the_reverse_kl_against_a_local_teacher(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JUPYTER_DISTILL_LLAMA_THREADS", "1")
    student = build_tiny_llama(tmp_path / "student")
    options = dict(
        dataset=[{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(4)],
        teacher="local:smollm2-135m",
        student=str(student),
        judge=lambda row, response: 1.0,  # every candidate passes: the pairs only choose the prompts
        loss="onpolicy",
        jbond_n=2,
        jbond_max_new_tokens=4,
        n_samples=1,
        top_k=1,
        steps=2,
        batch_size=2,
        max_tokens=8,
        heldout_fraction=0.0,
        quantize=None,
        workdir=str(tmp_path / "wd"),
        name="onpolicy-numbers",
    )
    jd.distill(on_progress=lambda event: None, **options)
    store = RunStore(tmp_path / "wd")
    assert store.get_run("onpolicy-numbers")["status"] == "done"
    for name in ("loss", "pg", "reverse_kl", "kl_anchor", "sample_len", "teacher_calls"):
        assert [m["step"] for m in store.get_metrics("onpolicy-numbers", name)] == [1, 2], name
    # a random-init student is far from the teacher: its samples are much likelier under itself
    for m in store.get_metrics("onpolicy-numbers", "reverse_kl"):
        assert m["value"] > 1.0
    assert all(m["value"] >= 1 for m in store.get_metrics("onpolicy-numbers", "teacher_calls"))
    store.close()


def test_distill_with_onpolicy_refuses_a_student_with_another_tokenizer_before_sampling(tmp_path, monkeypatch) -> None:
    from tiny_models import build_tiny_qwen

    from jupyter_distill.core.errors import ConfigError

    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    student = build_tiny_qwen(tmp_path / "qwen")
    with pytest.raises(ConfigError) as info:
        jd.distill(
            dataset=[{"prompt": "Repeat 1", "expected": "1"}],
            teacher="local:smollm2-135m",
            student=str(student),
            judge=exact_match("expected"),
            loss="onpolicy",
            quantize=None,
            workdir=str(tmp_path / "wd"),
            name="onpolicy-refused",
            on_progress=lambda event: None,
        )
    assert "tokenizers differ" in str(info.value) and "jbond" in info.value.fix
    store = RunStore(tmp_path / "wd")
    assert store.get_run("onpolicy-refused") is None  # refused before the run (and any sample) existed
    store.close()
