"""bond_loss against an independent float64 reference, gradcheck, and the edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.train.bond import bond_loss, bond_loss_reference


def _batch(b: int = 6, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "nll_chosen": torch.rand(b, generator=g, dtype=dtype) * 3,
        "logp_chosen": -torch.rand(b, generator=g, dtype=dtype) * 80,
        "ref_logp_chosen": -torch.rand(b, generator=g, dtype=dtype) * 80,
        "logp_rejected": -torch.rand(b, generator=g, dtype=dtype) * 80,
        "ref_logp_rejected": -torch.rand(b, generator=g, dtype=dtype) * 80,
        "kl_chosen": torch.rand(b, generator=g, dtype=dtype) * 0.2,
        "has_rejected": torch.tensor([i % 3 != 1 for i in range(b)]),
    }


def _ref(batch: dict[str, torch.Tensor], **kw: float) -> float:
    return bond_loss_reference(**{k: v.tolist() for k, v in batch.items()}, **kw)


@pytest.mark.parametrize("beta,gamma,tau", [(0.5, 0.1, 0.1), (0.2, 0.0, 1.0), (1.0, 0.3, 0.05), (0.0, 0.0, 0.1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_float64_reference(beta: float, gamma: float, tau: float, seed: int) -> None:
    batch = _batch(seed=seed)
    loss, parts = bond_loss(**batch, beta=beta, gamma=gamma, tau=tau)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(_ref(batch, beta=beta, gamma=gamma, tau=tau), rel=1e-12, abs=1e-12)
    # parts recombine into the loss
    again = (1 - beta) * parts["nll"] + beta * parts["pref"] + gamma * parts["kl"]
    assert again.item() == pytest.approx(loss.item(), rel=1e-12)


def test_parts_by_hand() -> None:
    batch = {
        "nll_chosen": torch.tensor([1.0, 3.0], dtype=torch.float64),
        "logp_chosen": torch.tensor([-10.0, -20.0], dtype=torch.float64),
        "ref_logp_chosen": torch.tensor([-12.0, -20.0], dtype=torch.float64),
        "logp_rejected": torch.tensor([-30.0, -5.0], dtype=torch.float64),
        "ref_logp_rejected": torch.tensor([-30.0, -9.0], dtype=torch.float64),
        "kl_chosen": torch.tensor([0.5, 0.1], dtype=torch.float64),
        "has_rejected": torch.tensor([True, True]),
    }
    loss, parts = bond_loss(**batch, beta=0.5, gamma=0.1, tau=0.1)
    # margins: (2 - 0) = 2 and (0 - 4) = -4
    assert parts["margin"].item() == pytest.approx(-1.0)
    assert parts["pref_acc"].item() == pytest.approx(0.5)
    assert parts["n_pref"].item() == 2
    pref = (math.log1p(math.exp(-0.2)) + math.log1p(math.exp(0.4))) / 2
    assert parts["pref"].item() == pytest.approx(pref)
    assert parts["nll"].item() == pytest.approx(2.0)
    assert parts["kl"].item() == pytest.approx(0.3)
    assert loss.item() == pytest.approx(0.5 * 2.0 + 0.5 * pref + 0.1 * 0.3)


def test_gradcheck() -> None:
    batch = _batch(b=5, seed=3)
    names = ["nll_chosen", "logp_chosen", "ref_logp_chosen", "logp_rejected", "ref_logp_rejected", "kl_chosen"]
    inputs = tuple(batch[n].clone().requires_grad_(True) for n in names)
    mask = batch["has_rejected"]

    def fn(*xs: torch.Tensor) -> torch.Tensor:
        return bond_loss(*xs, mask, beta=0.4, gamma=0.2, tau=0.3)[0]

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_no_row_has_rejected_means_pref_zero_and_no_gradient() -> None:
    batch = _batch(b=4)
    batch["has_rejected"] = torch.zeros(4, dtype=torch.bool)
    batch["logp_rejected"] = torch.full((4,), float("nan"), dtype=torch.float64, requires_grad=True)
    batch["logp_chosen"] = batch["logp_chosen"].clone().requires_grad_(True)
    loss, parts = bond_loss(**batch)
    assert parts["pref"].item() == 0.0
    assert parts["pref_acc"].item() == 0.0 and parts["n_pref"].item() == 0
    assert math.isfinite(loss.item())
    loss.backward()
    assert torch.all(batch["logp_rejected"].grad == 0)
    # the chosen log-prob only enters through the preference term: no rejected, no gradient
    assert torch.all(batch["logp_chosen"].grad == 0)
    nll, kl = batch["nll_chosen"].mean().item(), batch["kl_chosen"].mean().item()
    assert loss.item() == pytest.approx(0.5 * nll + 0.1 * kl, rel=1e-12)


def test_nan_filler_in_rows_without_rejected_does_not_leak() -> None:
    batch = _batch(b=6)
    lr = batch["logp_rejected"].clone()
    lr[~batch["has_rejected"]] = float("inf")
    batch["logp_rejected"] = lr.requires_grad_(True)
    loss, _ = bond_loss(**batch)
    clean = _batch(b=6)
    assert loss.item() == pytest.approx(_ref(clean), rel=1e-12)
    loss.backward()
    assert torch.isfinite(batch["logp_rejected"].grad).all()
    assert torch.all(batch["logp_rejected"].grad[~batch["has_rejected"]] == 0)


def test_beta0_gamma0_is_plain_nll() -> None:
    batch = _batch(b=5)
    nll = batch["nll_chosen"].clone().requires_grad_(True)
    batch["nll_chosen"] = nll
    loss, _ = bond_loss(**batch, beta=0.0, gamma=0.0)
    assert loss.item() == pytest.approx(nll.mean().item(), rel=1e-14)
    loss.backward()
    assert torch.allclose(nll.grad, torch.full_like(nll, 1 / 5))


def test_preference_gradient_direction() -> None:
    """Minimising the loss raises the chosen log-prob and lowers the rejected one."""
    batch = _batch(b=3)
    batch["has_rejected"] = torch.ones(3, dtype=torch.bool)
    lc = batch["logp_chosen"].clone().requires_grad_(True)
    lr = batch["logp_rejected"].clone().requires_grad_(True)
    batch["logp_chosen"], batch["logp_rejected"] = lc, lr
    bond_loss(**batch)[0].backward()
    assert (lc.grad < 0).all() and (lr.grad > 0).all()


def test_bf16_inputs_reduce_in_float32() -> None:
    batch = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in _batch().items()}
    loss, parts = bond_loss(**batch)
    assert loss.dtype == torch.float32 and parts["margin"].dtype == torch.float32
    as32 = {k: (v.float() if v.is_floating_point() else v) for k, v in batch.items()}
    assert loss.item() == pytest.approx(bond_loss(**as32)[0].item(), rel=1e-6)


def test_large_margins_are_stable() -> None:
    batch = _batch(b=2)
    batch["has_rejected"] = torch.ones(2, dtype=torch.bool)
    batch["logp_chosen"] = torch.tensor([0.0, -1e5], dtype=torch.float64)
    batch["ref_logp_chosen"] = torch.tensor([-1e5, 0.0], dtype=torch.float64)
    loss, _ = bond_loss(**batch, tau=1.0)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(_ref(batch, tau=1.0), rel=1e-9)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"kl_chosen": torch.zeros(3, dtype=torch.float64)}, "kl_chosen"),
        ({"has_rejected": torch.ones(6)}, "has_rejected"),
        ({"nll_chosen": torch.zeros(2, 3, dtype=torch.float64)}, "nll_chosen"),
    ],
)
def test_bad_shapes_name_the_argument(change: dict[str, torch.Tensor], field: str) -> None:
    batch = _batch()
    batch.update(change)
    with pytest.raises(TrainingError) as info:
        bond_loss(**batch)
    assert info.value.field == field and field in str(info.value)


@pytest.mark.parametrize(
    "kw,field", [({"beta": 1.5}, "bond_beta"), ({"gamma": -1}, "bond_gamma"), ({"tau": 0}, "bond_tau")]
)
def test_bad_hyperparameters(kw: dict[str, float], field: str) -> None:
    with pytest.raises(TrainingError) as info:
        bond_loss(**_batch(), **kw)
    assert info.value.field == field
