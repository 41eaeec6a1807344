"""Sampling through a provider batch: submit once, poll on every re-run, store what came back.

A teacher built with ``batch=True`` hands all missing candidates of a sampling call to its
provider as one batch. The batch id, provider, endpoint and the custom_id -> sample key map go
into the run store *before* the call returns, so a re-run, or a new kernel on the same workdir,
polls the same batch and never submits a second one. While the batch runs, the call emits
"waiting for batch <id> (n of m done)" and raises :class:`BatchPending`, which ends the cell.

When the batch is over, its answers are stored under the same sample keys and with the same
provenance as online candidates (plus a ``batch`` entry and the batch price), so a later online
run finds them and sends nothing. Items the provider failed or let expire are NOT resubmitted as
a batch: the sampling stage requests them online in the same call, at the online price, so a
finished batch always ends in a complete candidate set (or in ordinary per-prompt failures).

Only one open batch per (teacher, decoding parameters) exists at a time: the store's partial
unique index lets exactly one caller claim it, whichever thread or process asks first. A claim
whose process died before the provider answered (a killed kernel) would block the group for
ever, so a claim is taken for dead when its process is gone from this host, or after
:data:`SUBMIT_CLAIM_TTL_S` without a batch id, and the next call claims and submits anew.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from jupyter_distill.core.errors import DistillError, PolicyError
from jupyter_distill.core.events import Emit, Event
from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.store import PromptRecord, RunStore, SampleRecord


class BatchPending(DistillError):
    """The provider batch is still running: re-run the cell later to collect it (nothing is resubmitted)."""

    def __init__(self, message: str, *, batch_id: str | None, finished: int, total: int):
        super().__init__(message, field="batch", value=batch_id, fix="re-run later")
        self.batch_id = batch_id
        self.finished = finished
        self.total = total


# A submission uploads one file and creates one batch: minutes at most. A claim this old with no
# batch id was made by a caller that is gone (on another host, where its pid cannot be checked).
SUBMIT_CLAIM_TTL_S = 30 * 60.0


def claimant() -> dict[str, Any]:
    """Who is claiming: this host and process, so a later caller can tell whether it still lives."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def claim_is_stale(row: dict[str, Any], now: float | None = None) -> str | None:
    """Why a 'submitting' row's submitter is taken for dead, or None while it may still be uploading.

    Dead means: its process is gone from this host (checked with signal 0), or the claim is older
    than :data:`SUBMIT_CLAIM_TTL_S` (a reused pid or another host cannot be checked otherwise).
    """
    age = (time.time() if now is None else now) - float(row["updated_at"])
    if age > SUBMIT_CLAIM_TTL_S:
        return f"claimed {age:.0f} s ago and never submitted (limit {SUBMIT_CLAIM_TTL_S:.0f} s)"
    who = row["info"].get("claimant") or {}
    pid = who.get("pid")
    if who.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"the claiming process {pid} on this host has ended"
    except PermissionError:  # alive, owned by another user
        return None
    return None


def batch_group(teacher_spec: str, params: dict[str, Any]) -> str:
    """The key under which one open batch per teacher and decoding parameters is kept."""
    return content_hash("batch", teacher_spec, params)


def _body(teacher: Any, messages: list[dict[str, Any]], params: dict[str, Any], index: int) -> dict[str, Any]:
    """The chat body of candidate ``index``: the same seed offset as the online path (seed + index)."""
    body: dict[str, Any] = {
        "model": teacher.model,
        "messages": messages,
        "temperature": params["temperature"],
        "max_tokens": params["max_tokens"],
    }
    if params["seed"] is not None:
        body["seed"] = params["seed"] + index
    if getattr(teacher, "scheme", "") == "openrouter" and getattr(teacher, "enforce_distillable", False):
        body["provider"] = {"enforce_distillable_text": True}  # as online: only distillable providers answer
    return body


async def run_batch(
    store: RunStore,
    teacher: Any,
    todo: list[tuple[PromptRecord, list[int]]],
    keys: dict[str, list[str]],
    params: dict[str, Any],
    run_id: str,
    emit: Emit,
) -> tuple[list[SampleRecord], set[str]]:
    """Submit, poll or collect this call's batch; returns (records this call stored, keys the batch covered).

    When another caller collected the same batch first, no records are returned: the stage
    finds them in the store.

    Raises :class:`BatchPending` while the batch runs and ``PolicyError`` for a teacher whose use
    the policy does not allow (checked before any request, as online).
    """
    decision = teacher.decision
    if not decision.allowed:
        raise PolicyError(
            f"teacher {teacher.spec} is not authorised for distillation ({decision.reason}); no batch was submitted.",
            field="teacher",
            value=teacher.spec,
            fix="pass authorization=... or choose another teacher",
        )
    if getattr(teacher, "check_models", False) and not getattr(teacher, "_models_checked", True):
        await teacher.check_distillable()  # a model listed as not distillable is refused before submitting
    client = teacher.batch_client
    group = batch_group(teacher.spec, params)
    row = store.open_batch(group)
    if row is not None and row["status"] == "submitting" and (why := claim_is_stale(row)) is not None:
        store.expire_claim(row["id"], why)  # conditional: a submission finishing now keeps its row
        row = store.open_batch(group)
    if row is None:
        wanted = {keys[p.hash][i] for p, missing in todo for i in missing}
        # checked and claimed in one write transaction: a batch another caller collected since this
        # call read the store is seen here, so its candidates are never submitted a second time
        with store.transaction():
            stored = store.existing_sample_keys(wanted)
            todo = [(p, [i for i in missing if keys[p.hash][i] not in stored]) for p, missing in todo]
            todo = [(p, missing) for p, missing in todo if missing]
            row_id = (
                store.claim_batch(group, run_id, teacher.spec, client.provider, client.base_url, claimant())
                if todo
                else None
            )
        if not todo:
            return [], wanted
        if row_id is None:  # another caller claimed it between our read and our insert
            row = store.open_batch(group)
        else:
            row = await _submit(store, teacher, row_id, todo, keys, params)
    if row is None or row["status"] == "submitting" or not row["batch_id"]:
        raise BatchPending(
            "another sampling call is submitting the batch for this teacher right now; re-run this cell to poll it.",
            batch_id=None,
            finished=0,
            total=0,
        )
    status = await client.poll(row["batch_id"])
    if not status.done:
        message = f"waiting for batch {row['batch_id']} ({status.finished} of {status.total} done)"
        emit(
            Event(
                "batch_waiting",
                phase="sampling",
                run=run_id,
                message=message,
                current=status.finished,
                total=status.total,
                data={"batch_id": row["batch_id"], "provider": client.provider, "state": status.state},
            )
        )
        raise BatchPending(
            f"{message}; re-run this cell later to collect it (the batch is polled, never resubmitted).",
            batch_id=row["batch_id"],
            finished=status.finished,
            total=status.total,
        )
    covered = {entry["key"] for entry in row["keys"].values()}
    records = _records(teacher, row, await client.results(status), params, run_id, store)
    with store.transaction():
        current = store.get_batch(row["id"])
        if current is None or current["status"] != "submitted":  # another caller collected it first
            return [], covered
        if records:
            store.put_samples(records)
        store.set_batch_status(row["id"], "collected", {**row["info"], "state": status.state})
    with teacher._state_lock:  # this caller stored them: its teacher's spend counts them, once
        teacher.spent += sum(r.cost for r in records)
    return records, covered


async def _submit(
    store: RunStore,
    teacher: Any,
    row_id: int,
    todo: list[tuple[PromptRecord, list[int]]],
    keys: dict[str, list[str]],
    params: dict[str, Any],
) -> dict[str, Any]:
    """Submit the claimed batch and record its id at once; a failed submission frees the claim."""
    requests: list[tuple[str, dict[str, Any]]] = []
    mapping: dict[str, dict[str, Any]] = {}
    for prompt, missing in todo:
        for index in missing:
            key = keys[prompt.hash][index]
            custom_id = f"s-{key}"  # <= 64 characters of [A-Za-z0-9_-], as Anthropic requires
            requests.append((custom_id, _body(teacher, prompt.messages, params, index)))
            mapping[custom_id] = {"key": key, "prompt_hash": prompt.hash, "index": index}
    try:
        batch_id = await teacher.batch_client.submit(teacher.model, requests)
    except BaseException:
        store.set_batch_status(row_id, "abandoned")
        raise
    if not store.batch_submitted(row_id, batch_id, mapping, {"requests": len(requests)}):
        raise BatchPending(
            f"batch {batch_id} was submitted after this call's claim had been taken for dead, and another call "
            "owns this teacher's batch now; its id is kept in the store (status 'abandoned'). Re-run this cell to "
            "poll the current batch.",
            batch_id=batch_id,
            finished=0,
            total=len(requests),
        )
    row = store.get_batch(row_id)
    assert row is not None
    return row


def _records(
    teacher: Any, row: dict[str, Any], items: list[Any], params: dict[str, Any], run_id: str, store: RunStore
) -> list[SampleRecord]:
    """Turn answered batch items into sample records priced at the batch rate."""
    discount = float(getattr(teacher, "batch_discount", 0.5))
    records = []
    for item in items:
        entry = row["keys"].get(item.custom_id)
        if entry is None or item.data is None:
            continue
        messages = _prompt_messages(store, entry["prompt_hash"])
        seed = None if params["seed"] is None else params["seed"] + entry["index"]
        samples, _ = teacher._to_samples(item.data, messages, 1, params["temperature"], params["max_tokens"], seed, 1)
        sample = samples[0]
        cost = sample.cost * discount
        provenance = {
            **sample.provenance,
            "cost_usd": cost,
            "price_source": f"{sample.provenance.get('price_source')} x batch price factor {discount:g}",
            "batch": {"id": row["batch_id"], "provider": row["provider"], "custom_id": item.custom_id},
            "finish_reason": sample.finish_reason,
            "sample_index": entry["index"],
            "run_id": run_id,
        }
        provenance["params"] = {**provenance["params"], "choice_index": 0}
        records.append(
            SampleRecord(
                key=entry["key"],
                prompt_hash=entry["prompt_hash"],
                teacher=teacher.spec,
                params=params,
                sample_index=entry["index"],
                text=sample.text,
                usage=dict(sample.usage),
                cost=cost,
                provenance=provenance,
            )
        )
    return records


def _prompt_messages(store: RunStore, prompt_hash: str) -> list[dict[str, Any]]:
    import json

    found = store.conn.execute("SELECT messages_json FROM prompts WHERE hash=?", (prompt_hash,)).fetchone()
    return json.loads(found["messages_json"]) if found else []


__all__ = ["BatchPending", "batch_group", "run_batch"]
