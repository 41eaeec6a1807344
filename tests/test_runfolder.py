"""One run-folder setting: ``$JUPYTER_DISTILL_WORKDIR`` (else ``.distill``), read by ``jd.distill``'s
config, the magics, the server extension (which exports its absolute folder to its kernels) and the demo.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
from distill_server_fixtures import build_fixture_store

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.runfolder import (
    DEFAULT_RUN_FOLDER,
    RUN_FOLDER_ENV,
    resolve_run_folder,
    run_folder,
)
from jupyter_distill.notebook.magics import DistillMagics
from jupyter_distill.server.handlers import DistillServer

pytest_plugins = ["pytest_jupyter.jupyter_server"]


def test_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default path warns about nothing
        assert run_folder() == DEFAULT_RUN_FOLDER == ".distill"
    monkeypatch.chdir(tmp_path)
    assert resolve_run_folder() == (tmp_path / ".distill").resolve()
    assert resolve_run_folder(None, tmp_path / "root") == (tmp_path / "root" / ".distill").resolve()
    monkeypatch.setenv(RUN_FOLDER_ENV, str(tmp_path / "runs"))
    assert run_folder() == str(tmp_path / "runs")
    assert resolve_run_folder(None, "/elsewhere") == (tmp_path / "runs").resolve()  # absolute: root ignored
    assert resolve_run_folder("mine", tmp_path) == (tmp_path / "mine").resolve()  # an explicit folder wins


def test_the_old_variable_still_works_and_warns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JD_WORKDIR", str(tmp_path / "old"))
    with pytest.warns(DeprecationWarning, match=r"\$JD_WORKDIR is deprecated: set \$JUPYTER_DISTILL_WORKDIR"):
        assert run_folder() == str(tmp_path / "old")
    monkeypatch.setenv(RUN_FOLDER_ENV, str(tmp_path / "new"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name wins and the old one is not even read
        assert run_folder() == str(tmp_path / "new")


def test_config_magics_and_server_read_the_same_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert DistillConfig().workdir == ".distill"
    assert DistillMagics(shell=None).workdir == ".distill"
    assert DistillServer().resolve_workdir(tmp_path) == (tmp_path / ".distill").resolve()

    folder = tmp_path / "shared-runs"
    monkeypatch.setenv(RUN_FOLDER_ENV, str(folder))
    assert DistillConfig().workdir == str(folder)  # jd.distill(...) without workdir=
    assert DistillConfig.from_yaml("dataset: x.jsonl\n").workdir == str(folder)
    assert DistillMagics(shell=None).workdir == str(folder)  # %%distill without %config
    assert DistillServer().resolve_workdir(tmp_path / "root") == folder.resolve()  # the panel
    # explicit settings still win where they are given
    assert DistillConfig(workdir="here").workdir == "here"
    assert DistillServer(workdir="panel").resolve_workdir(tmp_path) == (tmp_path / "panel").resolve()


def test_a_cell_without_workdir_uses_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(RUN_FOLDER_ENV, str(tmp_path / "from-env"))
    magics = DistillMagics(shell=None)  # no shell config: a %config from another test must not apply
    assert magics.build_config("dataset: x.jsonl\n", {}).workdir == str(tmp_path / "from-env")
    assert magics.build_config("dataset: x.jsonl\nworkdir: mine\n", {}).workdir == "mine"  # the body wins


# ------------------------------------------------------------------ the server and its kernels
@pytest.fixture
def jp_server_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "alias-home"))
    return {"ServerApp": {"jpserver_extensions": {"jupyter_distill": True}}, "DistillServer": {"model_workers": 0}}


async def test_a_run_made_with_default_settings_is_listed(jp_fetch: Any, jp_root_dir: Path) -> None:
    import json

    folder = (Path(jp_root_dir) / ".distill").resolve()
    # the server exported its folder: a kernel it starts (which inherits os.environ) writes there
    assert os.environ[RUN_FOLDER_ENV] == str(folder)
    kernel_default = Path(DistillConfig().workdir)  # what jd.distill / %%distill use in that kernel
    assert kernel_default == folder
    build_fixture_store(kernel_default)

    response = await jp_fetch("jupyter-distill", "runs")
    data = json.loads(response.body)
    assert data["workdir"] == str(folder)  # the panel shows the folder it reads
    assert {run["id"] for run in data["runs"]} == {"tickets", "live"}


def test_make_demo_writes_where_the_panel_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m jupyter_distill.demo`` from a folder: the run lands in that folder's ``.distill``,
    which a JupyterLab server started in the same folder lists (its root dir + the default)."""
    import nbformat

    from jupyter_distill import demo
    from jupyter_distill.core.store import RunStore

    monkeypatch.chdir(tmp_path)
    notebook = tmp_path / "quickstart.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), notebook)
    seen: dict[str, str] = {}

    def execute(path: Path, out: Path, *, kernel_name: str, timeout: int) -> Any:
        seen["kernel_env"] = os.environ[RUN_FOLDER_ENV]  # what the notebook's kernel inherits
        store = RunStore(DistillConfig().workdir)  # the notebook leaves the folder to the setting
        store.create_run(demo.RUN_NAME, {})
        store.update_run(demo.RUN_NAME, status="done", summary={})
        return nbformat.v4.new_notebook()

    monkeypatch.setattr(demo, "ensure_kernelspec", lambda: "fake-kernel")
    monkeypatch.setattr(demo, "execute_notebook", execute)
    assert demo.main(["--notebook", str(notebook)]) == 0
    panel_folder = DistillServer().resolve_workdir(tmp_path)
    assert seen["kernel_env"] == str(panel_folder) == str((tmp_path / ".distill").resolve())
    assert RunStore(panel_folder).get_run(demo.RUN_NAME)["status"] == "done"
    assert f"store: {panel_folder}" in capsys.readouterr().out
