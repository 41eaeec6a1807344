"""Line magics never wait behind a run: one store per workdir, no migration per call.

Opening a ``RunStore`` migrates its schema inside a write transaction, so a line magic that
opened a fresh store on every call queued behind whatever write the run in the same kernel had
in progress (SQLite's busy timeout is 60 s). These tests prove it with state, not timings: a run
holds the store's write lock on its own thread while the line magics answer, and the number of
stores opened (schema migrations run) is counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from jupyter_distill.core.store import RunStore
from jupyter_distill.notebook.dashboard import RunSummary
from jupyter_distill.notebook.magics import DistillMagics, Table
from jupyter_distill.pipeline import run as pipeline


@pytest.fixture(scope="module")
def shell() -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_distill")
    yield ip
    ip.run_line_magic("unload_ext", "jupyter_distill")


@pytest.fixture
def magics(shell: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DistillMagics:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # the cells name data.jsonl: %%distill refuses a dataset path that is not there
    (tmp_path / "data.jsonl").write_text('{"prompt": "a"}\n')
    m = next(c for c in shell.configurables if isinstance(c, DistillMagics))
    shell.run_line_magic("config", f"DistillMagics.workdir = {str(tmp_path / 'wd')!r}")
    shell.run_line_magic("config", "DistillMagics.refresh_interval = 0.05")
    m.runs.clear()
    m.configs.clear()
    m.dashboards.clear()
    m._last = None
    return m


@pytest.fixture
def migrations(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every schema migration (= every RunStore opened), by workdir."""
    opened: list[Path] = []
    original = RunStore._migrate

    def counting(self: RunStore) -> None:
        opened.append(self.workdir)
        original(self)

    monkeypatch.setattr(RunStore, "_migrate", counting)
    return opened


def test_line_magics_answer_while_the_run_holds_the_write_lock(
    magics: DistillMagics, shell: InteractiveShell, migrations: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    holding, release = threading.Event(), threading.Event()

    def run_holding_the_lock(self: pipeline.Run) -> None:
        """A training step's metrics write that stays open: SQLite's write lock and the store's own."""
        self.state.status = "running"
        self.store.create_run(self.name, self.config.to_public_dict())
        self.store.update_run(self.name, status="running", phase="training")
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO metrics(run_id, step, name, value, time) VALUES(?, 1, 'loss', 1.0, ?)",
                (self.name, time.time()),
            )
            holding.set()
            release.wait(120)  # released by the test; the bound only keeps a broken build from hanging
        self.state.status = "done"

    monkeypatch.setattr(pipeline.Run, "run", run_holding_the_lock)
    result = shell.run_cell("%%distill held\ndataset: data.jsonl\n", store_history=False)
    assert result.error_in_exec is None
    assert holding.wait(60)
    try:
        runs = shell.run_line_magic("distill", "runs")
        status = shell.run_line_magic("distill", "status held")
        latest = shell.run_line_magic("distill", "status")
        aliases = shell.run_line_magic("distill", "aliases")
        lock_still_held = not release.is_set() and magics.runs["held"].running
    finally:
        release.set()
        magics.runs["held"].wait(60)
    assert lock_still_held  # every answer above came while the run held the write lock
    assert isinstance(runs, Table) and runs.rows[0][0] == "held" and "(this kernel)" in runs.rows[0][1]
    assert isinstance(status, RunSummary) and status.name == "held" and latest.name == "held"
    assert isinstance(aliases, Table)
    assert len(migrations) == 1  # only the run's own store was ever opened; the magics reuse it


def test_one_store_per_workdir_however_many_line_magics(
    magics: DistillMagics, shell: InteractiveShell, tmp_path: Path, migrations: list[Path]
) -> None:
    seeded = RunStore(tmp_path / "wd")
    seeded.create_run("r1", {"teacher": "t", "student": "s"})
    seeded.close()
    migrations.clear()
    for _ in range(5):
        shell.run_line_magic("distill", "runs")
        shell.run_line_magic("distill", "status r1")
        shell.run_line_magic("distill", "status")
    assert len(migrations) == 1

    shell.run_line_magic("config", f"DistillMagics.workdir = {str(tmp_path / 'other')!r}")
    shell.run_line_magic("distill", "runs")
    shell.run_line_magic("distill", "runs")
    assert [p.name for p in migrations] == ["wd", "other"]  # a new workdir: one store of its own


def test_many_threads_asking_for_the_store_share_one(
    magics: DistillMagics, tmp_path: Path, migrations: list[Path]
) -> None:
    """The store cache is shared by the kernel's thread and run threads: hammer it."""
    barrier = threading.Barrier(8)
    stores: list[RunStore] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            barrier.wait(30)
            for _ in range(20):
                store = magics.store()
                store.list_runs()
                stores.append(store)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(stores) == 160 and len({id(s) for s in stores}) == 1
    assert len(migrations) == 1


def test_a_run_started_here_lends_its_store_to_the_line_magics(
    magics: DistillMagics, shell: InteractiveShell, migrations: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def quick_run(self: Any) -> None:
        self.store.create_run(self.name, self.config.to_public_dict())

    monkeypatch.setattr(pipeline.Run, "run", quick_run)
    shell.run_cell("%%distill lent\ndataset: data.jsonl\n", store_history=False)
    magics.runs["lent"].wait(60)
    assert magics.store() is magics.runs["lent"].store
    assert len(migrations) == 1
