"""Alias versions benchmark: what recording every alias change costs a promotion, a rollback and a read.

Why: every change of an alias now also writes a numbered version into ``aliases.json`` (up to
``HISTORY_LIMIT`` per alias) in the same locked, fsynced write, so the file grows with the
history. This measures ``promote_alias``, ``rollback_alias`` and ``alias_history`` at a few
history lengths, and the operations per second that 8 threads sharing the lock reach.

    .venv/bin/python benchmarks/alias_versions.py [--repeat 20] [--out benchmarks/results/alias_versions.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jupyter_distill.core.errors import AliasError  # noqa: E402
from jupyter_distill.serving import registry  # noqa: E402


def _files(folder: Path) -> list[Path]:
    files = []
    for i in range(2):
        path = folder / f"m{i}.gguf"
        path.write_bytes(b"GGUF" + bytes([i]) * 60)
        files.append(path)
    return files


def _promote(name: str, path: Path) -> None:
    registry.promote_alias(
        name, {"backend": "gguf", "model_path": str(path)}, expected=registry.list_aliases().get(name)
    )


def _ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(folder: Path, versions: int, repeat: int) -> dict[str, Any]:
    os.environ["JUPYTER_DISTILL_HOME"] = str(folder / f"home-{versions}")
    files = _files(folder)
    registry.set_alias("a", backend="gguf", model_path=files[0])
    for i in range(versions - 1):
        _promote("a", files[(i + 1) % 2])
    toggle = iter(range(10**9))
    return {
        "versions": len(registry.alias_history("a")),
        "file_kb": round(registry.registry_path().stat().st_size / 1024, 1),
        "promote_ms": round(_ms(lambda: _promote("a", files[next(toggle) % 2]), repeat), 3),
        "rollback_ms": round(_ms(lambda: registry.rollback_alias("a"), repeat), 3),
        "history_ms": round(_ms(lambda: registry.alias_history("a"), repeat), 3),
    }


def threaded(folder: Path, seconds: float = 2.0) -> dict[str, Any]:
    os.environ["JUPYTER_DISTILL_HOME"] = str(folder / "home-threads")
    files = _files(folder)
    registry.set_alias("a", backend="gguf", model_path=files[0])
    done = [0] * 8
    refused = [0] * 8
    end = time.monotonic() + seconds

    def worker(k: int) -> None:
        i = 0
        while time.monotonic() < end:
            try:
                if i % 3 == 0:
                    _promote("a", files[(k + i) % 2])
                elif i % 3 == 1:
                    registry.rollback_alias("a")
                else:
                    registry.alias_history("a")
            except AliasError:
                refused[k] += 1
            done[k] += 1
            i += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = registry.alias_history("a")
    numbers = [v["version"] for v in history]
    return {
        "threads": 8,
        "ops_per_s": round(sum(done) / seconds, 1),
        "refused": sum(refused),
        "versions_consecutive": numbers == list(range(numbers[0], numbers[0] + len(numbers))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "alias_versions.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(Path(tmp), n, args.repeat) for n in (1, 50, registry.HISTORY_LIMIT)]
        hammer = threaded(Path(tmp))
    print(f"{'versions':>8} {'file kB':>8} {'promote ms':>11} {'rollback ms':>12} {'history ms':>11}")
    for r in rows:
        print(
            f"{r['versions']:>8} {r['file_kb']:>8} {r['promote_ms']:>11} {r['rollback_ms']:>12} {r['history_ms']:>11}"
        )
    print(
        f"8 threads: {hammer['ops_per_s']} ops/s, {hammer['refused']} refused, "
        f"versions consecutive: {hammer['versions_consecutive']}"
    )
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load": os.getloadavg()},
        "rows": rows,
        "threads": hammer,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
