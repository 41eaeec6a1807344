"""The student's on-policy samples: batched, seeded per call, reproducible, the caller's RNG untouched."""

from __future__ import annotations

import pytest
import torch
from test_trainer import tiny_student

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.train.rollout import sample_student, step_seed

PROMPTS = [
    [{"role": "user", "content": "What is 2 plus 2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour, any colour you like."}],
]


def test_samples_are_batched_in_prompt_order_and_bounded() -> None:
    student = tiny_student()
    samples = sample_student(student, student.model, PROMPTS, n=3, max_new_tokens=6, seed=1)
    assert [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1]
    for s in samples:
        assert 1 <= len(s.ids) <= 6
        assert s.prompt_ids == tuple(student.prompt_ids(PROMPTS[s.prompt_index]))
        assert s.finished == (s.ids[-1] == student.info.end_of_turn_id)
        expected = student.tokenizer.decode(list(s.ids[:-1] if s.finished else s.ids), skip_special_tokens=True)
        assert s.text == expected


def test_same_seed_same_samples_and_global_rng_untouched() -> None:
    student = tiny_student()
    student.model.train()
    before = torch.get_rng_state()
    a = sample_student(student, student.model, PROMPTS, n=2, max_new_tokens=8, seed=step_seed(0, 3))
    assert torch.equal(torch.get_rng_state(), before)
    assert student.model.training  # restored after sampling in eval mode
    b = sample_student(student, student.model, PROMPTS, n=2, max_new_tokens=8, seed=step_seed(0, 3))
    c = sample_student(student, student.model, PROMPTS, n=2, max_new_tokens=8, seed=step_seed(0, 4))
    assert [s.ids for s in a] == [s.ids for s in b]
    assert [s.ids for s in a] != [s.ids for s in c]  # a random-init model over a 49k vocabulary


def test_samples_follow_the_policy_distribution() -> None:
    """Without top-k/top-p truncation: a first token with tiny probability still appears over many draws
    exactly as often as the softmax says (a policy-gradient estimate needs samples from the policy)."""
    student = tiny_student()
    prompt = [PROMPTS[0]]
    ids = torch.tensor([student.prompt_ids(PROMPTS[0])])
    with torch.no_grad():
        probs = torch.softmax(student.model(ids).logits[0, -1].double(), -1)
    draws = sample_student(student, student.model, prompt, n=400, max_new_tokens=1, seed=5)
    first = torch.tensor([s.ids[0] for s in draws])
    # mean probability of the drawn tokens is E_p[p], which top-1 or top-k sampling would inflate
    drawn = probs[first].mean().item()
    expected = (probs * probs).sum().item()
    assert drawn == pytest.approx(expected, rel=0.5)
    assert len(set(first.tolist())) > 50


def test_bad_arguments_name_the_knob() -> None:
    student = tiny_student()
    with pytest.raises(TrainingError) as info:
        sample_student(student, student.model, PROMPTS, n=0, max_new_tokens=4, seed=0)
    assert info.value.field == "jbond_n"
    with pytest.raises(TrainingError) as info:
        sample_student(student, student.model, PROMPTS, n=1, max_new_tokens=0, seed=0)
    assert info.value.field == "jbond_max_new_tokens"
