"""The judging stage: run one judge over every candidate of a run and store each verdict.

:func:`judge` scores candidates concurrently and stores every verdict under
``content_hash("judgment", sample_key, judge.id)``: a re-run re-uses every successful judgment and
retries only the failed ones. Scores in the store are always in [0, 1].
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jupyter_distill.core.errors import BudgetExceeded, JudgeError, PolicyError
from jupyter_distill.core.events import Emit, Event, no_emit
from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.loops import run_sync
from jupyter_distill.core.store import JudgmentRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.judging.llm_judge import LLMJudge, load_judge
from jupyter_distill.judging.verifiers import JudgeResult, VerifierJudge
from jupyter_distill.teachers.base import FatalTeacherError


def judgment_key(sample_key: str, judge_id: str) -> str:
    return content_hash("judgment", sample_key, judge_id)


def judge(
    store: RunStore,
    judge: Any,
    prompts: Sequence[PromptRecord],
    samples: Mapping[str, Sequence[SampleRecord]] | Iterable[SampleRecord],
    *,
    run_id: str,
    emit: Emit = no_emit,
    stop: threading.Event | None = None,
    concurrency: int = 16,
) -> dict[str, JudgmentRecord]:
    """Judge every candidate; returns ``{sample_key: JudgmentRecord}`` including stored ones.

    Successful judgments already in the store are re-used without a request; failed ones are
    tried again. Each verdict is written as soon as it arrives, so a crash or ``stop`` loses at
    most the requests in flight. Failures are recorded in the judgment (status "failed", the
    reason in ``rationale``) and in the store's failures table; a warning event summarises them.
    """
    the_judge = judge if isinstance(judge, VerifierJudge | LLMJudge) else load_judge(judge)
    if concurrency < 1:
        raise JudgeError(
            f"concurrency must be >= 1, got {concurrency!r}. Fix: e.g. concurrency=16.",
            field="concurrency",
            value=concurrency,
        )
    by_hash = {p.hash: p for p in prompts}
    candidates = list({s.key: s for s in _flatten(samples) if s.prompt_hash in by_hash}.values())
    keys = {s.key: judgment_key(s.key, the_judge.id) for s in candidates}
    stored = store.get_judgments(keys.values())
    results: dict[str, JudgmentRecord] = {}
    todo: list[SampleRecord] = []
    for s in candidates:
        record = stored.get(keys[s.key])
        if record is not None and record.status == "ok":
            results[s.key] = record
        else:
            todo.append(s)
    total = len(candidates)
    emit(Event("phase_start", phase="judging", run=run_id, total=total, message=f"judging with {the_judge.id}"))
    emit(
        Event("progress", phase="judging", run=run_id, current=len(results), total=total, data={"cached": len(results)})
    )

    async def work() -> None:
        gate = asyncio.Semaphore(concurrency)
        state = {"cost": 0.0, "failed": 0}

        async def one(s: SampleRecord) -> None:
            async with gate:
                if stop is not None and stop.is_set():
                    return
                try:
                    result = await the_judge.score(by_hash[s.prompt_hash], s.text)
                except (BudgetExceeded, PolicyError, FatalTeacherError):
                    raise
                except Exception as exc:  # a user-made Judge: its bug is one failed judgment, not a crash
                    result = JudgeResult.failed(f"judge {the_judge.id} raised {type(exc).__name__}: {exc}")
            record = _record(keys[s.key], s.key, the_judge.id, result)
            _save(store, run_id, record, s.prompt_hash, had_failure=keys[s.key] in stored)
            results[s.key] = record
            state["cost"] += record.cost
            state["failed"] += record.status != "ok"
            emit(
                Event(
                    "progress",
                    phase="judging",
                    run=run_id,
                    current=len(results),
                    total=total,
                    data={"cost": round(state["cost"], 6), "failed": state["failed"]},
                )
            )

        tasks = [asyncio.ensure_future(one(s)) for s in todo]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            if isinstance(the_judge, LLMJudge):
                await the_judge.aclose()  # this loop ends with the call: release its sockets

    if todo:
        run_sync(work, thread_name="jupyter-distill-judge", on_worker_exit=store.close)
    failed = [r for r in results.values() if r.status != "ok"]
    if failed:
        emit(
            Event(
                "warning",
                phase="judging",
                run=run_id,
                message=f"{len(failed)} of {total} judgments failed (they rank last; a re-run retries them). "
                f"First: {failed[0].rationale}",
                data={"failed": len(failed)},
            )
        )
    stopped = stop is not None and stop.is_set() and len(results) < total
    emit(
        Event(
            "phase_end",
            phase="judging",
            run=run_id,
            current=len(results),
            total=total,
            message="stopped" if stopped else "",
            data={"judged": len(results), "failed": len(failed), "cost": sum(r.cost for r in results.values())},
        )
    )
    return results


def _flatten(samples: Mapping[str, Sequence[SampleRecord]] | Iterable[SampleRecord]) -> list[SampleRecord]:
    if isinstance(samples, Mapping):
        return [s for group in samples.values() for s in group]
    return list(samples)


def _record(key: str, sample_key: str, judge_id: str, result: JudgeResult) -> JudgmentRecord:
    ok = result.status == "ok" and result.score is not None
    return JudgmentRecord(
        key=key,
        sample_key=sample_key,
        judge=judge_id,
        score=min(1.0, max(0.0, float(result.score))) if ok and result.score is not None else None,
        rationale=result.rationale,
        raw=result.raw,
        status="ok" if ok else "failed",
        cost=result.cost,
    )


def _save(store: RunStore, run_id: str, record: JudgmentRecord, prompt_hash: str, *, had_failure: bool) -> None:
    """One transaction per verdict (a crash loses only what is in flight); failures table kept in step."""
    store.put_judgments([record])
    if record.status == "ok":
        if had_failure:
            store.clear_failure(run_id, "judging", record.key)
    else:
        store.record_failure(run_id, "judging", record.key, record.rationale, prompt_hash=prompt_hash)


__all__ = [
    "judge",
    "judgment_key",
]
