"""Benchmark: teacher sampling throughput against a local OpenAI-compatible server with latency.

For each concurrency level, N prompts x n candidates are sampled from ``tests/openai_server.py``
(a real aiohttp server on 127.0.0.1, in its own process, answering after ``--latency`` seconds) into a fresh run
store; the wall time is compared with the ideal ``requests x latency / concurrency`` (rounded
up to whole waves), and the same call is then repeated to count the requests a re-run sends
(must be 0: everything is in the store).

Two server modes: ``n`` honoured (one request per prompt) and ``n`` ignored (the teacher detects
it and sends one request per candidate: 4x the requests).

    .venv/bin/python benchmarks/sampling.py                      # table + benchmarks/results/sampling.json
    .venv/bin/python benchmarks/sampling.py --prompts 64 --concurrency 16,64

Concurrency 1 is slow by construction (256 requests x 200 ms = 51 s; 205 s without ``n``), so
it uses ``--prompts-c1`` prompts (default 64); the table says how many each row used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from jupyter_distill.core.data import load_dataset  # noqa: E402
from jupyter_distill.core.store import RunStore  # noqa: E402
from jupyter_distill.sampling.stage import sample  # noqa: E402
from jupyter_distill.teachers import load_teacher  # noqa: E402


class RemoteServer:
    """``tests/openai_server.py`` in its own process, so the server does not share the client's GIL.

    A real teacher API is another machine; a server thread inside the benchmark process would
    steal the interpreter lock from the client being measured.
    """

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "openai_server.py")], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.close()
            raise RuntimeError(f"the test server did not start (printed {self.url!r})")
        self.root = self.url.removesuffix("/v1")

    def spec(self, model: str = "test-model") -> str:
        return f"openai-compatible:{self.url}#{model}"

    def set(self, **knobs: object) -> None:
        httpx.post(f"{self.root}/_set", json=knobs).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.root}/_reset").raise_for_status()

    def stats(self) -> dict:
        return httpx.get(f"{self.root}/_stats").json()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def run_case(server: RemoteServer, prompts: int, n: int, concurrency: int, latency: float, support_n: bool) -> dict:
    """One (mode, concurrency) cell: cold run, then a re-run on the same store."""
    server.reset()
    server.set(latency=latency, support_n=support_n)
    rows = load_dataset([{"prompt": f"benchmark prompt {i}"} for i in range(prompts)])
    with tempfile.TemporaryDirectory() as workdir:
        store = RunStore(workdir)
        teacher = load_teacher(server.spec(), concurrency=concurrency)
        started, cpu_started = time.perf_counter(), time.process_time()
        first = sample(store, teacher, rows, n=n, run_id="bench", seed=0)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        stats = server.stats()
        requests = stats["requests_total"]
        started = time.perf_counter()
        second = sample(store, teacher, rows, n=n, run_id="bench", seed=0)
        rerun_wall = time.perf_counter() - started
        rerun_requests = server.stats()["requests_total"] - requests
        store.close()
    ideal = math.ceil(requests / concurrency) * latency
    return {
        "mode": "n per request" if support_n else "n ignored (1 request per candidate)",
        "concurrency": concurrency,
        "prompts": prompts,
        "n": n,
        "samples": first.new,
        "requests": requests,
        "peak_in_flight": stats["max_in_flight"],
        "wall_s": round(wall, 3),
        "ideal_s": round(ideal, 3),
        "throughput_vs_ideal": round(ideal / wall, 3),
        "samples_per_s": round(first.new / wall, 1),
        "client_cpu_s": round(cpu, 3),
        "client_cpu_ms_per_request": round(1000 * cpu / max(1, requests), 2),
        "rerun_requests": rerun_requests,
        "rerun_requests_reported": second.requests_sent,
        "rerun_wall_s": round(rerun_wall, 3),
        "failed": len(first.failed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--prompts-c1", type=int, default=64, help="prompts for concurrency 1 (slow by design)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--modes", default="n,no-n", help="n (server honours n), no-n (server ignores n)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampling.json"))
    args = parser.parse_args()

    levels = [int(c) for c in args.concurrency.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    results = []
    server = RemoteServer()
    try:
        for mode in modes:
            for concurrency in levels:
                prompts = args.prompts_c1 if concurrency == 1 else args.prompts
                row = run_case(server, prompts, args.n, concurrency, args.latency, support_n=(mode == "n"))
                results.append(row)
                print(f"  done: {row['mode']}, concurrency {concurrency}: {row['wall_s']} s", file=sys.stderr)
    finally:
        server.close()

    header = (
        f"{'mode':<36} {'conc':>4} {'prompts':>7} {'requests':>8} {'peak':>4} {'wall s':>7} {'ideal s':>7} "
        f"{'vs ideal':>8} {'samples/s':>9} {'cpu ms/req':>10} {'re-run req':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['mode']:<36} {r['concurrency']:>4} {r['prompts']:>7} {r['requests']:>8} {r['peak_in_flight']:>4} "
            f"{r['wall_s']:>7.2f} {r['ideal_s']:>7.2f} {r['throughput_vs_ideal']:>8.2f} {r['samples_per_s']:>9.1f} "
            f"{r['client_cpu_ms_per_request']:>10.2f} {r['rerun_requests']:>10}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "sampling",
        "latency_s": args.latency,
        "n": args.n,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
