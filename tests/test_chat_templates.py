"""A student is rendered the same way in training and serving, and a student that cannot be rendered
is refused before any teacher request: family defaults for base models, the ``chat_template``
override, and the pipeline's check before sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import build_tiny_arch

import jupyter_distill as jd
from jupyter_distill.core import models
from jupyter_distill.core.errors import ConfigError, ExportError
from jupyter_distill.train.student import load_student, student_preflight

OVERRIDE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "


def _strip_template(folder: Path, model_type: str | None = None) -> Path:
    """Make an HF folder look like a base checkpoint (no chat template), optionally of another family."""
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    if model_type:
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = model_type
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def base_gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_arch(tmp_path_factory.mktemp("gemma"), "gemma3_text", chat_template=False)


def test_family_templates() -> None:
    assert models.family_chat_template("gemma3")[0] == "gemma"
    assert models.family_chat_template("gemma3_text")[0] == "gemma"
    assert models.family_chat_template("qwen3")[0] == "chatml"
    assert models.family_chat_template("llama", {"<|start_header_id|>"})[0] == "llama3"
    assert models.family_chat_template("llama", {"<|im_start|>"})[0] == "chatml"
    assert models.family_chat_template("llama") is None  # shared architecture, no telling vocabulary
    assert models.family_chat_template("frobnicator") is None
    for key in ("gemma-3-270m-base", "smollm3-3b", "phi-4-mini", "granite-3.3-2b"):
        assert key in models.STUDENT_MODEL_MAP


def test_gemma_template_renders_like_gemma(base_gemma: Path) -> None:
    student = load_student(str(base_gemma), device="cpu")
    assert student.info.chat_template_source == "family:gemma"
    text = student.prompt_text([{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "}])
    bos = student.tokenizer.bos_token
    assert text == f"{bos}<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_preflight_without_loading_weights(base_gemma: Path, tmp_path: Path) -> None:
    assert student_preflight(str(base_gemma)) == {"architecture": "gemma3_text", "chat_template_source": "family:gemma"}
    assert student_preflight(str(base_gemma), OVERRIDE)["chat_template_source"] == "config"
    odd = build_tiny_arch(tmp_path / "odd", "llama", chat_template=False)
    _strip_template(odd, model_type="frobnicator")
    with pytest.raises(ConfigError) as info:
        student_preflight(str(odd))
    assert info.value.field == "chat_template" and "frobnicator" in str(info.value)
    assert student_preflight(str(odd), OVERRIDE)["chat_template_source"] == "config"


def test_override_is_trained_with(base_gemma: Path) -> None:
    student = load_student(str(base_gemma), device="cpu", chat_template=OVERRIDE)
    assert student.info.chat_template_source == "config"
    assert student.prompt_text([{"role": "user", "content": "x"}]) == "[user] x\n[assistant] "


def test_unrenderable_student_is_refused_before_sampling(tmp_path: Path, openai_server) -> None:
    odd = build_tiny_arch(tmp_path / "odd", "llama", chat_template=False)
    _strip_template(odd, model_type="frobnicator")
    options = dict(
        dataset=[{"prompt": f"Say {i}"} for i in range(4)],
        teacher=openai_server.spec("m"),
        student=str(odd),
        judge=lambda row, response: 1.0,
        steps=1,
        quantize="f16",
        workdir=str(tmp_path / "wd"),
    )
    with pytest.raises(ConfigError) as info:
        jd.distill(**options)
    assert info.value.field == "chat_template"
    assert openai_server.requests_total == 0


def test_unexportable_architecture_is_refused_before_sampling(tmp_path: Path, openai_server) -> None:
    odd = build_tiny_arch(tmp_path / "odd", "llama")
    _strip_template(odd, model_type="frobnicator")
    options = dict(
        dataset=[{"prompt": f"Say {i}"} for i in range(4)],
        teacher=openai_server.spec("m"),
        student=str(odd),
        judge=lambda row, response: 1.0,
        steps=1,
        quantize="q4_k_m",
        chat_template=OVERRIDE,
        workdir=str(tmp_path / "wd"),
    )
    with pytest.raises(ExportError) as info:
        jd.distill(**options)
    assert info.value.field == "architecture" and "gemma3" in str(info.value)
    assert openai_server.requests_total == 0


def test_quantization_cost_is_reported_with_the_type_that_keeps_it(tmp_path: Path, monkeypatch) -> None:
    """More than 5 points lost by the served file: the summary says so and names q8_0, which keeps it."""
    from types import SimpleNamespace

    from jupyter_distill.evaluation import heldout as evaluate
    from jupyter_distill.export.gguf import ExportResult
    from jupyter_distill.pipeline import run as pipeline

    rates = {"model.q4_k_m.gguf": 0.5, "served-check.q8_0.gguf": 0.95, "model.f16.gguf": 1.0}
    monkeypatch.setattr(evaluate, "llama_responder", lambda path, max_tokens: Path(path).name)
    monkeypatch.setattr("jupyter_distill.export.gguf.quantize_gguf", lambda src, dst, q: Path(dst))
    events: list = []

    def fake_eval(student, label, respond):
        state.summary[label] = {"label": label, "n": 4, "pass_rate": rates[respond], "mean_score": rates[respond]}
        return SimpleNamespace(pass_rate=rates[respond])

    state = SimpleNamespace(summary={"student_after": {"pass_rate": 1.0}})
    run = SimpleNamespace(
        state=state, config=SimpleNamespace(max_tokens=8), emit=events.append, name="r", _evaluate_student=fake_eval
    )
    result = ExportResult(
        gguf=tmp_path / "model.q4_k_m.gguf",
        f16_gguf=tmp_path / "model.f16.gguf",
        merged_dir=tmp_path,
        agreement={},
        sha256={},
        quantize="q4_k_m",
    )
    pipeline.Run._measure_served(run, result)
    assert state.summary["student_served"]["quantize"] == "q4_k_m"
    warning = state.summary["quantization_warning"]
    assert "50 points" in warning and "quantize='q8_0' keeps it" in warning
    assert events and events[0].kind == "warning"
    line = pipeline._summary_line({**state.summary, "teacher_cost": 0.0})
    assert "served (q4_k_m) 0.50" in line and "q8_0" in line
