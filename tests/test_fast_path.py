"""The CUDA fast path's pieces on CPU: engine selection, packing, chunked log-prob/KL, and the fast
engine against the plain engine on a tiny random-init Llama."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.train import fast
from jupyter_distill.train.choice import select_engine
from jupyter_distill.train.chunked import (
    default_chunk_size,
    segment_sum,
    token_logp_and_kl,
    token_logp_and_kl_reference,
)
from jupyter_distill.train.engines import PlainEngine, TokenizedPair
from jupyter_distill.train.packing import (
    BRANCH_CHOSEN,
    BRANCH_PROMPT,
    BRANCH_REJECTED,
    PairTokens,
    assign_rows,
    pack_pairs,
    pad_sequences,
    tree_attention_mask,
)

REPO = Path(__file__).resolve().parents[1]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ------------------------------------------------------------------------------------ fixtures
def _tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float64, attn: str = "sdpa") -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    config._attn_implementation = attn
    return LlamaForCausalLM(config).to(dtype).eval()


def _tiny_lora(seed: int = 0) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    model = _tiny_llama(seed, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # policy != reference, so pref and KL are not trivially 0
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.train()


def _pairs(seed: int, n: int = 4, vocab: int = 97) -> list[TokenizedPair]:
    gen = torch.Generator().manual_seed(seed)

    def draw(lo: int, hi: int) -> list[int]:
        k = int(torch.randint(lo, hi, (1,), generator=gen))
        return torch.randint(1, vocab, (k,), generator=gen).tolist()

    out = [TokenizedPair(i, draw(2, 9), draw(1, 8), draw(1, 8)) for i in range(n)]
    out[1].rejected_ids = None  # a prompt with a single surviving candidate
    return out


def _copy(pairs: list[TokenizedPair]) -> list[TokenizedPair]:
    return [TokenizedPair(p.index, list(p.prompt_ids), list(p.chosen_ids), p.rejected_ids) for p in pairs]


def _unpacked_logps(model: torch.nn.Module, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Per-token log-probs of ``response`` after ``prompt``, one sequence alone, full softmax."""
    ids = torch.tensor([prompt + response])
    logits = model(ids).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None]).squeeze(1)


# ------------------------------------------------------------------------------------ selection
def test_select_engine_reasons_without_cuda() -> None:
    engine, reason = select_engine("cpu", "auto")
    assert engine.name == "plain"
    assert "plain PEFT engine on cpu" in reason and "CUDA" in reason

    engine, reason = select_engine("cpu", "fast")  # allowed on CPU: runs the fast path in reference mode
    assert isinstance(engine, fast.FastEngine)
    assert "reference mode" in reason and "unsloth" in reason.lower()

    engine, reason = select_engine("cpu", "plain")
    assert engine.name == "plain" and "asked for" in reason


def test_create_engine_on_cuda_names_the_path_and_unsloth_state() -> None:
    engine, reason = fast.create_engine("cuda", beta=0.3)
    assert engine is not None and engine.beta == 0.3
    assert reason.startswith("CUDA fast path on cuda")
    has_unsloth, _ = fast.unsloth_available()
    assert ("Unsloth is installed" in reason) == has_unsloth


def test_create_engine_rejects_unknown_options() -> None:
    with pytest.raises(TrainingError) as err:
        fast.create_engine("cuda", bogus=1)
    assert err.value.field == "engine options" and "bogus" in str(err.value)
    with pytest.raises(TrainingError) as err:
        fast.FastEngine(layout="diagonal")
    assert err.value.field == "layout"


def test_fast_engine_falls_back_to_plain_when_lm_head_is_trained() -> None:
    model = _tiny_lora()
    model.get_base_model().lm_head.weight.requires_grad_(True)
    engine = fast.FastEngine()
    pairs = _pairs(3)
    engine.prepare(model, pairs)
    assert "plain PEFT engine" in engine.reason and "lm_head is trained" in engine.reason
    assert engine.name == "plain"
    loss, parts = engine.loss(model, pairs)
    assert torch.isfinite(loss) and "tokens_computed" not in parts


def test_not_an_unsloth_model() -> None:
    assert fast.is_unsloth_model(_tiny_lora()) is False


# ------------------------------------------------------------------------------------ packing
def test_assign_rows_first_fit_decreasing() -> None:
    rows = assign_rows([5, 9, 3, 7, 1], row_tokens=10)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4]
    assert all(sum([5, 9, 3, 7, 1][i] for i in row) <= 10 for row in rows)
    assert len(rows) == 3  # 25 tokens need at least 3 rows of 10


def test_tree_layout_positions_and_mask() -> None:
    pair = PairTokens([11, 12, 13], [21, 22], [31, 32, 33])
    batch = pack_pairs([pair], pad_multiple=1)
    assert batch.input_ids[0].tolist() == [11, 12, 13, 21, 22, 31, 32, 33]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]
    assert batch.branch_ids[0].tolist() == [BRANCH_PROMPT] * 3 + [BRANCH_CHOSEN] * 2 + [BRANCH_REJECTED] * 3
    # chosen token k is predicted at flat position 2 + k; rejected token 0 by the last prompt token
    assert batch.chosen_pos.tolist() == [2, 3] and batch.chosen_tgt.tolist() == [21, 22]
    assert batch.rejected_pos.tolist() == [2, 5, 6] and batch.rejected_tgt.tolist() == [31, 32, 33]
    mask = tree_attention_mask(batch.tree_ids, batch.branch_ids)[0, 0]
    assert mask[5, :3].all() and not mask[5, 3:5].any() and mask[5, 5]  # rejected never sees chosen
    assert mask[4, :5].all() and not mask[4, 5:].any()


def test_packed_log_probs_equal_unpacked() -> None:
    """Trees, several per row, with padding: every response token's log-prob equals the one of its
    own sequence run alone (float64), for both layouts."""
    model = _tiny_llama()
    pairs = [
        PairTokens([5, 6, 7, 8, 9], [10, 11, 12, 13], [14, 15, 16, 17, 18, 19]),
        PairTokens([20, 21, 22], [23, 24, 25, 26, 27, 28, 29], None),
        PairTokens([30, 31, 32, 33, 34, 35, 36, 37, 38], [39, 40], [41, 42, 43]),
        PairTokens([44], [45], [46]),
    ]
    for batch, mask in (
        (pack_pairs(pairs, row_tokens=24, pad_multiple=8), True),
        (pad_sequences(pairs, pad_multiple=8), False),
    ):
        assert batch.padded_tokens >= batch.real_tokens
        kwargs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "use_cache": False}
        if mask:
            assert batch.rows < len(pairs)  # something was actually packed together
            kwargs["attention_mask"] = tree_attention_mask(batch.tree_ids, batch.branch_ids)
        with torch.no_grad():
            hidden = model.model(**kwargs).last_hidden_state.reshape(-1, 32)
            logp_c, _ = token_logp_and_kl_reference(hidden[batch.chosen_pos], model.lm_head.weight, batch.chosen_tgt)
            logp_r, _ = token_logp_and_kl_reference(
                hidden[batch.rejected_pos], model.lm_head.weight, batch.rejected_tgt
            )
            for b, pair in enumerate(pairs):
                expected = _unpacked_logps(model, list(pair.prompt_ids), list(pair.chosen_ids))
                torch.testing.assert_close(logp_c[batch.chosen_pair == b], expected, rtol=0, atol=1e-10)
                if pair.rejected_ids:
                    expected = _unpacked_logps(model, list(pair.prompt_ids), list(pair.rejected_ids))
                    torch.testing.assert_close(logp_r[batch.rejected_pair == b], expected, rtol=0, atol=1e-10)


def test_tree_mask_matters() -> None:
    """Without the branch rule (rejected seeing chosen) the rejected log-probs change: the equality
    test above is not vacuous."""
    model = _tiny_llama()
    pair = PairTokens([5, 6, 7], [8, 9, 10, 11], [12, 13, 14])
    batch = pack_pairs([pair], pad_multiple=1)
    leaky = tree_attention_mask(batch.tree_ids, torch.zeros_like(batch.branch_ids))
    with torch.no_grad():
        hidden = model.model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=leaky)
        flat = hidden.last_hidden_state.reshape(-1, 32)
        logp_r, _ = token_logp_and_kl_reference(flat[batch.rejected_pos], model.lm_head.weight, batch.rejected_tgt)
    expected = _unpacked_logps(model, [5, 6, 7], [12, 13, 14])
    assert (logp_r[1:] - expected[1:]).abs().max() > 1e-6


def test_packing_rejects_bad_input() -> None:
    with pytest.raises(TrainingError) as err:
        pack_pairs([PairTokens([], [1], [2])])
    assert err.value.field == "prompt_ids"
    with pytest.raises(TrainingError) as err:
        pack_pairs([PairTokens([1, 2, 3], [4, 5], None)], row_tokens=3)
    assert err.value.field == "row_tokens"
    with pytest.raises(TrainingError):
        pad_sequences([])


# ------------------------------------------------------------------------------------ chunked
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_logp_kl_equal_full_softmax_float64(chunk: int) -> None:
    torch.manual_seed(chunk)
    n, h, v = 23, 12, 131
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(v, dtype=torch.float64, requires_grad=True)
    ref_hidden = torch.randn(n, h, dtype=torch.float64)
    targets = torch.randint(0, v, (n,))
    logp, kl = token_logp_and_kl(hidden, weight, targets, ref_hidden=ref_hidden, bias=bias, chunk_size=chunk)
    ref_logp, ref_kl = token_logp_and_kl_reference(hidden, weight, targets, ref_hidden=ref_hidden, bias=bias)
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=1e-12)
    torch.testing.assert_close(kl, ref_kl, rtol=0, atol=1e-12)
    assert (kl >= 0).all()
    # gradients for arbitrary upstream weights on both outputs (as bond_loss produces)
    w1, w2 = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    got = torch.autograd.grad((logp * w1).sum() + (kl * w2).sum(), (hidden, weight, bias))
    want = torch.autograd.grad((ref_logp * w1).sum() + (ref_kl * w2).sum(), (hidden, weight, bias))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-11)


def test_chunked_without_reference_and_gradcheck() -> None:
    torch.manual_seed(1)
    hidden = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, dtype=torch.float64)
    targets = torch.randint(0, 9, (6,))
    logp, kl = token_logp_and_kl(hidden, weight, targets, chunk_size=4)
    assert (kl == 0).all() and (logp < 0).all()
    ref_hidden = torch.randn(6, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: token_logp_and_kl(x, weight, targets, ref_hidden=ref_hidden, chunk_size=4), (hidden,)
    )


def test_chunked_validates_shapes_and_defaults() -> None:
    assert default_chunk_size(32000) == 1048 and default_chunk_size(10**9) == 16
    with pytest.raises(TrainingError) as err:
        token_logp_and_kl(torch.randn(3, 4), torch.randn(5, 6), torch.zeros(3, dtype=torch.long))
    assert err.value.field == "hidden"
    with pytest.raises(TrainingError) as err:
        token_logp_and_kl(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(2, dtype=torch.long))
    assert err.value.field == "targets"
    assert segment_sum(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 2, 0]), 3).tolist() == [4.0, 0.0, 2.0]


# ------------------------------------------------------------------------------------ engines
@pytest.mark.parametrize("layout", ["tree", "sequences"])
def test_fast_engine_matches_plain_engine(layout: str) -> None:
    """Same batch, same weights: loss, every part, and the LoRA gradients agree (fp32, CPU)."""
    model = _tiny_lora()
    plain_pairs, fast_pairs = _pairs(5), _pairs(5)
    plain = PlainEngine()
    engine = fast.FastEngine(layout=layout, compile="off")
    plain.prepare(model, plain_pairs)
    engine.prepare(model, fast_pairs)
    assert f"layout={layout}" in engine.reason
    for a, b in zip(plain_pairs, fast_pairs, strict=True):
        assert b.ref_logp_chosen == pytest.approx(a.ref_logp_chosen, rel=1e-5)
        assert (b.ref_logp_rejected is None) == (a.ref_logp_rejected is None)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_p, parts_p = plain.loss(model, plain_pairs)
    grads_p = torch.autograd.grad(loss_p, params)
    loss_f, parts_f = engine.loss(model, fast_pairs)
    grads_f = torch.autograd.grad(loss_f, params)
    assert float(loss_f.detach()) == pytest.approx(float(loss_p.detach()), rel=1e-5)
    for key in ("nll", "pref", "kl", "pref_acc", "margin", "n_pref", "tokens"):
        assert parts_f[key] == pytest.approx(parts_p[key], rel=1e-4, abs=1e-6), key
    assert parts_p["kl"] > 0 and parts_p["n_pref"] == 3
    for gp, gf in zip(grads_p, grads_f, strict=True):
        torch.testing.assert_close(gf, gp, rtol=1e-4, atol=1e-6)


def test_fast_engine_gamma_zero_and_cache_refill() -> None:
    """gamma=0 skips the KL (and its cache); a batch whose reference is missing (e.g. after a
    resume: the hidden-state cache is not checkpointed) is prepared on the fly."""
    model = _tiny_lora()
    engine = fast.FastEngine(gamma=0.0, compile="off")
    pairs = _pairs(9)
    loss, parts = engine.loss(model, pairs)  # no prepare() call
    assert "kl" not in parts and torch.isfinite(loss)
    assert all(p.ref_logp_chosen is not None for p in pairs)
    with_kl = fast.FastEngine(compile="off")
    fresh = _copy(pairs)  # ref log-probs known, hidden states not
    for src, dst in zip(pairs, fresh, strict=True):
        dst.ref_logp_chosen, dst.ref_logp_rejected = src.ref_logp_chosen, src.ref_logp_rejected
    _, parts = with_kl.loss(model, fresh)
    assert parts["kl"] > 0


def test_fast_engine_training_moves_loss_like_plain() -> None:
    """A few optimizer steps from the same LoRA weights: both engines' loss curves coincide."""
    curves = []
    for make in (PlainEngine, lambda: fast.FastEngine(compile="off")):
        model = _tiny_lora(seed=2)
        engine = make()
        pairs = _pairs(4)
        engine.prepare(model, pairs)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
        curve = []
        for _ in range(4):
            loss, _ = engine.loss(model, pairs)
            loss.backward()
            opt.step()
            opt.zero_grad()
            curve.append(float(loss))
        curves.append(curve)
    assert curves[0][-1] < curves[0][0]
    for a, b in zip(*curves, strict=True):
        assert b == pytest.approx(a, rel=1e-4)


@pytest.mark.slow
def test_benchmark_tiny_mode_runs(tmp_path: Path) -> None:
    """``benchmarks/train_gpu.py --tiny`` (the CI twin of the GPU run) completes and checks itself."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "train_gpu.py"),
            "--tiny",
            "--groups",
            "native",
            "--out",
            str(tmp_path),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "train_gpu.json").read_text())
    native = result["native_tiny"]
    assert native["correctness"]["pass"] is True
    assert native["training_check"]["both_decrease"] is True
    assert native["speed"]["fast_eager"]["pairs_per_s"] > 0
    assert "ours:fast_eager" in proc.stdout


@pytest.mark.slow
def test_flex_block_mask_equals_dense_tree_mask() -> None:
    """With ``attn_implementation="flex_attention"`` the engine passes a block-sparse BlockMask: the
    hidden states of real tokens equal those under the dense SDPA mask (flex compiles on CPU: ~20 s)."""
    from jupyter_distill.train.packing import flex_tree_block_mask

    model = _tiny_llama(dtype=torch.float32)
    pairs = [
        PairTokens(list(range(3, 40)), list(range(40, 90)), list(range(5, 70))),
        PairTokens(list(range(3, 20)), list(range(40, 60)), None),
    ]
    batch = pack_pairs(pairs, row_tokens=300, pad_multiple=128)
    with torch.no_grad():
        dense = model.model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            attention_mask=tree_attention_mask(batch.tree_ids, batch.branch_ids),
        ).last_hidden_state
        model.config._attn_implementation = "flex_attention"
        for layer in model.model.layers:
            layer.self_attn.config._attn_implementation = "flex_attention"
        sparse = model.model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            attention_mask=flex_tree_block_mask(batch.tree_ids, batch.branch_ids),
        ).last_hidden_state
    real = batch.branch_ids != 3
    torch.testing.assert_close(sparse[real], dense[real], rtol=1e-4, atol=1e-5)
