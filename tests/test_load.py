"""The alias registry and the run store under load and damage.

* 4 processes x 200 alias writes (with a reader process listing all the while) lose nothing, and
  the reader never sees a half-written file.
* A corrupt ``aliases.json`` is reported and backed up, never wiped or overwritten.
* A store of the previous schema version is migrated in place, keeping every row.
* Two processes writing one workdir at once (the same run's samples, their own metrics, events
  and reviews) leave a store that passes SQLite's integrity check with every row present once.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_distill.core import store as store_module
from jupyter_distill.core.errors import AliasError
from jupyter_distill.core.store import SCHEMA_VERSION, PromptRecord, RunStore, SampleRecord
from jupyter_distill.serving import registry
from jupyter_distill.serving.registry import get_alias, list_aliases, set_alias

WORKERS, WRITES = 4, 200


def _alias_writer(home: str, worker: int, count: int) -> None:
    """One process deploying ``count`` aliases, as a kernel calling ``student.deploy`` would."""
    os.environ["JUPYTER_DISTILL_HOME"] = home
    for i in range(count):
        set_alias(
            f"w{worker}-{i}", backend="openai-compatible", base_url="http://127.0.0.1:9/v1", model=f"m{worker}-{i}"
        )


def _alias_reader(home: str, stop_file: str, result_file: str) -> None:
    """List the registry in a loop until told to stop; record how many reads failed."""
    os.environ["JUPYTER_DISTILL_HOME"] = home
    reads = errors = 0
    while not os.path.exists(stop_file):
        try:
            list_aliases()
            reads += 1
        except Exception:  # any error here is a torn read: counted and asserted on
            errors += 1
    Path(result_file).write_text(json.dumps({"reads": reads, "errors": errors}))


@pytest.mark.slow
def test_four_processes_by_200_alias_writes_lose_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(home))
    set_alias("existing", backend="openai-compatible", base_url="http://127.0.0.1:9/v1", model="old")
    ctx = multiprocessing.get_context("spawn")
    stop, result = tmp_path / "stop", tmp_path / "reader.json"
    reader = ctx.Process(target=_alias_reader, args=(str(home), str(stop), str(result)))
    reader.start()
    writers = [ctx.Process(target=_alias_writer, args=(str(home), w, WRITES)) for w in range(WORKERS)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=300)
        assert p.exitcode == 0
    stop.touch()
    reader.join(timeout=60)
    assert reader.exitcode == 0

    aliases = list_aliases()
    expected = {f"w{w}-{i}" for w in range(WORKERS) for i in range(WRITES)} | {"existing"}
    assert set(aliases) == expected  # 800 concurrent read-modify-writes, none lost
    assert all(aliases[f"w{w}-{i}"]["model"] == f"m{w}-{i}" for w in range(WORKERS) for i in range(WRITES))
    assert aliases["existing"]["model"] == "old"
    reads = json.loads(result.read_text())
    assert reads["reads"] > 0 and reads["errors"] == 0  # atomic renames: never a torn file
    assert [f for f in os.listdir(home) if f.endswith(".tmp") or ".corrupt-" in f] == []


def test_corrupt_registry_is_reported_and_backed_up_not_wiped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(home))
    set_alias("precious", backend="openai-compatible", base_url="http://127.0.0.1:9/v1", model="m")
    path = registry.registry_path()
    for damage in (path.read_bytes()[:-25], b"\xff\xfe not utf-8 \x00", b'{"schema_version": "one", "aliases": {}}'):
        path.write_bytes(damage)
        for attempt in (
            list_aliases,
            lambda: get_alias("precious"),
            lambda: set_alias("new", backend="openai-compatible", base_url="http://127.0.0.1:9/v1", model="m"),
        ):
            with pytest.raises(AliasError) as info:
                attempt()
            message = str(info.value)
            assert str(path) in message and "NOT overwritten" in message and "Fix:" in message
            assert path.read_bytes() == damage  # never wiped, never half-replaced
        backups = sorted(home.glob("aliases.json.corrupt-*"))
        assert backups and any(b.read_bytes() == damage for b in backups)
        for backup in backups:
            backup.unlink()
    path.unlink()  # the user's fix: move the broken file aside; the registry starts afresh
    set_alias("again", backend="openai-compatible", base_url="http://127.0.0.1:9/v1", model="m")
    assert set(list_aliases()) == {"again"}


def _v1_store(folder: Path) -> None:
    """A run store exactly as the previous schema version (1) wrote it, with rows in every table."""
    folder.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(folder / "runs.db")
    for statement in store_module._split_sql(store_module._SCHEMA_V1):
        conn.execute(statement)
    conn.execute("INSERT INTO meta(key, value) VALUES('schema_version', '1')")
    conn.execute(
        "INSERT INTO runs(id, created_at, updated_at, status, phase, config_json) "
        "VALUES('old', 1, 2, 'done', 'done', '{\"steps\": 3}')"
    )
    conn.execute(
        "INSERT INTO prompts(hash, messages_json, row_json) VALUES(?, ?, ?)",
        ("p", '[{"role": "user", "content": "q"}]', '{"expected": "a"}'),
    )
    conn.execute("INSERT INTO run_prompts(run_id, prompt_hash, position, split) VALUES('old', 'p', 0, 'train')")
    conn.execute(
        "INSERT INTO samples(key, prompt_hash, teacher, params_json, sample_index, text, cost, created_at) "
        "VALUES('s', 'p', 't', '{}', 0, 'a', 0.25, 3)"
    )
    conn.execute("INSERT INTO judgments(key, sample_key, judge, score, created_at) VALUES('j', 's', 'v', 1.0, 4)")
    conn.execute(
        "INSERT INTO reviews(run_id, prompt_hash, action, sample_key, created_at) VALUES('old', 'p', 'choose', 's', 5)"
    )
    conn.execute("INSERT INTO pairs(run_id, prompt_hash, rank, chosen_text) VALUES('old', 'p', 0, 'a')")
    conn.execute("INSERT INTO metrics(run_id, step, name, value, time) VALUES('old', 1, 'loss', 0.5, 6)")
    conn.execute("INSERT INTO artifacts(run_id, kind, path, created_at) VALUES('old', 'adapter', '/a', 7)")
    conn.execute("INSERT INTO events(run_id, time, kind, message) VALUES('old', 8, 'run_end', 'done')")
    conn.commit()
    conn.close()


def test_store_migrates_from_the_previous_schema_version_keeping_every_row(tmp_path: Path) -> None:
    _v1_store(tmp_path)
    store = RunStore(tmp_path)
    assert store.schema_version == SCHEMA_VERSION == 3  # v1 -> v2 -> v3 (batches)
    run = store.get_run("old")
    assert run is not None and run["status"] == "done" and run["config"] == {"steps": 3} and run["summary"] == {}
    assert [p.row for p in store.get_prompts("old")] == [{"expected": "a"}]
    assert [s.text for s in store.samples_for_prompt("p")] == ["a"] and store.teacher_cost("old") == 0.25
    assert store.get_judgments(["j"])["j"].score == 1.0
    assert [r["action"] for r in store.get_reviews("old")] == ["choose"]
    assert [p.chosen_text for p in store.get_pairs("old")] == ["a"]
    assert store.get_metrics("old", "loss")[0]["value"] == 0.5
    assert store.get_artifacts("old")["adapter"]["path"] == "/a"
    assert [e["kind"] for e in store.get_events("old")] == ["run_end"]
    # the tables version 2 added work on the migrated file
    store.record_failure("old", "sampling", "p", "HTTP 500", "p")
    store.put_eval_results("old", "after", [{"prompt_hash": "p", "response": "a", "score": 1.0, "passed": 1}])
    store.update_run("old", summary={"pairs": 1})
    store.close()
    again = RunStore(tmp_path)  # opening a migrated store again changes nothing
    assert again.schema_version == SCHEMA_VERSION
    assert again.get_run("old")["summary"] == {"pairs": 1}
    assert len(again.get_failures("old")) == 1 and len(again.get_eval_results("old")) == 1


def _store_writer(workdir: str, worker: int, rounds: int, barrier: Any) -> None:
    """A second kernel on the same workdir: same run, same content-addressed samples, its own metrics."""
    store = RunStore(workdir)
    barrier.wait(timeout=120)  # both processes start writing together
    store.create_run("shared", {"worker": worker})
    prompts = [
        PromptRecord(hash=f"p{i}", messages=[{"role": "user", "content": f"q{i}"}], row={}, position=i)
        for i in range(20)
    ]
    store.put_prompts("shared", prompts)
    for r in range(rounds):
        if r == rounds // 2:
            barrier.wait(timeout=120)  # neither finishes before the other has started: the writes interleave
        i = r % 20
        store.put_samples(
            [
                SampleRecord(
                    key=f"s{i}-{j}", prompt_hash=f"p{i}", teacher="t", params={}, sample_index=j, text=f"a{i}{j}"
                )
                for j in range(2)
            ]
        )
        store.put_metrics("shared", worker * 10_000 + r, {"loss": float(r), "lr": 0.1})
        store.put_event("shared", "progress", "sampling", f"worker {worker} round {r}", {"r": r})
        store.add_review("shared", f"p{i}", "accept", f"s{i}-0")
        store.update_run("shared", status="running", summary={f"worker{worker}": r})
    store.close()


def test_two_processes_writing_one_workdir_do_not_corrupt_it(tmp_path: Path) -> None:
    rounds = 300
    RunStore(tmp_path).close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_store_writer, args=(str(tmp_path), w, rounds, barrier)) for w in range(2)]
    started = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, "a writer failed (locked database?)"
    assert time.monotonic() - started < 300

    conn = sqlite3.connect(tmp_path / "runs.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()
    store = RunStore(tmp_path)
    assert store.conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 40  # same keys: stored once
    assert len(store.get_metrics("shared", "loss")) == 2 * rounds
    assert len(store.get_events("shared", limit=10_000)) == 2 * rounds
    assert len(store.get_reviews("shared")) == 2 * rounds
    assert len(store.get_prompts("shared")) == 20
    spans = {}
    for event in store.get_events("shared", limit=10_000):
        spans.setdefault(event["message"].split(" round")[0], []).append(event["time"])
    # the mid-run barrier forces every worker's first write before every worker's last one
    assert max(min(t) for t in spans.values()) < min(max(t) for t in spans.values())
    summary: dict[str, Any] = store.get_run("shared")["summary"]
    assert summary == {"worker0": rounds - 1, "worker1": rounds - 1}  # read-modify-write merges: none lost
