"""The program each training worker runs: ``python -m jupyter_distill.train.worker_main LAUNCH.json``.

:func:`jupyter_distill.train.distributed.train_in_workers` writes the launch file (the training
settings, the student and where the run store is) and starts this module under ``accelerate
launch``. Every worker loads the student and the run's selected pairs from the store and trains
its share (:class:`~jupyter_distill.train.workers.WorkerGroup`). Worker 0 alone writes: metrics to
the store, checkpoints and the adapter to the output folder, events as JSON lines to
``worker-events.jsonl`` (the kernel relays them to the dashboard) and the result to
``worker-result.json``. A worker that fails writes ``worker-error-<rank>.json`` for the kernel to
raise; one killed writes nothing, and the kernel reports the exit instead.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import DistillError, TrainingError
from jupyter_distill.core.events import Event, no_emit
from jupyter_distill.core.store import RunStore

EVENTS_FILE = "worker-events.jsonl"
RESULT_FILE = "worker-result.json"
STOP_FILE = "STOP"
LAUNCH_FILE = "worker-launch.json"


def error_file(rank: int) -> str:
    return f"worker-error-{rank}.json"


class StopFile(threading.Event):
    """A stop flag set from outside the process: the file ``path`` exists, or the kernel is gone.

    The kernel creates the file when the run's stop flag is set; a kernel that died (restart,
    crash) cannot, so a vanished ``kernel_pid`` counts as stop too and the workers checkpoint
    and end instead of training on for nobody.
    """

    def __init__(self, path: Path, kernel_pid: int | None):
        super().__init__()
        self.path = path
        self.kernel_pid = kernel_pid

    def is_set(self) -> bool:
        if super().is_set() or self.path.exists():
            return True
        if self.kernel_pid is not None:
            try:
                os.kill(self.kernel_pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        return False


class EventFile:
    """Append events as JSON lines, flushed each time, so the kernel can relay them as they happen."""

    def __init__(self, path: Path):
        self.handle = path.open("a", encoding="utf-8")

    def __call__(self, event: Event) -> None:
        self.handle.write(json.dumps(event.to_dict(), default=str) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, default=str), encoding="utf-8")
    os.replace(tmp, path)


def run_worker(launch_path: Path) -> int:
    """Train this worker's share as the launch file says; return the process exit code."""
    import torch.distributed as dist

    from jupyter_distill.train.choice import student_loader
    from jupyter_distill.train.student import load_student, resolve_device
    from jupyter_distill.train.trainer import BondTrainer, TrainPair, TrainSettings
    from jupyter_distill.train.workers import WorkerGroup

    launch = json.loads(launch_path.read_text(encoding="utf-8"))
    output_dir = Path(launch["output_dir"])
    group = WorkerGroup.from_environment(launch.get("distributed", "ddp"))
    (output_dir / f"worker-{group.rank}.pid").write_text(str(os.getpid()), encoding="utf-8")
    events = EventFile(output_dir / EVENTS_FILE) if group.is_main else None
    emit = events if events is not None else no_emit
    try:
        settings = TrainSettings(**launch["settings"])
        device = "cuda" if group.device.type == "cuda" else resolve_device(launch["device"])
        student = load_student(
            launch["student"], device=device, chat_template=launch["chat_template"],
            quantization=launch["quantization"], loader=student_loader(launch["engine"], device),
            max_length=settings.max_length,
        )  # fmt: skip
        store = RunStore(launch["workdir"])
        run_id = launch["run"]
        pairs = TrainPair.from_records(store.get_pairs(run_id), store.get_prompts(run_id))
        trainer = BondTrainer(
            student, pairs, settings, output_dir=output_dir, store=store if group.is_main else None,
            run_id=run_id, emit=emit, stop=StopFile(output_dir / STOP_FILE, launch.get("kernel_pid")),
            engine=launch["engine"], group=group,
        )  # fmt: skip
        try:
            result = trainer.train(resume=launch["resume"])
        except TrainingError as exc:  # as in-process: other pairs or settings than the checkpoint start over
            if exc.field != "resume" or exc.value not in ("pairs", "settings"):
                raise
            emit(
                Event(
                    "warning",
                    run=run_id,
                    phase="training",
                    message=f"the training {exc.value} changed since the last checkpoint; training restarts "
                    "from the initial student.",
                )
            )
            result = trainer.train(resume=False)
        if group.is_main:
            _write_json(output_dir / RESULT_FILE, {**asdict(result), "adapter_dir": str(result.adapter_dir)})
        return 0
    except BaseException as exc:
        report = {"type": type(exc).__name__, "message": str(exc), "rank": group.rank}
        if isinstance(exc, DistillError):
            report.update({"field": exc.field, "value": exc.value, "fix": exc.fix})
        _write_json(output_dir / error_file(group.rank), report)
        raise
    finally:
        if events is not None:
            events.close()
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run_worker(Path(sys.argv[1])))
