"""4-bit QLoRA on CPU as far as bitsandbytes allows there: loading, LoRA, gradients, training, export.

The reference for the gradients is the same model with every quantized projection replaced by its
dequantized weights in fp32: a correct QLoRA step differs from it only by float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.errors import ConfigError, TrainingError
from jupyter_distill.core.models import STUDENT_MODEL_MAP, STUDENT_SHAPES, ModelShape, shape_from_config
from jupyter_distill.train import quantized as qz
from jupyter_distill.train.engines import PlainEngine, TokenizedPair
from jupyter_distill.train.fast import FastEngine
from jupyter_distill.train.memory import CUDA_OVERHEAD, WEIGHT_BYTES, lora_params, training_peak
from jupyter_distill.train.student import load_student
from jupyter_distill.train.trainer import BondTrainer, TrainPair, TrainSettings, attach_lora

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the test install (jupyter-distill[qlora])")

TEMPLATE = "{% for m in messages %}{{ m['content'] }} w1 {% endfor %}{% if add_generation_prompt %}w2 {% endif %}"


@pytest.fixture(scope="module")
def word_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init Llama (hidden 64, 2 layers) with a word-level tokenizer, saved as safetensors."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("word-llama")
    vocab = {f"w{i}": i for i in range(256)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="w0", pad_token="w0", eos_token="w1", bos_token="w2"
    )
    config = LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        vocab_size=256, max_position_embeddings=128, bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def _pairs(seed: int = 7, n: int = 4) -> list[TokenizedPair]:
    gen = torch.Generator().manual_seed(seed)

    def draw(k: int) -> list[int]:
        return torch.randint(3, 256, (k,), generator=gen).tolist()

    return [TokenizedPair(i, draw(12), draw(10), draw(10)) for i in range(n)]


def _grads(model: object, engine: object) -> tuple[float, dict[str, torch.Tensor]]:
    pairs = _pairs()
    engine.prepare(model, pairs)  # type: ignore[attr-defined]
    loss, _ = engine.loss(model, pairs)  # type: ignore[attr-defined]
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}  # type: ignore[attr-defined]
    model.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
    return float(loss), grads


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[n] - b[n]).norm() ** 2) for n in b) ** 0.5
    return num / max(1e-12, sum(float(b[n].norm() ** 2) for n in b) ** 0.5)


@pytest.mark.parametrize("engine_cls", [PlainEngine, FastEngine])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_4bit_gradients_match_the_dequantized_model(word_llama: Path, engine_cls: type, checkpointing: bool) -> None:
    student = load_student(str(word_llama), device="cpu", chat_template=TEMPLATE, quantization="4bit")
    assert student.info.quantization == "4bit"
    dequantized = {
        name: bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
        for name, module in student.model.named_modules()
        if isinstance(module, bnb.nn.Linear4bit)
    }
    assert len(dequantized) == 2 * 7  # every projection of both layers is 4-bit
    settings = TrainSettings(lora_r=4, lora_alpha=8, gradient_checkpointing=checkpointing)
    model = attach_lora(student, settings)
    assert qz.quantization_of(model) == "4bit"
    assert qz.checkpointing_enabled(model) is checkpointing
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero B so every LoRA weight has a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss_4bit, grads_4bit = _grads(model, engine_cls())
    _, grads_again = _grads(model, engine_cls())  # after an eval-mode reference pass: still differentiable
    assert _rel(grads_again, grads_4bit) < 1e-5

    reference = load_student(str(word_llama), device="cpu", chat_template=TEMPLATE)
    with torch.no_grad():
        for name, module in reference.model.named_modules():
            if name in dequantized:
                module.weight.copy_(dequantized[name])
    ref_model = attach_lora(reference, TrainSettings(lora_r=4, lora_alpha=8))
    with torch.no_grad():
        for name, param in ref_model.named_parameters():
            if name in lora:
                param.copy_(lora[name])
    loss_ref, grads_ref = _grads(ref_model, engine_cls())
    assert loss_4bit == pytest.approx(loss_ref, rel=1e-4)
    assert _rel(grads_4bit, grads_ref) < 1e-3


def test_a_4bit_student_trains_saves_and_merges_into_full_precision(word_llama: Path, tmp_path: Path) -> None:
    from jupyter_distill.export.merge import merge_lora

    student = load_student(str(word_llama), device="cpu", chat_template=TEMPLATE, quantization="4bit")
    pairs = [
        TrainPair(messages=[{"role": "user", "content": f"w{10 + i} w{20 + i}"}], chosen=f"w{30 + i}", rejected="w5")
        for i in range(4)
    ]
    settings = TrainSettings(steps=3, batch_size=2, lora_r=4, lora_alpha=8, checkpoint_every=2)
    result = BondTrainer(student, pairs, settings, output_dir=tmp_path / "train", engine="plain").train()
    assert result.steps_done == 3
    assert result.history[-1]["loss"] == result.history[-1]["loss"]  # finite
    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert Path(adapter["base_model_name_or_path"]).resolve() == word_llama.resolve()
    merged = merge_lora(result.adapter_dir, tmp_path / "merged", base_folder=student.hf_folder)
    from safetensors import safe_open

    files = list(Path(merged).glob("*.safetensors"))
    with safe_open(str(files[0]), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    assert dtypes <= {torch.float32, torch.float16, torch.bfloat16}  # a full-precision copy, no 4-bit codes


def test_quantization_is_checked_before_any_request() -> None:
    assert qz.normalise_quantization("none") is None
    assert qz.normalise_quantization("4BIT") == "4bit"
    with pytest.raises(ConfigError) as bad:
        qz.normalise_quantization("3bit")
    assert bad.value.field == "quantization" and "4bit" in str(bad.value)
    with pytest.raises(ConfigError) as cpu8:
        qz.check_quantization("8bit", "cpu")
    assert "CUDA" in str(cpu8.value) and cpu8.value.fix
    qz.check_quantization("4bit", "cpu")  # runs here
    config = DistillConfig.from_kwargs(dataset=[{"prompt": "hi"}], quantization="4bit", engine="plain")
    assert config.quantization == "4bit"
    with pytest.raises(ConfigError) as bad_config:
        DistillConfig.from_kwargs(dataset=[{"prompt": "hi"}], quantization="2bit")
    assert "quantization" in str(bad_config.value)


def test_the_unsloth_engine_is_refused_with_the_versions_that_work_where_it_cannot_run() -> None:
    from jupyter_distill.train.choice import select_engine, student_loader
    from jupyter_distill.train.unsloth_loader import TESTED_VERSIONS, check_unsloth

    with pytest.raises(ConfigError) as refused:
        check_unsloth("unsloth", "cpu")
    assert refused.value.field == "engine"
    assert all(version in str(refused.value) for version in TESTED_VERSIONS.values())
    with pytest.raises(ConfigError):
        select_engine("cpu", "unsloth")
    assert student_loader("auto", "cpu") == "transformers"
    with pytest.raises(TrainingError):
        select_engine("cpu", "turbo")


def test_student_shapes_match_the_map_parameter_counts() -> None:
    assert set(STUDENT_SHAPES) == set(STUDENT_MODEL_MAP)
    for key, shape in STUDENT_SHAPES.items():
        assert shape.params / 1e6 == pytest.approx(STUDENT_MODEL_MAP[key].params_m, rel=0.005), key


def test_shape_from_a_config_json_matches_the_model_transformers_builds(word_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    shape = shape_from_config(json.loads((word_llama / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(word_llama)
    assert shape.params == sum(p.numel() for p in model.parameters())


def test_memory_model_terms() -> None:
    eight_b = STUDENT_SHAPES["llama-3.1-8b"]
    common = dict(cuda=True, engine="fast", batch_size=4, prompt_tokens=128, response_tokens=128)
    full = training_peak(eight_b, quantization=None, **common)  # type: ignore[arg-type]
    nf4 = training_peak(eight_b, quantization="4bit", gradient_checkpointing=True, **common)  # type: ignore[arg-type]
    int8 = training_peak(eight_b, quantization="8bit", gradient_checkpointing=True, **common)  # type: ignore[arg-type]
    assert full.weights - CUDA_OVERHEAD == pytest.approx(eight_b.params * 2, rel=0.01)  # bf16
    nf4_bytes = eight_b.linear_params * WEIGHT_BYTES["4bit"] + eight_b.embedding_params * 2
    assert nf4.weights - CUDA_OVERHEAD == pytest.approx(nf4_bytes)
    assert nf4.weights < int8.weights < full.weights
    assert nf4.total < 24e9 < full.total  # the point of 4-bit: an 8B trains on a 24 GB card
    assert nf4.activations < full.activations  # checkpointing keeps one layer's activations
    # LoRA r=16 on the seven projections of Llama-3.1-8B: 42M trainable parameters
    assert lora_params(eight_b, 16) == pytest.approx(41.9e6, rel=0.01)
    tiny = ModelShape(64, 2, 4, 2, 128, 256, True)
    plain = training_peak(tiny, quantization=None, cuda=False, engine="plain", batch_size=2, prompt_tokens=8,
                          response_tokens=8)  # fmt: skip
    assert plain.total == plain.weights + plain.lora + plain.activations + plain.logits


def test_estimate_reports_memory_for_every_student_and_quantization() -> None:
    from jupyter_distill.pipeline.estimate import estimate

    rows = [{"prompt": f"question {i}"} for i in range(10)]
    seen = {}
    for key in STUDENT_MODEL_MAP:
        for quantization in (None, "8bit", "4bit"):
            found = estimate(rows, teacher="local:smollm2-135m", student=key, quantization=quantization)
            assert found.memory_breakdown and found.memory_gb > 0
            seen[(key, quantization)] = found.memory_gb
            assert found.quantization == quantization
    for key in STUDENT_MODEL_MAP:
        assert seen[(key, "4bit")] < seen[(key, "8bit")] < seen[(key, None)]
    assert "lower bound" in repr(estimate(rows, student="llama-3.1-8b", quantization="8bit"))


def test_jd_estimate_is_callable_after_its_module_was_imported() -> None:
    import jupyter_distill as jd
    import jupyter_distill.pipeline.estimate  # the import that used to shadow the function

    found = jd.estimate([{"prompt": "hi"}], student="llama-3.1-8b", quantization="4bit")
    assert found.quantization == "4bit" and found.memory_gb > 0


def test_distill_with_a_4bit_student_end_to_end(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openai_server, tiny_llama_student: Path
) -> None:
    """``jd.distill(quantization="4bit")``: the pipeline loads the student in 4 bits, trains, and
    exports by merging into the full-precision weights; the alias serves the result."""
    import jupyter_distill as jd
    from jupyter_distill.core.store import RunStore
    from jupyter_distill.judging.verifiers import exact_match

    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    openai_server.responder = lambda body, index: body["messages"][-1]["content"].rsplit(" ", 1)[-1]
    events: list = []
    jd.distill(
        dataset=[{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(8)],
        teacher=openai_server.spec("test-model"), student=str(tiny_llama_student),
        judge=exact_match("expected"), n_samples=2, top_k=1, steps=2, batch_size=2, max_tokens=8,
        quantization="4bit", engine="plain", quantize="f16", alias="tiny-4bit", workdir=str(tmp_path / "wd"),
        name="four-bit", on_progress=events.append,
    )  # fmt: skip
    store = RunStore(tmp_path / "wd")
    run = store.get_run("four-bit")
    assert run["status"] == "done" and run["config"]["quantization"] == "4bit"
    assert run["summary"]["engine"] == "plain" and run["summary"]["steps"] == 2
    assert {"adapter", "gguf"} <= set(store.get_artifacts("four-bit"))
    trained = next(e for e in events if e.data.get("engine_reason"))
    assert trained.data["engine"] == "plain" and "engine='plain'" in trained.data["engine_reason"]
    reply = jd.completion(model="tiny-4bit", messages=[{"role": "user", "content": "Repeat the number 3"}])
    assert reply.choices[0].message.role == "assistant"
