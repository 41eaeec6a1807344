"""Every architecture of STUDENT_MODEL_MAP, end to end on a tiny random-init model of its exact config
class with a real tokenizer: BOND training on CPU, merge, GGUF f16/q8_0/q4_k_m through llama.cpp's
converter, each loaded back in llama.cpp and compared with the merged HF model, transformers' own
GGUF reader as a second opinion, and an alias serving the quantized file through ``completion()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import CHECK_PROMPTS, TINY_ARCHITECTURES, build_tiny_arch

from jupyter_distill import registry, runtime
from jupyter_distill.export import SUPPORTED_ARCHITECTURES, export_gguf
from jupyter_distill.models import CHAT_TEMPLATES, STUDENT_MODEL_MAP
from jupyter_distill.serving import completion
from jupyter_distill.train.student import load_student
from jupyter_distill.train.trainer import BondTrainer, TrainPair, TrainSettings

#: Architectures transformers' GGUF loader reads (its GGUF_CONFIG_MAPPING); the others are checked by
#: llama.cpp only. SmolLM3 and Granite are not in transformers 5.23's GGUF loader.
HF_GGUF_READER = {"llama", "qwen2", "qwen3", "gemma3_text", "phi3"}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    yield
    runtime.release_all()


def test_every_map_architecture_is_covered_here() -> None:
    architectures = {m.architecture for m in STUDENT_MODEL_MAP.values()}
    covered = set(TINY_ARCHITECTURES) | {"gemma3"}  # gemma3 checkpoints load as Gemma3ForCausalLM (gemma3_text)
    assert architectures <= covered, architectures - covered
    assert set(TINY_ARCHITECTURES) <= set(SUPPORTED_ARCHITECTURES)
    assert {"smollm3", "phi3", "granite"} <= architectures  # families users ask for beyond the first five


def _pairs() -> list[TrainPair]:
    return [
        TrainPair(
            messages=[{"role": "user", "content": f"What is {i} plus {i}?"}],
            chosen=f"{2 * i}",
            rejected=f"{2 * i + 1}, I think" if i % 2 else None,
        )
        for i in range(4)
    ]


def _hf_greedy(folder: Path, messages: list[dict[str, str]], n: int) -> list[int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_architecture_trains_exports_and_serves(arch: str, tmp_path: Path) -> None:
    base_model = arch == "gemma3_text"  # saved without a chat template, as Gemma's base checkpoints are
    folder = build_tiny_arch(tmp_path / arch, arch, chat_template=not base_model)

    # train: a few BOND steps on CPU
    student = load_student(str(folder), device="cpu")
    if base_model:
        assert student.info.chat_template_source == "family:gemma"
        assert student.tokenizer.chat_template == CHAT_TEMPLATES["gemma"]
    settings = TrainSettings(steps=2, batch_size=2, lora_r=4, lora_alpha=8, warmup=0, lr=1e-2)
    result = BondTrainer(student, _pairs(), settings, output_dir=tmp_path / "train").train()
    assert result.steps_done == 2

    # merge + convert + quantize + load each back in llama.cpp + agreement with the merged model
    exported = export_gguf(
        result.adapter_dir,
        tmp_path / "out",
        base_folder=folder,
        quantize="q4_k_m",
        also_quantize=("q8_0",),
        check_prompts=CHECK_PROMPTS,
        check_tokens=8,
        card={"name": f"tiny-{arch}", "student": "smollm2-135m"},
    )
    assert exported.details["tokenizer_match"] == 1.0
    assert exported.agreement["f16"] >= 0.99, exported.agreement
    assert exported.agreement["q8_0"] >= 0.8, exported.agreement
    assert 0.0 <= exported.agreement["q4_k_m"] <= 1.0  # reported; k-quants on random weights lose argmaxes
    print(f"\n{arch}: agreement {exported.agreement} timings {exported.details['timings']}")

    # the chat template training rendered with is the one the GGUF serves with
    from gguf import GGUFReader

    fields = GGUFReader(str(exported.gguf)).fields
    assert str(fields["tokenizer.chat_template"].contents()) == student.tokenizer.chat_template

    # serve: an alias on the f16 file answers exactly like the merged HF model (greedy), and the
    # quantized file the alias normally serves answers too
    registry.set_alias(f"tiny-{arch}-f16", backend="gguf", model_path=exported.f16_gguf)
    served = completion(model=f"tiny-{arch}-f16", messages=QUESTION, max_tokens=6)
    reference = _hf_greedy(exported.merged_dir, QUESTION, 6)
    with runtime.use_llama(exported.f16_gguf) as llm:
        served_ids = llm.tokenize(served.choices[0].message.content.encode(), add_bos=False, special=True)
        want = llm.detokenize([t for t in reference if t != llm.token_eos()]).decode(errors="ignore")
    assert served.choices[0].message.content == want, (served_ids, reference)
    registry.set_alias(f"tiny-{arch}", backend="gguf", model_path=exported.gguf)
    quantized = completion(model=f"tiny-{arch}", messages=QUESTION, max_tokens=6)
    assert quantized._cost == 0.0 and quantized.choices[0].finish_reason in ("stop", "length")

    # an independent reader: transformers' own GGUF loader gives the merged model's greedy answer
    if arch in HF_GGUF_READER:
        from transformers import AutoModelForCausalLM

        reread = AutoModelForCausalLM.from_pretrained(
            str(exported.f16_gguf.parent), gguf_file=exported.f16_gguf.name, dtype=torch.float32
        ).eval()
        ids = torch.tensor([student.prompt_ids(QUESTION)])
        with torch.inference_mode():
            out = reread.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
        assert out[0, ids.shape[1] :].tolist() == reference
