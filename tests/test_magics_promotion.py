"""``%distill promote|rollback|history`` in a real IPython shell: a real tiny exported GGUF against an
alias served by a real local OpenAI-compatible server, as ``tests/test_promotion.py`` does for ``jd.promote``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from tiny_models import CHECK_PROMPTS, add_lora_adapter, build_tiny_llama

from jupyter_distill.core.errors import AliasError, ConfigError
from jupyter_distill.core.store import PromptRecord, RunStore
from jupyter_distill.export.gguf import export_gguf
from jupyter_distill.notebook.magics import (
    DistillMagics,
    HistoryCommand,
    MagicUsageError,
    Notice,
    PromoteCommand,
    PromotionRefused,
    RollbackCommand,
    Table,
    parse_line,
)
from jupyter_distill.pipeline.promote import PromotionReport
from jupyter_distill.serving import hf_backend, registry


@pytest.fixture(scope="module")
def shell() -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_distill")
    yield ip
    ip.run_line_magic("unload_ext", "jupyter_distill")


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("magic-promotion")
    base = build_tiny_llama(root / "base")
    add_lora_adapter(base, root / "adapter")
    result = export_gguf(
        root / "adapter", root / "export", quantize="q8_0", check_prompts=CHECK_PROMPTS[:1], check_tokens=4
    )
    return result.gguf


@pytest.fixture
def home(shell: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh alias registry and a magics workdir holding run 'prom': 3 held-out prompts and its GGUF."""
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    shell.run_line_magic("config", f"DistillMagics.workdir = {str(tmp_path / 'wd')!r}")
    magics = next(c for c in shell.configurables if isinstance(c, DistillMagics))
    magics.runs.clear()
    yield tmp_path / "home"
    hf_backend.release_all()


def _seed_run(workdir: Path, gguf: Path) -> None:
    store = RunStore(workdir)
    store.create_run("prom", {"teacher": "t"})
    prompts = [
        PromptRecord(f"q{i}", [{"role": "user", "content": f"question {i}"}], {}, i, "heldout") for i in range(3)
    ]
    store.put_prompts("prom", prompts)
    store.put_artifact("prom", "gguf", gguf)
    store.close()


def test_promotion_lines_parse_into_their_commands() -> None:
    assert parse_line("promote prom --alias prod --min-pass-rate 0.5 --max-latency-ms 250") == PromoteCommand(
        name="prom", alias="prod", min_pass_rate=0.5, max_latency_ms=250.0
    )
    assert parse_line("promote prom --alias prod --min-gain none --judge verify") == PromoteCommand(
        name="prom", alias="prod", min_gain=None, judge="verify"
    )
    assert parse_line("promote prom --alias prod").min_gain == 0.0  # jd.promote's default: not worse
    assert parse_line("rollback prod") == RollbackCommand(alias="prod")
    assert parse_line("history prod") == HistoryCommand(alias="prod")
    with pytest.raises(MagicUsageError, match="required: --alias"):
        parse_line("promote prom")
    with pytest.raises(MagicUsageError, match="Did you mean --min-pass-rate"):
        parse_line("promote prom --alias prod --min-passrate 0.5")
    with pytest.raises(MagicUsageError, match="invalid float value: 'high'"):
        parse_line("promote prom --alias prod --max-latency-ms high")


@pytest.mark.parametrize("line", ["promote --help", "rollback --help", "history --help"])
def test_promotion_commands_have_help(shell: InteractiveShell, home: Path, line: str, capsys: Any) -> None:
    result = shell.run_cell(f"%distill {line}", store_history=False)
    assert result.error_in_exec is None
    out = capsys.readouterr().out
    assert "usage: %distill" in out
    if line.startswith("promote"):
        assert "--min-pass-rate F" in out and "--max-latency-ms F" in out and "--min-gain F" in out


def test_a_refused_promotion_shows_the_table_and_fails_the_cell(
    shell: InteractiveShell, home: Path, tmp_path: Path, gguf: Path, openai_server: Any, capsys: Any
) -> None:
    _seed_run(tmp_path / "wd", gguf)
    registry.set_alias("prod", backend="openai-compatible", base_url=openai_server.url, model="teacher-model")
    before = (home / "aliases.json").read_bytes()
    shell.user_ns["from_server"] = lambda row, response: 1.0 if response.startswith("answer ") else 0.0
    result = shell.run_cell(
        "%distill promote prom --alias prod --min-pass-rate 0.5 --judge from_server", store_history=False
    )
    error = result.error_in_exec
    assert isinstance(error, PromotionRefused)  # a cell error: "Run all" stops here
    assert error.field == "min_pass_rate" and "0.00 >= 0.50" in str(error.value)
    assert "min_gain" in str(error) and "'prod' is unchanged" in str(error) and "--min-pass-rate" in str(error)
    assert error._render_traceback_()  # shown as its message, without a traceback
    assert (home / "aliases.json").read_bytes() == before  # nothing written
    out = capsys.readouterr().out
    assert "candidate" in out and "current" in out and "FAIL min_pass_rate" in out  # the comparison, shown first


def test_promote_then_history_and_rollback(
    shell: InteractiveShell, home: Path, tmp_path: Path, gguf: Path, openai_server: Any
) -> None:
    _seed_run(tmp_path / "wd", gguf)
    old = registry.set_alias("prod", backend="openai-compatible", base_url=openai_server.url, model="teacher-model")
    shell.user_ns["always"] = lambda row, response: 1.0
    table = shell.run_line_magic("distill", "promote prom --alias prod --min-pass-rate 0.5 --judge always")
    assert isinstance(table, Table) and isinstance(table.payload, PromotionReport) and table.payload.promoted
    assert [row[0] for row in table.rows] == ["candidate", "current"]
    assert table.columns[-1] == "cost / 1k calls" and table.rows[0][-1] == "$0.0000" and table.rows[1][-1] == "unknown"
    assert any("now serves run 'prom' (version 2)" in note for note in table.notes)
    html = table._repr_mimebundle_()["text/html"]
    assert "&#36;0.0000" in html and "$" not in html  # the cost is text, not a formula
    assert registry.get_alias("prod")["model_path"] == str(gguf.resolve())

    history = shell.run_line_magic("distill", "history prod")
    assert isinstance(history, Table)
    assert [(row[0], row[1]) for row in history.rows] == [(1, "set"), (2, "promote (current)")]
    assert history.rows[1][3] == f"gguf {gguf.name}" and history.rows[1][4] == "prom"
    assert "candidate pass rate 1.00" in history.rows[1][5]

    notice = shell.run_line_magic("distill", "rollback prod")
    assert isinstance(notice, Notice) and "serves version 1 again" in repr(notice)
    assert registry.get_alias("prod")["base_url"] == old["base_url"]
    assert [row[1] for row in shell.run_line_magic("distill", "history prod").rows] == [
        "set",
        "promote",
        "rollback (current)",
    ]
    again = shell.run_cell("%distill rollback prod", store_history=False)  # version 1 had no earlier target
    assert isinstance(again.error_in_exec, AliasError) and again.error_in_exec._render_traceback_()
    empty = shell.run_line_magic("distill", "history nothing-here")
    assert empty.rows == [] and "does not exist" in repr(empty)


def test_an_undefined_judge_variable_is_named(shell: InteractiveShell, home: Path, tmp_path: Path, gguf: Path) -> None:
    _seed_run(tmp_path / "wd", gguf)
    shell.user_ns.pop("verfy", None)
    result = shell.run_cell("%distill promote prom --alias prod --judge verfy", store_history=False)
    assert isinstance(result.error_in_exec, ConfigError) and result.error_in_exec.field == "judge"
    assert "no variable `verfy`" in str(result.error_in_exec)
    assert not (home / "aliases.json").exists()


def test_an_unknown_run_is_a_clean_cell_error(shell: InteractiveShell, home: Path, tmp_path: Path, gguf: Path) -> None:
    _seed_run(tmp_path / "wd", gguf)
    result = shell.run_cell("%distill promote ghost --alias prod", store_history=False)
    assert "no run named 'ghost'" in str(result.error_in_exec) and "prom" in str(result.error_in_exec)
    assert result.error_in_exec._render_traceback_()
    assert not (home / "aliases.json").exists()


def test_a_bad_gain_names_what_it_expects() -> None:
    with pytest.raises(MagicUsageError, match="expected a number or 'none', got 'lots'"):
        parse_line("promote prom --alias prod --min-gain lots")
