"""A distillation run in its own process, for crash tests that SIGKILL it mid-phase.

``python tests/crash_worker.py --workdir W --url http://127.0.0.1:PORT/v1 --student FOLDER``
runs :func:`jupyter_distill.distill` with :func:`crash_options`. The test process owns the
OpenAI-compatible server (so request counts survive the kill), polls the run store until the
phase it wants to interrupt is under way, and kills this process with SIGKILL: no ``finally``,
no ``atexit``, no flush, exactly what a kernel crash or an OOM kill does. The test then resumes
with the very same options, which is why they live here, importable by both sides.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RUN_NAME = "crashy"
N_PROMPTS = 12


def dataset(n: int = N_PROMPTS) -> list[dict[str, str]]:
    """Prompts whose right answer the test server knows: ``Repeat the number i`` -> ``i``."""
    return [{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(n)]


def crash_options(workdir: str, url: str, student: str, **overrides: Any) -> dict[str, Any]:
    """The run both the killed worker and the resuming test execute (same name, same config).

    The teacher doubles as the LLM judge (``judge=None``), so judging, like sampling, sends paid
    requests to the test server and can be interrupted mid-way. No held-out split and no export:
    the crash tests are about the phases that pay or train.
    """
    options: dict[str, Any] = dict(
        dataset=dataset(),
        teacher=f"openai-compatible:{url}#test-model",
        student=student,
        judge=None,
        n_samples=4,
        top_k=1,
        steps=2,
        batch_size=2,
        learning_rate=1e-2,
        warmup_steps=0,
        checkpoint_every=1,
        max_tokens=8,
        heldout_fraction=0.0,
        concurrency=2,
        quantize=None,
        workdir=workdir,
        name=RUN_NAME,
        device="cpu",
    )
    options.update(overrides)
    return options


def main(argv: list[str] | None = None) -> int:
    """Run the pipeline once; ``--overrides`` is a JSON object merged into the options."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--overrides", default="{}")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import jupyter_distill as jd

    options = crash_options(args.workdir, args.url, args.student, **json.loads(args.overrides))
    jd.distill(on_progress=lambda event: None, **options)
    print("worker finished", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
