"""The merge/export memory estimate: from config shapes only (no weights, no download)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tiny_models import add_lora_adapter, build_tiny_llama

from jupyter_distill.export import memory
from jupyter_distill.pipeline import estimate as estimate_module
from jupyter_distill.pipeline.estimate import estimate

ROWS = [{"prompt": f"question {i}"} for i in range(10)]
# Llama-3.1-8B's config.json, shape fields only.
LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "tie_word_embeddings": False,
}  # fmt: skip
GB = 1e9


def _config_folder(tmp_path: Path, dtype: str) -> str:
    folder = tmp_path / f"llama8b-{dtype}"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**LLAMA_8B, "torch_dtype": dtype}))
    return str(folder)


def test_an_8b_student_needs_32_gb_in_fp32_and_half_to_merge_in_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: int(128 * GB))  # everything fits in RAM
    fp32 = estimate(ROWS, student=_config_folder(tmp_path, "float32"), quantize="q4_k_m")
    bf16 = estimate(ROWS, student=_config_folder(tmp_path, "bfloat16"), quantize="q4_k_m")
    assert 8.0e9 < fp32.student_params_m * 1e6 < 8.1e9
    merge32, merge16 = fp32.export_memory_breakdown["merge"], bf16.export_memory_breakdown["merge"]
    assert 32 * GB < merge32 < 36 * GB and 16 * GB < merge16 < 19.5 * GB  # weights + one 2 GiB shard + overhead
    assert fp32.export_memory_breakdown["stored_dtype"] == "float32"
    assert bf16.export_memory_breakdown["stored_dtype"] == "bfloat16"
    # the fp32 reference of the agreement check does not shrink with the stored dtype, and decides the peak
    assert fp32.export_memory_breakdown["check"] == bf16.export_memory_breakdown["check"] > 32 * GB
    assert bf16.export_memory_gb == round(bf16.export_memory_breakdown["check"] / 1e9, 2)
    # the map's Hub checkpoint is bf16; a student dequantized from a GGUF is fp32
    assert estimate(ROWS, student="llama-3.1-8b").export_memory_breakdown["stored_dtype"] == "bfloat16"
    assert estimate(ROWS, student="smollm2-135m").export_memory_breakdown["stored_dtype"] == "float32"
    assert estimate(ROWS, student="smollm2-135m", quantize=None).export_memory_gb is None


def test_estimate_warns_when_the_export_does_not_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    student = _config_folder(tmp_path, "float32")
    monkeypatch.setattr(memory, "available_memory", lambda: int(16 * GB))
    found = estimate(ROWS, student=student)
    assert found.available_memory_gb == 16.0
    assert len(found.warnings) == 1 and "16.0 GB are available" in found.warnings[0]
    assert "quantize=None" in found.warnings[0]  # names the fix
    assert "warning" in repr(found) and "export memory" in repr(found)
    assert "warning" in found._repr_mimebundle_()["text/html"]
    monkeypatch.setattr(memory, "available_memory", lambda: int(64 * GB))
    assert estimate(ROWS, student=student).warnings == []
    small = estimate(ROWS, student="smollm2-135m")
    assert small.warnings == [] and small.export_memory_gb < 2


def test_an_8b_student_exports_on_24_gb_with_the_check_partly_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 merge: ~18.6 GB; the 32 GB fp32 reference keeps 60% of the free RAM and reads the rest from disk."""
    monkeypatch.setattr(memory, "available_memory", lambda: int(24 * GB))
    student = _config_folder(tmp_path, "bfloat16")
    found = estimate(ROWS, student=student, quantize="q4_k_m")
    parts = found.export_memory_breakdown
    assert found.warnings == []  # it fits: no "would fail after the teacher was paid"
    assert parts["check"] < 24 * GB * memory.CHECK_RAM_FRACTION + 2 * GB
    assert 32 * GB < parts["check_offloaded"] + parts["check"] < 34 * GB
    assert found.export_memory_gb == round(max(parts["merge"], parts["check"]) / 1e9, 2) < 24
    assert "read from disk" in repr(found)
    monkeypatch.setattr(memory, "available_memory", lambda: int(64 * GB))
    roomy = estimate(ROWS, student=student, quantize="q4_k_m")
    assert roomy.export_memory_breakdown["check_offloaded"] == 0 and "read from disk" not in repr(roomy)


def test_reference_placement_splits_at_the_budget() -> None:
    assert memory.reference_placement(10, None) == (10, 0)  # memory unknown: all in RAM, as before
    assert memory.reference_placement(10, 100) == (10, 0)
    budget = memory.reference_budget(100)
    assert budget == 60 and memory.reference_placement(100, 100) == (60, 40)


def test_available_memory_reads_proc_meminfo_without_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    with_psutil = memory.available_memory()
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now raises ImportError
    without = memory.available_memory()
    assert with_psutil and without and without > 0
    assert abs(with_psutil - without) < 0.25 * with_psutil  # the same figure, read twice a moment apart
    assert estimate_module.export_memory.available_memory is memory.available_memory


def test_stored_dtype_reads_the_config() -> None:
    assert memory.stored_dtype({"torch_dtype": "bfloat16"}) == "bfloat16"
    assert memory.stored_dtype({"dtype": "float16"}) == "float16"
    assert memory.stored_dtype({"text_config": {"torch_dtype": "bf16"}}) == "bfloat16"
    assert memory.stored_dtype({}) == "float32" and memory.stored_dtype({"torch_dtype": "int8"}) == "float32"


def test_a_bf16_base_merges_in_bf16(tmp_path: Path) -> None:
    """The merge keeps the stored dtype (half the memory of fp32) and still adds the LoRA."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from jupyter_distill.export.merge import merge_lora

    base = build_tiny_llama(tmp_path / "base32")
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16)
    bf16 = tmp_path / "base16"
    model.save_pretrained(str(bf16), safe_serialization=True)
    for f in base.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            (bf16 / f.name).write_bytes(f.read_bytes())
    peft_model = add_lora_adapter(bf16, tmp_path / "adapter")
    merged = merge_lora(tmp_path / "adapter", tmp_path / "merged")
    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(merged / "model.safetensors"), "pt") as handle:
        weight = handle.get_tensor(name)
    with safe_open(str(bf16 / "model.safetensors"), "pt") as handle:
        original = handle.get_tensor(name)
    assert weight.dtype == torch.bfloat16
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    expected = (original.float() + delta.float()).to(torch.bfloat16)
    assert not torch.equal(weight, original)  # the LoRA was added
    assert torch.allclose(weight.float(), expected.float(), rtol=0.02, atol=1e-3)
