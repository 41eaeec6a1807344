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

from jupyter_distill.core import runtime
from jupyter_distill.core.models import CHAT_TEMPLATES, STUDENT_MODEL_MAP
from jupyter_distill.export.gguf import SUPPORTED_ARCHITECTURES, export_gguf
from jupyter_distill.serving import registry
from jupyter_distill.serving.student import completion
from jupyter_distill.train.student import load_student
from jupyter_distill.train.trainer import BondTrainer, TrainPair, TrainSettings

#: Architectures transformers' GGUF loader reads correctly; the others are checked by llama.cpp only.
#: SmolLM3 and Granite are not in transformers 5.23's GGUF loader at all; for Qwen3 it ignores
#: ``qwen3.attention.key_length`` and rebuilds head_dim as hidden/heads, which is wrong for every Qwen3
#: (head_dim 128 at hidden 1024 with 16 heads), so it cannot load a Qwen3 GGUF, ours or anyone's.
HF_GGUF_READER = {"llama", "qwen2", "gemma3_text", "phi3"}
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
        # not named after the family: llama.cpp looks up family-specific tokens (Phi-3's <|end|>) when
        # general.name contains it, and the tiny models carry SmolLM2's vocabulary
        card={"name": "tiny-student", "student": "smollm2-135m"},
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


# ------------------------------------------------------------------------------------ fast path
#: What the fast path does with each architecture, and why (its reason string must say so).
FAST_PATH = {
    "llama": "layout=tree",
    "qwen2": "layout=tree",
    "qwen3": "layout=tree",
    "gemma3_text": "layout=sequences (attention sdpa, sliding window 8",
    "smollm3": "layout=tree",
    "phi3": "layout=tree",
    "granite": "plain PEFT engine: the fast path does not reproduce this model exactly (the model post-processes "
    "logits (logits_scaling=2.0))",
}


def _tiny_lora_model(arch: str) -> Any:
    from peft import LoraConfig, get_peft_model
    from tiny_models import _tiny_config
    from transformers import AutoModelForCausalLM

    from jupyter_distill.train.trainer import DEFAULT_TARGET_MODULES

    common = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    config = _tiny_config(arch, common)
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config).float()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=list(DEFAULT_TARGET_MODULES[arch]))
    model = get_peft_model(model, lora)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.train()


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_fast_path_states_the_truth_per_architecture(arch: str) -> None:
    """The fast engine's choice for each architecture is the one it says, and its loss is the plain engine's."""
    from jupyter_distill.core.errors import TrainingError
    from jupyter_distill.train import fast
    from jupyter_distill.train.engines import PlainEngine, TokenizedPair

    def pairs() -> list[TokenizedPair]:
        gen = torch.Generator().manual_seed(7)

        def draw(lo: int, hi: int) -> list[int]:
            return torch.randint(1, 97, (int(torch.randint(lo, hi, (1,), generator=gen)),), generator=gen).tolist()

        out = [TokenizedPair(i, draw(6, 12), draw(4, 10), draw(4, 10)) for i in range(4)]
        out[1].rejected_ids = None
        return out

    model = _tiny_lora_model(arch)
    plain, engine = PlainEngine(), fast.FastEngine(compile="off")
    plain_pairs, fast_pairs = pairs(), pairs()
    plain.prepare(model, plain_pairs)
    engine.prepare(model, fast_pairs)
    assert FAST_PATH[arch] in engine.reason, engine.reason
    loss_p, parts_p = plain.loss(model, plain_pairs)
    loss_f, parts_f = engine.loss(model, fast_pairs)
    assert float(loss_f.detach()) == pytest.approx(float(loss_p.detach()), rel=1e-4)
    for key in ("nll", "pref", "kl"):
        assert parts_f[key] == pytest.approx(parts_p[key], rel=1e-3, abs=1e-5), key
    if arch == "gemma3_text":  # a tree mask would override the sliding window: refused, not silently wrong
        with pytest.raises(TrainingError, match="sliding-window"):
            fast.FastEngine(layout="tree", compile="off").prepare(model, pairs())
