"""``jd.estimate`` times local sampling from a calibration measured on this machine, cached."""

from __future__ import annotations

import json

import pytest

from jupyter_distill import estimate as estimate_module
from jupyter_distill.llama_batch import batch_threads
from jupyter_distill.models import resolve_local_gguf

ROWS = [{"prompt": f"Extract the name from: ticket {i} from Ada"} for i in range(10)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_DISTILL_CACHE", str(tmp_path))
    return tmp_path / "throughput.json"


def test_calibration_is_measured_once_then_read_from_the_cache(cache):
    path = resolve_local_gguf("smollm2-135m")
    first = estimate_module.local_throughput(path, n_threads=1)
    assert not first.cached and first.tokens_per_s > 0 and first.threads == 1
    again = estimate_module.local_throughput(path, n_threads=1)
    assert again.cached and again.tokens_per_s == pytest.approx(first.tokens_per_s, rel=1e-2)
    assert again.measured_at == first.measured_at
    table = json.loads(cache.read_text())
    assert list(table) == [estimate_module._calibration_key(path, 1)]  # keyed by file and thread count
    assert "threads=1" in next(iter(table))


def test_estimate_times_local_sampling_from_the_measured_throughput(cache):
    path = resolve_local_gguf("smollm2-135m")
    key = estimate_module._calibration_key(path, batch_threads())
    cache.write_text(json.dumps({key: {"tokens_per_s": 50.0, "measured_at": "2026-11-29T17:00:00Z"}}))
    result = estimate_module.estimate(dataset=ROWS, teacher="local:smollm2-135m", n_samples=4, max_tokens=64)
    assert result.sampling_seconds == pytest.approx(result.output_tokens_typical / 50.0, abs=0.1)
    assert "measured on this machine: 50 tokens/s" in result.sampling_basis and "cached" in result.sampling_basis
    assert "sampling" in repr(result) and "50 tokens/s" in repr(result)


def test_estimate_with_an_api_teacher_says_sampling_time_is_not_estimated(cache):
    result = estimate_module.estimate(dataset=ROWS, teacher="openrouter:meta-llama/llama-3.3-70b-instruct")
    assert result.sampling_seconds is None and "not estimated" in result.sampling_basis
    assert not cache.exists()  # nothing was loaded or measured


def test_a_corrupt_calibration_cache_is_measured_again(cache):
    cache.write_text("{not json")
    path = resolve_local_gguf("smollm2-135m")
    result = estimate_module.local_throughput(path, n_threads=1)
    assert not result.cached and result.tokens_per_s > 0
    assert json.loads(cache.read_text())  # rewritten whole
