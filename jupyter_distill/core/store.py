"""The run store: one SQLite file (``workdir/runs.db``) holding everything a run has made.

Why SQLite: every stage is idempotent because its outputs are rows keyed by content hashes;
a kernel restart resumes from what is already there; the widgets, the lab panel and plain SQL
all read the same file. WAL mode lets the UI read while a worker thread writes, and every batch
of writes is one transaction, so a crash loses at most the request in flight.

Each thread gets its own connection (SQLite connections are not shareable across threads by
default); writes are serialised by SQLite's own lock with a generous busy timeout, so two
kernels writing one workdir wait for each other instead of corrupting the file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import DistillError

SCHEMA_VERSION = 3

# Version 1 is the first public layout. Version 2 added `runs.summary_json`, `failures` and
# `eval_results`; `_MIGRATIONS[v]` upgrades a store from version v to v + 1.
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'created',
    phase TEXT,
    config_json TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS prompts (
    hash TEXT PRIMARY KEY,
    messages_json TEXT NOT NULL,
    row_json TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS run_prompts (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    prompt_hash TEXT NOT NULL REFERENCES prompts(hash),
    position INTEGER NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('train', 'heldout')),
    PRIMARY KEY (run_id, prompt_hash)
);
CREATE TABLE IF NOT EXISTS samples (
    key TEXT PRIMARY KEY,
    prompt_hash TEXT NOT NULL REFERENCES prompts(hash),
    teacher TEXT NOT NULL,
    params_json TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    text TEXT NOT NULL,
    usage_json TEXT NOT NULL DEFAULT '{}',
    cost REAL NOT NULL DEFAULT 0,
    provenance_json TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_by_prompt ON samples(prompt_hash, teacher);
CREATE TABLE IF NOT EXISTS judgments (
    key TEXT PRIMARY KEY,
    sample_key TEXT NOT NULL REFERENCES samples(key),
    judge TEXT NOT NULL,
    score REAL,
    rationale TEXT NOT NULL DEFAULT '',
    raw TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'failed')),
    cost REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS judgments_by_sample ON judgments(sample_key, judge);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    prompt_hash TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('accept', 'reject', 'choose', 'edit', 'undo', 'skip')),
    sample_key TEXT,
    text TEXT,
    undone INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_by_run ON reviews(run_id, prompt_hash);
CREATE TABLE IF NOT EXISTS pairs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    prompt_hash TEXT NOT NULL,
    rank INTEGER NOT NULL,
    chosen_text TEXT NOT NULL,
    rejected_text TEXT,
    chosen_key TEXT,
    rejected_key TEXT,
    source TEXT NOT NULL DEFAULT 'judge',
    PRIMARY KEY (run_id, prompt_hash, rank)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (run_id, step, name)
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT,
    size INTEGER,
    meta_json TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, kind)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    phase TEXT,
    message TEXT NOT NULL DEFAULT '',
    data_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_by_run ON events(run_id, id);
"""

_MIGRATIONS: dict[int, str] = {
    1: """
ALTER TABLE runs ADD COLUMN summary_json TEXT NOT NULL DEFAULT '{}';
CREATE TABLE IF NOT EXISTS failures (
    run_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    key TEXT NOT NULL,
    prompt_hash TEXT,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, stage, key)
);
CREATE TABLE IF NOT EXISTS eval_results (
    run_id TEXT NOT NULL,
    label TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    response TEXT NOT NULL,
    score REAL,
    passed INTEGER,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, label, prompt_hash)
);
""",
    2: """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_key TEXT NOT NULL,
    run_id TEXT NOT NULL,
    teacher TEXT NOT NULL,
    provider TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    batch_id TEXT,
    status TEXT NOT NULL,
    keys_json TEXT NOT NULL DEFAULT '{}',
    info_json TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS batches_one_open ON batches(group_key) WHERE status IN ('submitting', 'submitted');
""",
}


class StoreError(DistillError):
    """The run store cannot be opened or is from a newer version of jupyter-distill."""


class RunLockedError(StoreError):
    """Another kernel or process is executing this run in this workdir right now."""


class RunLock:
    """One writer per run: an OS file lock on ``workdir/locks/<run>.lock`` held for the run's life.

    SQLite keeps two writers from corrupting the file, but not from interleaving two trainings of
    one run into one checkpoint folder, or two samplers paying for the same prompts. The lock is
    an ``flock`` (through ``filelock``), so the OS drops it when its holder dies, even by SIGKILL:
    a crashed kernel never leaves a stale lock behind. Who holds it (pid, host, since when) is
    written beside it, so the refusal can name the holder.
    """

    def __init__(self, workdir: str | Path, run_id: str):
        from filelock import FileLock

        from jupyter_distill.core.hashing import content_hash

        folder = Path(workdir) / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)[:80]
        stem = f"{safe}-{content_hash('run-lock', run_id)[:8]}"
        self.run_id = run_id
        self.path = folder / f"{stem}.lock"
        self.owner_path = folder / f"{stem}.owner.json"
        self._lock = FileLock(str(self.path), timeout=0, thread_local=False)

    def acquire(self) -> RunLock:
        """Take the lock at once or raise :class:`RunLockedError` naming the holder."""
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunLockedError(
                f"run {self.run_id!r} is already running in {self.holder()} (lock {str(self.path)!r}); two "
                "writers would mix their checkpoints and pay twice. Fix: wait for it to finish or stop it there "
                f"(%distill stop {self.run_id}), or give this run another name= or workdir=.",
                field="name",
                value=self.run_id,
                fix="stop the other run or use another name",
            ) from None
        import os
        import socket

        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "run": self.run_id}
        self.owner_path.write_text(_dumps(owner), encoding="utf-8")
        return self

    def holder(self) -> str:
        """``process PID on HOST since ...`` as recorded by the holder, or what is known."""
        try:
            owner = json.loads(self.owner_path.read_text(encoding="utf-8"))
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner["since"])))
            return f"process {int(owner['pid'])} on host {owner['host']} (since {since})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process (it has not recorded its pid yet)"

    def release(self) -> None:
        if self._lock.is_locked:
            self.owner_path.unlink(missing_ok=True)
            self._lock.release()

    @property
    def held(self) -> bool:
        return bool(self._lock.is_locked)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class SampleRecord:
    """One teacher candidate as stored."""

    key: str
    prompt_hash: str
    teacher: str
    params: dict[str, Any]
    sample_index: int
    text: str
    usage: dict[str, Any] = field(default_factory=dict)
    cost: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)


@dataclass
class JudgmentRecord:
    """One judge verdict on one sample; ``score`` is None when the judge failed."""

    key: str
    sample_key: str
    judge: str
    score: float | None
    rationale: str = ""
    raw: str = ""
    status: str = "ok"
    cost: float = 0.0
    created_at: float = field(default_factory=time.time)


@dataclass
class PromptRecord:
    """A prompt of a run: content-addressed messages plus the original row (for verifiers)."""

    hash: str
    messages: list[dict[str, Any]]
    row: dict[str, Any]
    position: int = 0
    split: str = "train"


@dataclass
class PairRecord:
    """A training example: chosen response and, when there is one, a rejected response."""

    prompt_hash: str
    rank: int
    chosen_text: str
    rejected_text: str | None
    chosen_key: str | None = None
    rejected_key: str | None = None
    source: str = "judge"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


class RunStore:
    """Typed access to ``runs.db``. Safe to share between threads; cheap to open twice."""

    def __init__(self, workdir: str | Path = ".distill", *, filename: str = "runs.db"):
        self.workdir = Path(workdir)
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the workdir {str(self.workdir)!r}: {exc.strerror}. "
                "Fix: pass workdir= a folder you can write to.",
                field="workdir",
                value=str(self.workdir),
            ) from None
        self.path = self.workdir / filename
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._migrate()

    # ------------------------------------------------------------------ connections
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._connect()
            except sqlite3.DatabaseError as exc:
                raise StoreError(
                    f"cannot open the run store {str(self.path)!r}: {exc}. "
                    "Fix: move the file aside (it will be recreated) or pass another workdir=.",
                    field="workdir",
                    value=str(self.workdir),
                ) from None
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic batch of writes: all rows land, or none do."""
        conn = self.conn
        if conn.in_transaction:  # nested: join the outer transaction
            yield conn
            return
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # also when COMMIT itself failed: a transaction left open would make the next
                # transaction() on this thread join it and never commit
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self.transaction() as conn:
            for statement in _split_sql(_SCHEMA_V1):
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row["value"]) if row else 1
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the run store {str(self.path)!r} has schema version {version}, newer than this "
                    f"jupyter-distill understands ({SCHEMA_VERSION}). Fix: upgrade jupyter-distill or use "
                    "another workdir=.",
                    field="workdir",
                    value=str(self.workdir),
                )
            while version < SCHEMA_VERSION:
                for statement in _split_sql(_MIGRATIONS[version]):
                    conn.execute(statement)
                version += 1
            conn.execute(
                "INSERT INTO meta(key, value) VALUES('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(version),),
            )

    @property
    def schema_version(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row["value"])

    # ------------------------------------------------------------------ runs
    def create_run(self, run_id: str, config: dict[str, Any]) -> None:
        """Create the run, or refresh its config when it already exists (a re-run of a cell)."""
        now = time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO runs(id, created_at, updated_at, status, config_json) VALUES(?, ?, ?, 'created', ?) "
                "ON CONFLICT(id) DO UPDATE SET updated_at=excluded.updated_at, config_json=excluded.config_json",
                (run_id, now, now, _dumps(config)),
            )

    def update_run(
        self,
        run_id: str,
        *,
        status: str | None = None,
        phase: str | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        """Set status/phase and merge ``summary`` into the run's summary."""
        with self.transaction() as conn:
            row = conn.execute("SELECT summary_json FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"no run named {run_id!r} in {str(self.path)!r}", field="run", value=run_id)
            merged = json.loads(row["summary_json"] or "{}")
            if summary:
                merged.update(summary)
            conn.execute(
                "UPDATE runs SET updated_at=?, status=COALESCE(?, status), phase=COALESCE(?, phase), "
                "summary_json=? WHERE id=?",
                (time.time(), status, phase, _dumps(merged), run_id),
            )

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return _run_dict(row) if row else None

    def list_runs(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM runs ORDER BY updated_at DESC").fetchall()
        return [_run_dict(row) for row in rows]

    # ------------------------------------------------------------------ prompts
    def put_prompts(self, run_id: str, prompts: Sequence[PromptRecord]) -> None:
        """Record the run's prompts and their split, replacing a previous list for this run."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM run_prompts WHERE run_id=?", (run_id,))
            for prompt in prompts:
                conn.execute(
                    "INSERT INTO prompts(hash, messages_json, row_json) VALUES(?, ?, ?) ON CONFLICT(hash) DO NOTHING",
                    (prompt.hash, _dumps(prompt.messages), _dumps(prompt.row)),
                )
                conn.execute(
                    "INSERT INTO run_prompts(run_id, prompt_hash, position, split) VALUES(?, ?, ?, ?)",
                    (run_id, prompt.hash, prompt.position, prompt.split),
                )

    def get_prompts(self, run_id: str, split: str | None = None) -> list[PromptRecord]:
        query = (
            "SELECT p.hash, p.messages_json, p.row_json, rp.position, rp.split FROM run_prompts rp "
            "JOIN prompts p ON p.hash = rp.prompt_hash WHERE rp.run_id=?"
        )
        args: list[Any] = [run_id]
        if split is not None:
            query += " AND rp.split=?"
            args.append(split)
        rows = self.conn.execute(query + " ORDER BY rp.position", args).fetchall()
        return [
            PromptRecord(
                hash=row["hash"],
                messages=json.loads(row["messages_json"]),
                row=json.loads(row["row_json"]),
                position=row["position"],
                split=row["split"],
            )
            for row in rows
        ]

    # ------------------------------------------------------------------ samples
    def put_samples(self, samples: Iterable[SampleRecord]) -> int:
        """Insert samples not already stored (by key); returns how many were new."""
        added = 0
        with self.transaction() as conn:
            for s in samples:
                cursor = conn.execute(
                    "INSERT INTO samples(key, prompt_hash, teacher, params_json, sample_index, text, usage_json, "
                    "cost, provenance_json, created_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO NOTHING",
                    (
                        s.key,
                        s.prompt_hash,
                        s.teacher,
                        _dumps(s.params),
                        s.sample_index,
                        s.text,
                        _dumps(s.usage),
                        s.cost,
                        _dumps(s.provenance),
                        s.created_at,
                    ),
                )
                added += cursor.rowcount
        return added

    def existing_sample_keys(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(f"SELECT key FROM samples WHERE key IN ({marks})", chunk).fetchall()
            found.update(row["key"] for row in rows)
        return found

    def get_samples(self, keys: Iterable[str]) -> dict[str, SampleRecord]:
        keys = list(keys)
        out: dict[str, SampleRecord] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(f"SELECT * FROM samples WHERE key IN ({marks})", chunk).fetchall()
            out.update({row["key"]: _sample(row) for row in rows})
        return out

    def samples_for_prompt(self, prompt_hash: str, teacher: str | None = None) -> list[SampleRecord]:
        query, args = "SELECT * FROM samples WHERE prompt_hash=?", [prompt_hash]
        if teacher is not None:
            query += " AND teacher=?"
            args.append(teacher)
        rows = self.conn.execute(query + " ORDER BY sample_index, created_at", args).fetchall()
        return [_sample(row) for row in rows]

    # ------------------------------------------------------------------ judgments
    def put_judgments(self, judgments: Iterable[JudgmentRecord]) -> int:
        """Insert or replace judgments; a failed judgment can later be replaced by a success."""
        added = 0
        with self.transaction() as conn:
            for j in judgments:
                cursor = conn.execute(
                    "INSERT INTO judgments(key, sample_key, judge, score, rationale, raw, status, cost, created_at) "
                    "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET score=excluded.score, "
                    "rationale=excluded.rationale, raw=excluded.raw, status=excluded.status, "
                    "cost=judgments.cost + excluded.cost, created_at=excluded.created_at "
                    "WHERE judgments.status != 'ok'",
                    (j.key, j.sample_key, j.judge, j.score, j.rationale, j.raw, j.status, j.cost, j.created_at),
                )
                added += cursor.rowcount
        return added

    def get_judgments(self, keys: Iterable[str]) -> dict[str, JudgmentRecord]:
        keys = list(keys)
        out: dict[str, JudgmentRecord] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(f"SELECT * FROM judgments WHERE key IN ({marks})", chunk).fetchall()
            for row in rows:
                out[row["key"]] = JudgmentRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118
        return out

    def judgments_for_samples(self, sample_keys: Iterable[str], judge: str | None = None) -> list[JudgmentRecord]:
        keys = list(sample_keys)
        out: list[JudgmentRecord] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query, args = f"SELECT * FROM judgments WHERE sample_key IN ({marks})", list(chunk)
            if judge is not None:
                query += " AND judge=?"
                args.append(judge)
            out.extend(JudgmentRecord(**{k: row[k] for k in row.keys()}) for row in self.conn.execute(query, args))  # noqa: SIM118
        return out

    # ------------------------------------------------------------------ reviews
    def add_review(
        self, run_id: str, prompt_hash: str, action: str, sample_key: str | None = None, text: str | None = None
    ) -> int:
        """Append one human decision; an ``undo`` marks the latest live decision of the prompt undone."""
        with self.transaction() as conn:
            if action == "undo":
                row = conn.execute(
                    "SELECT id FROM reviews WHERE run_id=? AND prompt_hash=? AND undone=0 AND action!='undo' "
                    "ORDER BY id DESC LIMIT 1",
                    (run_id, prompt_hash),
                ).fetchone()
                if row is not None:
                    conn.execute("UPDATE reviews SET undone=1 WHERE id=?", (row["id"],))
            cursor = conn.execute(
                "INSERT INTO reviews(run_id, prompt_hash, action, sample_key, text, created_at) "
                "VALUES(?, ?, ?, ?, ?, ?)",
                (run_id, prompt_hash, action, sample_key, text, time.time()),
            )
            return int(cursor.lastrowid or 0)

    def get_reviews(self, run_id: str, *, live_only: bool = True) -> list[dict[str, Any]]:
        query = "SELECT * FROM reviews WHERE run_id=?"
        if live_only:
            query += " AND undone=0 AND action!='undo'"
        return [dict(row) for row in self.conn.execute(query + " ORDER BY id", (run_id,))]

    # ------------------------------------------------------------------ pairs
    def put_pairs(self, run_id: str, pairs: Sequence[PairRecord]) -> None:
        """Replace the run's training pairs in one transaction."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM pairs WHERE run_id=?", (run_id,))
            for p in pairs:
                conn.execute(
                    "INSERT INTO pairs(run_id, prompt_hash, rank, chosen_text, rejected_text, chosen_key, "
                    "rejected_key, source) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        p.prompt_hash,
                        p.rank,
                        p.chosen_text,
                        p.rejected_text,
                        p.chosen_key,
                        p.rejected_key,
                        p.source,
                    ),
                )

    def get_pairs(self, run_id: str) -> list[PairRecord]:
        rows = self.conn.execute(
            "SELECT pr.* FROM pairs pr LEFT JOIN run_prompts rp ON rp.run_id = pr.run_id AND "
            "rp.prompt_hash = pr.prompt_hash WHERE pr.run_id=? ORDER BY rp.position, pr.rank",
            (run_id,),
        ).fetchall()
        return [PairRecord(**{k: row[k] for k in row.keys() if k != "run_id"}) for row in rows]  # noqa: SIM118

    # ------------------------------------------------------------------ metrics
    def put_metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        now = time.time()
        with self.transaction() as conn:
            for name, value in values.items():
                conn.execute(
                    "INSERT INTO metrics(run_id, step, name, value, time) VALUES(?, ?, ?, ?, ?) "
                    "ON CONFLICT(run_id, step, name) DO UPDATE SET value=excluded.value, time=excluded.time",
                    (run_id, step, name, float(value), now),
                )

    def get_metrics(self, run_id: str, name: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT step, name, value, time FROM metrics WHERE run_id=?", [run_id]
        if name is not None:
            query += " AND name=?"
            args.append(name)
        return [dict(row) for row in self.conn.execute(query + " ORDER BY step, name", args)]

    def delete_metrics_after(self, run_id: str, step: int) -> None:
        """Drop metrics past a checkpoint so a resumed run does not show steps twice."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM metrics WHERE run_id=? AND step>?", (run_id, step))

    # ------------------------------------------------------------------ provider batches
    def claim_batch(
        self,
        group_key: str,
        run_id: str,
        teacher: str,
        provider: str,
        endpoint: str,
        claimant: dict[str, Any] | None = None,
    ) -> int | None:
        """Reserve the one open batch of ``group_key`` before it is submitted; None when another holds it.

        A partial unique index allows one 'submitting'/'submitted' row per group, so of several
        threads or processes only one gets a row id and submits; the others poll that batch.
        ``claimant`` (host and pid) is kept in the row's info so a claim whose process died can
        be told apart from one still uploading (:meth:`expire_claim`).
        """
        now = time.time()
        info = {"claimant": claimant} if claimant else {}
        try:
            with self.transaction() as conn:
                cursor = conn.execute(
                    "INSERT INTO batches(group_key, run_id, teacher, provider, endpoint, status, info_json, "
                    "created_at, updated_at) VALUES(?, ?, ?, ?, ?, 'submitting', ?, ?, ?)",
                    (group_key, run_id, teacher, provider, endpoint, _dumps(info), now, now),
                )
                return int(cursor.lastrowid or 0)
        except sqlite3.IntegrityError:
            return None

    def expire_claim(self, row: int, reason: str) -> bool:
        """Close a 'submitting' row whose submitter is gone, freeing its group; False if it moved on.

        The update is conditional, so a submission that completes at the same moment wins and
        its batch is polled, never submitted a second time.
        """
        with self.transaction() as conn:
            found = conn.execute("SELECT info_json FROM batches WHERE id=? AND status='submitting'", (row,)).fetchone()
            if found is None:
                return False
            info = {**json.loads(found[0] or "{}"), "expired": reason}
            conn.execute(
                "UPDATE batches SET status='abandoned', info_json=?, updated_at=? WHERE id=? AND status='submitting'",
                (_dumps(info), time.time(), row),
            )
            return True

    def batch_submitted(self, row: int, batch_id: str, keys: dict[str, Any], info: dict[str, Any]) -> bool:
        """Record the provider's batch id and the custom_id -> sample key map of a claimed row.

        Returns False when the claim was expired meanwhile (its submitter was taken for dead):
        the batch id is still recorded on the closed row, so the spend can be traced.
        """
        with self.transaction() as conn:
            found = conn.execute("SELECT status, info_json FROM batches WHERE id=?", (row,)).fetchone()
            if found is not None and found[0] != "submitting":
                late = {**json.loads(found[1] or "{}"), **info, "submitted_after_expiry": True}
                conn.execute(
                    "UPDATE batches SET batch_id=?, keys_json=?, info_json=?, updated_at=? WHERE id=?",
                    (batch_id, _dumps(keys), _dumps(late), time.time(), row),
                )
                return False
            kept = {**json.loads(found[1] or "{}"), **info} if found is not None else info
            conn.execute(
                "UPDATE batches SET batch_id=?, status='submitted', keys_json=?, info_json=?, updated_at=? WHERE id=?",
                (batch_id, _dumps(keys), _dumps(kept), time.time(), row),
            )
            return True

    def set_batch_status(self, row: int, status: str, info: dict[str, Any] | None = None) -> None:
        """Move a batch row on ('collected', 'abandoned'); a closed row frees its group for a new batch."""
        with self.transaction() as conn:
            if info is None:
                conn.execute("UPDATE batches SET status=?, updated_at=? WHERE id=?", (status, time.time(), row))
            else:
                conn.execute(
                    "UPDATE batches SET status=?, info_json=?, updated_at=? WHERE id=?",
                    (status, _dumps(info), time.time(), row),
                )

    def get_batch(self, row: int) -> dict[str, Any] | None:
        found = self.conn.execute("SELECT * FROM batches WHERE id=?", (row,)).fetchone()
        return _batch_row(found) if found else None

    def open_batch(self, group_key: str) -> dict[str, Any] | None:
        """The group's batch still being submitted or waited for, if any."""
        found = self.conn.execute(
            "SELECT * FROM batches WHERE group_key=? AND status IN ('submitting', 'submitted')", (group_key,)
        ).fetchone()
        return _batch_row(found) if found else None

    def list_batches(self, run_id: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM batches", ()
        if run_id is not None:
            sql, args = sql + " WHERE run_id=?", (run_id,)
        return [_batch_row(r) for r in self.conn.execute(sql + " ORDER BY id", args).fetchall()]

    # ------------------------------------------------------------------ artifacts
    def put_artifact(
        self,
        run_id: str,
        kind: str,
        path: str | Path,
        *,
        sha256: str | None = None,
        size: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO artifacts(run_id, kind, path, sha256, size, meta_json, created_at) "
                "VALUES(?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(run_id, kind) DO UPDATE SET path=excluded.path, sha256=excluded.sha256, "
                "size=excluded.size, meta_json=excluded.meta_json, created_at=excluded.created_at",
                (run_id, kind, str(path), sha256, size, _dumps(meta or {}), time.time()),
            )

    def get_artifacts(self, run_id: str) -> dict[str, dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM artifacts WHERE run_id=?", (run_id,)).fetchall()
        return {
            row["kind"]: {
                "path": row["path"],
                "sha256": row["sha256"],
                "size": row["size"],
                "meta": json.loads(row["meta_json"]),
                "created_at": row["created_at"],
            }
            for row in rows
        }

    # ------------------------------------------------------------------ failures
    def record_failure(self, run_id: str, stage: str, key: str, error: str, prompt_hash: str | None = None) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO failures(run_id, stage, key, prompt_hash, error, attempts, created_at) "
                "VALUES(?, ?, ?, ?, ?, 1, ?) ON CONFLICT(run_id, stage, key) DO UPDATE SET error=excluded.error, "
                "attempts=failures.attempts + 1, created_at=excluded.created_at",
                (run_id, stage, key, prompt_hash, error, time.time()),
            )

    def clear_failure(self, run_id: str, stage: str, key: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM failures WHERE run_id=? AND stage=? AND key=?", (run_id, stage, key))

    def get_failures(self, run_id: str, stage: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM failures WHERE run_id=?", [run_id]
        if stage is not None:
            query += " AND stage=?"
            args.append(stage)
        return [dict(row) for row in self.conn.execute(query + " ORDER BY created_at", args)]

    # ------------------------------------------------------------------ eval results
    def put_eval_results(self, run_id: str, label: str, results: Iterable[dict[str, Any]]) -> None:
        now = time.time()
        with self.transaction() as conn:
            for r in results:
                conn.execute(
                    "INSERT INTO eval_results(run_id, label, prompt_hash, response, score, passed, created_at) "
                    "VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id, label, prompt_hash) DO UPDATE SET "
                    "response=excluded.response, score=excluded.score, passed=excluded.passed, "
                    "created_at=excluded.created_at",
                    (run_id, label, r["prompt_hash"], r["response"], r.get("score"), r.get("passed"), now),
                )

    def get_eval_results(self, run_id: str, label: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM eval_results WHERE run_id=?", [run_id]
        if label is not None:
            query += " AND label=?"
            args.append(label)
        return [dict(row) for row in self.conn.execute(query + " ORDER BY label, prompt_hash", args)]

    # ------------------------------------------------------------------ events
    def put_event(self, run_id: str | None, kind: str, phase: str | None, message: str, data: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO events(run_id, time, kind, phase, message, data_json) VALUES(?, ?, ?, ?, ?, ?)",
                (run_id, time.time(), kind, phase, message, _dumps(data)),
            )

    def get_events(self, run_id: str, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM events WHERE run_id=? AND id>? ORDER BY id LIMIT ?", (run_id, after_id, limit)
        ).fetchall()
        return [{**dict(row), "data": json.loads(row["data_json"])} for row in rows]

    # ------------------------------------------------------------------ accounting
    def _run_identity(self, run_id: str) -> tuple[str | None, str | None]:
        """The run's own teacher spec and judge id, as the pipeline records them when it starts."""
        run = self.get_run(run_id) or {}
        summary, config = run.get("summary") or {}, run.get("config") or {}
        teacher = summary.get("teacher") or config.get("teacher")
        judge = summary.get("judge")
        return (str(teacher) if teacher else None, str(judge) if judge else None)

    def teacher_cost(self, run_id: str, teacher: str | None = None) -> float:
        """Teacher spend of this run: samples of its prompts from its own teacher (``teacher``, else
        the one the run recorded). Other teachers' samples of the same prompts are other runs' money;
        only a run that recorded no teacher (made by an older version) counts every teacher's."""
        teacher = teacher or self._run_identity(run_id)[0]
        query = (
            "SELECT COALESCE(SUM(s.cost), 0) AS c FROM samples s JOIN run_prompts rp ON rp.prompt_hash = s.prompt_hash "
            "WHERE rp.run_id=?"
        )
        args: list[Any] = [run_id]
        if teacher is not None:
            query += " AND s.teacher=?"
            args.append(teacher)
        return float(self.conn.execute(query, args).fetchone()["c"])

    def judge_cost(self, run_id: str, judge: str | None = None, teacher: str | None = None) -> float:
        """Judge spend of this run: verdicts of its own judge on its own teacher's samples (a
        verifier judge costs nothing; an LLM judge's requests are stored with each verdict)."""
        own_teacher, own_judge = self._run_identity(run_id)
        judge, teacher = judge or own_judge, teacher or own_teacher
        query = (
            "SELECT COALESCE(SUM(j.cost), 0) AS c FROM judgments j JOIN samples s ON s.key = j.sample_key "
            "JOIN run_prompts rp ON rp.prompt_hash = s.prompt_hash WHERE rp.run_id=?"
        )
        args: list[Any] = [run_id]
        for column, value in (("j.judge", judge), ("s.teacher", teacher)):
            if value is not None:
                query += f" AND {column}=?"
                args.append(value)
        return float(self.conn.execute(query, args).fetchone()["c"])


def _split_sql(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    data["config"] = json.loads(data.pop("config_json") or "{}")
    data["summary"] = json.loads(data.pop("summary_json", None) or "{}")
    return data


def _sample(row: sqlite3.Row) -> SampleRecord:
    return SampleRecord(
        key=row["key"],
        prompt_hash=row["prompt_hash"],
        teacher=row["teacher"],
        params=json.loads(row["params_json"]),
        sample_index=row["sample_index"],
        text=row["text"],
        usage=json.loads(row["usage_json"]),
        cost=row["cost"],
        provenance=json.loads(row["provenance_json"]),
        created_at=row["created_at"],
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _batch_row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["keys"] = json.loads(out.pop("keys_json") or "{}")
    out["info"] = json.loads(out.pop("info_json") or "{}")
    return out
