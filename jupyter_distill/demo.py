"""``make demo``: execute ``notebooks/quickstart.ipynb`` headless and print what it produced.

Why a notebook and not a script: the quickstart *is* the product's face, so the demo proves the
notebook path end to end (magics, background run, dashboard, alias) exactly as a user runs it.
The executed copy is saved under ``.demo/`` (git-ignored) so its outputs can be opened in
JupyterLab afterwards. The run goes to the one run folder every front end reads
(:mod:`jupyter_distill.core.runfolder`: ``$JUPYTER_DISTILL_WORKDIR``, else ``.distill`` here), so
JupyterLab started in the same folder lists it in the Distill panel, and a second ``make demo``
re-uses every teacher sample already made.

The kernel is this interpreter: a ``jupyter-distill`` kernelspec pointing at ``sys.executable``
is installed into ``sys.prefix`` (the venv) when missing or stale, so nothing outside the venv
changes and a machine-wide ``python3`` kernel cannot be picked by accident.

    python -m jupyter_distill.demo [--quick] [--notebook notebooks/quickstart.ipynb] [--out .demo] [--workdir .distill]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import DistillError
from jupyter_distill.core.events import ConsoleRenderer, Emit, Event
from jupyter_distill.core.runfolder import RUN_FOLDER_ENV, resolve_run_folder

KERNEL_NAME = "jupyter-distill"
ANSWER_TAG = "jd-answer"
RUN_NAME = "quickstart"


class DemoError(DistillError):
    """The demo cannot start or its notebook failed; the message says which cell and why."""


def ensure_kernelspec(prefix: str | None = None) -> str:
    """Install (or refresh) a kernelspec running this interpreter into the venv; return its name.

    Idempotent: an existing spec whose argv already starts with ``sys.executable`` is left as is.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    prefix = prefix or sys.prefix
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if spec.argv and Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name="Python (jupyter-distill)", prefix=prefix)
    spec_file = Path(prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME / "kernel.json"
    doc = json.loads(spec_file.read_text())
    if Path(doc["argv"][0]).resolve() != Path(sys.executable).resolve():
        raise DemoError(
            f"the kernelspec written to {str(spec_file)!r} runs {doc['argv'][0]!r}, not {sys.executable!r}. "
            "Fix: run the demo with the venv's python (make demo).",
            field="kernel",
            value=doc["argv"][0],
        )
    return KERNEL_NAME


def find_notebook(name: str = "quickstart.ipynb") -> Path:
    """The notebook in ./notebooks (a checkout) or next to the package (an editable install)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base / "notebooks" / name
        if candidate.is_file():
            return candidate
    raise DemoError(
        f"cannot find notebooks/{name} in {str(Path.cwd())!r} or next to the package. "
        "Fix: run `make demo` from the repository root, or pass --notebook PATH.",
        field="notebook",
        value=name,
    )


class RunFollower:
    """Shows a run's progress on the console while another process (the notebook's kernel) runs it.

    The kernel writes the run store; this thread reads it once a ``interval`` (the same read model
    the JupyterLab panel polls: phase, counted work and the training loss) and turns what changed
    into :class:`~jupyter_distill.core.events.Event` s for the pipeline's own :class:`ConsoleRenderer`,
    so ``make demo`` shows one bar per phase with elapsed time and ETA, as ``jd.distill`` does in a
    terminal. Phases without a count (judging, evaluation, export) show elapsed time only.
    """

    def __init__(self, workdir: Path, run: str, *, emit: Emit | None = None, interval: float = 1.0):
        self.workdir = workdir
        self.run = run
        self.emit = emit or ConsoleRenderer(min_interval=interval)
        self.interval = interval
        self._phase: str | None = None
        self.read_error: Exception | None = None  # the last failed read (the kernel may not have written yet)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jd-demo-progress", daemon=True)

    def __enter__(self) -> RunFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()  # the last state, so the bars end where the run ended
        if self._phase is not None:
            self.emit(Event("phase_end", run=self.run, phase=self._phase))
            self._phase = None
        close = getattr(self.emit, "close", None)
        if callable(close):
            close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # a read that races the kernel's first write: try again next tick
                self.read_error = exc

    def poll(self) -> None:
        """Read the run's state once and emit what changed since the last read."""
        from jupyter_distill.core.store import RunStore
        from jupyter_distill.server.summary import loss_series, progress

        if not (self.workdir / "runs.db").is_file():
            return
        store = RunStore(self.workdir)
        try:
            record = store.get_run(self.run)
            if record is None:
                return
            state = progress(store, record, loss_series(store, self.run))
        finally:
            store.close()
        phase = state["phase"]
        if phase != self._phase:
            if self._phase is not None:
                self.emit(Event("phase_end", run=self.run, phase=self._phase))
            self._phase = phase if phase != "done" else None
            if self._phase is not None:
                total = int(state["total"]) if state["total"] else None
                self.emit(Event("phase_start", run=self.run, phase=self._phase, total=total))
        if self._phase is not None and state["current"] is not None:
            total = int(state["total"]) if state["total"] else None
            self.emit(Event("progress", run=self.run, phase=self._phase, current=int(state["current"]), total=total))


def execute_notebook(path: Path, out_path: Path, *, kernel_name: str, timeout: int = 1800) -> Any:
    """Run every cell with nbclient (cwd = the notebook's folder); always save what ran."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=timeout,
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=True,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        raise DemoError(
            f"{path.name} failed; the executed copy with the error is {str(out_path)!r}.\n{_short(str(exc))}",
            field="notebook",
            value=str(path),
        ) from None
    finally:
        nbformat.write(nb, out_path)
    return nb


def tagged_text(nb: Any, tag: str) -> str:
    """The text a tagged cell printed (stream and plain-text results)."""
    parts: list[str] = []
    for cell in nb.cells:
        if tag not in cell.get("metadata", {}).get("tags", []):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                parts.append(output.get("text", ""))
            elif output.get("output_type") == "execute_result":
                parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts).strip()


def run_numbers(workdir: Path, run: str = RUN_NAME) -> dict[str, Any]:
    """The run's summary from the store the notebook wrote."""
    from jupyter_distill.core.store import RunStore

    record = RunStore(workdir).get_run(run)
    if record is None:
        raise DemoError(
            f"the notebook finished but the store {str(workdir)!r} has no run {run!r}. "
            f"Fix: check that the notebook leaves the run folder to ${RUN_FOLDER_ENV} (no workdir of its own).",
            field="workdir",
            value=str(workdir),
        )
    return record


def report(record: dict[str, Any], answer: str, seconds: float, executed: Path) -> str:
    summary = record.get("summary") or {}

    def rate(key: str) -> str:
        value = summary.get(key)
        return f"{value['pass_rate']:.0%}" if isinstance(value, dict) and value.get("pass_rate") is not None else "n/a"

    n = next((v.get("n") for v in summary.values() if isinstance(v, dict) and "n" in v), "?")
    lines = [
        f"jupyter-distill demo: run {record['id']!r} {record.get('status')} in {seconds / 60:.1f} min",
        f"  held-out pass@1 ({n} prompts): student before {rate('student_before')}  ->  "
        f"after {rate('student_after')}   (teacher best-of-N {rate('teacher_best_of_n')})",
        *(
            [f"  the {served.get('quantize', 'GGUF')} file the alias serves: {rate('student_served')}"]
            if isinstance(served := summary.get("student_served"), dict)
            else []
        ),
        *([f"  warning: {summary['quantization_warning']}"] if summary.get("quantization_warning") else []),
        f"  teacher cost ${float(summary.get('teacher_cost') or 0):.4f}, training steps {summary.get('steps', '?')}",
        f"  alias: {summary.get('alias') or '(none)'}   gguf: {summary.get('gguf') or '(not exported)'}",
        "",
        "The alias's answer to a held-out prompt:",
        *(f"  {line}" for line in (answer or "(the answer cell printed nothing)").splitlines()),
        "",
        f"Executed notebook: {executed}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jupyter_distill.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", type=Path, default=None, help="notebook to run (default: the quickstart)")
    parser.add_argument("--out", type=Path, default=Path(".demo"), help="folder for the executed notebook")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help=f"run folder (default: ${RUN_FOLDER_ENV}, else .distill: the folder the JupyterLab panel shows)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (JD_QUICK=1): minutes, not quality")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    try:
        notebook = args.notebook or find_notebook()
        out = args.out.resolve()
        workdir = resolve_run_folder(args.workdir)
        os.environ[RUN_FOLDER_ENV] = str(workdir)  # the kernel inherits the environment
        if args.quick:
            os.environ["JD_QUICK"] = "1"
        kernel = ensure_kernelspec()
        executed = out / notebook.name
        print(
            f"executing {notebook} headless (kernel {kernel!r}); the run's phases follow (store: {workdir}):",
            flush=True,
        )
        started = time.monotonic()
        with RunFollower(workdir, RUN_NAME):
            nb = execute_notebook(notebook, executed, kernel_name=kernel, timeout=args.timeout)
        record = run_numbers(workdir)
        print(report(record, tagged_text(nb, ANSWER_TAG), time.monotonic() - started, executed))
    except DistillError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _short(text: str, limit: int = 3000) -> str:
    """The end of a cell error (where the cause is), without terminal colour codes."""
    text = _ANSI.sub("", text)
    return text if len(text) <= limit else "...\n" + text[-limit:]


if __name__ == "__main__":
    sys.exit(main())
