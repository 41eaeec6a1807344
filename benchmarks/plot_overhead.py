"""Overhead of the live plot during real training steps.

Trains a small random-init Llama (SmolLM2's tokenizer, so real vocab-size logits) with the BOND
trainer while :class:`jupyter_distill.notebook.plots.LivePlot` renders every event to PNG (as it
does in a notebook; ``display=False`` only skips sending the PNG to a front end). The plot times
itself: ``stats["seconds"]`` is all time spent inside its ``__call__`` (bookkeeping and drawing),
which runs in the training thread, so ``stats["seconds"] / training wall time`` is the share of
step time it cost.

    .venv/bin/python benchmarks/plot_overhead.py --steps 40
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jupyter_distill.core.events import fan_out  # noqa: E402
from jupyter_distill.notebook.plots import LivePlot  # noqa: E402
from jupyter_distill.train.trainer import BondTrainer, TrainSettings  # noqa: E402
from tests.test_trainer import pairs, tiny_student  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    plot = LivePlot(display=False)  # built before training: matplotlib loads outside the timed steps
    student = tiny_student()
    settings = TrainSettings(steps=args.steps, batch_size=4, lora_r=4, lora_alpha=8, checkpoint_every=10_000)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = BondTrainer(student, pairs(16), settings, output_dir=tmp, emit=fan_out([plot])).train()
        wall = time.perf_counter() - t0
    out = {
        "steps": result.steps_done,
        "train_wall_s": round(wall, 2),
        "s_per_step": round(wall / max(1, result.steps_done), 3),
        "plot_s": round(plot.stats["seconds"], 3),
        "plot_draws": int(plot.stats["draws"]),
        "s_per_draw": round(plot.stats["draw_seconds"] / max(1, plot.stats["draws"]), 3),
        "overhead_share": round(plot.overhead(wall), 4),
    }
    print(json.dumps(out, indent=2))
    path = ROOT / "benchmarks" / "results" / "plot_overhead.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
