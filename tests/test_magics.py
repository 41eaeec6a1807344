"""``%%distill`` / ``%distill`` in a real IPython ``InteractiveShell``.

Only the heavy method is patched: ``DistillMagics.launch`` where a test checks the config a
cell produces, or ``Run.run`` (tests/distill_fakes.py) where a test needs a whole run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from distill_fakes import fake_run
from IPython.core.interactiveshell import InteractiveShell

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.errors import ConfigError, DistillError
from jupyter_distill.core.runcard import RUN_CARD_SCHEMA
from jupyter_distill.notebook.dashboard import RUN_MIME_TYPE, RunSummary, UnknownRunError
from jupyter_distill.notebook.magics import (
    DistillMagics,
    EstimateCommand,
    ExportCommand,
    MagicUsageError,
    ResumeCommand,
    RunCommand,
    StatusCommand,
    Table,
    parse_cell_line,
    parse_line,
)


@pytest.fixture(scope="module")
def shell() -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_distill")
    yield ip
    ip.run_line_magic("unload_ext", "jupyter_distill")


@pytest.fixture
def magics(shell: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DistillMagics:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    m = next(c for c in shell.configurables if isinstance(c, DistillMagics))
    shell.run_line_magic("config", f"DistillMagics.workdir = {str(tmp_path / 'wd')!r}")
    shell.run_line_magic("config", "DistillMagics.default_teacher = 'local:smollm2-135m'")
    shell.run_line_magic("config", "DistillMagics.refresh_interval = 0.05")
    m.runs.clear()
    m.configs.clear()
    m.dashboards.clear()
    m._last = None
    return m


@pytest.fixture
def captured(magics: DistillMagics, monkeypatch: pytest.MonkeyPatch) -> list[DistillConfig]:
    """Patch the heavy part of %%distill (starting the run) and keep the config it would run."""
    configs: list[DistillConfig] = []

    def launch(self: DistillMagics, config: DistillConfig, *, resume: bool, wait: bool) -> None:
        configs.append(config)

    monkeypatch.setattr(DistillMagics, "launch", launch)
    return configs


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "tickets.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"ticket {i}: refund please"}) + "\n" for i in range(10)))
    return path


def run_cell(shell: InteractiveShell, cell: str) -> Any:
    result = shell.run_cell(cell, store_history=False)
    return result


# ------------------------------------------------------------------ registration and parsing
def test_extension_registers_line_and_cell_magic(shell: InteractiveShell) -> None:
    assert "distill" in shell.magics_manager.magics["line"]
    assert "distill" in shell.magics_manager.magics["cell"]
    shell.run_line_magic("load_ext", "jupyter_distill")  # loading twice keeps one instance
    assert sum(isinstance(c, DistillMagics) for c in shell.configurables) == 1


def test_cell_line_parses_into_a_typed_command() -> None:
    command = parse_cell_line("tickets --steps 30 --n-samples 6 --no-enforce-distillable --quantize 'q8_0' --wait")
    assert isinstance(command, RunCommand)
    assert command.type == "run"
    assert command.name == "tickets"
    assert command.overrides == {"steps": 30, "n_samples": 6, "enforce_distillable": False, "quantize": "q8_0"}
    assert command.wait and not command.estimate and not command.fresh
    assert parse_cell_line("").overrides == {}  # nothing typed, nothing overridden


def test_line_subcommands_parse_into_their_models() -> None:
    assert parse_line("status tickets") == StatusCommand(name="tickets")
    assert parse_line("resume tickets --wait") == ResumeCommand(name="tickets", wait=True)
    assert parse_line('export tickets --quantize q8_0 --alias "my-model"') == ExportCommand(
        name="tickets", quantize="q8_0", alias="my-model"
    )
    estimate = parse_line("estimate --dataset 'my data.jsonl' --n-samples 8")
    assert isinstance(estimate, EstimateCommand)
    assert estimate.overrides == {"dataset": "my data.jsonl", "n_samples": 8}


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("estimate --nsamples 3", "Did you mean --n-samples?"),
        ("estimate --steps many", "invalid int value: 'many'"),
        ("resume", "the following arguments are required: name"),
        ("frobnicate", "invalid choice: 'frobnicate'"),
        ("status 'unclosed", "close the quote"),
    ],
)
def test_bad_arguments_raise_usage_errors(line: str, needle: str) -> None:
    with pytest.raises(MagicUsageError) as info:
        parse_line(line)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "line", ["--help", "status --help", "stop --help", "resume --help", "review --help", "runs --help",
             "aliases --help", "estimate --help", "export --help", "wait --help"],
)  # fmt: skip
def test_every_line_magic_has_help(magics: DistillMagics, shell: InteractiveShell, line: str, capsys: Any) -> None:
    result = run_cell(shell, f"%distill {line}")
    assert result.error_in_exec is None
    out = capsys.readouterr().out
    assert "usage: %distill" in out
    if line.startswith("estimate"):
        assert "--n-samples INT" in out and "Teacher candidates per prompt." in out


def test_cell_magic_help(magics: DistillMagics, shell: InteractiveShell, capsys: Any, captured: list) -> None:
    result = run_cell(shell, "%%distill --help\nsteps: 3\n")
    assert result.error_in_exec is None
    assert "usage: %%distill" in capsys.readouterr().out
    assert captured == []  # help never starts a run


# ------------------------------------------------------------------ body, flags, traitlets
def test_flags_override_the_body_and_name_is_positional(
    magics: DistillMagics, shell: InteractiveShell, captured: list[DistillConfig], dataset: Path
) -> None:
    result = run_cell(
        shell,
        f"%%distill tickets --steps 3 --top-k 1\ndataset: {dataset}\nsteps: 40\ntop_k: 2\nn_samples: 4\nname: other\n",
    )
    assert result.error_in_exec is None
    (config,) = captured
    assert config.name == "tickets"
    assert config.steps == 3 and config.top_k == 1  # flags win
    assert config.n_samples == 4 and config.dataset == str(dataset)  # body kept


def test_traitlets_configure_defaults_and_the_body_beats_them(
    magics: DistillMagics, shell: InteractiveShell, captured: list[DistillConfig], tmp_path: Path
) -> None:
    run_cell(shell, f"%config DistillMagics.workdir = {str(tmp_path / 'elsewhere')!r}")
    run_cell(shell, "%config DistillMagics.default_student = 'qwen3-0.6b'")
    try:
        run_cell(shell, "%%distill a\nsteps: 2\n")
        run_cell(shell, "%%distill b\nstudent: smollm2-135m\nworkdir: mine\n")
        run_cell(shell, "%%distill c --student smollm2-360m\nsteps: 2\n")
    finally:
        run_cell(shell, "%config DistillMagics.default_student = 'smollm2-135m'")
    a, b, c = captured
    assert a.workdir == str(tmp_path / "elsewhere") and a.student == "qwen3-0.6b"
    assert a.teacher == "local:smollm2-135m"
    assert b.workdir == "mine" and b.student == "smollm2-135m"
    assert c.student == "smollm2-360m"
    assert magics.workdir == str(tmp_path / "elsewhere")


def test_bad_traitlet_value_is_refused(magics: DistillMagics) -> None:
    with pytest.raises(ConfigError, match=r"between 0\.05 and 5"):
        magics.refresh_interval = 100.0


def test_kernel_variables_in_the_body(
    magics: DistillMagics, shell: InteractiveShell, captured: list[DistillConfig]
) -> None:
    def verify(row: dict, response: str) -> bool:
        return "ok" in response

    shell.user_ns["rows"] = [{"prompt": "a"}, {"prompt": "b"}]
    shell.user_ns["verify"] = verify
    shell.user_ns["settings"] = type("S", (), {"steps": 7})()
    result = run_cell(shell, "%%distill v\ndataset: $rows\njudge: $verify\nsteps: $settings.steps\nrubric: $$literal\n")
    assert result.error_in_exec is None
    (config,) = captured
    assert config.dataset == [{"prompt": "a"}, {"prompt": "b"}]
    assert config.judge is verify
    assert config.steps == 7
    assert config.rubric == "$literal"


def test_undefined_kernel_variable_names_key_and_line(
    magics: DistillMagics, shell: InteractiveShell, captured: list, capsys: Any
) -> None:
    shell.user_ns.pop("nope", None)
    result = run_cell(shell, "%%distill v\nsteps: 2\njudge: $nope\n")
    assert isinstance(result.error_in_exec, ConfigError)
    message = str(result.error_in_exec)
    assert "'judge' (line 2)" in message and "`nope` is not defined" in message
    assert captured == []


# ------------------------------------------------------------------ clean errors
@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ("steps: 3\nn_sample: 4\n", ["unknown setting 'n_sample' on line 2", "Did you mean 'n_samples'?"]),
        ("steps: 3\nteacher: [unclosed\n", ["YAML error in the cell body on line 3"]),
        ("n_samples: 2\ntop_k: 5\n", ["top_k", "must be <= n_samples"]),
        ("steps: 3\nquantize: q3_banana\n", ["'quantize' (line 2)", "q3_banana", "q4_k_m"]),
    ],
)
def test_yaml_errors_point_at_line_and_key_without_traceback(
    magics: DistillMagics, shell: InteractiveShell, captured: list, capsys: Any, body: str, needles: list[str]
) -> None:
    result = run_cell(shell, f"%%distill broken\n{body}")
    assert isinstance(result.error_in_exec, ConfigError)
    out = capsys.readouterr().out
    for needle in needles:
        assert needle in out
    assert "Traceback" not in out and "File " not in out  # the message only
    assert captured == []


def test_flag_value_errors_are_clean_too(magics: DistillMagics, shell: InteractiveShell, captured: list) -> None:
    result = run_cell(shell, "%%distill x --alias 'a/b'\nsteps: 2\n")
    assert isinstance(result.error_in_exec, ConfigError)
    assert "alias" in str(result.error_in_exec) and "path separators" in str(result.error_in_exec)


def test_non_distill_errors_keep_their_traceback(shell: InteractiveShell, capsys: Any) -> None:
    result = run_cell(shell, "1/0")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    assert "Traceback" in capsys.readouterr().out  # no kernel-wide custom exception handler


# ------------------------------------------------------------------ estimate
def test_estimate_line_magic_and_cell_flag(
    magics: DistillMagics, shell: InteractiveShell, dataset: Path, captured: list
) -> None:
    estimate = shell.run_line_magic("distill", f"estimate --dataset {dataset} --n-samples 3 --steps 10")
    assert estimate.prompts == 10 and estimate.teacher_requests == 30
    bundle = estimate._repr_mimebundle_()
    assert "text/html" in bundle and "teacher requests" in bundle["text/plain"]
    from_cell = shell.run_cell_magic("distill", "quick --estimate --n-samples 2", f"dataset: {dataset}\nn_samples: 4\n")
    assert from_cell.teacher_requests == 20  # the flag beat the body
    assert captured == []  # estimating never starts a run


# ------------------------------------------------------------------ whole runs (Run.run patched)
@pytest.fixture
def fake_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_distill.pipeline import run as pipeline

    monkeypatch.setattr(pipeline.Run, "run", fake_run)
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "2.5")


def test_run_cell_returns_at_once_then_wait_status_runs(
    magics: DistillMagics, shell: InteractiveShell, fake_pipeline: None, dataset: Path, capsys: Any
) -> None:
    result = run_cell(shell, f"%%distill tickets\ndataset: {dataset}\nsteps: 6\nalias: tickets-v1\n")
    assert result.error_in_exec is None
    assert magics.runs["tickets"].running  # the cell returned; the 2.5 s of training goes on in the background
    assert "RunDashboard('tickets'" in capsys.readouterr().out  # the dashboard was displayed

    busy = run_cell(shell, f"%%distill tickets\ndataset: {dataset}\n")
    assert "still running" in str(busy.error_in_exec)

    summary = shell.run_line_magic("distill", "wait tickets")
    assert isinstance(summary, RunSummary)
    assert summary.status == "done" and summary.alias == "tickets-v1"
    assert summary.student == "fake-student"
    assert summary.metrics["loss"]["last"] == pytest.approx(2.0 / 6)
    bundle = summary._repr_mimebundle_()
    payload = bundle[RUN_MIME_TYPE]
    assert payload["version"] == 1 and payload["id"] == "tickets"
    jsonschema.validate(payload, RUN_CARD_SCHEMA)
    rates = {label: rate["pass_rate"] for label, rate in payload["pass_rates"].items()}
    assert rates == {"student_before": 0.5, "teacher_best_of_n": 1.0, "student_after": 1.0}
    assert "jd.completion(model='tickets-v1'" in payload["snippet"] and "prompt 8" in payload["snippet"]
    assert "tickets-v1" in bundle["text/html"]

    dashboard = magics.dashboards["tickets"]
    assert dashboard.finalized
    assert all(dashboard.state.phases[p].status == "done" for p in dashboard.state.phases)
    assert "tickets-v1" in dashboard.summary_card.value

    status = shell.run_line_magic("distill", "status")  # no NAME: the latest run
    assert status.name == "tickets" and status.status == "done"
    runs = shell.run_line_magic("distill", "runs")
    assert isinstance(runs, Table) and runs.rows[0][0] == "tickets" and runs.rows[0][5] == "100%"
    assert "tickets" in runs._repr_mimebundle_()["text/html"]


def test_stop_and_resume(
    magics: DistillMagics, shell: InteractiveShell, fake_pipeline: None, dataset: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "20")
    monkeypatch.setenv("FAKE_STEPS", "200")
    shell.run_cell_magic("distill", "slow", f"dataset: {dataset}\n")
    run = magics.runs["slow"]
    deadline = time.monotonic() + 10
    while run.state.phase != "training" and time.monotonic() < deadline:
        time.sleep(0.02)
    notice = shell.run_line_magic("distill", "stop slow")
    assert "stopping 'slow'" in repr(notice)
    summary = shell.run_line_magic("distill", "wait slow --timeout 10")
    assert summary.status == "stopped"
    assert magics.dashboards["slow"].state.status == "stopped"
    assert repr(shell.run_line_magic("distill", "stop")) == "no run is running in this kernel; nothing to stop."

    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "0")
    monkeypatch.setenv("FAKE_STEPS", "3")
    shell.run_line_magic("distill", "resume slow --wait")
    assert magics.runs["slow"] is not run  # a new Run on the same store and config
    assert shell.run_line_magic("distill", "status slow").status == "done"


def test_resume_from_another_kernel_needs_a_storable_config(
    magics: DistillMagics, shell: InteractiveShell, fake_pipeline: None
) -> None:
    shell.user_ns["rows"] = [{"prompt": "x"}]
    shell.run_cell_magic("distill", "objs --wait", "dataset: $rows\n")
    magics.configs.clear()  # as if the kernel had restarted
    magics.runs.clear()
    result = run_cell(shell, "%distill resume objs")
    assert isinstance(result.error_in_exec, ConfigError)
    assert "re-run its %%distill cell" in str(result.error_in_exec)


def test_unknown_run_names_are_clean_errors(magics: DistillMagics, shell: InteractiveShell) -> None:
    for line in ("status ghost", "review ghost", "export ghost", "wait ghost"):
        result = run_cell(shell, f"%distill {line}")
        assert isinstance(result.error_in_exec, UnknownRunError), line
        assert "no run named 'ghost'" in str(result.error_in_exec)
    empty = run_cell(shell, "%distill status")
    assert isinstance(empty.error_in_exec, DistillError) and "has no runs yet" in str(empty.error_in_exec)


def test_aliases_lists_the_registry(magics: DistillMagics, shell: InteractiveShell, tmp_path: Path) -> None:
    from jupyter_distill.serving.registry import set_alias

    empty = shell.run_line_magic("distill", "aliases")
    assert empty.rows == [] and "no aliases yet" in repr(empty)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    try:
        set_alias("tiny", backend="gguf", model_path=str(gguf))
    except DistillError as exc:  # the registry may validate the file more deeply
        pytest.skip(f"registry refused a stub GGUF: {exc}")
    table = shell.run_line_magic("distill", "aliases")
    assert table.rows[0][:2] == ["tiny", "gguf"]
    assert "tiny" in table._repr_mimebundle_()["text/html"]


def test_export_without_adapter_explains(
    magics: DistillMagics, shell: InteractiveShell, fake_pipeline: None, monkeypatch: Any
) -> None:
    monkeypatch.setenv("FAKE_STEPS", "2")
    shell.run_cell_magic("distill", "exp --wait", "dataset: [{prompt: a}]\n")
    store = magics.runs["exp"].store
    store.conn.execute("DELETE FROM artifacts WHERE run_id='exp'")
    result = run_cell(shell, "%distill export exp")
    assert "has no trained adapter yet" in str(result.error_in_exec)


def test_review_runs_pause_and_wait_refuses_to_deadlock(
    magics: DistillMagics, shell: InteractiveShell, fake_pipeline: None
) -> None:
    from jupyter_distill.notebook.magics import ReviewPendingError

    shell.run_cell_magic("distill", "rv", "dataset: [{prompt: a}, {prompt: b}]\nreview: true\n")
    waiting = shell.run_line_magic("distill", "wait rv --until review --timeout 20")
    assert waiting.status == "waiting-review"
    dashboard = magics.dashboards["rv"]
    deadline = time.monotonic() + 5
    while not dashboard.review_slot.children and time.monotonic() < deadline:
        time.sleep(0.02)
    assert type(dashboard.review_slot.children[0]).__name__ == "ReviewWidget"  # shown inside the dashboard

    result = run_cell(shell, "%distill wait rv")
    assert isinstance(result.error_in_exec, ReviewPendingError)
    assert "waiting for your review" in str(result.error_in_exec)

    widget = shell.run_line_magic("distill", "review rv")
    assert type(widget).__name__ == "ReviewWidget"
    widget.continue_training()  # the widget's train button releases the run
    assert shell.run_line_magic("distill", "wait rv --timeout 20").status == "done"


def test_ipython_config_file_settings_apply_at_load(shell: InteractiveShell, tmp_path: Path) -> None:
    """`c.DistillMagics.workdir = ...` in ipython_config.py reaches the magics (config=True traitlets)."""
    from traitlets.config import Config

    config = Config()
    config.DistillMagics.workdir = str(tmp_path / "from-config")
    config.DistillMagics.show_console = True
    saved = shell.config
    shell.config = config
    try:
        shell.run_line_magic("reload_ext", "jupyter_distill")
        magics = next(c for c in shell.configurables if isinstance(c, DistillMagics))
        assert magics.workdir == str(tmp_path / "from-config") and magics.show_console is True
    finally:
        shell.config = saved
        shell.run_line_magic("reload_ext", "jupyter_distill")
    assert next(c for c in shell.configurables if isinstance(c, DistillMagics)).show_console is False


# ------------------------------------------------------------------ honest states
def test_missing_dataset_path_fails_the_cell_before_any_dashboard(
    magics: DistillMagics, shell: InteractiveShell, fake_pipeline: None, tmp_path: Path, capsys: Any
) -> None:
    from jupyter_distill.core.errors import DatasetError

    result = run_cell(shell, "%%distill typo\ndataset: data/no-such-file.jsonl\n")
    error = result.error_in_exec
    assert isinstance(error, DatasetError)  # a cell error: "Run all" stops here
    assert error.field == "dataset" and error.value == "data/no-such-file.jsonl"
    assert "does not exist" in str(error) and str(Path.cwd() / "data" / "no-such-file.jsonl") in str(error)
    assert error._render_traceback_()  # shown as its message, without a traceback
    assert magics.runs == {} and magics.dashboards == {}  # no run started, no dashboard drawn
    assert "RunDashboard" not in capsys.readouterr().out

    folder = tmp_path / "a-folder.jsonl"
    folder.mkdir()
    result = run_cell(shell, f"%%distill typo\ndataset: {folder}\n")
    assert isinstance(result.error_in_exec, DatasetError) and "is not a file" in str(result.error_in_exec)
    assert magics.dashboards == {}


def test_stop_notice_names_the_resume_magic(
    magics: DistillMagics, shell: InteractiveShell, fake_pipeline: None, dataset: Path, monkeypatch: Any
) -> None:
    from jupyter_distill.pipeline.run import resume_hint

    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "20")
    monkeypatch.setenv("FAKE_STEPS", "200")
    shell.run_cell_magic("distill", "halt", f"dataset: {dataset}\n")
    notice = shell.run_line_magic("distill", "stop halt")
    assert "`%distill resume halt`" in repr(notice)
    summary = shell.run_line_magic("distill", "wait halt --timeout 10")
    assert summary.status == "stopped"
    assert "`%distill resume halt`" in resume_hint("halt")


def _template(name: str) -> str:
    """A string constant of the lab extension (the cells its "Insert %%distill cell" command adds)."""
    import re

    source = (Path(__file__).resolve().parents[1] / "labextension" / "src" / "format.ts").read_text()
    match = re.search(rf"export const {name} = `([^`]*)`;", source)
    assert match is not None, f"{name} is not a plain template literal in format.ts"
    assert "${" not in match.group(1)  # no interpolation: the text is what the user gets
    return match.group(1)


def test_inserted_template_runs_as_inserted(
    magics: DistillMagics, shell: InteractiveShell, fake_pipeline: None, monkeypatch: Any, tmp_path: Path
) -> None:
    """The lab extension's setup and %%distill cells, run in a kernel as the command inserts them."""
    from jupyter_distill.core.data import load_dataset
    from jupyter_distill.core.examples import verify_extraction

    monkeypatch.chdir(tmp_path)  # a notebook anywhere: the template needs no file next to it
    setup = run_cell(shell, _template("DISTILL_SETUP_TEMPLATE"))
    assert setup.error_in_exec is None
    cell = _template("DISTILL_TEMPLATE")
    assert cell.startswith("%%distill my-first-run\n")
    result = run_cell(shell, cell)
    assert result.error_in_exec is None
    config = magics.configs["my-first-run"]
    assert config.judge is verify_extraction
    assert config.teacher == "local:smollm2-135m" and config.student == "smollm2-135m"
    assert config.steps <= 30 and config.n_samples <= 4 and config.max_tokens <= 64  # small defaults
    assert 10 <= len(load_dataset(config.dataset)) <= 32
    summary = shell.run_line_magic("distill", "wait my-first-run --timeout 30")
    assert summary.status == "done"


def test_runs_aliases_and_notices_render_as_tables_not_json(
    magics: DistillMagics, shell: InteractiveShell, fake_pipeline: None, dataset: Path
) -> None:
    """JupyterLab prefers application/json to HTML (a collapsed JSON tree): the bundles hold a table
    and its text; the records stay on ``payload`` for code."""
    from jupyter_distill.notebook.htmltext import NO_MATH_CLASSES
    from jupyter_distill.notebook.magics import Notice

    shell.run_cell_magic("distill", "tab --wait", f"dataset: {dataset}\n")
    for line in ("runs", "aliases"):
        table = shell.run_line_magic("distill", line)
        bundle = table._repr_mimebundle_()
        assert set(bundle) == {"text/plain", "text/html"}, line
        assert NO_MATH_CLASSES in bundle["text/html"], line
    runs = shell.run_line_magic("distill", "runs")
    html_table = runs._repr_mimebundle_()["text/html"]
    assert "<table>" in html_table and "<th style='text-align:left'>status</th>" in html_table
    assert "<td style='text-align:left'>tab</td>" in html_table
    assert runs.payload[0]["id"] == "tab"  # the raw records, for code

    priced = Table(title="costs", columns=["what", "usd"], rows=[["teacher", "$0.25"], ["judge", "$0.50"]])
    html_priced = priced._repr_mimebundle_()["text/html"]
    assert "$" not in html_priced and "&#36;0.25" in html_priced  # no $...$ pair for MathJax to typeset
    assert "$0.25" in repr(priced)  # the text form is untouched
    notice = Notice("spent $1 of $2")._repr_mimebundle_()
    assert "$" not in notice["text/html"] and notice["text/plain"] == "spent $1 of $2"


def test_python_api_review_run_in_a_kernel_refuses_a_missing_dataset_before_its_dashboard(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import jupyter_distill as jd
    from jupyter_distill import api
    from jupyter_distill.core.errors import DatasetError
    from jupyter_distill.notebook.dashboard import RunDashboard

    drawn: list[RunDashboard] = []
    monkeypatch.setattr(api, "_in_kernel", lambda: True)
    monkeypatch.setattr(RunDashboard, "display", lambda self: drawn.append(self))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        jd.distill(dataset="gone.jsonl", review=True, workdir=str(tmp_path / "wd"))
    assert drawn == []


def test_status_card_keeps_costs_literal_in_html(
    magics: DistillMagics, shell: InteractiveShell, fake_pipeline: None, dataset: Path
) -> None:
    """`%distill status` is the run card: HTML and text beside the card's MIME type, `$` kept literal."""
    from jupyter_distill.notebook.htmltext import NO_MATH_CLASSES

    shell.run_cell_magic("distill", "priced --wait", f"dataset: {dataset}\n")
    magics.runs["priced"].store.update_run("priced", summary={"teacher_cost": 0.25})
    bundle = shell.run_line_magic("distill", "status priced")._repr_mimebundle_()
    assert {"text/plain", "text/html", RUN_MIME_TYPE} <= set(bundle)
    assert "&#36;0.25" in bundle["text/html"] and "$" not in bundle["text/html"]
    assert NO_MATH_CLASSES in bundle["text/html"]
