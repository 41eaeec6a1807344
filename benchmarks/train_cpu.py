"""Benchmark: one BOND training step on CPU, the plain engine versus the fast engine's CPU mode.

The fast engine (``jupyter_distill.train.fast``: prompt-once packing of chosen and rejected,
reference log-probs and hidden states cached once, chunked log-prob/KL) also runs on CPU, in its
reference mode (no autocast, no compile). This measures whether that pays on a CPU: both engines
train a fresh LoRA (same seed, r=16 on all seven projections, AdamW) on the *same* batches of
the real student (SmolLM2-135M from its GGUF), back to back, and the table gives seconds per
step, the speed-up, and the largest difference between the two engines' losses step by step.

Token ids are drawn at random from the vocabulary (speed does not depend on what the text says;
the loss comparison needs only identical inputs).

    .venv/bin/python benchmarks/train_cpu.py                       # table + benchmarks/results/train_cpu.json
    .venv/bin/python benchmarks/train_cpu.py --steps 6 --batch-size 4 --prompt-tokens 64 --response-tokens 48
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from jupyter_distill.train.engines import PlainEngine, TokenizedPair  # noqa: E402
from jupyter_distill.train.fast import create_engine  # noqa: E402
from jupyter_distill.train.student import load_student  # noqa: E402
from jupyter_distill.train.trainer import ALL_PROJECTIONS  # noqa: E402


def make_examples(args: argparse.Namespace, vocab: int) -> list[TokenizedPair]:
    rng = random.Random(args.seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(100, vocab) for _ in range(n)]

    return [
        TokenizedPair(
            i,
            ids(rng.randint(args.prompt_tokens // 2, args.prompt_tokens)),
            ids(rng.randint(args.response_tokens // 2, args.response_tokens)),
            ids(rng.randint(args.response_tokens // 2, args.response_tokens)),
        )
        for i in range(args.batch_size * (args.steps + 1))
    ]


def run_engine(name: str, engine: Any, base: Any, examples: list[TokenizedPair], args: argparse.Namespace) -> dict:
    """A fresh LoRA on ``base``, the reference cached, then ``steps`` optimizer steps (after one warm-up)."""
    from peft import LoraConfig, get_peft_model

    for example in examples:
        example.ref_logp_chosen = example.ref_logp_rejected = None
    torch.manual_seed(args.seed)
    config = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(ALL_PROJECTIONS), task_type="CAUSAL_LM"
    )
    setup = getattr(engine, "setup_model", None)
    model = setup(base, config) if setup is not None else get_peft_model(base, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    started = time.perf_counter()
    engine.prepare(model, examples)
    prepare_s = time.perf_counter() - started
    losses, times = [], []
    for step in range(args.steps + 1):
        batch = examples[step * args.batch_size : (step + 1) * args.batch_size]
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = engine.loss(model, batch)
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - t0
        if step > 0:  # the first step pays one-off allocations
            times.append(elapsed)
        losses.append(float(loss.detach()))
        print(f"  {name}: step {step} {elapsed:.2f} s loss {losses[-1]:.5f}", file=sys.stderr)
    model.unload()  # the base model without the adapter, for the next engine
    return {"engine": name, "prepare_s": prepare_s, "step_s": sum(times) / len(times), "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--response-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    student = load_student(args.student, device="cpu")
    base = student.model
    pad = int(student.tokenizer.pad_token_id or 0)
    examples = make_examples(args, int(base.config.vocab_size))
    load_before = os.getloadavg()
    plain = run_engine("plain", PlainEngine(pad_token_id=pad), base, examples, args)
    fast_engine, reason = create_engine("cpu", pad_token_id=pad)
    assert fast_engine is not None, reason
    fast = run_engine("fast (CPU mode)", fast_engine, base, examples, args)
    load_after = os.getloadavg()
    diff = max(abs(a - b) for a, b in zip(plain["losses"], fast["losses"], strict=True))
    rel = max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(plain["losses"], fast["losses"], strict=True))
    speedup = plain["step_s"] / fast["step_s"]

    print(
        f"student {args.student}, batch {args.batch_size} pairs, prompts <= {args.prompt_tokens} and responses <= "
        f"{args.response_tokens} tokens, {args.steps} timed steps, {args.threads} torch threads, {os.cpu_count()} cores"
    )
    header = f"{'engine':<18} {'prepare s':>9} {'s/step':>7} {'first loss':>11} {'last loss':>10}"
    print(header)
    print("-" * len(header))
    for r in (plain, fast):
        first, last = r["losses"][0], r["losses"][-1]
        print(f"{r['engine']:<18} {r['prepare_s']:>9.2f} {r['step_s']:>7.2f} {first:>11.5f} {last:>10.5f}")
    print(
        f"speed-up {speedup:.2f}x; largest loss difference {diff:.2e} (relative {rel:.2e}); "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/train_cpu.py " + " ".join(sys.argv[1:]),
                "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "settings": {k: v for k, v in vars(args).items() if k != "out"},
                "fast_reason": reason,
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in load_after],
                "plain": plain,
                "fast": fast,
                "speedup": round(speedup, 3),
                "max_loss_difference": diff,
                "max_relative_loss_difference": rel,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
