"""Best-of-N teacher sampling into the run store: never pay twice, never lose what was paid for.

Every candidate is keyed by ``content_hash("sample", prompt_hash, teacher.spec, params, index)``
where ``params`` are the decoding parameters (temperature, max_tokens, seed). Before anything is
sent, the keys already in the store are subtracted, so a re-run sends zero requests and an
interrupted run re-sends only the missing candidates. ``n`` is deliberately not part of the key:
raising ``n_samples`` from 4 to 8 pays only for candidates 4..7.

Prompts are worked on by a pool of ``teacher.concurrency`` workers; the teacher itself bounds
requests in flight. Each prompt's candidates are written in one transaction as soon as they
arrive, with full provenance. A prompt that keeps failing is recorded in the store's
``failures`` table and reported in :attr:`SamplingResult.failed`; it never stops the run. A
policy refusal, an exhausted budget or a refused key does stop it (every further request would
fail the same way): candidates already received are kept and the error is raised.

Paid text is never dropped on the floor. A store write that fails (``database is locked`` from
another writer, a full disk) is retried a few times; when it still fails, the prompt is
recorded as failed and its candidates are appended to ``workdir/unsaved-samples.jsonl``, which
the next sampling call over that workdir imports before it decides what to request. An error of
any other kind inside a worker fails that prompt only, never the whole pool silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import BudgetExceeded, ConfigError, DistillError, PolicyError
from jupyter_distill.core.events import Emit, Event, fan_out, no_emit
from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.loops import run_sync
from jupyter_distill.core.store import PromptRecord, RunStore, SampleRecord
from jupyter_distill.sampling.batched import BatchPending, run_batch
from jupyter_distill.teachers import Teacher, load_teacher
from jupyter_distill.teachers.base import FatalTeacherError, check_sample_args

PHASE = "sampling"
STAGE = "sampling"
SPOOL_FILE = "unsaved-samples.jsonl"  # paid candidates the store refused, imported by the next call
STORE_WRITE_ATTEMPTS = 5
logger = logging.getLogger(__name__)
# Errors that end the run: every further request would fail the same way (and may cost).
FATAL = (PolicyError, BudgetExceeded, FatalTeacherError)


@dataclass(repr=False)
class SamplingResult:
    """What a sampling call produced; ``samples`` holds cached and new candidates alike.

    The repr is a one-line summary: printing thousands of candidates helps nobody (and Python
    3.11's ``asyncio.run`` formats the result of its main task once, at a cost proportional to it).
    """

    samples: dict[str, list[SampleRecord]]
    requests_sent: int
    cost: float
    failed: dict[str, str]
    cached: int = 0  # candidates found in the store (not paid for again)
    new: int = 0  # candidates received in this call
    stopped: bool = False  # the stop event ended the call early
    unsaved: int = 0  # paid candidates the store refused: kept in ``workdir/unsaved-samples.jsonl``
    elapsed_s: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"SamplingResult(prompts={len(self.samples)}, samples={sum(len(v) for v in self.samples.values())}, "
            f"new={self.new}, cached={self.cached}, requests_sent={self.requests_sent}, cost={self.cost:.6f}, "
            f"failed={len(self.failed)}, unsaved={self.unsaved}, stopped={self.stopped}, "
            f"elapsed_s={self.elapsed_s:.2f})"
        )


def decoding_params(temperature: float, max_tokens: int, seed: int | None) -> dict[str, Any]:
    """The decoding parameters that make a candidate what it is (and so are part of its key)."""
    return {"temperature": float(temperature), "max_tokens": int(max_tokens), "seed": seed}


def sample_key(prompt_hash: str, teacher_spec: str, params: dict[str, Any], index: int) -> str:
    """The store key of candidate ``index`` (see the module docstring)."""
    return content_hash("sample", prompt_hash, teacher_spec, params, index)


def _groups(indices: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of missing indices as (start, length): [0,1,3] -> [(0, 2), (3, 1)]."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _ensure_prompts(store: RunStore, prompts: Sequence[PromptRecord]) -> None:
    """Make sure each prompt row exists (samples reference it); never touches a run's prompt list."""
    with store.transaction() as conn:
        for prompt in prompts:
            conn.execute(
                "INSERT INTO prompts(hash, messages_json, row_json) VALUES(?, ?, ?) ON CONFLICT(hash) DO NOTHING",
                (prompt.hash, _json(prompt.messages), _json(prompt.row)),
            )


def _write_with_retry(write: Callable[[], None], attempts: int = STORE_WRITE_ATTEMPTS) -> None:
    """Run one store write, retrying a failing one with short waits; re-raise the last error.

    The wait is synchronous on purpose: SQLite's own busy timeout already blocks this thread, and
    an ``await`` here would let ``stop`` cancel a worker that holds paid, unwritten candidates.
    """
    delay = 0.05
    for attempt in range(attempts):
        try:
            write()
            return
        except Exception as exc:
            if attempt + 1 >= attempts:
                raise
            logger.warning("run store write failed (%s: %s); retrying in %.2f s", type(exc).__name__, exc, delay)
            time.sleep(delay)
            delay *= 2


def _spool_path(store: RunStore) -> Path:
    return Path(store.workdir) / SPOOL_FILE


def _spool(store: RunStore, records: Sequence[SampleRecord]) -> Path:
    """Append paid candidates the store refused to a JSON-lines file beside it (fsynced)."""
    path = _spool_path(store)
    with path.open("a", encoding="utf-8") as out:
        for r in records:
            row = {
                "key": r.key,
                "prompt_hash": r.prompt_hash,
                "teacher": r.teacher,
                "params": r.params,
                "sample_index": r.sample_index,
                "text": r.text,
                "usage": r.usage,
                "cost": r.cost,
                "provenance": r.provenance,
                "created_at": r.created_at,
            }
            out.write(_json(row) + "\n")
        out.flush()
        os.fsync(out.fileno())
    return path


def import_spool(store: RunStore) -> int:
    """Move candidates spooled by an earlier call into the store; returns how many were read.

    A torn last line (the process died while appending) is skipped; the file is removed only
    once its rows are in the store, so a failing import leaves it for the next call.
    """
    path = _spool_path(store)
    if not path.is_file():
        return 0
    records: list[SampleRecord] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(SampleRecord(**json.loads(line)))
        except (ValueError, TypeError):
            logger.warning("skipping an unreadable line of %s", path)
    if records:
        _write_with_retry(lambda: store.put_samples(records))
    path.unlink()
    return len(records)


async def asample(
    store: RunStore,
    teacher: Teacher | str,
    prompts: Sequence[PromptRecord],
    n: int = 4,
    *,
    run_id: str,
    temperature: float = 0.8,
    max_tokens: int = 256,
    seed: int | None = 0,
    emit: Emit = no_emit,
    stop: threading.Event | None = None,
) -> SamplingResult:
    """Make sure every prompt has ``n`` stored candidates from ``teacher``; see the module docstring.

    Raises ``PolicyError``, ``BudgetExceeded`` or a fatal ``TeacherError`` (with the partial
    :class:`SamplingResult` as ``exc.result``) when the run cannot go on.
    """
    started = time.monotonic()
    check_sample_args(n, temperature, max_tokens)
    emit = fan_out([emit])  # a broken progress callback is logged and counted; it never fails a prompt
    if isinstance(teacher, str):
        teacher = load_teacher(teacher)
    unique: dict[str, PromptRecord] = {}
    for prompt in prompts:
        if not isinstance(prompt, PromptRecord):
            raise ConfigError(
                f"sample() takes PromptRecord objects, got {type(prompt).__name__}. Fix: build them with "
                "jupyter_distill.core.data.load_dataset(...).",
                field="prompts",
                value=type(prompt).__name__,
            )
        unique.setdefault(prompt.hash, prompt)
    params = decoding_params(temperature, max_tokens, seed)
    imported = import_spool(store)
    keys = {h: [sample_key(h, teacher.spec, params, i) for i in range(n)] for h in unique}
    existing = store.existing_sample_keys(k for ks in keys.values() for k in ks)
    todo = [(p, [i for i, k in enumerate(keys[p.hash]) if k not in existing]) for p in unique.values()]
    todo = [(p, missing) for p, missing in todo if missing]
    failed_before = {f["key"] for f in store.get_failures(run_id, STAGE)}
    complete = failed_before - {p.hash for p, _ in todo}
    if complete & unique.keys():  # completed meanwhile (e.g. imported from the spool): no longer failed
        with store.transaction():
            for prompt_hash in complete & unique.keys():
                store.clear_failure(run_id, STAGE, prompt_hash)
    total = n * len(unique)
    cached = sum(1 for ks in keys.values() for k in ks if k in existing)
    counter_start = getattr(teacher, "requests_sent", None)
    state: dict[str, Any] = {"new": 0, "cost": 0.0, "calls": 0, "abort": None, "stopped": False, "unsaved": 0}
    failed: dict[str, str] = {}
    received: dict[str, SampleRecord] = {}  # written by this call, so the result needs no read-back

    def requests_so_far() -> int:
        now = getattr(teacher, "requests_sent", None)
        if isinstance(counter_start, int) and isinstance(now, int):
            return now - counter_start
        return int(state["calls"])

    def progress_data() -> dict[str, Any]:
        return {
            "requests": requests_so_far(),
            "cost": round(state["cost"], 8),
            "cached": cached,
            "new": state["new"],
            "failed": len(failed),
            "teacher": teacher.spec,
        }

    emit(
        Event(
            "phase_start",
            phase=PHASE,
            run=run_id,
            message=f"sampling {n} candidates for {len(unique)} prompts from {teacher.spec} "
            f"({cached} already in the store)",
            current=cached,
            total=total,
            data=progress_data(),
        )
    )
    reason = getattr(getattr(teacher, "decision", None), "reason", "")
    if isinstance(reason, str) and reason.startswith("WARNING"):
        emit(Event("warning", phase=PHASE, run=run_id, message=reason))
    if imported:
        emit(
            Event(
                "warning",
                phase=PHASE,
                run=run_id,
                message=f"imported {imported} paid candidate(s) that an earlier call could not store",
                data={"imported": imported},
            )
        )

    if todo and getattr(teacher, "batch_client", None) is not None:
        # one provider batch for every missing candidate; what it failed to answer goes online below
        _ensure_prompts(store, [p for p, _ in todo])
        got, covered = await run_batch(store, teacher, todo, keys, params, run_id, emit)
        received.update((r.key, r) for r in got)
        state["new"] += len(got)
        state["cost"] += sum(r.cost for r in got)
        # candidates another caller collected from the same batch meanwhile are cached, not missing
        elsewhere = store.existing_sample_keys(covered - received.keys())
        existing = set(existing) | elsewhere
        cached += len(elsewhere)
        have = existing | received.keys()
        todo = [(p, [i for i in missing if keys[p.hash][i] not in have]) for p, missing in todo]
        todo = [(p, missing) for p, missing in todo if missing]

    if todo:
        _ensure_prompts(store, [p for p, _ in todo])
        queue: asyncio.Queue[tuple[PromptRecord, list[int]]] = asyncio.Queue()
        for job in todo:
            queue.put_nowait(job)

        async def work_on(prompt: PromptRecord, missing: list[int]) -> None:
            records: list[SampleRecord] = []
            error: BaseException | None = None
            for start, length in _groups(missing):
                state["calls"] += 1
                try:
                    got = await teacher.sample(
                        prompt.messages,
                        n=length,
                        temperature=temperature,
                        max_tokens=max_tokens,
                        seed=None if seed is None else seed + start,
                    )
                except Exception as exc:  # one prompt's failure is recorded, never the run's end
                    # candidates that arrived before the failure were paid for: keep them
                    got = list(getattr(exc, "partial", None) or []) if isinstance(exc, DistillError) else []
                    error = exc
                for offset, candidate in enumerate(got[:length]):
                    if candidate is None:
                        continue
                    index = start + offset
                    records.append(
                        SampleRecord(
                            key=keys[prompt.hash][index],
                            prompt_hash=prompt.hash,
                            teacher=teacher.spec,
                            params=params,
                            sample_index=index,
                            text=candidate.text,
                            usage=dict(candidate.usage),
                            cost=float(candidate.cost),
                            provenance={
                                **candidate.provenance,
                                "finish_reason": candidate.finish_reason,
                                "sample_index": index,
                                "run_id": run_id,
                            },
                        )
                    )
                if error is None and len([c for c in got[:length] if c is not None]) < length:
                    error = RuntimeError(f"teacher returned {len(got)} of {length} candidates")
                if isinstance(error, FATAL):
                    break
            message = None if error is None or isinstance(error, FATAL) else f"{type(error).__name__}: {error}"

            def write() -> None:
                with store.transaction():
                    if records:
                        store.put_samples(records)
                    if error is None:
                        if prompt.hash in failed_before:  # skip a DELETE per prompt when nothing failed before
                            store.clear_failure(run_id, STAGE, prompt.hash)
                    elif message is not None:
                        store.record_failure(run_id, STAGE, prompt.hash, message, prompt.hash)

            try:
                _write_with_retry(write)
            except Exception as exc:  # the store refuses: keep what was paid for, fail this prompt
                message = _store_refused(prompt, records, exc)
            if message is not None:
                failed[prompt.hash] = message
            received.update((r.key, r) for r in records)
            state["new"] += len(records)
            state["cost"] += sum(r.cost for r in records)
            if isinstance(error, FATAL) and state["abort"] is None:
                state["abort"] = error
            emit(
                Event(
                    "progress",
                    phase=PHASE,
                    run=run_id,
                    current=cached + state["new"],
                    total=total,
                    data=progress_data(),
                )
            )

        def _store_refused(prompt: PromptRecord, records: list[SampleRecord], exc: Exception) -> str:
            where = ""
            if records:
                kept = _spool(store, records)
                where = f"; its {len(records)} paid candidate(s) are kept in {kept} and the next run imports them"
                state["unsaved"] += len(records)
            message = (
                f"the run store refused the write after {STORE_WRITE_ATTEMPTS} attempts "
                f"({type(exc).__name__}: {exc}){where}"
            )
            logger.error("sampling prompt %s: %s", prompt.hash, message)
            _try_record_failure(store, run_id, prompt.hash, message)
            return message

        async def worker() -> None:
            while state["abort"] is None and not (stop is not None and stop.is_set()):
                try:
                    prompt, missing = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    await work_on(prompt, missing)
                except Exception as exc:  # a bug or a broken sink fails this prompt, never the pool silently
                    message = f"{type(exc).__name__}: {exc}"
                    logger.exception("sampling prompt %s failed outside the teacher", prompt.hash)
                    failed[prompt.hash] = message
                    _try_record_failure(store, run_id, prompt.hash, message)

        # Twice as many workers as request slots, so a freed slot is taken at once by a request
        # already waiting instead of idling while its worker stores results; the teacher's own
        # semaphore still bounds the requests in flight. A one-slot (local) teacher gets one
        # worker, so Stop never abandons a generation that was queued for nothing.
        slots = max(1, int(getattr(teacher, "concurrency", 16) or 1))
        width = max(1, min(slots if slots == 1 else 2 * slots, len(todo)))
        workers = [asyncio.ensure_future(worker()) for _ in range(width)]

        async def watch_stop() -> None:
            while stop is not None:
                if stop.is_set():
                    state["stopped"] = True
                    for task in workers:
                        task.cancel()
                    return
                await asyncio.sleep(0.05)

        watcher = asyncio.ensure_future(watch_stop())
        try:
            outcomes = await asyncio.gather(*workers, return_exceptions=True)
        finally:
            watcher.cancel()
            for task in workers:
                task.cancel()
        for outcome in outcomes:  # a cancelled worker was stopped; anything else must not vanish
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome
        if stop is not None and stop.is_set():
            state["stopped"] = True

    stored = store.get_samples(existing) if existing else {}
    stored.update(received)
    samples = {h: [stored[k] for k in ks if k in stored] for h, ks in keys.items()}
    result = SamplingResult(
        samples=samples,
        requests_sent=requests_so_far(),
        cost=state["cost"],
        failed=failed,
        cached=cached,
        new=state["new"],
        stopped=state["stopped"],
        unsaved=state["unsaved"],
        elapsed_s=time.monotonic() - started,
        params=params,
    )
    abort = state["abort"]
    end_data = {
        **progress_data(),
        "stopped": result.stopped,
        "unsaved": result.unsaved,
        "elapsed_s": round(result.elapsed_s, 3),
    }
    if abort is not None:
        end_data["error"] = str(abort)
    emit(
        Event(
            "phase_end",
            phase=PHASE,
            run=run_id,
            message="sampling stopped" if result.stopped else ("sampling failed" if abort else "sampling done"),
            current=cached + result.new,
            total=total,
            data=end_data,
        )
    )
    if abort is not None:
        abort.result = result  # type: ignore[attr-defined]
        raise abort
    return result


def _try_record_failure(store: RunStore, run_id: str, prompt_hash: str, message: str) -> None:
    """Record a failed prompt in the store if it takes the write; the caller's result lists it anyway."""
    try:
        _write_with_retry(lambda: store.record_failure(run_id, STAGE, prompt_hash, message, prompt_hash), attempts=2)
    except Exception as exc:
        logger.error("could not record the failure of prompt %s in the run store: %s", prompt_hash, exc)


def sample(
    store: RunStore,
    teacher: Teacher | str,
    prompts: Sequence[PromptRecord],
    n: int = 4,
    *,
    run_id: str,
    temperature: float = 0.8,
    max_tokens: int = 256,
    seed: int | None = 0,
    emit: Emit = no_emit,
    stop: threading.Event | None = None,
) -> SamplingResult:
    """Synchronous :func:`asample` for scripts and notebooks alike.

    With no event loop running in this thread it runs one; inside a running loop (a Jupyter
    cell) it runs its own loop in a worker thread and waits, so it never nests loops. The
    teacher's connections for that loop are closed before returning.
    """
    kwargs = {
        "run_id": run_id,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "seed": seed,
        "emit": emit,
        "stop": stop,
    }
    if isinstance(teacher, str):
        teacher = load_teacher(teacher)
    resolved: Teacher = teacher

    async def run() -> SamplingResult:
        try:
            return await asample(store, resolved, prompts, n, **kwargs)
        finally:
            await resolved.aclose()

    # store.close(): the worker thread's SQLite connection, when a running loop needed one
    return run_sync(run, thread_name="jupyter-distill-sampling", on_worker_exit=store.close)


__all__ = ["BatchPending", "SamplingResult", "asample", "decoding_params", "import_spool", "sample", "sample_key"]
