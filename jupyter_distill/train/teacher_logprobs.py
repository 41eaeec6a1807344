"""The teacher's log-probs of the student's samples, for ``loss: onpolicy``: cached, counted, priced.

The teacher is any object with ``token_logprobs(prompt_ids, completions)`` (a
``teachers.base.TokenScorer``: a local GGUF through llama.cpp, or an OpenAI-compatible server that
returns prompt log-probs). One call per prompt scores all of its new samples; the result is cached
under ``(teacher spec, prompt ids, sample ids)``, so a sample the student draws again (short
answers often repeat) and a resumed step are not paid twice. A paid teacher enforces the run's
``max_cost`` itself (its budget raises ``BudgetExceeded`` before the request), as it does for
sampling; the calls and their cost are counted here and carried through checkpoints.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.loops import run_sync
from jupyter_distill.core.tokenizer_id import TokenizerFingerprint, fingerprint


def tokenizer_fingerprint(tokenizer: Any) -> TokenizerFingerprint:
    """The fingerprint of a transformers tokenizer (plain text, no special tokens added)."""
    return fingerprint(lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"]), len(tokenizer))


def student_fingerprint(spec: str) -> TokenizerFingerprint:
    """The student's tokenizer fingerprint, loading only the tokenizer (no weights)."""
    from transformers import AutoTokenizer

    from jupyter_distill.train.student import quiet_transformers, resolve_student_folder

    folder: Path = resolve_student_folder(spec)[0]
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    return tokenizer_fingerprint(tokenizer)


def score_key(spec: str, prompt_ids: Sequence[int], ids: Sequence[int]) -> str:
    """The cache key of the teacher's scores of one sample."""
    return content_hash("teacher-token-logprobs", spec, list(prompt_ids), list(ids))


class TeacherLogprobs:
    """Scores student samples with ``teacher`` and caches the per-token log-probs; counts calls and cost.

    ``state_dict``/``load_state_dict`` carry the cache and the counters through a checkpoint
    (the local teacher's numbers can differ in the last bits with the batch layout, so a resumed
    run reuses the very numbers the uninterrupted one saw). Thread-safe: a notebook may read the
    counters while training runs.
    """

    def __init__(self, teacher: Any):
        self.teacher = teacher
        self.spec = str(getattr(teacher, "spec", type(teacher).__name__))
        self._lock = threading.Lock()
        self._scoring = threading.Lock()  # one scoring call at a time: a key in flight is never paid twice
        self._cache: dict[str, list[float]] = {}
        self.calls = 0  # scoring requests sent (one per prompt with new samples)
        self.tokens = 0  # sample tokens scored by the teacher
        self.hits = 0
        self.cost = 0.0

    def score(self, items: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]]:
        """``log p_T`` of each token of each ``(prompt_ids, sample_ids)``, in order."""
        with self._scoring:
            keys = [score_key(self.spec, p, ids) for p, ids in items]
            groups: dict[tuple[int, ...], dict[str, list[int]]] = {}
            with self._lock:
                for key, (prompt, ids) in zip(keys, items, strict=True):
                    if key in self._cache:
                        self.hits += 1
                    else:
                        groups.setdefault(tuple(prompt), {}).setdefault(key, list(ids))
            if groups:
                fresh = run_sync(lambda: self._score_all(groups), thread_name="jupyter-distill-onpolicy-teacher")
                with self._lock:
                    for key, values in fresh.items():
                        self._cache[key] = values
            with self._lock:
                return [list(self._cache[key]) for key in keys]

    async def _score_all(self, groups: Mapping[tuple[int, ...], Mapping[str, list[int]]]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        try:
            for prompt, todo in groups.items():
                result = await self.teacher.token_logprobs(list(prompt), list(todo.values()))
                if len(result.logprobs) != len(todo) or any(
                    len(v) != len(ids) for v, ids in zip(result.logprobs, todo.values(), strict=True)
                ):
                    raise TrainingError(
                        f"the teacher {self.spec} returned log-probs that do not line up with the student's tokens. "
                        "Fix: use a teacher that scores with the student's tokenizer, or loss='jbond'.",
                        field="teacher",
                        value=self.spec,
                        fix="use loss='jbond'",
                    )
                with self._lock:
                    self.calls += 1
                    self.tokens += sum(len(ids) for ids in todo.values())
                    self.cost += float(result.cost)
                out.update(zip(todo, (list(map(float, v)) for v in result.logprobs), strict=True))
        finally:
            if hasattr(self.teacher, "aclose"):
                await self.teacher.aclose()  # this loop ends with the call: release its sockets
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "teacher": self.spec,
                "keys": list(self._cache),
                "values": [list(v) for v in self._cache.values()],
                "calls": self.calls,
                "tokens": self.tokens,
                "hits": self.hits,
                "cost": self.cost,
            }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("teacher") != self.spec:  # another teacher: its numbers do not apply
            return
        with self._lock:
            self._cache = {k: [float(x) for x in v] for k, v in zip(state["keys"], state["values"], strict=True)}
            self.calls, self.tokens = int(state["calls"]), int(state["tokens"])
            self.hits, self.cost = int(state["hits"]), float(state["cost"])


__all__ = ["TeacherLogprobs", "score_key", "student_fingerprint", "tokenizer_fingerprint"]
