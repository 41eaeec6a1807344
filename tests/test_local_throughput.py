"""The measured local decoding speed behind ``jd.estimate``'s sampling time (real SmolLM2 on CPU)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from jupyter_distill.pipeline.estimate import estimate
from jupyter_distill.teachers import load_teacher
from jupyter_distill.teachers import throughput as tp

ROWS = [{"prompt": f"Name a colour, number {i}."} for i in range(12)]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JUPYTER_DISTILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / tp.CACHE_FILE


def test_measured_once_then_cached_until_it_is_a_day_old(cache: Path) -> None:
    teacher = load_teacher("local:smollm2-135m", n_threads=1)
    first = tp.local_throughput(teacher, 2)
    assert first.source == "measured" and first.tokens_per_s > 0 and (first.n_threads, first.n_seq) == (1, 2)
    assert "measured now: 1 thread, 2 sequences per batch" in first.describe()
    again = tp.local_throughput(teacher, 2)
    assert again.source == "cached" and again.tokens_per_s == first.tokens_per_s
    entries = json.loads(cache.read_text())
    assert len(entries) == 1 and next(iter(entries)).split(":")[1:3] == ["1t", "2s"]
    wider = tp.local_throughput(teacher, 4)  # another batch width is another measurement
    assert wider.source == "measured" and len(json.loads(cache.read_text())) == 2
    stale = tp.local_throughput(teacher, 2, now=first.measured_at + tp.MAX_AGE_S + 1)
    assert stale.source == "measured"


def test_eight_threads_measure_once_and_share_the_figure(cache: Path) -> None:
    teacher = load_teacher("local:smollm2-135m", n_threads=1)
    results: list[tp.Throughput] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        try:
            barrier.wait()
            results.append(tp.local_throughput(teacher, 2))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.source for r in results) == ["cached"] * 7 + ["measured"]
    assert len({r.tokens_per_s for r in results}) == 1
    assert len(json.loads(cache.read_text())) == 1
    assert not list(cache.parent.glob(".throughput-*"))  # no temporary file left behind


def test_a_corrupt_cache_is_measured_again_and_rewritten(cache: Path) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    teacher = load_teacher("local:smollm2-135m", n_threads=1)
    assert tp.local_throughput(teacher, 1).source == "measured"
    assert len(json.loads(cache.read_text())) == 1


def test_a_file_that_cannot_be_loaded_falls_back_to_the_default_and_says_so(cache: Path, tmp_path: Path) -> None:
    fake = tmp_path / "not-a-model.gguf"
    fake.write_bytes(b"GGUF but not really")
    found = tp.local_throughput(load_teacher(f"gguf:{fake}", n_threads=1, policy="off"), 2)
    assert found.source == "default" and found.tokens_per_s == tp.DEFAULT_TOKENS_PER_S
    assert "default, not measured" in found.describe()
    assert not cache.exists()  # nothing measured, nothing cached


def test_estimate_turns_the_new_tokens_into_time_at_the_measured_speed(cache: Path) -> None:
    found = estimate(ROWS, teacher="local:smollm2-135m", n_samples=2, max_tokens=32)
    speed = found.sampling_throughput
    assert speed is not None and speed["source"] in ("measured", "cached") and speed["n_seq"] == 2
    assert found.sampling_seconds == round(found.output_tokens_typical / speed["tokens_per_s"], 1)
    assert "sampling" in repr(found) and "tokens/s (measured" in repr(found)
    assert (
        estimate(ROWS, teacher="local:smollm2-135m", n_samples=2, max_tokens=32).sampling_throughput["source"]
        == "cached"
    )
    skipped = estimate(ROWS, teacher="local:smollm2-135m", calibrate=False)
    assert skipped.sampling_seconds is None and "sampling" not in repr(skipped)


def test_an_http_teacher_gets_no_local_sampling_time(cache: Path) -> None:
    found = estimate(ROWS, teacher="openai:gpt-4o-mini")
    assert found.sampling_seconds is None and found.sampling_throughput is None
    assert not cache.exists()
