"""Run the training phase in ``num_processes`` worker processes started by ``accelerate launch``.

Why a subprocess running ``accelerate launch`` and not ``accelerate.notebook_launcher``: the
notebook launcher forks the kernel, and a forked child cannot use CUDA once the parent has
touched it, so the kernel would have to stay CUDA-free for its whole life (no evaluation, no
serving, no second run). ``notebook_launcher`` also blocks the calling thread with the workers'
output mixed into the cell, and a worker that dies takes the notebook's process tree with it. A
separate ``accelerate launch`` process group starts from a clean interpreter, the kernel never
initialises CUDA before it (nothing here touches a device), a killed worker only ends that group
(torch's elastic agent tears the others down), and the kernel keeps its thread free to relay
progress and to pass on a stop.

What goes through what:

- inputs: the run store (the run's selected pairs and prompts) and a launch file with the
  training settings, the student and the run's names;
- metrics: written to the store by worker 0, as in-process training writes them;
- events: worker 0 appends them to ``worker-events.jsonl``; :func:`train_in_workers` relays each
  one to ``emit`` as it lands, so the dashboard and the lab panel see the same stream;
- stop: the run's stop flag becomes a ``STOP`` file the workers check together at every step
  boundary; they checkpoint and end;
- checkpoints and the adapter: written by worker 0 into the same folder in-process training
  uses, in the same format, so resume works across 1 and N processes;
- a killed worker: the group ends, nothing after the last checkpoint is kept (metrics past it are
  trimmed on resume), and the error says so and how to resume.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.core.events import Emit, Event
from jupyter_distill.train.worker_main import (
    EVENTS_FILE,
    LAUNCH_FILE,
    RESULT_FILE,
    STOP_FILE,
    error_file,
)

LOG_FILE = "workers.log"
POLL_SECONDS = 0.2


def launch_command(launch_path: Path, num_processes: int, port: int) -> list[str]:
    """The ``accelerate launch`` command line (accelerate's torchrun launcher, given explicitly so no
    ``accelerate config`` file on the machine changes what runs)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu",  # accelerate's name for its torchrun launcher; on a CPU-only machine it uses gloo
        "--num_processes", str(num_processes), "--num_machines", "1", "--machine_rank", "0",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "jupyter_distill.train.worker_main", str(launch_path),
    ]  # fmt: skip


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for the group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_environment(num_processes: int, device: str) -> dict[str, str]:
    """The workers' environment: the kernel's, plus CPU threads split between the workers and, for
    ``device='cpu'``, no visible GPU (so the group uses gloo even where CUDA exists)."""
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    threads = max(1, (os.cpu_count() or 1) // num_processes)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _EventTail:
    """Reads the complete lines appended to the workers' event file since the last read."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[Event]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()  # an unfinished line waits for the rest
        out = []
        for line in lines:
            if line.strip():
                fields = json.loads(line)
                out.append(Event(**fields))
        return out


def train_in_workers(
    *,
    settings: Any,
    student: str,
    workdir: str | Path,
    run_id: str,
    output_dir: str | Path,
    num_processes: int,
    distributed: str = "ddp",
    device: str = "auto",
    engine: str = "auto",
    chat_template: str | None = None,
    quantization: str | None = None,
    resume: bool = True,
    emit: Emit,
    stop: threading.Event,
) -> Any:
    """Train the run's stored pairs in ``num_processes`` workers; return their ``TrainResult``.

    Blocks until the workers end (call it from the run's thread); relays their events to ``emit``
    meanwhile and turns ``stop`` into the workers' stop file. Raises ``TrainingError`` naming the
    failing worker's error, or the exit of a worker that was killed.
    """
    from jupyter_distill.train.trainer import CHECKPOINT_DIR, TrainResult, recover_dir

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    recover_dir(out / CHECKPOINT_DIR)  # before the workers: none of them may race to do it
    for stale in [STOP_FILE, EVENTS_FILE, RESULT_FILE, *(error_file(r) for r in range(num_processes))]:
        (out / stale).unlink(missing_ok=True)
    for pid_file in out.glob("worker-*.pid"):
        pid_file.unlink()
    launch = {
        "settings": asdict(settings),
        "student": student,
        "workdir": str(Path(workdir).resolve()),
        "run": run_id,
        "output_dir": str(out.resolve()),
        "device": device,
        "distributed": distributed,
        "engine": engine,
        "chat_template": chat_template,
        "quantization": quantization,
        "resume": resume,
        "kernel_pid": os.getpid(),
    }
    launch_path = out / LAUNCH_FILE
    launch_path.write_text(json.dumps(launch), encoding="utf-8")
    emit(
        Event(
            "progress",
            phase="training",
            run=run_id,
            message=f"starting {num_processes} training processes (accelerate launch)",
            data={"stage": "prepare", "num_processes": num_processes},
        )
    )
    tail = _EventTail(out / EVENTS_FILE)
    with (out / LOG_FILE).open("ab") as log:
        process = subprocess.Popen(
            launch_command(launch_path, num_processes, free_port()),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=worker_environment(num_processes, device),
            start_new_session=True,  # a Ctrl-C in a terminal kernel reaches the run's stop, not the workers
        )
        try:
            while process.poll() is None:
                for event in tail.read():
                    emit(event)
                if stop.is_set() and not (out / STOP_FILE).exists():
                    (out / STOP_FILE).write_bytes(b"")
                time.sleep(POLL_SECONDS)
        except BaseException:  # the kernel thread is going away: the workers must not train on unwatched
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    for event in tail.read():
        emit(event)
    if process.returncode != 0 or not (out / RESULT_FILE).is_file():
        raise _worker_failure(out, num_processes, process.returncode)
    data = json.loads((out / RESULT_FILE).read_text(encoding="utf-8"))
    data["adapter_dir"] = Path(data["adapter_dir"])
    return TrainResult(**data)


def _worker_failure(out: Path, num_processes: int, returncode: int) -> TrainingError:
    """A worker's own user-facing error when one wrote it, else what is known of the exit.

    A killed worker writes nothing, and the others then fail inside a collective ("connection
    closed by peer"): that is reported as the exit it is, with the survivor's words as detail.
    """
    reports = []
    for rank in range(num_processes):
        path = out / error_file(rank)
        if path.is_file():
            reports.append(json.loads(path.read_text(encoding="utf-8")))
    for report in reports:
        if report.get("field"):  # a DistillError: the same error in-process training raises
            return TrainingError(
                f"training worker {report['rank']} failed: {report['message']}",
                field=report["field"],
                value=report.get("value"),
                fix=report.get("fix") or f"see {out / LOG_FILE}",
            )
    detail = f"; worker {reports[0]['rank']}: {reports[0]['type']}: {reports[0]['message'][:300]}" if reports else ""
    checkpoint = _checkpoint_step(out)
    where = f"the last checkpoint (step {checkpoint})" if checkpoint else "the start (no checkpoint was written yet)"
    return TrainingError(
        f"a training worker ended without finishing (exit code {returncode}{detail}). A worker killed or out of "
        f"memory ends the group; nothing after {where} is kept. Fix: run the cell again (or %distill resume) to "
        f"continue from it; the workers' output is in {str(out / LOG_FILE)!r}.",
        field="num_processes",
        value=num_processes,
        fix="resume the run",
    )


def _checkpoint_step(out: Path) -> int | None:
    """The step of the checkpoint in ``out``, or None (read onto the CPU: no device is touched)."""
    import torch

    from jupyter_distill.train.trainer import CHECKPOINT_DIR, STATE_FILE, recover_dir

    recover_dir(out / CHECKPOINT_DIR)
    path = out / CHECKPOINT_DIR / STATE_FILE
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:  # none, or unreadable: resume will say which
        return None


def attach_adapter(student: Any, adapter_dir: str | Path) -> Any:
    """Put the adapter the workers trained on ``student`` (loaded in the kernel after them), as
    in-process training leaves it: ``student.model`` is then the PEFT model, ready to evaluate."""
    from peft import PeftModel

    student.drop_adapter()
    student.model = PeftModel.from_pretrained(student.model, str(adapter_dir), is_trainable=False)
    student.model.eval()
    return student.model


__all__ = ["attach_adapter", "launch_command", "train_in_workers", "worker_environment"]
