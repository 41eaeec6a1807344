"""BOND step speed and correctness on a GPU: our fast engine vs the plain engine, TRL and Unsloth.

One invocation (one device call) builds random-initialised Llama-shaped models, then runs each
contender in its own subprocess (Unsloth patches transformers process-wide; TRL 1.16 and
Unsloth's TRL 1.15 cannot share one ``sys.path``; peak memory must not leak between contenders):

- ``native``: the plain PEFT engine and our fast engine (several variants) on the same model;
  the correctness checks (same batch -> same loss/parts/gradients; a short training run on a tiny
  task moves the loss the same way) and the realistic length mix;
- ``trl``: TRL ``DPOTrainer`` with LoRA (reference = adapter disabled, as TRL does with PEFT);
- ``unsloth``: a plain DPO-style loop on an Unsloth-patched model (the Unsloth rows of docs/benchmarks.md), and
  our fast engine on that same patched model.

Shapes (those of the GPU table in docs/benchmarks.md): 1.05B (hidden 2048, 16 layers, 32/8 heads, ffn 8192, vocab
32000) and 139M (SmolLM2-135M: hidden 576, 30 layers, 9/3 heads, ffn 1536, vocab 49152); 16 pairs
of 128 prompt + 128 chosen + 128 rejected tokens; LoRA r=16 on all 7 projections; bf16.

Usage::

    python benchmarks/train_gpu.py                   # on the GPU machine; writes $OUT/train_gpu.json
    python benchmarks/train_gpu.py --tiny            # CPU, tiny shapes: the code paths, in seconds
    python benchmarks/train_gpu.py --groups native   # a subset

Throughput is pairs per second of training steps (forward + backward + AdamW on the LoRA
weights, CUDA-synchronised), after warm-up steps (which include torch.compile). "with ref" also
charges the one-off reference pass of our engines (prepare, timed again warm) to one epoch over
the timed pairs; TRL and the Unsloth loop run their reference forward every step.

The measured table, with its command, machine and date, is in ``docs/benchmarks.md`` (one place,
so the script and the docs cannot disagree).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

SHAPES: dict[str, dict[str, int]] = {
    "1b": {
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "vocab_size": 32000,
    },
    "8b": {  # Llama-3.1-8B
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
    },
    "139m": {
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "vocab_size": 49152,
    },
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
    },
}


# ---------------------------------------------------------------------------------------- helpers
def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def partial_path(workdir: str, group: str, shape: str) -> Path:
    return Path(workdir) / f"partial-{group}-{shape}.json"


def save_partial(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Results so far, so a worker stopped by the time budget still reports what it measured."""
    partial_path(args.workdir, args.worker, args.shape).write_text(json.dumps(out, default=str))


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 1e9, 3)


def make_tokenizer(vocab_size: int) -> Any:
    """A WordLevel vocabulary ``w0..wN`` (enough for TRL and Unsloth on random-init models)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0", eos_token="w1", bos_token="w2")


def build_model_folder(shape: str, root: Path, seed: int = 0) -> Path:
    """Random-init Llama of ``shape`` saved (bf16 safetensors + tokenizer) once, shared by workers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = root / f"llama-{shape}"
    if (folder / "config.json").exists():
        return folder
    dims = SHAPES[shape]
    config = LlamaConfig(
        **dims,
        max_position_embeddings=2048,
        tie_word_embeddings=shape == "139m",
        rms_norm_eps=1e-5,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model.to(dtype).save_pretrained(folder, safe_serialization=True)
    make_tokenizer(dims["vocab_size"]).save_pretrained(folder)
    del model
    return folder


def fixed_pairs(n: int, prompt: int, response: int, vocab: int, seed: int) -> list[Any]:
    from jupyter_distill.train.engines import TokenizedPair

    rng = random.Random(seed)

    def draw(k: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(k)]

    return [TokenizedPair(i, draw(prompt), draw(response), draw(response)) for i in range(n)]


def mixed_pairs(n: int, vocab: int, seed: int, tiny: bool) -> list[Any]:
    """The realistic length mix: prompts 20-400 tokens, responses 5-300 (scaled down for --tiny)."""
    from jupyter_distill.train.engines import TokenizedPair

    rng = random.Random(seed)
    p_lo, p_hi, r_lo, r_hi = (2, 24, 1, 16) if tiny else (20, 400, 5, 300)
    out = []
    for i in range(n):
        p = rng.randint(p_lo, p_hi)
        out.append(
            TokenizedPair(
                i,
                [rng.randrange(3, vocab) for _ in range(p)],
                [rng.randrange(3, vocab) for _ in range(rng.randint(r_lo, r_hi))],
                [rng.randrange(3, vocab) for _ in range(rng.randint(r_lo, r_hi))],
            )
        )
    return out


def task_pairs(n: int, vocab: int, seed: int, prompt: int, response: int) -> list[Any]:
    """A tiny learnable task: chosen = the prompt's tokens in order (copy), rejected = random tokens."""
    from jupyter_distill.train.engines import TokenizedPair

    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = [rng.randrange(3, min(vocab, 64)) for _ in range(prompt)]
        out.append(TokenizedPair(i, p, p[:response], [rng.randrange(3, vocab) for _ in range(response)]))
    return out


def clone_pairs(pairs: list[Any]) -> list[Any]:
    from jupyter_distill.train.engines import TokenizedPair

    return [
        TokenizedPair(p.index, list(p.prompt_ids), list(p.chosen_ids), p.rejected_ids and list(p.rejected_ids))
        for p in pairs
    ]


def load_peft_model(folder: Path, *, lora_b_std: float = 0.0) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    on_gpu = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16 if on_gpu else torch.float32, attn_implementation="sdpa"
    )
    model.to("cuda" if on_gpu else "cpu")
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)  # PEFT keeps LoRA weights in fp32 (autocast_adapter_dtype)
    if lora_b_std:
        gen = torch.Generator(device="cpu").manual_seed(123)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                with torch.no_grad():
                    param.copy_(torch.randn(param.shape, generator=gen) * lora_b_std)
    model.train()
    return model


def lora_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_lora_state(model: Any, state: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])


def time_engine(
    model: Any, engine: Any, batches: list[list[Any]], *, warmup: int, steps: int, lr: float = 1e-4
) -> dict[str, Any]:
    """prepare (timed), ``warmup`` untimed steps, then ``steps`` timed steps over ``batches``."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    every = [p for batch in batches for p in batch]
    reset_peak()
    sync()
    t0 = time.perf_counter()
    engine.prepare(model, every)
    sync()
    prepare_s = time.perf_counter() - t0
    losses = []
    step_times = []
    first_step_s = None
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        sync()
        t = time.perf_counter()
        loss, metrics = engine.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        dt = time.perf_counter() - t
        if i == 0:
            first_step_s = dt
        if i >= warmup:
            step_times.append(dt)
        losses.append(float(loss))
    pairs = sum(len(batches[i % len(batches)]) for i in range(warmup, warmup + steps))
    total = sum(step_times)
    # The reference pass again, warm (the first one included torch.compile's reference-mode graphs):
    # charged once per pair, as one epoch over the timed pairs would pay it.
    clear = getattr(engine, "clear_reference_cache", None)
    if clear is not None:
        clear()
    for pair in every:
        pair.ref_logp_chosen = pair.ref_logp_rejected = None
    sync()
    t0 = time.perf_counter()
    engine.prepare(model, every)
    sync()
    prepare_warm_s = time.perf_counter() - t0
    ref_share = prepare_warm_s * min(1.0, pairs / max(1, len(every)))
    n_step = len(batches[0])
    return {
        "pairs_per_s": round(pairs / total, 2),
        "pairs_per_s_median_step": round(n_step / sorted(step_times)[len(step_times) // 2], 2),
        "pairs_per_s_with_ref": round(pairs / (total + ref_share), 2),
        "prepare_warm_s": round(prepare_warm_s, 3),
        "step_ms_median": round(1000 * sorted(step_times)[len(step_times) // 2], 2),
        "prepare_s": round(prepare_s, 3),
        "first_step_s": round(first_step_s or 0.0, 3),
        "peak_gb": peak_gb(),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "reason": getattr(engine, "reason", engine.name),
        "last_metrics": {k: round(v, 5) for k, v in metrics.items()},
    }


# ---------------------------------------------------------------------------------------- workers
def worker_native(args: argparse.Namespace) -> dict[str, Any]:
    """Plain engine vs our fast engine on one shape: correctness, training check, speed, length mix."""
    import torch

    from jupyter_distill.train.choice import select_engine
    from jupyter_distill.train.engines import PlainEngine
    from jupyter_distill.train.fast import FastEngine

    folder = Path(args.folder)
    vocab = SHAPES[args.shape]["vocab_size"]
    tiny = args.shape == "tiny"
    n_pairs, p_len, r_len = (4, 16, 16) if tiny else (16, 128, 128)
    out: dict[str, Any] = {"shape": args.shape, "device": torch.cuda.get_device_name() if cuda() else "cpu"}
    engine_sel, reason = select_engine("cuda" if cuda() else "cpu", "auto")
    out["auto_selection"] = {"engine": engine_sel.name, "reason": reason}

    model = load_peft_model(folder, lora_b_std=0.02)
    init = lora_state(model)

    # 1. correctness: same batch, same LoRA weights -> same loss, parts and LoRA gradients
    check = fixed_pairs(n_pairs, p_len, r_len, vocab, seed=7)
    check[1].rejected_ids = None  # one row without a rejected sample exercises that branch too
    results = {}
    grads = {}
    for name, engine in (
        ("plain", PlainEngine()),
        ("fast", FastEngine(compile="off")),
        ("fast_sequences", FastEngine(compile="off", layout="sequences")),
    ):
        pairs = clone_pairs(check)
        engine.prepare(model, pairs)
        loss, parts = engine.loss(model, pairs)
        loss.backward()
        grads[name] = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.requires_grad])
        model.zero_grad(set_to_none=True)
        results[name] = {
            "loss": float(loss),
            **{k: v for k, v in parts.items() if k in ("nll", "pref", "kl", "margin")},
        }
    ref = results["plain"]
    correctness = {"plain": ref}
    for name in ("fast", "fast_sequences"):
        got = results[name]
        rel = {k: abs(got[k] - ref[k]) / max(abs(ref[k]), 1e-6) for k in ref}
        g_rel = float((grads[name] - grads["plain"]).norm() / grads["plain"].norm().clamp(min=1e-12))
        correctness[name] = {
            **got,
            "rel_err": {k: round(v, 6) for k, v in rel.items()},
            "grad_rel_err": round(g_rel, 6),
        }
    tol = 2e-2 if cuda() else 1e-4
    correctness["tolerance"] = tol
    correctness["pass"] = all(
        max(correctness[n]["rel_err"][k] for k in ("loss", "nll", "pref")) < tol
        and correctness[n]["grad_rel_err"] < (5e-2 if cuda() else 1e-4)
        for n in ("fast", "fast_sequences")
    )
    out["correctness"] = correctness
    log(f"[{args.shape}] correctness", json.dumps(correctness))
    save_partial(args, out)

    # 2. a short training run on a tiny learnable task: both engines move the loss the same way
    train_steps = 4 if tiny else 25
    curves: dict[str, list[float]] = {}
    training_engines = (("plain", PlainEngine), ("fast", lambda: FastEngine(compile="off")))
    for name, make in training_engines if args.shape in args.train_check_shapes.split(",") else ():
        load_lora_state(model, init)
        task = task_pairs(n_pairs, vocab, seed=11, prompt=p_len, response=min(r_len, p_len))
        engine = make()
        engine.prepare(model, task)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3 if not tiny else 1e-2)
        curve = []
        for _ in range(train_steps):
            loss, _ = engine.loss(model, task)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            curve.append(round(float(loss), 5))
        curves[name] = curve
    if curves:
        gaps = [abs(a - b) / max(abs(a), 1e-6) for a, b in zip(curves["plain"], curves["fast"], strict=True)]
        out["training_check"] = {
            "steps": train_steps,
            "plain": curves["plain"],
            "fast": curves["fast"],
            "max_rel_gap": round(max(gaps), 5),
            "both_decrease": curves["plain"][-1] < curves["plain"][0] and curves["fast"][-1] < curves["fast"][0],
        }
        log(f"[{args.shape}] training check", json.dumps(out["training_check"]))
    load_lora_state(model, init)

    # 3. speed on the fixed shape: plain first (our compile later modifies the layers in place)
    warmup, steps = (1, 2) if tiny else (args.warmup, args.steps)
    batches = [fixed_pairs(n_pairs, p_len, r_len, vocab, seed=100 + k) for k in range(max(1, steps))]
    for k, batch in enumerate(batches):  # globally unique indices for the reference cache
        for j, pair in enumerate(batch):
            pair.index = k * n_pairs + j
    speed: dict[str, Any] = {}
    variants: list[tuple[str, Any]] = [("plain", PlainEngine)]
    variants.append(("fast_eager", lambda: FastEngine(compile="off")))
    if not tiny or args.tiny_compile:
        # the main variant first, while its shapes are still static for torch.compile
        variants.append(("fast", lambda: FastEngine(compile="on")))
        variants.append(("fast_sequences", lambda: FastEngine(layout="sequences", compile="on")))
    for name, make in variants:
        with record_errors(speed, name):
            speed[name] = time_engine(model, make(), [clone_pairs(b) for b in batches], warmup=warmup, steps=steps)
            log(f"[{args.shape}] {name}", json.dumps(speed[name]))
        out["speed"] = speed
        save_partial(args, out)

    # 4. realistic length mix (prompts 20-400, responses 5-300), 16 pairs a step
    if args.shape in args.mix_shapes.split(","):
        mix_batches = [mixed_pairs(n_pairs, vocab, seed=500 + k, tiny=tiny) for k in range(max(1, steps))]
        for k, batch in enumerate(mix_batches):
            for j, pair in enumerate(batch):
                pair.index = 10_000 + k * n_pairs + j
        mix: dict[str, Any] = {}
        mix_variants: list[tuple[str, Any]] = [
            ("plain", PlainEngine),
            ("fast_eager", lambda: FastEngine(compile="off")),
        ]
        if not tiny or args.tiny_compile:
            mix_variants += [
                ("fast", lambda: FastEngine(compile="on")),
                ("fast_rows2048", lambda: FastEngine(compile="on", row_tokens=2048)),
                ("fast_sequences", lambda: FastEngine(layout="sequences", compile="on")),
            ]
        for name, make in mix_variants:
            with record_errors(mix, name):
                mix[name] = time_engine(
                    model, make(), [clone_pairs(b) for b in mix_batches], warmup=warmup, steps=steps
                )
                log(f"[{args.shape}] mix {name}", json.dumps(mix[name]))
            out["mix"] = mix
            save_partial(args, out)
    return out


def worker_trl(args: argparse.Namespace) -> dict[str, Any]:
    """TRL DPOTrainer + LoRA on the fixed shape; step times from a callback (CUDA-synchronised)."""
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    folder = Path(args.folder)
    tiny = args.shape == "tiny"
    vocab = SHAPES[args.shape]["vocab_size"]
    n_pairs, p_len, r_len = (4, 16, 16) if tiny else (16, 128, 128)
    warmup, steps = (1, 2) if tiny else (args.warmup, args.steps)
    rng = random.Random(5)

    def words(k: int) -> str:
        return " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(k))

    # completions start with a space so prompt + completion tokenises as prompt tokens + completion
    # tokens (no merge across the boundary), like our pairs

    n_rows = n_pairs * (warmup + steps)
    data = Dataset.from_list(
        [{"prompt": words(p_len), "chosen": " " + words(r_len), "rejected": " " + words(r_len)} for _ in range(n_rows)]
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16 if cuda() else torch.float32, attn_implementation="sdpa"
    )
    config = trl.DPOConfig(
        output_dir=str(Path(args.workdir) / f"trl-{args.shape}"),
        per_device_train_batch_size=n_pairs,
        max_steps=warmup + steps,
        learning_rate=1e-4,
        bf16=cuda(),
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        gradient_checkpointing=False,
        max_length=p_len + r_len + 8,
        dataloader_num_workers=0,
        use_cpu=not cuda(),
    )
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            sync()
            self.t = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            sync()
            times.append(time.perf_counter() - self.t)

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    trainer = trl.DPOTrainer(
        model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=lora, callbacks=[Timer()]
    )
    reset_peak()
    trainer.train()
    timed = times[warmup:]
    return {
        "shape": args.shape,
        "trl_version": trl.__version__,
        "pairs_per_s": round(n_pairs * len(timed) / sum(timed), 2),
        "step_ms_median": round(1000 * sorted(timed)[len(timed) // 2], 2),
        "peak_gb": peak_gb(),
    }


def worker_unsloth(args: argparse.Namespace) -> dict[str, Any]:
    """A plain DPO-style loop on an Unsloth-patched model (the Unsloth baseline), then our fast
    engine on the same patched model, with a loss check against the plain engine there."""
    import torch
    import torch.nn.functional as F
    import unsloth
    from unsloth import FastLanguageModel

    from jupyter_distill.train.engines import PlainEngine
    from jupyter_distill.train.fast import FastEngine, is_unsloth_model

    folder = Path(args.folder)
    vocab = SHAPES[args.shape]["vocab_size"]
    n_pairs, p_len, r_len = 16, 128, 128
    warmup, steps = args.warmup, args.steps
    model, _ = FastLanguageModel.from_pretrained(
        str(folder), max_seq_length=1024, dtype=torch.bfloat16, load_in_4bit=False
    )
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, use_gradient_checkpointing=False
    )
    model.train()
    out: dict[str, Any] = {"shape": args.shape, "unsloth_version": getattr(unsloth, "__version__", "?")}
    out["detected_as_unsloth"] = is_unsloth_model(model)
    params = [p for p in model.parameters() if p.requires_grad]

    def seq_logps(ids: Any) -> Any:
        logits = model(input_ids=ids).logits[:, p_len - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(2, ids[:, p_len:, None]).squeeze(2).sum(1)

    def dpo_step(batch: list[Any]) -> Any:
        chosen = torch.tensor([p.prompt_ids + p.chosen_ids for p in batch], device="cuda")
        rejected = torch.tensor([p.prompt_ids + p.rejected_ids for p in batch], device="cuda")
        ids = torch.cat([chosen, rejected])
        with torch.no_grad(), model.disable_adapter():
            ref = seq_logps(ids)
        pol = seq_logps(ids)
        margin = (pol[:n_pairs] - ref[:n_pairs]) - (pol[n_pairs:] - ref[n_pairs:])
        return -F.logsigmoid(0.1 * margin).mean()

    batches = [fixed_pairs(n_pairs, p_len, r_len, vocab, seed=100 + k) for k in range(steps)]
    opt = torch.optim.AdamW(params, lr=1e-4)
    reset_peak()
    times = []
    for i in range(warmup + steps):
        sync()
        t = time.perf_counter()
        loss = dpo_step(batches[i % steps])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    out["unsloth_dpo_loop"] = {
        "pairs_per_s": round(n_pairs * len(times) / sum(times), 2),
        "step_ms_median": round(1000 * sorted(times)[len(times) // 2], 2),
        "peak_gb": peak_gb(),
    }
    log(f"[{args.shape}] unsloth loop", json.dumps(out["unsloth_dpo_loop"]))
    del opt
    with record_errors(out, "check_fast_on_unsloth"):
        check = fixed_pairs(n_pairs, p_len, r_len, vocab, seed=7)
        values = {}
        for name, engine in (("plain", PlainEngine()), ("fast", FastEngine())):
            pairs = clone_pairs(check)
            engine.prepare(model, pairs)
            loss, parts = engine.loss(model, pairs)
            values[name] = {"loss": float(loss), "nll": parts["nll"], "pref": parts["pref"], "kl": parts.get("kl")}
            model.zero_grad(set_to_none=True)
        values["rel_err_loss"] = abs(values["fast"]["loss"] - values["plain"]["loss"]) / abs(values["plain"]["loss"])
        out["check_fast_on_unsloth"] = values
    with record_errors(out, "fast_on_unsloth"):
        out["fast_on_unsloth"] = time_engine(
            model, FastEngine(), [clone_pairs(b) for b in batches], warmup=warmup, steps=steps
        )
        log(f"[{args.shape}] fast on unsloth", json.dumps(out["fast_on_unsloth"]))
    return out


#: A chat template for the benchmark's word-level tokenizer (the product's loader needs one).
BENCH_TEMPLATE = "{% for m in messages %}{{ m['content'] }} w1 {% endfor %}{% if add_generation_prompt %}w2 {% endif %}"


def shape_of(shape: str) -> Any:
    from jupyter_distill.core.models import ModelShape

    d = SHAPES[shape]
    return ModelShape(
        d["hidden_size"], d["num_hidden_layers"], d["num_attention_heads"], d["num_key_value_heads"],
        d["intermediate_size"], d["vocab_size"], tied=shape == "139m",
    )  # fmt: skip


def worker_student(args: argparse.Namespace) -> dict[str, Any]:
    """The product's own path for a quantized (or Unsloth-loaded) student: ``load_student`` with
    ``quantization``/``loader``, the trainer's ``attach_lora`` and ``select_engine``; speed and peak
    memory of the fast and plain engines, next to :func:`jupyter_distill.train.memory.training_peak`."""
    import torch

    from jupyter_distill.train.choice import select_engine
    from jupyter_distill.train.engines import PlainEngine
    from jupyter_distill.train.memory import training_peak
    from jupyter_distill.train.quantized import checkpointing_enabled, quantization_of
    from jupyter_distill.train.student import load_student
    from jupyter_distill.train.trainer import TrainSettings, attach_lora

    quant = None if args.quantization in (None, "none") else args.quantization
    tiny = args.shape == "tiny"
    vocab = SHAPES[args.shape]["vocab_size"]
    n_pairs, p_len, r_len = (4, 16, 16) if tiny else (args.pairs, args.prompt_len, args.response_len)
    device = "cuda" if cuda() else "cpu"
    out: dict[str, Any] = {"shape": args.shape, "quantization": quant or "none", "loader": args.loader}
    out["batch"] = {"pairs": n_pairs, "prompt": p_len, "response": r_len}
    reset_peak()
    t0 = time.perf_counter()
    student = load_student(
        args.folder, device=device, chat_template=BENCH_TEMPLATE, quantization=quant, loader=args.loader
    )
    out["load_s"] = round(time.perf_counter() - t0, 1)
    out["loaded_gb"] = round(torch.cuda.memory_allocated() / 1e9, 3) if cuda() else None
    settings = TrainSettings(lora_r=16, lora_alpha=32, seed=0)
    model = attach_lora(student, settings)
    out["quantization_of_model"] = quantization_of(model)
    out["gradient_checkpointing"] = checkpointing_enabled(model)
    warmup, steps = (1, 2) if tiny else (args.warmup, args.steps)
    batches = [fixed_pairs(n_pairs, p_len, r_len, vocab, seed=100 + k) for k in range(max(1, steps))]
    for k, batch in enumerate(batches):
        for j, pair in enumerate(batch):
            pair.index = k * n_pairs + j
    pad = int(student.tokenizer.pad_token_id or 0)
    preference = "unsloth" if args.loader == "unsloth" else "fast"
    engines: list[tuple[str, Any]] = [("fast", lambda: select_engine(device, preference, pad_token_id=pad)[0])]
    if args.loader != "unsloth" and not args.fast_only:
        engines.append(("plain", lambda: PlainEngine(pad_token_id=pad)))
    for name, make in engines:
        with record_errors(out, name):
            res = time_engine(model, make(), [clone_pairs(b) for b in batches], warmup=warmup, steps=steps)
            predicted = training_peak(
                shape_of(args.shape), quantization=quant, cuda=cuda(), engine=name, batch_size=n_pairs,
                prompt_tokens=p_len, response_tokens=r_len, lora_rank=16,
                gradient_checkpointing=out["gradient_checkpointing"],
            )  # fmt: skip
            res["predicted_gb"] = predicted.to_dict()
            if res.get("peak_gb"):
                res["predicted_over_measured"] = round(predicted.total / 1e9 / res["peak_gb"], 3)
            out[name] = res
            log(f"[{args.shape} {quant} {args.loader}] {name}", json.dumps(res))
        save_partial(args, out)
    return out


@contextlib.contextmanager
def record_errors(into: dict[str, Any], name: str):  # type: ignore[no-untyped-def]
    """A contender that fails is recorded with its error; the others still run."""
    try:
        yield
    except Exception as exc:
        log(f"{name} failed: {type(exc).__name__}: {exc}")
        into[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}


WORKERS = {"native": worker_native, "trl": worker_trl, "unsloth": worker_unsloth, "student": worker_student}


# ---------------------------------------------------------------------------------------- orchestration
def run_worker(
    args: argparse.Namespace, group: str, shape: str, folder: Path, deadline: float, extra: list[str] | None = None
) -> dict[str, Any]:
    env = dict(os.environ)
    paths = [str(REPO)]
    if group == "trl" and args.site_trl:
        paths.append(args.site_trl)
    if group in ("trl", "unsloth", "student") and args.site_main:
        # never for native: peft probes bitsandbytes/torchao when they import, and ours needs neither
        paths.append(args.site_main)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", group, "--shape", shape, "--folder", str(folder)]
    cmd += ["--workdir", args.workdir, "--warmup", str(args.warmup), "--steps", str(args.steps)]
    cmd += ["--mix-shapes", args.mix_shapes, "--train-check-shapes", args.train_check_shapes]
    if args.tiny_compile:
        cmd.append("--tiny-compile")
    cmd += extra or []
    timeout = max(30.0, deadline - time.time())
    partial_path(args.workdir, group, shape).unlink(missing_ok=True)
    log(f"== {group} {shape} (timeout {timeout:.0f}s)")
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        partial = partial_path(args.workdir, group, shape)
        if partial.exists():
            result = json.loads(partial.read_text())
            result["error"] = f"timed out after {timeout:.0f}s; partial results"
            return result
        tail = (exc.stderr or b"")[-3000:]
        return {
            "error": f"timed out after {timeout:.0f}s",
            "stderr_tail": tail if isinstance(tail, str) else tail.decode(errors="replace"),
        }
    sys.stderr.write(proc.stderr[-20000:])
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            result["wall_s"] = round(time.time() - t0, 1)
            return result
    return {"error": f"worker exited {proc.returncode} without a result", "stderr_tail": proc.stderr[-3000:]}


def run_student_variants(
    args: argparse.Namespace, results: dict[str, Any], workdir: Path, deadline: float, json_path: Path, start: float
) -> None:
    """Group ``student``: each ``shape:quantization[:loader]`` in its own worker process."""
    for variant in args.students.split(","):
        shape, quant, *rest = variant.split(":")
        loader = rest[0] if rest else "transformers"
        if args.tiny:
            shape = "tiny"
        key = f"student_{shape}_{quant}_{loader}"
        if key in results:
            continue
        if (loader == "unsloth" or quant == "8bit") and not cuda():
            results[key] = {"skipped": f"{loader if loader == 'unsloth' else quant} needs a CUDA device"}
            continue
        if time.time() > deadline - 20:
            results[key] = {"skipped": "benchmark time budget spent"}
            continue
        folder = build_model_folder(shape, workdir)
        extra = ["--quantization", quant, "--loader", loader] + (["--fast-only"] if args.fast_only else [])
        extra += ["--pairs", str(args.pairs), "--prompt-len", str(args.prompt_len)]
        extra += ["--response-len", str(args.response_len)]
        results[key] = run_worker(args, "student", shape, folder, deadline, extra)
        results["elapsed_s"] = round(time.time() - start, 1)
        json_path.write_text(json.dumps(results, indent=2, default=str))


def student_table(results: dict[str, Any]) -> str:
    """Speed and peak memory of quantized / Unsloth-loaded students, measured vs predicted."""
    rows = [("shape", "quant", "loader", "engine", "pairs/s", "peak GB", "predicted GB", "pred/meas", "load s")]
    for key, res in results.items():
        if not key.startswith("student_") or not isinstance(res, dict):
            continue
        if "skipped" in res or ("error" in res and "fast" not in res):
            rows.append((key, "-", "-", "-", res.get("skipped") or str(res.get("error"))[:60], "-", "-", "-", "-"))
            continue
        for engine in ("fast", "plain"):
            r = res.get(engine)
            if not isinstance(r, dict):
                continue
            rows.append(
                (
                    res.get("shape", "?"),
                    res.get("quantization", "?"),
                    res.get("loader", "?"),
                    engine if "error" not in r else f"{engine} (error)",
                    fmt(r.get("pairs_per_s")),
                    fmt(r.get("peak_gb")),
                    fmt((r.get("predicted_gb") or {}).get("total")),
                    fmt(r.get("predicted_over_measured")),
                    fmt(res.get("load_s")),
                )
            )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    rows = [("shape", "contender", "pairs/s", "pairs/s w/ ref", "peak GB", "vs TRL", "vs Unsloth", "vs plain")]
    for shape in results.get("shapes", []):
        native = results.get(f"native_{shape}", {})
        trl_res = results.get(f"trl_{shape}", {})
        uns = results.get(f"unsloth_{shape}", {})
        trl_rate = trl_res.get("pairs_per_s")
        uns_rate = uns.get("unsloth_dpo_loop", {}).get("pairs_per_s")
        plain_rate = native.get("speed", {}).get("plain", {}).get("pairs_per_s")
        entries: list[tuple[str, dict[str, Any]]] = [(f"TRL {trl_res.get('trl_version', '')} DPOTrainer", trl_res)]
        entries.append(("Unsloth DPO-style loop", uns.get("unsloth_dpo_loop", {})))
        entries += [(f"ours:{k}", v) for k, v in native.get("speed", {}).items()]
        if "fast_on_unsloth" in uns:
            entries.append(("ours:fast on Unsloth model", uns["fast_on_unsloth"]))
        for label, res in entries:
            rate = res.get("pairs_per_s")
            if "prepare_warm_s" not in res and "torch.compile of" in str(res.get("reason", "")):
                # results of an older run: its reference pass was timed cold, with torch.compile in it
                res = {**res, "pairs_per_s_with_ref": None}
            rows.append(
                (
                    shape,
                    label if "error" not in res else f"{label} (error)",
                    fmt(rate),
                    fmt(res.get("pairs_per_s_with_ref")),
                    fmt(res.get("peak_gb")),
                    fmt(rate / trl_rate) + "x" if rate and trl_rate else "-",
                    fmt(rate / uns_rate) + "x" if rate and uns_rate else "-",
                    fmt(rate / plain_rate) + "x" if rate and plain_rate else "-",
                )
            )
        for k, v in native.get("mix", {}).items():
            rows.append(
                (
                    f"{shape} mix",
                    f"ours:{k}" if k != "plain" else "plain",
                    fmt(v.get("pairs_per_s")),
                    fmt(v.get("pairs_per_s_with_ref")),
                    fmt(v.get("peak_gb")),
                    "-",
                    "-",
                    fmt(v.get("pairs_per_s") / native["mix"]["plain"]["pairs_per_s"]) + "x"
                    if v.get("pairs_per_s") and native["mix"].get("plain", {}).get("pairs_per_s")
                    else "-",
                )
            )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU-sized shapes and steps (CI / no GPU)")
    parser.add_argument("--tiny-compile", action="store_true", help="with --tiny: also the compiled variants")
    parser.add_argument("--groups", default="native,trl,unsloth", help="comma list of native, trl, unsloth")
    parser.add_argument("--shapes", default=None, help="comma list of 139m, 1b (default both; tiny with --tiny)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mix-shapes", default="1b,tiny", help="shapes that also run the realistic length mix")
    parser.add_argument("--train-check-shapes", default="139m,tiny", help="shapes that run the training check")
    parser.add_argument("--out", default=None, help="folder for train_gpu.json (default $OUT or benchmarks/results)")
    parser.add_argument("--workdir", default="/tmp/jd-train-gpu")
    parser.add_argument("--site-main", default=None, help="carried site with unsloth/trl 1.15/datasets")
    parser.add_argument("--site-trl", default=None, help="carried site with trl 1.16 (before --site-main)")
    parser.add_argument("--budget-s", type=float, default=570.0, help="stop starting workers after this")
    parser.add_argument(
        "--merge", nargs="+", default=None, help="merge train_gpu.json files of several device calls; print the table"
    )
    parser.add_argument(
        "--students",
        default="8b:4bit,1b:none,1b:4bit,1b:8bit,139m:none,139m:4bit,1b:4bit:unsloth",
        help="group 'student': shape:quantization[:loader] variants through the product's loader",
    )
    parser.add_argument("--quantization", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--loader", default="transformers", help=argparse.SUPPRESS)
    parser.add_argument("--fast-only", action="store_true", help="group 'student': skip the plain engine")
    parser.add_argument("--pairs", type=int, default=16, help="group 'student': pairs a step")
    parser.add_argument("--prompt-len", type=int, default=128, help="group 'student': prompt tokens")
    parser.add_argument("--response-len", type=int, default=128, help="group 'student': tokens per response")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        try:
            result = WORKERS[args.worker](args)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
        print("RESULT " + json.dumps(result, default=str), flush=True)
        return 0

    if args.merge:
        merged: dict[str, Any] = {"runs": []}
        for name in args.merge:
            part = json.loads(Path(name).read_text())
            merged["runs"].append({k: part.get(k) for k in ("command", "device", "torch", "transformers", "groups")})
            for key, value in part.items():
                if key == "shapes":
                    merged["shapes"] = list(dict.fromkeys([*merged.get("shapes", []), *value]))
                elif key not in ("command", "groups", "table"):
                    merged[key] = value
        merged["table"] = table(merged)
        target = Path(args.out or REPO / "benchmarks" / "results") / "train_gpu.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(merged, indent=2, default=str))
        print(merged["table"])
        print(f"wrote {target}")
        return 0

    start = time.time()
    deadline = start + args.budget_s
    shapes = (args.shapes or ("tiny" if args.tiny else "1b,139m")).split(",")
    groups = args.groups.split(",")
    out_dir = Path(args.out or os.environ.get("OUT") or REPO / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    import torch

    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "shapes": shapes,
        "groups": groups,
        "setup": "16 pairs of 128 prompt + 128 chosen + 128 rejected tokens, LoRA r=16 on 7 projections, bf16"
        if not args.tiny
        else "tiny: 4 pairs of 16+16+16 tokens, fp32 on CPU",
    }
    try:
        import transformers

        results["transformers"] = transformers.__version__
    except ImportError:
        pass
    json_path = out_dir / "train_gpu.json"
    if "student" in groups:
        run_student_variants(args, results, workdir, deadline, json_path, start)
    for shape in shapes:
        if not any(g != "student" for g in groups):
            break
        folder = build_model_folder(shape, workdir)
        for group in groups:
            if group == "student":
                continue
            key = f"{group}_{shape}"
            if group == "unsloth" and not torch.cuda.is_available():
                results[key] = {"skipped": "Unsloth needs a CUDA device"}
                continue
            if time.time() > deadline - 20:
                results[key] = {"skipped": "benchmark time budget spent"}
                continue
            results[key] = run_worker(args, group, shape, folder, deadline)
            results["elapsed_s"] = round(time.time() - start, 1)
            json_path.write_text(json.dumps(results, indent=2, default=str))
    text = table(results) if any(g != "student" for g in groups) else ""
    if "student" in groups:
        text = (text + "\n\n" if text else "") + student_table(results)
    results["table"] = text
    json_path.write_text(json.dumps(results, indent=2, default=str))
    for shape in shapes:
        native = results.get(f"native_{shape}", {})
        if "correctness" in native:
            c = native["correctness"]
            check = native.get("training_check")
            print(
                f"[{shape}] correctness fast vs plain: pass={c['pass']} "
                f"loss rel err {c['fast']['rel_err']['loss']:.2e} grad rel err {c['fast']['grad_rel_err']:.2e}"
                + (
                    f"; training check max rel gap {check['max_rel_gap']:.2e}, both decrease {check['both_decrease']}"
                    if check
                    else ""
                )
            )
        for group in groups:
            res = results.get(f"{group}_{shape}", {})
            if "error" in res:
                print(f"[{shape}] {group} error: {res['error']}")
    print(text)
    print(f"wrote {json_path}")
    return 0 if all("error" not in results.get(f"native_{s}", {}) for s in shapes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
