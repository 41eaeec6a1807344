"""Run store: round-trips, idempotent keys, transactions, concurrency, migration."""

import sqlite3
import threading

import pytest

from jupyter_distill.core.store import (
    SCHEMA_VERSION,
    JudgmentRecord,
    PairRecord,
    PromptRecord,
    RunStore,
    SampleRecord,
    StoreError,
)


def prompt(i):
    return PromptRecord(hash=f"p{i}", messages=[{"role": "user", "content": f"q{i}"}], row={"expected": i}, position=i)


def sample(i, prompt_hash="p0", index=0):
    return SampleRecord(
        key=f"s{i}", prompt_hash=prompt_hash, teacher="local:x", params={"t": 0.8}, sample_index=index, text=f"a{i}"
    )


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path)
    s.create_run("r", {"steps": 3})
    s.put_prompts("r", [prompt(0), prompt(1)])
    return s


def test_schema_is_current_and_wal(store):
    assert store.schema_version == SCHEMA_VERSION
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_run_round_trip_and_summary_merge(store):
    store.update_run("r", status="running", phase="sampling", summary={"a": 1})
    store.update_run("r", summary={"b": 2})
    run = store.get_run("r")
    assert run["status"] == "running" and run["phase"] == "sampling"
    assert run["summary"] == {"a": 1, "b": 2} and run["config"] == {"steps": 3}
    assert [r["id"] for r in store.list_runs()] == ["r"]
    with pytest.raises(StoreError):
        store.update_run("missing", status="x")


def test_prompts_round_trip_and_split(store):
    store.put_prompts("r", [prompt(0), PromptRecord("p1", [{"role": "user", "content": "q1"}], {}, 1, "heldout")])
    assert [p.hash for p in store.get_prompts("r")] == ["p0", "p1"]
    assert [p.hash for p in store.get_prompts("r", split="heldout")] == ["p1"]


def test_samples_are_idempotent_by_key(store):
    assert store.put_samples([sample(1), sample(2, index=1)]) == 2
    assert store.put_samples([sample(1), sample(2, index=1)]) == 0
    assert store.existing_sample_keys(["s1", "s9"]) == {"s1"}
    assert [s.text for s in store.samples_for_prompt("p0")] == ["a1", "a2"]
    assert store.get_samples(["s2"])["s2"].params == {"t": 0.8}


def test_failed_judgment_is_replaced_but_ok_is_kept(store):
    store.put_samples([sample(1)])
    store.put_judgments([JudgmentRecord("j1", "s1", "judge", None, status="failed")])
    store.put_judgments([JudgmentRecord("j1", "s1", "judge", 0.7, "fine")])
    store.put_judgments([JudgmentRecord("j1", "s1", "judge", 0.1, "overwrite?")])
    assert store.get_judgments(["j1"])["j1"].score == 0.7
    assert len(store.judgments_for_samples(["s1"], judge="judge")) == 1


def test_reviews_undo(store):
    store.add_review("r", "p0", "choose", sample_key="s1")
    store.add_review("r", "p0", "reject", sample_key="s2")
    store.add_review("r", "p0", "undo")
    live = store.get_reviews("r")
    assert [r["action"] for r in live] == ["choose"]


def test_pairs_metrics_artifacts_failures_events(store):
    store.put_pairs("r", [PairRecord("p1", 0, "c", None), PairRecord("p0", 0, "c", "r")])
    assert [p.prompt_hash for p in store.get_pairs("r")] == ["p0", "p1"]
    store.put_metrics("r", 1, {"loss": 1.0})
    store.put_metrics("r", 2, {"loss": 0.5})
    store.delete_metrics_after("r", 1)
    assert [m["value"] for m in store.get_metrics("r", "loss")] == [1.0]
    store.put_artifact("r", "gguf", "/x.gguf", sha256="ab", size=3)
    assert store.get_artifacts("r")["gguf"]["sha256"] == "ab"
    store.record_failure("r", "sampling", "k", "timeout", prompt_hash="p0")
    store.record_failure("r", "sampling", "k", "timeout again", prompt_hash="p0")
    assert store.get_failures("r")[0]["attempts"] == 2
    store.clear_failure("r", "sampling", "k")
    assert store.get_failures("r") == []
    store.put_event("r", "progress", "sampling", "", {"n": 1})
    assert store.get_events("r")[0]["data"] == {"n": 1}


def test_crash_mid_transaction_leaves_no_partial_rows(store):
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute(
            "INSERT INTO samples(key, prompt_hash, teacher, params_json, sample_index, text, created_at) "
            "VALUES('half', 'p0', 't', '{}', 0, 'x', 0)"
        )
        raise RuntimeError("crash")
    assert store.existing_sample_keys(["half"]) == set()


def test_concurrent_writers_from_8_threads(tmp_path):
    store = RunStore(tmp_path)
    store.create_run("r", {})
    store.put_prompts("r", [prompt(0)])
    errors = []

    def writer(t):
        try:
            for i in range(40):
                store.put_samples([sample(f"{t}-{i}", index=i)])
                store.put_metrics("r", t * 1000 + i, {"loss": float(i)})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 320
    assert len(store.get_metrics("r")) == 320


def test_migrates_a_version_1_store(tmp_path):
    from jupyter_distill.core import store as store_module

    conn = sqlite3.connect(tmp_path / "runs.db")
    for statement in store_module._split_sql(store_module._SCHEMA_V1):
        conn.execute(statement)
    conn.execute("INSERT INTO meta(key, value) VALUES('schema_version', '1')")
    conn.execute("INSERT INTO runs(id, created_at, updated_at, config_json) VALUES('old', 0, 0, '{}')")
    conn.commit()
    conn.close()
    upgraded = RunStore(tmp_path)
    assert upgraded.schema_version == SCHEMA_VERSION
    assert upgraded.get_run("old")["summary"] == {}


def test_newer_store_is_refused(tmp_path):
    RunStore(tmp_path).conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="newer"):
        RunStore(tmp_path)
