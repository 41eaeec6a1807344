"""Model maps, local model resolution, events and the console renderer."""

import io

import pytest

from jupyter_distill.core.errors import ConfigError
from jupyter_distill.core.events import ConsoleRenderer, Event, fan_out
from jupyter_distill.core.models import STUDENT_MODEL_MAP, TEACHER_MODEL_MAP, resolve_local_gguf

REQUIRED_STUDENTS = [
    "smollm2-135m", "smollm2-360m", "smollm2-1.7b", "qwen3-0.6b", "qwen3-1.7b", "qwen2.5-0.5b",
    "qwen2.5-1.5b", "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "gemma-3-270m", "gemma-3-1b",
]  # fmt: skip


def test_student_map_covers_the_required_models():
    for key in REQUIRED_STUDENTS:
        model = STUDENT_MODEL_MAP[key]
        assert model.hf_id and model.params_m > 0 and model.licence and model.architecture


def test_teacher_map_has_prices_and_terms():
    assert TEACHER_MODEL_MAP["openai/gpt-4o-mini"].terms == "prohibited"
    assert any(m.terms == "allowed" for m in TEACHER_MODEL_MAP.values())
    for model in TEACHER_MODEL_MAP.values():
        assert model.input_usd_per_m >= 0 and model.output_usd_per_m >= 0
        assert model.terms in ("allowed", "prohibited", "check-licence")


def test_local_smollm2_resolves_to_the_packaged_gguf():
    path = resolve_local_gguf("smollm2-135m")
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_unknown_local_model_is_a_config_error():
    with pytest.raises(ConfigError, match="Known"):
        resolve_local_gguf("gpt-5")


def test_fan_out_survives_a_broken_sink():
    seen = []

    def broken(event):
        raise RuntimeError("bad callback")

    fan_out([broken, seen.append, None])(Event("progress", phase="sampling", current=1, total=2))
    assert len(seen) == 1


def test_console_renderer_draws_bars_and_warnings():
    stream = io.StringIO()
    render = ConsoleRenderer(stream=stream, min_interval=0)
    render(Event("phase_start", phase="sampling", total=4))
    render(Event("progress", phase="sampling", current=2, total=4, data={"cost": 0.1}))
    render(Event("phase_end", phase="sampling"))
    render(Event("warning", message="careful"))
    text = stream.getvalue()
    assert "sampling" in text and "careful" in text


def test_estimate_prices_a_teacher_with_the_lookup_runs_use() -> None:
    """A provider-prefixed spec (``gemini:...``) is priced by the estimate exactly as a run charges it."""
    from jupyter_distill.core.models import teacher_price
    from jupyter_distill.pipeline.estimate import estimate

    spec = "gemini:gemini-2.5-flash"
    price = teacher_price(spec)
    assert price is not None
    found = estimate([{"prompt": "hello there"}] * 5, teacher=spec, judge=lambda row, response: 1.0)
    assert found.priced
    typical = (found.input_tokens * price[0] + found.output_tokens_typical * price[1]) / 1e6
    assert found.teacher_cost_typical == round(typical, 6)
