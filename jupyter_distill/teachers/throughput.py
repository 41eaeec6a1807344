"""How fast a local GGUF teacher decodes on this machine: a short calibration, cached per model.

``jd.estimate`` turns the tokens a run will generate into minutes. A constant cannot do that here:
the batched llama.cpp path decodes several sequences per weight read, so its tokens/s grow with the
number of candidates per prompt, and llama.cpp's threads spin, so on a shared 2-core machine one
thread decoded 53-80 tokens/s where two decoded 4-7 (``teachers/llama_batch.batched_threads``).
So the first estimate for a model runs the teacher's own sampling path (``LlamaTeacher._generate``,
the function a run calls) on one fixed prompt for :data:`CALIBRATION_TOKENS` tokens per sequence,
and keeps the figure in ``<cache_dir>/throughput.json`` keyed by the model file's SHA-256, the
thread count, the sequences per batch and the llama.cpp version. A figure older than
:data:`MAX_AGE_S` is measured again, since the load it was measured under has changed by then.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from jupyter_distill.core.models import cache_dir

CALIBRATION_MESSAGES = [{"role": "user", "content": "Count from one to thirty in words, separated by commas."}]
CALIBRATION_TOKENS = 32  # per sequence: a few seconds on 2 cores, long enough to amortise the prompt
MAX_AGE_S = 24 * 3600
# Used only when no measurement can be made (the model file is not installed): the batched path's
# order of magnitude for a 135M model on 2 cores. The estimate then says "default", not "measured".
DEFAULT_TOKENS_PER_S = 50.0
CACHE_FILE = "throughput.json"

_lock = threading.Lock()  # one calibration at a time in this process, and one writer of the cache


@dataclass(frozen=True)
class Throughput:
    """Decoding speed of one model with ``n_threads`` threads and ``n_seq`` sequences per batch."""

    tokens_per_s: float
    n_threads: int
    n_seq: int
    source: Literal["measured", "cached", "default"]
    measured_at: float | None = None  # unix time of the measurement

    def describe(self) -> str:
        if self.source == "default":
            return f"{self.tokens_per_s:.0f} tokens/s (default, not measured on this machine)"
        when = "measured now" if self.source == "measured" else "measured on this machine"
        threads = f"{self.n_threads} thread{'s' if self.n_threads != 1 else ''}"
        return f"{self.tokens_per_s:.0f} tokens/s ({when}: {threads}, {self.n_seq} sequences per batch)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_key(model_sha256: str, n_threads: int, n_seq: int) -> str:
    """What a measurement depends on besides the load: model, threads, batch width, llama.cpp, CPU."""
    try:
        from importlib.metadata import version

        llama = version("llama-cpp-python")
    except Exception:  # an uninstalled llama.cpp cannot be measured anyway
        llama = "unknown"
    cpu = f"{platform.machine()}x{os.cpu_count() or 1}"
    return f"{model_sha256[:16]}:{n_threads}t:{n_seq}s:llama-{llama}:{cpu}"


def _cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def read_cache(path: Path | None = None) -> dict[str, Any]:
    """The cached measurements; an unreadable or corrupt file counts as empty (it is rewritten)."""
    try:
        data = json.loads((path or _cache_path()).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(entries: dict[str, Any], path: Path) -> None:
    """Atomically replace the cache file, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".throughput-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def measure(teacher: Any, n_seq: int) -> float:
    """Completion tokens per second of ``teacher``'s own batched sampling path, ``n_seq`` sequences."""
    generations, seconds = teacher._generate(
        CALIBRATION_MESSAGES,
        1.0,
        CALIBRATION_TOKENS,
        list(range(n_seq)),
        threading.Event(),
    )
    tokens = sum(g.completion_tokens for g in generations)
    return tokens / max(seconds, 1e-6)


def local_throughput(teacher: Any, n_seq: int, *, now: float | None = None) -> Throughput:
    """The measured decoding speed of a ``LlamaTeacher`` here: cached, or measured once and cached.

    Threads are those a run would use now (the teacher's ``n_threads``, else the idle cores). Falls
    back to :data:`DEFAULT_TOKENS_PER_S`, saying so, when the model cannot be loaded.
    """
    from jupyter_distill.teachers.llama_batch import batched_threads
    from jupyter_distill.teachers.local import LlamaTeacher, model_file_sha256

    threads = int(teacher.n_threads or batched_threads())
    n_seq = max(1, int(n_seq))
    now = time.time() if now is None else now
    try:
        key = cache_key(model_file_sha256(Path(teacher.path)), threads, n_seq)
    except OSError:
        return Throughput(DEFAULT_TOKENS_PER_S, threads, n_seq, "default")
    path = _cache_path()
    with _lock:
        hit = read_cache(path).get(key)
        if isinstance(hit, dict) and now - float(hit.get("measured_at", 0)) < MAX_AGE_S:
            return Throughput(float(hit["tokens_per_s"]), threads, n_seq, "cached", float(hit["measured_at"]))
        probe = LlamaTeacher(
            spec=teacher.spec, model=teacher.model, path=Path(teacher.path), decision=teacher.decision,
            n_ctx=max(int(teacher.n_ctx), 512), n_threads=threads,
        )  # fmt: skip
        try:
            speed = measure(probe, n_seq)
        except Exception:  # an estimate must not fail because a calibration could not run
            return Throughput(DEFAULT_TOKENS_PER_S, threads, n_seq, "default")
        entries = read_cache(path)
        entries[key] = {"tokens_per_s": round(speed, 2), "measured_at": now}
        _write_cache(entries, path)
    return Throughput(round(speed, 2), threads, n_seq, "measured", now)


__all__ = [
    "CALIBRATION_TOKENS",
    "DEFAULT_TOKENS_PER_S",
    "MAX_AGE_S",
    "Throughput",
    "cache_key",
    "local_throughput",
    "measure",
    "read_cache",
]
