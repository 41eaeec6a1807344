"""J-BOND rewards: the run's judge scores the student's samples, ranked against the teacher's.

The teacher's side of the comparison is what the judging stage already stored (the scores of the
teacher candidates of each prompt), so no teacher request is made. The student's side calls the
run's judge once per distinct ``(prompt, sample text, judge id)``; the verdict is cached under
that key, so a sample the student draws again (short answers often repeat) is not paid twice.
A paid judge is the same object the judging stage used, whose teacher carries the run's
``max_cost`` budget: crossing it raises ``BudgetExceeded`` here as it does there.

A failed judgment (a judge that raised, an unparsable verdict) scores below every candidate, as
failed candidates rank last in the judging stage, and is cached like a success so that a resumed
run sees exactly the rewards the uninterrupted one saw.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jupyter_distill.core.errors import BudgetExceeded, PolicyError, TeacherError
from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.loops import run_sync
from jupyter_distill.core.store import PromptRecord, RunStore
from jupyter_distill.train.jbond import quantile_reward, win_fraction


@dataclass(frozen=True)
class SampleReward:
    """The judge's score of one student sample (``None`` if the judgment failed), its log-quantile
    reward and its win fraction against the teacher's candidates (``nan`` when there are none)."""

    score: float | None
    reward: float
    win: float
    cached: bool


def teacher_scores(store: RunStore, prompts: Sequence[PromptRecord], judge_id: str) -> dict[str, list[float]]:
    """``{prompt hash: scores of its teacher candidates}`` by ``judge_id``, successful judgments only."""
    out: dict[str, list[float]] = {}
    for prompt in prompts:
        keys = [s.key for s in store.samples_for_prompt(prompt.hash)]
        judged = store.judgments_for_samples(keys, judge=judge_id) if keys else []
        out[prompt.hash] = sorted(j.score for j in judged if j.status == "ok" and j.score is not None)
    return out


def sample_judgment_key(prompt_hash: str, text: str, judge_id: str) -> str:
    """The cache key of a judgment of a student's sample (distinct from a teacher sample's)."""
    return content_hash("student-judgment", prompt_hash, text, judge_id)


class OnPolicyRewards:
    """Scores student samples with ``judge`` and turns them into quantile rewards; counts calls and cost.

    ``state_dict``/``load_state_dict`` carry the cache and the counters through a checkpoint.
    The cache is guarded by a lock: a notebook may read the counters while training runs.
    """

    def __init__(self, judge: Any, teacher: Mapping[str, Sequence[float]], *, concurrency: int = 16):
        self.judge = judge
        self.judge_id = str(judge.id)
        self.teacher = {h: list(v) for h, v in teacher.items()}
        self.concurrency = max(1, int(concurrency))
        self._lock = threading.Lock()  # the cache and counters
        self._scoring = threading.Lock()  # one scoring call at a time: a key in flight is never paid twice
        self._cache: dict[str, tuple[float | None, float]] = {}  # key -> (score, cost)
        self.calls = 0
        self.hits = 0
        self.cost = 0.0

    # ------------------------------------------------------------------ scoring
    def score(self, prompts: Sequence[PromptRecord], texts: Sequence[str]) -> list[SampleReward]:
        """One reward per ``(prompts[i], texts[i])``; judge calls only for keys not in the cache."""
        if len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts for {len(texts)} samples")
        with self._scoring:
            return self._score(prompts, texts)

    def _score(self, prompts: Sequence[PromptRecord], texts: Sequence[str]) -> list[SampleReward]:
        keys = [sample_judgment_key(p.hash, t, self.judge_id) for p, t in zip(prompts, texts, strict=True)]
        with self._lock:
            seen: set[str] = set()
            was_cached = []  # a key repeated within the call is judged once: its repeats are hits
            for key in keys:
                was_cached.append(key in self._cache or key in seen)
                seen.add(key)
            todo = {k: (p, t) for k, p, t, hit in zip(keys, prompts, texts, was_cached, strict=True) if not hit}
        if todo:
            fresh = run_sync(lambda: self._judge_all(todo), thread_name="jupyter-distill-onpolicy-judge")
            with self._lock:
                for key, (value, cost) in fresh.items():
                    if key not in self._cache:
                        self._cache[key] = (value, cost)
                        self.calls += 1
                        self.cost += cost
        out: list[SampleReward] = []
        with self._lock:
            self.hits += sum(was_cached)
            for key, prompt, hit in zip(keys, prompts, was_cached, strict=True):
                value = self._cache[key][0]
                candidates = self.teacher.get(prompt.hash, [])
                ranked = -math.inf if value is None else value
                out.append(
                    SampleReward(value, quantile_reward(ranked, candidates), win_fraction(ranked, candidates), hit)
                )
        return out

    async def _judge_all(self, todo: Mapping[str, tuple[PromptRecord, str]]) -> dict[str, tuple[float | None, float]]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(prompt: PromptRecord, text: str) -> tuple[float | None, float]:
            async with gate:
                try:
                    result = await self.judge.score(prompt, text)
                except (BudgetExceeded, PolicyError):
                    raise
                except TeacherError as exc:
                    if type(exc).__name__ == "FatalTeacherError":  # a dead endpoint stops the run
                        raise
                    return None, 0.0
                except Exception:  # a user-made judge's bug is one failed judgment, not a crash
                    return None, 0.0
            ok = getattr(result, "status", "ok") == "ok" and result.score is not None
            value = min(1.0, max(0.0, float(result.score))) if ok else None
            return value, float(getattr(result, "cost", 0.0) or 0.0)

        items = list(todo.items())
        results = await asyncio.gather(*(one(p, t) for _, (p, t) in items))
        if hasattr(self.judge, "aclose"):
            await self.judge.aclose()  # this loop ends with the call: release its sockets
        return {key: value for (key, _), value in zip(items, results, strict=True)}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "judge": self.judge_id,
                "keys": list(self._cache),
                "scores": [math.nan if v is None else v for v, _ in self._cache.values()],
                "costs": [c for _, c in self._cache.values()],
                "calls": self.calls,
                "hits": self.hits,
                "cost": self.cost,
            }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("judge") != self.judge_id:  # another judge: its verdicts do not apply
            return
        with self._lock:
            self._cache = {
                k: (None if math.isnan(s) else float(s), float(c))
                for k, s, c in zip(state["keys"], state["scores"], state["costs"], strict=True)
            }
            self.calls, self.hits, self.cost = int(state["calls"]), int(state["hits"]), float(state["cost"])


__all__ = ["OnPolicyRewards", "SampleReward", "sample_judgment_key", "teacher_scores"]
