"""The student's own answers, sampled while it trains: the on-policy half of J-BOND.

One ``generate`` call per batch: every prompt is left-padded into one tensor and repeated ``n``
times, and transformers decodes all rows together with its KV cache, on CPU as on a GPU. The
random stream is forked and seeded from ``seed`` for the call alone, so the samples of a step are
a function of ``(seed, weights, prompts)``: a resumed run that passes the same per-step seed draws
the same samples without the global RNG state having to be saved, and the caller's RNG is left
exactly as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.train.student import LoadedStudent


@dataclass(frozen=True)
class StudentSample:
    """One sampled answer: which prompt it answers, its token ids (ending with the end-of-turn
    token when the student stopped by itself) and its text without special tokens."""

    prompt_index: int
    prompt_ids: tuple[int, ...]
    ids: tuple[int, ...]
    text: str
    finished: bool


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of training step ``step`` of a run seeded ``seed`` (fits in 63 bits)."""
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1)


def sample_student(
    student: LoadedStudent,
    model: Any,
    prompts: Sequence[Sequence[dict[str, Any]]],
    *,
    n: int,
    max_new_tokens: int,
    seed: int,
    temperature: float = 1.0,
) -> list[StudentSample]:
    """``n`` samples per prompt from ``model`` (the student with its current adapter), in prompt order.

    Sampling is plain ancestral sampling at ``temperature`` (no top-k/top-p): the policy gradient
    is unbiased only for samples drawn from the policy whose log-probs it differentiates.
    """
    if n < 1 or max_new_tokens < 1 or not prompts:
        raise TrainingError(
            f"sample_student: need n >= 1, max_new_tokens >= 1 and at least one prompt "
            f"(got n={n}, max_new_tokens={max_new_tokens}, {len(prompts)} prompts).",
            field="jbond_n" if n < 1 else "jbond_max_new_tokens",
            value=n if n < 1 else max_new_tokens,
            fix="use jbond_n >= 1 and jbond_max_new_tokens >= 1",
        )
    if not temperature > 0:
        raise TrainingError(
            f"sample_student: temperature={temperature} must be > 0 for on-policy samples.",
            field="temperature",
            value=temperature,
            fix="use a positive temperature, e.g. 1.0",
        )
    tok = student.tokenizer
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else student.info.end_of_turn_id)
    eot_id = int(student.info.end_of_turn_id)
    encoded = [student.prompt_ids(messages) for messages in prompts]
    width = max(len(ids) for ids in encoded)
    device = next(model.parameters()).device
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):  # left padding: every row's last prompt token is at -1
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids) :] = 1

    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                do_sample=True,
                temperature=float(temperature),
                top_k=0,
                top_p=1.0,
                max_new_tokens=int(max_new_tokens),
                num_return_sequences=int(n),
                use_cache=True,
                pad_token_id=pad_id,
                eos_token_id=eot_id,
            )
    finally:
        model.train(was_training)

    samples: list[StudentSample] = []
    for row, generated in enumerate(out[:, width:].tolist()):
        index = row // n
        ids: list[int] = []
        finished = False
        for token in generated:
            ids.append(token)
            if token == eot_id:
                finished = True
                break
        text = tok.decode(ids[:-1] if finished else ids, skip_special_tokens=True)
        samples.append(StudentSample(index, tuple(encoded[index]), tuple(ids), text, finished))
    return samples


__all__ = ["StudentSample", "sample_student", "step_seed"]
