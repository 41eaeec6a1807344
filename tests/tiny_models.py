"""Tiny random-initialised models of real architectures, saved as HF folders, for export/serving tests.

Speed does not depend on the weights, and correctness of a conversion does not either: a wrong
permutation or tensor map breaks agreement on random weights just as on trained ones. Weights are
initialised with a larger spread than the default (0.02) so the logits are far apart and f16
rounding does not flip greedy argmaxes between near-ties, which would say nothing about the
converter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Write a haiku about the sea: waves fold into foam, salt wind carries gulls, the tide keeps its time.",
    "Classify the ticket: refund please. Category: billing. Priority 2 of 5.",
    'Return JSON: {"name": "Ada", "age": 36, "tags": ["math", "engines"]}',
    "1 2 3 4 5 6 7 8 9 10 100 2024 3.14159 - numbers and digits 42",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
] * 4
CHECK_PROMPTS = [
    "What is the capital of France?",
    [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Name: Ada, age 36"}],
    "Classify: refund please 123",
]


def smol_hf_folder() -> Path:
    """The dequantized SmolLM2-135M folder (cached by models.dequantized_hf_folder); skip without it."""
    from jupyter_distill.core import models
    from jupyter_distill.core.errors import ConfigError

    try:
        return models.dequantized_hf_folder(models.resolve_local_gguf("smollm2-135m"))
    except ConfigError as exc:
        pytest.skip(f"SmolLM2 GGUF not installed: {exc}")


def _widen(model: Any, std: float) -> None:
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, std)


def build_tiny_llama(folder: Path, *, rope_scaling: dict[str, Any] | None = None, tied: bool = True) -> Path:
    """A 2-layer llama (hidden 64, GQA 4/2 heads) with the real SmolLM2 tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    smol = smol_hf_folder()
    kwargs: dict[str, Any] = {}
    if rope_scaling:
        kwargs["rope_scaling"] = rope_scaling
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        **kwargs,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    _widen(model, 0.15)
    model.save_pretrained(str(folder), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(smol)).save_pretrained(str(folder))
    return folder


def _tiny_bpe_tokenizer(vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer with the Qwen2 pre-tokenizer regex, trained on a few sentences."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )


def build_tiny_qwen(folder: Path, arch: str = "qwen2") -> Path:
    """A 2-layer Qwen2 (q/k/v biases, untied head) or Qwen3 (q/k norms, head_dim 32 != 64/4).

    The embedding has more rows (512) than the tokenizer has tokens, as Qwen pads its vocab.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tokenizer = _tiny_bpe_tokenizer()
    common = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "qwen2":
        config = Qwen2Config(**common)
        cls = Qwen2ForCausalLM
    else:
        config = Qwen3Config(**common, head_dim=32)
        cls = Qwen3ForCausalLM
    torch.manual_seed(0)
    model = cls(config)
    _widen(model, 0.15)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def add_lora_adapter(base: Path, adapter_dir: Path, *, seed: int = 1) -> Any:
    """A LoRA adapter with non-zero B (so merging changes the weights), saved as safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    peft_model.save_pretrained(str(adapter_dir), safe_serialization=True)
    data = json.loads((adapter_dir / "adapter_config.json").read_text())
    data["base_model_name_or_path"] = str(base)
    (adapter_dir / "adapter_config.json").write_text(json.dumps(data))
    return peft_model


#: Every architecture of STUDENT_MODEL_MAP (and the families added with them), as the transformers
#: config class a real checkpoint of it has. Sizes are tiny; the intermediate size is 256 so that the
#: FFN down projection has k-quant-sized rows and q4_k_m really uses k-quants for it.
TINY_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3_text", "smollm3", "phi3", "granite")


def build_tiny_arch(folder: Path, arch: str, *, chat_template: bool = True) -> Path:
    """A 2-layer random-init model of ``arch``'s exact config class with SmolLM2's real tokenizer.

    ``chat_template=False`` saves the tokenizer without one, as a base (pre-trained) model ships.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smol_hf_folder()))
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    config = _tiny_config(arch, common)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    _widen(model, 0.15)
    model.save_pretrained(str(folder), safe_serialization=True)
    if not chat_template:
        tokenizer.chat_template = None
    tokenizer.save_pretrained(str(folder))
    if not chat_template:
        (folder / "chat_template.jinja").unlink(missing_ok=True)
    if arch == "phi3":  # Phi-4-mini ships a GPT-2 style BPE declared as such (Phi-3 used SentencePiece)
        path = folder / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "tokenizer_class": "GPT2Tokenizer"}))
    return folder


def _tiny_config(arch: str, common: dict[str, Any]) -> Any:
    from transformers import (
        Gemma3TextConfig,
        GraniteConfig,
        LlamaConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
        SmolLM3Config,
    )

    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if arch == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=False)
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=32, tie_word_embeddings=False)
    if arch == "gemma3_text":
        # Gemma 3's own choices: head_dim 256 independent of the hidden size (as in every Gemma 3;
        # transformers' GGUF reader assumes it), query pre-attention scalar, local/global rope bases
        # and sliding-window layers (window 8 < the check sequences).
        return Gemma3TextConfig(
            **common, head_dim=256, query_pre_attn_scalar=256, sliding_window=8, tie_word_embeddings=True
        )
    if arch == "smollm3":
        return SmolLM3Config(**common, tie_word_embeddings=True)
    if arch == "phi3":
        return Phi3Config(**common, tie_word_embeddings=False)
    if arch == "granite":
        # Granite scales embeddings, residuals, attention and logits by its own multipliers.
        return GraniteConfig(
            **common,
            tie_word_embeddings=True,
            embedding_multiplier=4.0,
            residual_multiplier=0.5,
            attention_multiplier=0.1,
            logits_scaling=2.0,
        )
    raise ValueError(f"no tiny config for {arch!r}")
