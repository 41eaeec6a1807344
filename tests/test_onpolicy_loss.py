"""onpolicy_loss against an independent float64 reference, its gradient, and its expectation = ∇ KL(π ‖ p_T)."""

from __future__ import annotations

import pytest
import torch

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.train.onpolicy import onpolicy_loss, onpolicy_loss_reference


def _batch(samples: int = 4, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 7, (samples,), generator=g)
    owner = torch.arange(samples).repeat_interleave(lengths)
    owner = owner[torch.randperm(owner.numel(), generator=g)]  # tokens need not be grouped
    n = owner.numel()
    return {
        "token_logp": -torch.rand(n, generator=g, dtype=dtype) * 6,
        "teacher_logp": -torch.rand(n, generator=g, dtype=dtype) * 6,
        "token_sample": owner,
        "kl_anchor": torch.rand(samples, generator=g, dtype=dtype) * 0.3,
    }


def _ref(batch: dict[str, torch.Tensor], **kw: float) -> float:
    return onpolicy_loss_reference(**{k: v.tolist() for k, v in batch.items()}, **kw)


@pytest.mark.parametrize("kl_weight", [0.0, 0.05, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("samples", [1, 3, 8])
def test_matches_float64_reference(kl_weight: float, seed: int, samples: int) -> None:
    batch = _batch(samples, seed)
    loss, parts = onpolicy_loss(**batch, kl_weight=kl_weight)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(_ref(batch, kl_weight=kl_weight), rel=1e-12, abs=1e-12)
    assert (parts["pg"] + kl_weight * parts["kl_anchor"]).item() == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
    delta = batch["token_logp"] - batch["teacher_logp"]
    assert parts["reverse_kl"].item() == pytest.approx(delta.mean().item(), rel=1e-12)
    assert parts["n_tokens"].item() == batch["token_logp"].numel()
    assert parts["n_samples"].item() == samples


def test_parts_by_hand() -> None:
    loss, parts = onpolicy_loss(
        torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64),
        torch.tensor([-1.5, -1.0, -0.5], dtype=torch.float64),
        torch.tensor([0, 0, 1]),
        torch.tensor([0.2, 0.4], dtype=torch.float64),
        kl_weight=0.5,
    )
    # δ = (0.5, −1, 0); pg = mean(δ · log π) = (0.5·−1 + −1·−2 + 0) / 3 = 0.5
    assert parts["pg"].item() == pytest.approx(0.5)
    assert parts["reverse_kl"].item() == pytest.approx(-0.5 / 3)
    assert parts["kl_anchor"].item() == pytest.approx(0.3)
    assert loss.item() == pytest.approx(0.5 + 0.5 * 0.3)


def test_gradient_is_the_detached_advantage_over_the_token_count() -> None:
    batch = _batch(5, seed=7)
    logp = batch["token_logp"].clone().requires_grad_(True)
    kl = batch["kl_anchor"].clone().requires_grad_(True)
    loss, _ = onpolicy_loss(logp, batch["teacher_logp"], batch["token_sample"], kl, kl_weight=0.3)
    loss.backward()
    n = logp.numel()
    assert torch.allclose(logp.grad, (batch["token_logp"] - batch["teacher_logp"]) / n, rtol=1e-12, atol=0)
    assert torch.allclose(kl.grad, torch.full_like(kl, 0.3 / kl.numel()), rtol=1e-12, atol=0)


def test_expected_gradient_is_the_reverse_kl_gradient() -> None:
    """Over one categorical step, E_{y~π}[∇ surrogate] = ∇ KL(π ‖ p_T): the estimator is unbiased."""
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(7, dtype=torch.float64, generator=g), dim=-1)
    logp_all = torch.log_softmax(theta, dim=-1)
    exact = (logp_all.exp() * (logp_all - teacher)).sum()
    (want,) = torch.autograd.grad(exact, theta)
    got = torch.zeros_like(theta)
    probs = logp_all.detach().exp()
    for y in range(7):  # the expectation, enumerated exactly
        logp = torch.log_softmax(theta, dim=-1)[y : y + 1]
        loss, _ = onpolicy_loss(logp, teacher[y : y + 1], torch.tensor([0]), torch.zeros(1, dtype=torch.float64), 0.0)
        (grad,) = torch.autograd.grad(loss, theta)
        got += probs[y] * grad
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_bf16_inputs_reduce_in_float32() -> None:
    batch = _batch(3, seed=1, dtype=torch.bfloat16)
    loss, _ = onpolicy_loss(**batch)
    assert loss.dtype == torch.float32
    as64 = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}
    assert loss.item() == pytest.approx(_ref(as64), rel=1e-5)


def test_no_tokens_gives_zero_policy_gradient_with_a_graph() -> None:
    logp = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    loss, parts = onpolicy_loss(
        logp, torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    )
    assert loss.item() == 0.0 and parts["n_tokens"].item() == 0
    loss.backward()


@pytest.mark.parametrize(
    "change,field",
    [
        ({"teacher_logp": torch.tensor([-1.0, float("-inf")], dtype=torch.float64)}, "teacher_logp"),
        ({"teacher_logp": torch.tensor([-1.0], dtype=torch.float64)}, "teacher_logp"),
        ({"token_sample": torch.tensor([0.0, 1.0])}, "token_sample"),
        ({"token_sample": torch.tensor([0, 5])}, "kl_anchor"),
        ({"token_logp": torch.zeros(2, 1, dtype=torch.float64)}, "token_logp"),
    ],
)
def test_bad_inputs_name_the_field(change: dict[str, torch.Tensor], field: str) -> None:
    batch = {
        "token_logp": torch.tensor([-1.0, -2.0], dtype=torch.float64),
        "teacher_logp": torch.tensor([-1.0, -2.0], dtype=torch.float64),
        "token_sample": torch.tensor([0, 1]),
        "kl_anchor": torch.zeros(2, dtype=torch.float64),
    }
    with pytest.raises(TrainingError) as info:
        onpolicy_loss(**{**batch, **change})
    assert info.value.field == field
    with pytest.raises(TrainingError) as info:
        onpolicy_loss(**batch, kl_weight=-1.0)
    assert info.value.field == "jbond_kl"
