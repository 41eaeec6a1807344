"""Check a GGUF against the HF model it came from: greedy next-token agreement, position by position.

A conversion bug (wrong permutation, wrong pre-tokenizer, wrong rope) shows up as fluent nonsense,
not as an error, so every export is loaded back through llama.cpp and compared with the merged HF
model on the same token sequences; the thresholds here are what an export must reach.
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MIN_F16_AGREEMENT = 0.95
# An adapter export is compared with the merged model, but llama.cpp applies the LoRA at run time
# to f16 base weights, where the merge added it to fp32 weights: near-ties can flip either way.
MIN_ADAPTER_AGREEMENT = 0.9
MAX_CHECK_PROMPTS = 16  # held-out prompts taken from the run store when none are given

DEFAULT_CHECK_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash table is in one sentence.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish.",
    "Classify the sentiment: 'I loved this film!'",
    'Return a JSON object with keys "name" and "age".',
    "Summarise: The meeting was moved from Monday to Wednesday at 3pm.",
)


# ---------------------------------------------------------------------------------------- agreement
def render_prompts(tokenizer: Any, prompts: Sequence[Any]) -> list[list[int]]:
    """Token ids of each prompt as the student sees it (chat template when it has one)."""
    out = []
    for prompt in prompts:
        messages = getattr(prompt, "messages", prompt)
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = "\n".join(str(m.get("content", "")) for m in messages)
            ids = tokenizer(text)["input_ids"]
        out.append(list(ids))
    return out


def check_agreement(
    hf_folder: str | Path,
    ggufs: dict[str, Path],
    prompts: Sequence[Any] = (),
    *,
    new_tokens: int = 16,
    n_ctx: int = 1024,
    lora: str | Path | None = None,
    ram_budget: int | None = None,
) -> dict[str, Any]:
    """Greedy next-token agreement of each GGUF with the HF model, position by position.

    ``lora``: a llama.cpp LoRA GGUF applied over each file (an adapter export is checked as served).
    ``ram_budget``: bytes of RAM the fp32 reference may hold; beyond it, its layers go to disk
    (:func:`load_reference`), so an 8B student is checked at full precision on a 24 GB machine.

    The HF model generates ``new_tokens`` greedily after each prompt; llama.cpp then evaluates the
    same token sequence and at every position we compare the two argmaxes. Scoring positions along
    one shared sequence (teacher forcing) keeps one early flip from counting as a whole divergent
    continuation. The rendered prompt text is also tokenized by llama.cpp and compared with HF's
    ids: that catches a wrong pre-tokenizer, which argmax agreement alone would not.
    """
    from transformers import AutoTokenizer

    from jupyter_distill.core.runtime import load_llama

    hf_folder = Path(hf_folder)
    prompts = list(prompts) or list(DEFAULT_CHECK_PROMPTS)
    tokenizer = AutoTokenizer.from_pretrained(str(hf_folder))
    # Offloaded layers live beside the merged folder (same disk) only while the reference runs.
    with tempfile.TemporaryDirectory(prefix=".check-offload-", dir=hf_folder.parent) as offload_dir:
        model, offloaded = load_reference(hf_folder, Path(offload_dir), ram_budget)
        try:
            sequences, starts, reference, texts = _reference_tokens(model, tokenizer, prompts, new_tokens, n_ctx)
        finally:
            del model

    report: dict[str, Any] = {
        "agreement": {},
        "positions": sum(len(r) for r in reference),
        "prompts": len(prompts),
        "reference": {"dtype": "float32", "offloaded_bytes": offloaded},
    }
    for qtype, path in ggufs.items():
        extra = {"lora_path": str(lora)} if lora else {}
        llm = load_llama(str(path), n_ctx=n_ctx, logits_all=True, **extra)
        try:
            same = total = 0
            for seq, start, ref in zip(sequences, starts, reference, strict=True):
                llm.reset()
                llm.eval(seq)
                scores = np.asarray(llm.scores[: len(seq)])
                pred = scores[start:].argmax(-1).tolist()
                same += sum(int(a == b) for a, b in zip(pred, ref, strict=True))
                total += len(ref)
            report["agreement"][qtype] = same / max(total, 1)
            if "tokenizer_match" not in report:
                matched = 0
                for text, seq, start in zip(texts, sequences, starts, strict=True):
                    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
                    matched += int(list(ids) == seq[: start + 1])
                report["tokenizer_match"] = matched / max(len(texts), 1)
        finally:
            llm.close()
    return report


# ------------------------------------------------------------------------------------ the reference
def _reference_tokens(
    model: Any, tokenizer: Any, prompts: Sequence[Any], new_tokens: int, n_ctx: int
) -> tuple[list[list[int]], list[int], list[list[int]], list[str]]:
    """Per prompt: the greedy sequence, where scoring starts, the HF argmax per position, the prompt text."""
    import torch

    eos = model.generation_config.eos_token_id
    sequences, starts, reference, texts = [], [], [], []
    with torch.inference_mode():
        for ids in render_prompts(tokenizer, prompts):
            ids = ids[: n_ctx - new_tokens - 1]
            inp = torch.tensor([ids])
            gen = model.generate(
                inp,
                attention_mask=torch.ones_like(inp),
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            )[0].tolist()
            logits = model(torch.tensor([gen])).logits[0]
            start = len(ids) - 1
            sequences.append(gen)
            starts.append(start)
            reference.append(logits[start:].argmax(-1).tolist())
            texts.append(tokenizer.decode(ids, skip_special_tokens=False))
    return sequences, starts, reference, texts


def fp32_bytes(hf_folder: str | Path) -> int:
    """Bytes the folder's weights take in fp32, from the safetensors headers alone (nothing loaded)."""
    total = 0
    for shard in sorted(Path(hf_folder).glob("*.safetensors")):
        with shard.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                numel = 1
                for dim in entry["shape"]:
                    numel *= int(dim)
                total += 4 * numel
    return total


def load_reference(hf_folder: Path, offload_dir: Path, ram_budget: int | None) -> tuple[Any, int]:
    """The merged model in fp32 for the check, and how many of its bytes were placed on disk.

    Within ``ram_budget`` the model loads as usual. Beyond it, accelerate's device map keeps as many
    layers in RAM as the budget allows and leaves the rest on disk (read from the safetensors files
    themselves; ``offload_dir`` takes any that are not), loading each one at its forward pass. The
    reference keeps fp32 precision (a bf16 reference would flip near-ties and blur the check) and
    the peak stays within the budget.
    """
    import torch
    from transformers import AutoModelForCausalLM

    need = fp32_bytes(hf_folder)
    if ram_budget is None or need <= ram_budget:
        model = AutoModelForCausalLM.from_pretrained(str(hf_folder), dtype=torch.float32, trust_remote_code=False)
        return model.eval(), 0
    model = AutoModelForCausalLM.from_pretrained(
        str(hf_folder),
        dtype=torch.float32,
        trust_remote_code=False,
        device_map="auto",
        max_memory={"cpu": int(ram_budget)},
        offload_folder=str(offload_dir),
    )
    # accelerate leaves an offloaded parameter on the meta device and loads it from disk when used
    offloaded = sum(4 * p.numel() for p in model.parameters() if p.device.type == "meta")
    return model.eval(), offloaded


__all__ = [
    "DEFAULT_CHECK_PROMPTS",
    "MAX_CHECK_PROMPTS",
    "MIN_ADAPTER_AGREEMENT",
    "MIN_F16_AGREEMENT",
    "check_agreement",
    "fp32_bytes",
    "load_reference",
    "render_prompts",
]
