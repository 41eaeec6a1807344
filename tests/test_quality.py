"""Quality on CPU: best-of-N self-distillation makes SmolLM2-135M better on held-out prompts.

The embedded default end to end, offline and through the product: one ``jd.distill`` run
(``benchmarks/quality_cpu.py``'s ``run_variant``, seed 0, the default BOND mix): SmolLM2-135M
samples 4 answers per prompt at T=0.8 through llama.cpp, the JSON-extraction verifier scores
them, ``selection.select`` builds the pairs, the trainer trains, and the pipeline's evaluation
measures held-out greedy pass@1 before and after, which must rise clearly. Measured with
exactly these settings on 2 cores (``benchmarks/quality_cpu.py --seeds 0``, 2026-11-29): 2 pairs
from 40 training prompts, pass@1 0.000 before and 0.792 after on 24 held-out prompts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: Measured gain with these settings: 0.79 (seed 0, docs/benchmarks.md); 0.25 leaves room for
#: other CPUs' float rounding. Only 2 of 40 training prompts had a candidate the verifier passes.
MIN_GAIN = 0.25
MIN_PAIRS = 1


def _quality_module():
    spec = importlib.util.spec_from_file_location("quality_cpu", ROOT / "benchmarks" / "quality_cpu.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bond_self_distillation_beats_the_untrained_student(tmp_path: Path) -> None:
    quality = _quality_module()
    result = quality.run_variant(0, "bond", workdir=tmp_path)
    assert result["pairs"] >= MIN_PAIRS, result
    assert result["after"] >= result["before"] + MIN_GAIN, result
    # the pipeline's own evaluation wrote the before/after rows the summary reports
    from jupyter_distill.core.store import RunStore

    store = RunStore(tmp_path)
    labels = {r["label"] for r in store.get_eval_results(result["run"])}
    assert labels == {"student_before", "student_after"}
    assert len(store.get_pairs(result["run"])) == result["pairs"]
