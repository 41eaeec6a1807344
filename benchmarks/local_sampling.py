"""Benchmark: local llama.cpp sampling, the sequential chat-completion loop against the batched path.

Same model (the quickstart's SmolLM2-135M GGUF), prompts (the quickstart's extraction rows),
``n``, ``max_tokens`` and temperature for every row of the table:

- ``sequential``: ``Llama.create_chat_completion`` once per candidate, seed ``seed + i`` (what the
  local teacher did before the batched path);
- ``teacher t=K``: the product's ``LlamaTeacher.sample`` with ``n_threads=K`` (the N candidates of
  a prompt decode together over one prompt evaluation);
- ``batch P prompts t=K``: ``BatchContext.generate`` with P prompts x N candidates in one batch.

Throughput is completion tokens per wall second; the ratio is against the best ``sequential`` row
of the same run (the machine is shared, so compare ratios, not absolute times).

    .venv/bin/python benchmarks/local_sampling.py          # table + benchmarks/results/local_sampling.json
    .venv/bin/python benchmarks/local_sampling.py --prompts 8 --threads 1,2 --prompts-per-batch 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jupyter_distill.core.examples import make_extraction_rows  # noqa: E402
from jupyter_distill.core.runtime import use_llama  # noqa: E402
from jupyter_distill.teachers import load_teacher  # noqa: E402
from jupyter_distill.teachers.llama_batch import BatchContext, format_chat  # noqa: E402


def sequential(path: Path, messages: list[list[dict]], n: int, temperature: float, max_tokens: int, threads: int):
    tokens = 0
    with use_llama(path, n_threads=threads) as llm:
        started = time.perf_counter()
        for p, msgs in enumerate(messages):
            for i in range(n):
                out = llm.create_chat_completion(
                    messages=msgs, temperature=temperature, max_tokens=max_tokens, seed=1000 * p + i
                )
                tokens += out["usage"]["completion_tokens"]
        return tokens, time.perf_counter() - started


def teacher(messages: list[list[dict]], n: int, temperature: float, max_tokens: int, threads: int):
    t = load_teacher("local:smollm2-135m", n_threads=threads)

    async def run() -> int:
        total = 0
        for p, msgs in enumerate(messages):
            samples = await t.sample(msgs, n=n, temperature=temperature, max_tokens=max_tokens, seed=1000 * p)
            total += sum(s.usage["completion_tokens"] for s in samples)
        return total

    asyncio.run(t.sample(messages[0], n=n, temperature=temperature, max_tokens=4, seed=0))  # load the model
    started = time.perf_counter()
    tokens = asyncio.run(run())
    return tokens, time.perf_counter() - started


def multi_prompt(
    path: Path, messages: list[list[dict]], n: int, temperature: float, max_tokens: int, threads: int, per_batch: int
):
    tokens = 0
    with use_llama(path, n_threads=threads) as llm:
        started = time.perf_counter()
        prompts = [format_chat(llm, m) for m in messages]
        for start in range(0, len(prompts), per_batch):
            group = prompts[start : start + per_batch]
            size = sum(len(t) for t, _ in group) + len(group) * n * max_tokens
            with BatchContext(llm, n_seq=len(group) * n, n_ctx=-(-size // 256) * 256, n_threads=threads) as batch:
                results = batch.generate(
                    [t for t, _ in group],
                    [[1000 * (start + p) + i for i in range(n)] for p in range(len(group))],
                    temperature=temperature,
                    max_tokens=max_tokens,
                    stop_strings=group[0][1],
                )
            tokens += sum(g.completion_tokens for gens in results for g in gens)
        return tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--threads", default="1,2", help="n_threads values, each measured for every path")
    parser.add_argument("--prompts-per-batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "local_sampling.json")
    args = parser.parse_args()

    from jupyter_distill.core.models import resolve_local_gguf

    path = resolve_local_gguf("smollm2-135m")
    messages = [[{"role": "user", "content": r["prompt"]}] for r in make_extraction_rows(args.prompts, seed=0)]
    rows = []

    def record(name: str, tokens: int, seconds: float) -> None:
        rows.append(
            {"path": name, "completion_tokens": tokens, "seconds": round(seconds, 3), "tok_s": tokens / seconds}
        )
        print(f"  {name:<26} {tokens:>7} tok {seconds:>8.2f} s {tokens / seconds:>9.1f} tok/s", flush=True)

    common = (args.n, args.temperature, args.max_tokens)
    for threads in [int(t) for t in args.threads.split(",")]:
        sequential(path, messages[:1], 1, args.temperature, 4, threads)  # load + warm
        record(f"sequential t={threads}", *sequential(path, messages, *common, threads))
        record(f"teacher t={threads}", *teacher(messages, *common, threads))
        if args.prompts_per_batch > 1:
            record(
                f"batch {args.prompts_per_batch} prompts t={threads}",
                *multi_prompt(path, messages, *common, threads, args.prompts_per_batch),
            )
    best_sequential = max(r["tok_s"] for r in rows if r["path"].startswith("sequential"))
    print(f"\n{'path':<26} {'tok/s':>9} {'vs best sequential':>19}")
    for row in rows:
        row["ratio"] = row["tok_s"] / best_sequential
        print(f"{row['path']:<26} {row['tok_s']:>9.1f} {row['ratio']:>18.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    args.out.write_text(
        json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "loadavg": load, "rows": rows}, indent=2)
    )
    print(f"\nload average {load[0]:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
