"""JupyterLab in a real browser: the Distill panel, the run card renderer, the template command,
unsetting an alias, and the review widget driven by the keyboard in a live kernel.

JupyterLab runs as a subprocess on 127.0.0.1 with a token; Debian's chromium is driven through
Playwright (``make test`` installs it when missing). Everything the browser does is checked where
it lands: in the page, in the run store, or in the alias registry.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from distill_server_fixtures import build_fixture_store, fixture_prompts, sample_key

from jupyter_distill.core.store import RunStore
from jupyter_distill.serving import registry

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "distill-browser-test-token"
RUN_MIME = "application/vnd.jupyter.distill.run+json"
UI_TIMEOUT_MS = 90_000  # 2 shared cores: the first lab load compiles nothing but is still slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def notebook(cells: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def code_cell(source: str, outputs: list[dict[str, Any]] | None = None, ident: str = "c0") -> dict[str, Any]:
    return {
        "cell_type": "code",
        "id": ident,
        "execution_count": None,
        "metadata": {},
        "source": source,
        "outputs": outputs or [],
    }


class Lab:
    """A running JupyterLab subprocess and the paths its test data lives in."""

    def __init__(self, root: Path, workdir: Path, alias_home: Path, url: str, process: subprocess.Popen[bytes]):
        self.root = root
        self.workdir = workdir
        self.alias_home = alias_home
        self.url = url
        self.process = process

    def page_url(self, path: str) -> str:
        return f"{self.url}{path}?token={TOKEN}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    base = tmp_path_factory.mktemp("lab")
    root, workdir, alias_home = base / "root", base / "root" / ".distill", base / "alias-home"
    root.mkdir()
    store = build_fixture_store(workdir)

    # A notebook whose saved output is a run summary: the card must render with no kernel.
    from jupyter_distill.server.summary import run_summary

    summary = run_summary(store, store.get_run("tickets"))
    output = {"output_type": "display_data", "metadata": {}, "data": {RUN_MIME: summary, "text/plain": "run tickets"}}
    (root / "runs.ipynb").write_text(json.dumps(notebook([code_cell("# the run", [output])])))
    (root / "review.ipynb").write_text(
        json.dumps(
            notebook(
                [
                    code_cell(
                        "from jupyter_distill.core.store import RunStore\n"
                        "from jupyter_distill.notebook.review_widget import ReviewWidget\n"
                        "ReviewWidget(RunStore('.distill'), 'tickets')"
                    )
                ]
            )
        )
    )

    # The review widget between two cells: keys pressed in it must never act on the notebook.
    (root / "review_keys.ipynb").write_text(
        json.dumps(
            notebook(
                [
                    code_cell("before = 1", ident="c0"),
                    code_cell(
                        "from jupyter_distill.core.store import RunStore\n"
                        "from jupyter_distill.notebook.review_widget import ReviewWidget\n"
                        "ReviewWidget(RunStore('.distill'), 'live')",
                        ident="c1",
                    ),
                    code_cell("after = 2", ident="c2"),
                ]
            )
        )
    )

    gguf = base / "student.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    checkout_path = _serve_this_checkouts_build(base / "checkout")
    config_dir = base / "config"
    config_dir.mkdir()
    (config_dir / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_distill": True}}})
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config_dir),
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "JUPYTER_DISTILL_HOME": str(alias_home),
        "JUPYTER_DISTILL_WORKDIR": ".distill",
        **checkout_path,
    }
    previous_home = os.environ.get("JUPYTER_DISTILL_HOME")
    os.environ["JUPYTER_DISTILL_HOME"] = str(alias_home)
    registry.set_alias("ticket-classifier", backend="gguf", model_path=gguf)
    registry.set_alias("keep-me", backend="gguf", model_path=gguf)

    port = free_port()
    log = (base / "lab.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            "--allow-root",  # CI containers run as root; harmless otherwise
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root}",
            f"--LabApp.workspaces_dir={base / 'workspaces'}",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run cells by command, not by focus
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"jupyter lab exited: {(base / 'lab.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/api/status", headers={"Authorization": f"token {TOKEN}"}, timeout=2).is_success
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 120, "jupyter lab to start")
        yield Lab(root, workdir, alias_home, url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        if previous_home is None:
            os.environ.pop("JUPYTER_DISTILL_HOME", None)
        else:
            os.environ["JUPYTER_DISTILL_HOME"] = previous_home
        shutil.rmtree(base / "runtime", ignore_errors=True)


def _serve_this_checkouts_build(folder: Path) -> dict[str, str]:
    """The environment that makes JupyterLab serve the lab extension built in this checkout, if any.

    JupyterLab loads the first ``labextensions/jupyter-distill`` on its path, and the environment's
    copy may be another checkout's build; ``$JUPYTER_PATH`` comes before every other folder.
    """
    import jupyter_distill

    build = Path(jupyter_distill.__file__).parent / "labextension"
    if not (build / "package.json").is_file():
        return {}
    (folder / "labextensions").mkdir(parents=True, exist_ok=True)
    (folder / "labextensions" / "jupyter-distill").symlink_to(build, target_is_directory=True)
    return {"JUPYTER_PATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("JUPYTER_PATH")]))}


@pytest.fixture(scope="module")
def browser(lab: Lab) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield page
    finally:
        context.close()


def open_distill_panel(page: Any) -> Any:
    tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="jupyter-distill-panel"]')
    tab.wait_for(state="visible")
    # The workspace may reopen the panel a previous test left open: wait for that, then click
    # only a closed tab (clicking the open one closes it).
    page.wait_for_function("() => window.jupyterapp !== undefined")
    page.evaluate("async () => { await window.jupyterapp.restored; }")
    if "lm-mod-current" not in (tab.get_attribute("class") or ""):
        tab.click()
    panel = page.locator("#jupyter-distill-panel")
    panel.wait_for(state="visible")
    return panel


def open_review_widget(lab: Lab, page: Any, name: str) -> Any:
    """Open the notebook, run all its cells in a live kernel, and return the review widget's key box."""
    # a workspace of its own: the default one would reopen the notebooks of earlier tests
    page.goto(lab.page_url(f"/lab/workspaces/{Path(name).stem}/tree/{name}"))
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(state="visible")
    keys = page.locator(".jd-review-keys input")
    dialog = page.locator(".jp-Dialog")
    kernel_idle = """() => {
        const panel = window.jupyterapp.shell.currentWidget;
        return panel?.sessionContext?.session?.kernel?.status === 'idle';
    }"""
    # Lab may ask which kernel to use (more than one kernelspec is installed): take its choice.
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while not page.evaluate(kernel_idle):
        if dialog.count() and dialog.first.is_visible():
            dialog.first.locator(".jp-mod-accept").click()
        if time.monotonic() > deadline:
            raise AssertionError("the notebook's kernel never became idle")
        page.wait_for_timeout(250)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:
        keys.wait_for(state="visible")
    except Exception as exc:  # say what the cell printed instead (a traceback, a missing widget manager)
        outputs = page.locator(".jp-Notebook .jp-OutputArea").all_inner_texts()
        page.screenshot(path=str(lab.root.parent / "review-failure.png"))
        raise AssertionError(f"no review widget; the cell's output: {outputs}") from exc
    return keys


def test_saved_run_output_renders_as_a_card_without_a_kernel(lab: Lab, page: Any) -> None:
    page.goto(lab.page_url("/lab/tree/runs.ipynb"))
    card = page.locator('.jp-Distill-card[data-run-id="tickets"]')
    card.wait_for(state="visible")
    text = card.inner_text()
    assert "tickets" in text and "done" in text
    assert "$0.75" in text  # teacher cost from the run summary
    assert "0%" in text and "100%" in text  # pass@1 before and after
    assert card.locator(".jp-Distill-sparkline path").count() == 1


def test_saved_jbond_card_draws_its_win_rate_next_to_the_loss(lab: Lab, page: Any, tmp_path: Path) -> None:
    """A jbond run's saved card (the server's shape) shows the on-policy signal's sparkline and latest value."""
    from jupyter_distill.server.summary import run_summary

    store = RunStore(tmp_path / ".distill")
    store.create_run("jbond-run", {"loss": "jbond", "steps": 3})
    for step in (1, 2, 3):
        store.put_metrics("jbond-run", step, {"loss": 2.0 / step, "reward": -0.5 / step, "win_rate": 0.25 * step})
    summary = run_summary(store, store.get_run("jbond-run"))
    store.close()
    output = {"output_type": "display_data", "metadata": {}, "data": {RUN_MIME: summary, "text/plain": "run jbond"}}
    (lab.root / "jbond_card.ipynb").write_text(json.dumps(notebook([code_cell("# a jbond run", [output])])))

    page.goto(lab.page_url("/lab/workspaces/jbond-card/tree/jbond_card.ipynb"))
    card = page.locator('.jp-Distill-card[data-run-id="jbond-run"]')
    card.wait_for(state="visible")
    signal = card.locator('.jp-Distill-signal-sparkline[data-signal="win_rate"]')
    assert signal.count() == 1 and signal.locator("path").count() == 1
    assert signal.get_attribute("aria-label") == "win rate 75%"
    assert card.locator(".jp-Distill-sparkline path").count() == 2  # the loss and the signal
    assert "win rate" in card.inner_text() and "75%" in card.inner_text()


def test_panel_lists_runs_live_and_unsets_an_alias(lab: Lab, page: Any) -> None:
    page.goto(lab.page_url("/lab"))
    panel = open_distill_panel(page)
    live = panel.locator('.jp-Distill-run[data-run-id="live"]')
    live.wait_for(state="visible")
    assert "training 4/10" in live.inner_text()
    done = panel.locator('.jp-Distill-run[data-run-id="tickets"]')
    assert "pass 0% → 100% (best-of-N 100%)" in done.inner_text()
    assert done.locator(".jp-Distill-sparkline path").count() == 1

    # A training step lands in the store: the panel shows it on its next poll, no click needed.
    store = RunStore(lab.workdir)
    store.put_metrics("live", 5, {"loss": 0.5})
    page.wait_for_function(
        """() => document.querySelector('.jp-Distill-run[data-run-id="live"] .jp-Distill-run-phase')
                  ?.textContent === 'training 5/10'""",
        timeout=30_000,
    )

    alias = panel.locator('.jp-Distill-alias[data-alias="ticket-classifier"]')
    alias.wait_for(state="visible")
    alias.locator(".jp-Distill-alias-unset").click()
    page.locator(".jp-Dialog .jp-mod-warn").click()
    alias.wait_for(state="detached")
    assert list(registry.list_aliases()) == ["keep-me"]
    assert panel.locator('.jp-Distill-alias[data-alias="keep-me"]').is_visible()


def test_toolbar_button_inserts_a_distill_template(lab: Lab, page: Any) -> None:
    page.goto(lab.page_url("/lab/tree/runs.ipynb"))
    page.locator('.jp-Distill-card[data-run-id="tickets"]').wait_for(state="visible")
    page.locator(".jp-NotebookPanel-toolbar .jp-Distill-toolbar-button").first.click()
    cells = page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor")
    page.wait_for_function("() => document.querySelectorAll('.jp-Notebook .jp-Cell').length === 4")
    sources = [cells.nth(i).inner_text() for i in range(4)]
    assert sources[1].strip() == "%load_ext jupyter_distill"
    assert "rows = make_extraction_rows(" in sources[2]  # the setup cell: data and judge in the kernel
    assert sources[3].startswith("%%distill my-first-run")
    assert "judge: $verify" in sources[3] and "teacher: local:smollm2-135m" in sources[3]


def test_review_widget_keyboard_decision_reaches_the_store(lab: Lab, page: Any) -> None:
    store = RunStore(lab.workdir)
    assert store.get_reviews("tickets") == []
    keys = open_review_widget(lab, page, "review.ipynb")
    keys.click()
    page.keyboard.type("2")  # candidate 2 is the best answer to the first prompt

    first_prompt = fixture_prompts()[0]
    reviews = wait_for(lambda: store.get_reviews("tickets"), 60, "the review decision in the store")
    assert [(r["prompt_hash"], r["action"], r["sample_key"]) for r in reviews] == [
        (first_prompt.hash, "choose", sample_key(first_prompt, 1))
    ]


def test_keys_after_clicking_the_review_header_never_reach_the_notebook(lab: Lab, page: Any) -> None:
    """`x` after a click on the widget's header used to cut the cell; `j`/`k` moved the cell selection."""
    store = RunStore(lab.workdir)
    open_review_widget(lab, page, "review_keys.ipynb")
    notebook_state = """() => {
        const notebook = window.jupyterapp.shell.currentWidget.content;
        return {
            sources: notebook.widgets.map(cell => cell.model.sharedModel.getSource()),
            active: notebook.activeCellIndex,
        };
    }"""
    before = page.evaluate(notebook_state)
    assert len(before["sources"]) == 3 and before["sources"][2] == "after = 2"
    marker_on = page.locator(".jd-review-keymark .jd-keys-on")
    assert not marker_on.is_visible()  # keys are not active before the widget is clicked
    assert ".jd-keys-on" not in page.locator(".jd-review").inner_text()  # no stray CSS shown as text

    page.locator(".jd-review").get_by_text("Prompt 1 of").click()  # the header, not the key box
    page.wait_for_function("() => document.activeElement?.closest('.jd-review-keys') != null", timeout=30_000)
    marker_on.wait_for(state="visible", timeout=30_000)
    page.keyboard.press("x")  # the widget rejects prompt 1; the notebook must not cut the cell
    first_prompt = fixture_prompts()[0]
    reviews = wait_for(lambda: store.get_reviews("live"), 60, "the widget's decision in the store")
    assert [(r["prompt_hash"], r["action"], r["sample_key"]) for r in reviews] == [(first_prompt.hash, "reject", None)]
    page.keyboard.press("k")
    page.keyboard.press("j")
    page.wait_for_timeout(500)  # a notebook command would have acted synchronously on the key press
    after = page.evaluate(notebook_state)
    assert after["sources"] == before["sources"]  # every cell in place
    assert after["active"] == 1  # the widget's cell (focused by the click), not moved by j/k
    page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".jp-InputArea-prompt").click()  # leave the widget
    marker_on.wait_for(state="hidden", timeout=30_000)


def test_panel_switches_folder_shows_sample_sizes_alias_audit_and_opens_a_run(lab: Lab, page: Any) -> None:
    other = lab.root / "other-runs"
    RunStore(other).create_run("elsewhere", {})
    (lab.root / "made-tickets.ipynb").write_text(json.dumps(notebook([code_cell("%%distill tickets\nsteps: 10")])))
    try:
        page.goto(lab.page_url("/lab"))
        panel = open_distill_panel(page)
        done = panel.locator('.jp-Distill-run[data-run-id="tickets"]')
        done.wait_for(state="visible")
        sizes = done.locator(".jp-Distill-run-sizes")
        assert sizes.inner_text().startswith("n=1 held-out · 0 training pairs")
        assert "only 1 held-out prompt" in (sizes.locator(".jp-Distill-warn").get_attribute("title") or "")
        badge = panel.locator('.jp-Distill-alias[data-alias="keep-me"] .jp-Distill-audit')
        page.wait_for_function(
            """() => document.querySelector('.jp-Distill-alias[data-alias="keep-me"] .jp-Distill-audit')
                      ?.textContent === 'no audit'"""
        )
        assert "no run recorded making" in (badge.get_attribute("title") or "")

        done.locator(".jp-Distill-run-card").click()
        page.locator('#jupyter-distill-card-tickets .jp-Distill-card[data-run-id="tickets"]').wait_for(state="visible")
        done.locator(".jp-Distill-run-notebook").click()
        page.locator('.lm-TabBar-tab:has-text("made-tickets.ipynb")').wait_for(state="visible")
        # Review runs `%distill review tickets` in the active notebook (the one just opened).
        done.locator(".jp-Distill-run-review").click()
        review = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jd-review-keys input")
        dialog = page.locator(".jp-Dialog .jp-mod-accept")
        deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
        while not (review.count() and review.first.is_visible()):
            if dialog.count() and dialog.first.is_visible():  # which kernel: take Lab's choice
                dialog.first.click()
            if time.monotonic() > deadline:
                outputs = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea").all_inner_texts()
                raise AssertionError(f"no review widget after Review; outputs: {outputs}")
            page.wait_for_timeout(250)
        sources = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .jp-InputArea-editor").all_inner_texts()
        assert any("%distill review tickets" in source for source in sources)

        field = panel.locator("input.jp-Distill-workdir")
        field.fill("no-such-folder")
        field.press("Enter")
        error = panel.locator(".jp-Distill-workdir-error")
        error.wait_for(state="visible")
        assert "run folder 'no-such-folder' does not exist" in error.inner_text()
        field.fill("other-runs")
        field.press("Enter")
        panel.locator('.jp-Distill-run[data-run-id="elsewhere"]').wait_for(state="visible")
        assert error.is_hidden() and field.input_value() == str(other.resolve())
        panel.locator(".jp-Distill-workdir-reset").click()
        done.wait_for(state="visible")
        assert panel.locator(".jp-Distill-workdir-reset").is_hidden()
    finally:  # the folder is the server's state: later tests must see the configured one
        httpx.delete(f"{lab.url}/jupyter-distill/workdir", headers={"Authorization": f"token {TOKEN}"}, timeout=10)


TESTS_DIR = Path(__file__).parent
NOTEBOOK_STATE = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cells = panel?.content?.widgets ?? [];
    return {
        idle: panel?.sessionContext?.session?.kernel?.status === 'idle',
        ran: cells.length > 0 && cells.every(cell => cell.model.type !== 'code' || cell.model.executionCount != null),
    };
}"""


def run_all_cells(lab: Lab, page: Any, name: str, timeout_s: float = UI_TIMEOUT_MS / 1000) -> None:
    """Open ``name`` in a workspace of its own, run every cell, and wait until each has run and the kernel idles."""
    page.goto(lab.page_url(f"/lab/workspaces/{Path(name).stem}/tree/{name}"))
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(state="visible")
    dialog = page.locator(".jp-Dialog")
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(NOTEBOOK_STATE)["idle"]:
        if dialog.count() and dialog.first.is_visible():  # which kernel: take Lab's choice
            dialog.first.locator(".jp-mod-accept").click()
        if time.monotonic() > deadline:
            raise AssertionError(f"the kernel of {name} never became idle")
        page.wait_for_timeout(250)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    while not all(page.evaluate(NOTEBOOK_STATE).values()):
        if time.monotonic() > deadline:
            outputs = page.locator(".jp-Notebook .jp-OutputArea").all_inner_texts()
            raise AssertionError(f"the cells of {name} did not all run; outputs: {outputs}")
        page.wait_for_timeout(250)


def cell_outputs(page: Any, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea-output")


def test_dollar_amounts_in_html_outputs_stay_literal_and_are_never_typeset(lab: Lab, page: Any) -> None:
    """Item 3: JupyterLab typesets `$...$` in HTML outputs and HTML widgets with MathJax; the run
    card's HTML, tables, notices and the review widget keep their dollars as text.

    Raw `$...$` HTML outputs before and after the outputs under test are typeset (checked): MathJax
    runs in this Lab, so its absence in between is the escaping's doing, not a missing typesetter.
    (ipywidgets 8 typesets HTML widgets only through MathJax 2's global, which JupyterLab 4 does not
    load, so the review widget is fenced for other front ends; tests/test_review_widget.py checks it.)
    """
    from jupyter_distill.core.store import PromptRecord, SampleRecord

    store = RunStore(lab.root / "cash-runs")
    store.create_run("cash", {"n_samples": 1})
    store.put_prompts(
        "cash",
        [
            PromptRecord(
                hash="cash-p",
                messages=[{"role": "user", "content": "Is $0.12 more than $3.40?"}],
                row={"expected": "no: $0.12 < $3.40"},
                position=0,
            )
        ],
    )
    store.put_samples(
        [
            SampleRecord(
                key="cash-s",
                prompt_hash="cash-p",
                teacher="t",
                params={},
                sample_index=0,
                text="$0.12 is less than $3.40",
            )
        ]
    )
    store.update_run("cash", status="done", phase="done", summary={"teacher_cost": 0.12, "judge_cost": 3.28})
    under_test = (
        "from IPython.display import HTML, display\n"
        "from jupyter_distill.core.store import RunStore\n"
        "from jupyter_distill.notebook.dashboard import RunSummary\n"
        "from jupyter_distill.notebook.display import Notice, Table\n"
        "from jupyter_distill.notebook.review_widget import ReviewWidget\n"
        "store = RunStore('cash-runs')\n"
        "display(HTML(RunSummary.from_store(store, 'cash').html()))  # the card's HTML fallback\n"
        "display(Table('costs', ['what', 'cost'], [['teacher', '$0.12'], ['total', '$3.40']]))\n"
        "display(Notice('spent $0.12 of $3.40'))\n"
        "ReviewWidget(store, 'cash')"
    )
    (lab.root / "dollars.ipynb").write_text(
        json.dumps(
            notebook(
                [
                    code_cell(
                        "from IPython.display import HTML\nHTML(\"<div class='jd-test-math'>$x^2 + 1$</div>\")",
                        ident="c0",
                    ),
                    code_cell(under_test, ident="c1"),
                    code_cell(
                        "HTML(\"<div class='jd-test-math-after'>$y^2$</div>\")",
                        ident="c2",
                    ),
                ]
            )
        )
    )
    run_all_cells(lab, page, "dollars.ipynb")
    page.locator(".jd-review").get_by_text("Is $0.12 more than $3.40?").wait_for(state="visible")
    for control in (".jd-test-math", ".jd-test-math-after"):  # MathJax typesets raw dollars in this Lab
        page.locator(f"{control} mjx-container").first.wait_for(state="attached", timeout=60_000)

    outputs = cell_outputs(page, 1)
    shown = "\n".join(outputs.all_inner_texts())
    for literal in (
        "$0.1200 for",  # the card's teacher cost row
        "$3.2800",  # judge cost
        "$3.4000",  # total
        "$0.12",  # the table
        "spent $0.12 of $3.40",  # the notice
        "Is $0.12 more than $3.40?",  # the review widget: prompt, reference, candidate
        "no: $0.12 < $3.40",
        "$0.12 is less than $3.40",
    ):
        assert literal in shown, f"{literal!r} is not shown as text: {shown}"
    assert outputs.locator("mjx-container, .MathJax, mjx-math").count() == 0


def test_third_party_output_of_a_run_lands_in_its_dashboard_log_and_in_no_cell(lab: Lab, page: Any) -> None:
    """Item 2: what libraries print on a run's thread goes to the run's collapsible log, never to a cell.

    The run is the product's ``Run.run`` (its capture, its log events, the magics' dashboard) with
    stand-in stages (tests/noisy_run.py) that write a tqdm bar, stderr text, a print, a warning, a
    logging record and a worker thread's print, while the *next* cell executes: without the
    capture, ipykernel would put all of it into that cell.
    """
    from noisy_run import LINES

    (lab.root / "noisy.ipynb").write_text(
        json.dumps(
            notebook(
                [
                    code_cell(
                        f"import sys\nsys.path.insert(0, {str(TESTS_DIR)!r})\nimport noisy_run\nnoisy_run.install()\n"
                        "%load_ext jupyter_distill\n%config DistillMagics.workdir = 'noisy-runs'",
                        ident="c0",
                    ),
                    code_cell("%%distill noisy\ndataset: [{prompt: a}, {prompt: b}]\nsteps: 3", ident="c1"),
                    code_cell(
                        "noisy_run.gate.set()  # the run writes its noise while this cell executes\n"
                        "assert noisy_run.noise_done.wait(60)\nprint('cell 2 printed this')",
                        ident="c2",
                    ),
                    code_cell("print('cell 3 printed this')", ident="c3"),
                ]
            )
        )
    )
    run_all_cells(lab, page, "noisy.ipynb")
    wait_for(lambda: (RunStore(lab.root / "noisy-runs").get_run("noisy") or {}).get("status") == "done", 60, "the run")

    assert cell_outputs(page, 0).count() == 0
    assert [t.strip() for t in cell_outputs(page, 2).all_inner_texts()] == ["cell 2 printed this"]
    assert [t.strip() for t in cell_outputs(page, 3).all_inner_texts()] == ["cell 3 printed this"]
    notebook_node = page.locator(".jp-Notebook")
    assert notebook_node.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').count() == 0

    dashboard = cell_outputs(page, 1)
    assert dashboard.count() == 1  # the dashboard, and nothing the run printed beside it
    log = dashboard.locator(".jupyter-widget-Collapse, .p-Collapse, .lm-Collapse, .widget-accordion").filter(
        has_text="log ("
    )
    log.first.wait_for(state="visible", timeout=30_000)
    title = log.first.locator(".jupyter-widget-Collapse-header, .p-Collapse-header, .lm-Collapse-header").first
    assert "log (" in title.inner_text()
    title.click()  # collapsed by default: open it to read the lines
    body = log.first.locator("pre")
    body.wait_for(state="visible", timeout=30_000)
    logged = body.inner_text()
    for key, line in LINES.items():
        assert line in logged, f"{key}: {line!r} is not in the run's log: {logged}"
    assert "[stderr]" in logged and "[stdout]" in logged


def test_train_on_a_finished_runs_review_offers_a_resume_and_the_click_starts_it(lab: Lab, page: Any) -> None:
    """Item 4: "Train on what is reviewed" under `%distill review NAME` of an ended run starts nothing
    and offers a resume; clicking "Resume the run with this review" starts it as the magics' run, with
    its dashboard inside the widget and a feedback line that says so.

    Only the run's stages are stand-ins (tests/distill_fakes.py, in the kernel): the widget, the
    magics and the store are the product's.
    """
    workdir = lab.root / "retrain-runs"
    rows = lab.root / "retrain-rows.jsonl"
    rows.write_text('{"prompt": "ticket 0"}\n{"prompt": "ticket 1"}\n')
    store = build_fixture_store(workdir)
    store.create_run("tickets", {"dataset": str(rows), "teacher": "t", "student": "smollm2-135m", "review": True})
    (lab.root / "retrain.ipynb").write_text(
        json.dumps(
            notebook(
                [
                    code_cell(
                        f"import sys\nsys.path.insert(0, {str(TESTS_DIR)!r})\nimport distill_fakes\n"
                        "distill_fakes.install()\n%load_ext jupyter_distill\n"
                        "%config DistillMagics.workdir = 'retrain-runs'",
                        ident="c0",
                    ),
                    code_cell("%distill review tickets", ident="c1"),
                ]
            )
        )
    )
    run_all_cells(lab, page, "retrain.ipynb")
    review = page.locator(".jd-review")
    review.locator(".jd-review-keys input").click()
    page.keyboard.type("2")  # a decision made after the run ended
    first_prompt = fixture_prompts()[0]
    wait_for(lambda: store.get_reviews("tickets"), 60, "the decision in the store")

    review.get_by_role("button", name="Train on what is reviewed").click()
    choice = review.get_by_text("nothing waits for this review here, so nothing was started")
    choice.wait_for(state="visible")
    assert "has ended (status: done)" in choice.inner_text() and "1 of 3 prompts" in choice.inner_text()
    assert store.get_run("tickets")["status"] == "done"  # the button itself started nothing

    # a real click (not a dispatched event): the key box loses the focus on mouse down, and nothing
    # above the button may move before mouse up, or the click lands beside it and does nothing
    review.get_by_role("button", name="Resume the run with this review").click()
    said = review.get_by_text("Run tickets resumes in the background with review off")
    try:
        said.wait_for(state="visible", timeout=60_000)
    except Exception as exc:
        raise AssertionError(f"no resume feedback; the widget ends with: {review.inner_text()[-1500:]}") from exc
    assert "Watch it in its dashboard below this review" in said.inner_text()
    review.get_by_role("button", name="Resumed with this review").wait_for(state="visible")
    assert review.get_by_role("button", name="Resumed with this review").is_disabled()
    wait_for(lambda: store.get_run("tickets")["config"].get("review") is False, 60, "the resumed run's config")
    wait_for(lambda: store.get_run("tickets")["status"] == "done", 60, "the resumed run to end")
    # the resumed run's dashboard is inside the widget, and its Stop button now says how it ended
    review.get_by_role("button", name="Done").wait_for(state="visible")
    assert [(r["prompt_hash"], r["action"]) for r in store.get_reviews("tickets")] == [(first_prompt.hash, "choose")]
