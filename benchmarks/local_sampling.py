"""Benchmark: local best-of-N sampling, one candidate at a time versus batched, in one run.

Both sides sample the same prompts (the demo's JSON-extraction task from
:mod:`jupyter_distill.examples`) from the same GGUF with the same ``n``, ``max_tokens``,
temperature, seeds and thread count:

- **sequential**: the plain loop over ``Llama.create_chat_completion(seed=base + i)``, what
  the local teacher did before batching;
- **batched**: the product's own path, ``jupyter_distill.sampling.sample`` with
  ``load_teacher("local:...")`` into a fresh run store (candidates of a prompt share one
  prompt evaluation, several prompts share each decode step).

The two run back to back (``--rounds`` times, alternating, so a change in the machine's load
hits both) and the ratio of completion tokens per second is reported per round and overall, with
the load average before and after. The machine these numbers come from is usually shared.

    .venv/bin/python benchmarks/local_sampling.py                    # table + benchmarks/results/local_sampling.json
    .venv/bin/python benchmarks/local_sampling.py --prompts 16 --max-tokens 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jupyter_distill.data import load_dataset  # noqa: E402
from jupyter_distill.examples import make_extraction_rows  # noqa: E402
from jupyter_distill.models import resolve_local_gguf  # noqa: E402
from jupyter_distill.runtime import default_threads, use_llama  # noqa: E402
from jupyter_distill.sampling import sample  # noqa: E402
from jupyter_distill.store import PromptRecord, RunStore  # noqa: E402
from jupyter_distill.teachers import load_teacher  # noqa: E402

N_CTX = 2048


def run_sequential(path: Path, prompts: list[PromptRecord], args: argparse.Namespace) -> dict[str, Any]:
    """The plain loop: one ``create_chat_completion`` per candidate, candidate ``i`` with seed ``seed + i``."""
    texts: dict[str, list[str]] = {}
    tokens = 0
    with use_llama(path, n_ctx=N_CTX, n_threads=args.threads) as llm:
        started = time.perf_counter()
        for prompt in prompts:
            texts[prompt.hash] = []
            for i in range(args.n):
                result = llm.create_chat_completion(
                    messages=prompt.messages,
                    temperature=args.temperature,
                    max_tokens=args.max_tokens,
                    seed=args.seed + i,
                )
                texts[prompt.hash].append(result["choices"][0]["message"]["content"] or "")
                tokens += int(result["usage"]["completion_tokens"])
        wall = time.perf_counter() - started
    return {"wall_s": wall, "completion_tokens": tokens, "texts": texts}


def run_batched(prompts: list[PromptRecord], args: argparse.Namespace) -> dict[str, Any]:
    """The product's sampling stage with the local teacher, into a fresh run store."""
    teacher = load_teacher(f"local:{args.model}", n_threads=args.threads, n_ctx=N_CTX, sequences=args.sequences)
    with tempfile.TemporaryDirectory() as workdir:
        store = RunStore(workdir)
        started = time.perf_counter()
        result = sample(
            store, teacher, prompts, n=args.n, run_id="bench", temperature=args.temperature,
            max_tokens=args.max_tokens, seed=args.seed,
        )  # fmt: skip
        wall = time.perf_counter() - started
        store.close()
    if result.failed:
        raise RuntimeError(f"batched sampling failed for {len(result.failed)} prompts: {result.failed}")
    texts = {h: [s.text for s in records] for h, records in result.samples.items()}
    tokens = sum(int(s.usage.get("completion_tokens", 0)) for records in result.samples.values() for s in records)
    return {"wall_s": wall, "completion_tokens": tokens, "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a local:NAME model")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--sequences", type=int, default=16, help="sequences decoded side by side")
    parser.add_argument("--rounds", type=int, default=1, help="sequential/batched pairs, alternating")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "local_sampling.json"))
    args = parser.parse_args()

    path = resolve_local_gguf(args.model)
    prompts = load_dataset(make_extraction_rows(args.prompts, seed=1))
    with use_llama(path, n_ctx=N_CTX, n_threads=args.threads):
        pass  # load once, outside the timings
    load_before = os.getloadavg()
    rounds = []
    for r in range(args.rounds):
        sides = [
            ("sequential", lambda: run_sequential(path, prompts, args)),
            ("batched", lambda: run_batched(prompts, args)),
        ]
        if r % 2:
            sides.reverse()
        got = {}
        for name, fn in sides:
            got[name] = fn()
            print(f"  round {r + 1}: {name} {got[name]['wall_s']:.1f} s", file=sys.stderr)
        seq, bat = got["sequential"], got["batched"]
        equal = sum(
            a == b for h in seq["texts"] for a, b in zip(seq["texts"][h], bat["texts"].get(h, []), strict=False)
        )
        first_equal = sum(seq["texts"][h][0] == bat["texts"].get(h, [None])[0] for h in seq["texts"])
        rounds.append(
            {
                "round": r + 1,
                "sequential_tok_s": round(seq["completion_tokens"] / seq["wall_s"], 1),
                "batched_tok_s": round(bat["completion_tokens"] / bat["wall_s"], 1),
                "ratio": round(
                    (bat["completion_tokens"] / bat["wall_s"]) / (seq["completion_tokens"] / seq["wall_s"]), 2
                ),
                "sequential_s": round(seq["wall_s"], 2),
                "batched_s": round(bat["wall_s"], 2),
                "sequential_tokens": seq["completion_tokens"],
                "batched_tokens": bat["completion_tokens"],
                "candidates_equal": equal,
                "first_candidates_equal": first_equal,
            }
        )
    load_after = os.getloadavg()
    seq_tokens = sum(r["sequential_tokens"] for r in rounds)
    bat_tokens = sum(r["batched_tokens"] for r in rounds)
    seq_s = sum(r["sequential_s"] for r in rounds)
    bat_s = sum(r["batched_s"] for r in rounds)
    overall = (bat_tokens / bat_s) / (seq_tokens / seq_s)

    header = f"{'round':>5} {'seq tok/s':>9} {'batch tok/s':>11} {'ratio':>6} {'seq s':>7} {'batch s':>7} {'equal':>9}"
    print(
        f"model local:{args.model}, {args.prompts} prompts x n={args.n}, max_tokens {args.max_tokens}, "
        f"T={args.temperature}, {args.threads} threads, {args.sequences} sequences, {os.cpu_count()} cores"
    )
    print(header)
    print("-" * len(header))
    total = args.prompts * args.n
    for r in rounds:
        print(
            f"{r['round']:>5} {r['sequential_tok_s']:>9} {r['batched_tok_s']:>11} {r['ratio']:>6} "
            f"{r['sequential_s']:>7} {r['batched_s']:>7} {r['candidates_equal']:>4}/{total:<4}"
        )
    print(f"overall ratio {overall:.2f}x; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(
        "equal: candidates whose text is the same both ways (the sequential loop re-evaluates the last prompt "
        "token alone for candidates 1..n-1, which rounds differently; candidate 0 of each prompt: "
        f"{sum(r['first_candidates_equal'] for r in rounds)}/{args.prompts * len(rounds)} equal)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/local_sampling.py " + " ".join(sys.argv[1:]),
                "machine": {
                    "cores": os.cpu_count(),
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                },
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "settings": {k: v for k, v in vars(args).items() if k != "out"},
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in load_after],
                "rounds": rounds,
                "overall_ratio": round(overall, 2),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
