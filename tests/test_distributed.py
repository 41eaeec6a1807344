"""Training in worker processes (accelerate launch, gloo on CPU) against in-process training.

A tiny Llama (``tests/tiny_models.py``) saved as an HF folder is the student every process loads.
The claims: 2 workers compute the single-process loss curve and adapter for the same global batch
and seed (within float-summation tolerance), metrics and checkpoints land in the run store and the
output folder as in-process, stop checkpoints and ends, and a resumed run (after a stop or a
SIGKILLed worker) ends where an uninterrupted one does.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import build_tiny_llama

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.errors import ConfigError, TrainingError
from jupyter_distill.core.events import Event
from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.store import PairRecord, PromptRecord, RunStore
from jupyter_distill.train.distributed import train_in_workers
from jupyter_distill.train.student import load_student
from jupyter_distill.train.trainer import ADAPTER_DIR, BondTrainer, TrainPair, TrainSettings

#: loss and metrics of 2 workers against 1 process: the same tensor computations, gradients summed
#: in another order, so only float32 rounding differs
RTOL = 1e-4
ATOL = 1e-5


@pytest.fixture(scope="module")
def student_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def settings(**kw: Any) -> TrainSettings:
    base: dict[str, Any] = {
        "steps": 4, "batch_size": 2, "grad_accum": 2, "lora_r": 4, "lora_alpha": 8, "warmup": 1,
        "checkpoint_every": 2, "max_length": 64, "device": "cpu",
    }  # fmt: skip
    base.update(kw)
    return TrainSettings(**base)


def fill_store(workdir: Path, run: str, n: int = 10) -> RunStore:
    """A run whose prompts and selected pairs are in the store, as the review phase leaves them."""
    store = RunStore(workdir)
    store.create_run(run, {})
    prompts = []
    for i in range(n):
        messages = [{"role": "user", "content": f"What is {i} plus {i}?" + " Think." * (i % 4)}]
        prompts.append(PromptRecord(hash=content_hash("prompt", messages), messages=messages, row={}, position=i))
    store.put_prompts(run, prompts)
    store.put_pairs(
        run,
        [PairRecord(p.hash, 0, f"{2 * i}", f"{2 * i + 1}, I think" if i % 3 else None) for i, p in enumerate(prompts)],
    )
    return store


def in_process(folder: Path, store: RunStore, run: str, out: Path, s: TrainSettings) -> Any:
    student = load_student(str(folder), device="cpu")
    pairs = TrainPair.from_records(store.get_pairs(run), store.get_prompts(run))
    return BondTrainer(student, pairs, s, output_dir=out, store=store, run_id=run, engine="plain").train()


def in_workers(folder: Path, workdir: Path, run: str, out: Path, s: TrainSettings, *, n: int = 2, **kw: Any) -> Any:
    kw.setdefault("emit", lambda event: None)
    kw.setdefault("stop", threading.Event())
    return train_in_workers(
        settings=s, student=str(folder), workdir=workdir, run_id=run, output_dir=out, num_processes=n,
        device="cpu", engine="plain", **kw,
    )  # fmt: skip


def losses(store: RunStore, run: str) -> list[float]:
    return [row["value"] for row in store.get_metrics(run, "loss")]


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_adapter(a: Path, b: Path) -> None:
    left, right = adapter(a), adapter(b)
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------- config (fast)


def test_num_processes_and_distributed_are_validated() -> None:
    config = DistillConfig.from_yaml("num_processes: 2\ngrad_accum: 4\ndistributed: ddp")
    assert (config.num_processes, config.distributed) == (2, "ddp")
    assert DistillConfig().num_processes == 1  # the single-process path stays the default
    with pytest.raises(ConfigError, match="multiple of num_processes"):
        DistillConfig.from_kwargs(num_processes=2, grad_accum=3)
    with pytest.raises(ConfigError, match="jbond"):
        DistillConfig.from_kwargs(num_processes=2, grad_accum=2, loss="jbond")
    with pytest.raises(ConfigError, match="distributed"):
        DistillConfig.from_kwargs(distributed="deepspeed")


def test_magic_flag_is_derived_from_the_config() -> None:
    from jupyter_distill.notebook.magics import build_cell_parser

    args = build_cell_parser().parse_args(["--num-processes", "2", "--distributed", "ddp"])
    assert (args.cfg_num_processes, args.cfg_distributed) == (2, "ddp")


# ---------------------------------------------------------------------- workers (slow: two interpreters each)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_two_workers_give_the_single_process_loss_curve(student_folder: Path, tmp_path: Path, distributed: str) -> None:
    s = settings()
    store = fill_store(tmp_path, "one")
    fill_store(tmp_path, "two")
    single = in_process(student_folder, store, "one", tmp_path / "one", s)
    events: list[Event] = []
    double = in_workers(
        student_folder, tmp_path, "two", tmp_path / "two", s, emit=events.append, distributed=distributed
    )
    assert double.steps_done == single.steps_done == s.steps and not double.stopped
    assert len(losses(store, "two")) == s.steps
    torch.testing.assert_close(
        torch.tensor(losses(store, "two")), torch.tensor(losses(store, "one")), rtol=RTOL, atol=ATOL
    )
    for name in ("nll", "pref", "kl", "grad_norm", "lr"):
        got = [r["value"] for r in store.get_metrics("two", name)]
        want = [r["value"] for r in store.get_metrics("one", name)]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=RTOL, atol=ATOL)
    assert_same_adapter(tmp_path / "two" / ADAPTER_DIR, tmp_path / "one" / ADAPTER_DIR)
    # the kernel saw the workers' events as in-process training sends them
    metric_steps = [e.step for e in events if e.kind == "metric"]
    assert metric_steps == [1, 2, 3, 4]
    assert any(e.data.get("checkpoint") == 2 for e in events)
    assert {e.run for e in events} == {"two"}


STOP_STEPS = 150


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_stop_then_resume_equals_an_uninterrupted_run(student_folder: Path, tmp_path: Path) -> None:
    # long enough that the stop, seen by the kernel's 0.2 s poll after step 2, lands mid-run however fast a
    # tiny step is (an idle machine ran 6 steps within one poll)
    s = settings(steps=STOP_STEPS, checkpoint_every=1000)
    store = fill_store(tmp_path, "whole")
    fill_store(tmp_path, "parts")
    whole = in_workers(student_folder, tmp_path, "whole", tmp_path / "whole", s)
    assert whole.steps_done == STOP_STEPS

    stop = threading.Event()

    def stop_after_two(event: Event) -> None:
        if event.kind == "metric" and (event.step or 0) >= 2:
            stop.set()

    first = in_workers(student_folder, tmp_path, "parts", tmp_path / "parts", s, emit=stop_after_two, stop=stop)
    assert first.stopped and 2 <= first.steps_done < STOP_STEPS
    # a stop checkpoints where it stopped (checkpoint_every is larger than the run)
    assert (tmp_path / "parts" / "checkpoint" / "trainer_state.pt").is_file()
    second = in_workers(student_folder, tmp_path, "parts", tmp_path / "parts", s)
    assert second.steps_done == STOP_STEPS and not second.stopped
    torch.testing.assert_close(
        torch.tensor(losses(store, "parts")), torch.tensor(losses(store, "whole")), rtol=RTOL, atol=ATOL
    )
    assert_same_adapter(tmp_path / "parts" / ADAPTER_DIR, tmp_path / "whole" / ADAPTER_DIR)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_worker_loses_nothing_before_the_checkpoint(student_folder: Path, tmp_path: Path) -> None:
    s = settings(steps=30, checkpoint_every=2)  # long enough that the kill lands mid-run
    store = fill_store(tmp_path, "whole")
    fill_store(tmp_path, "killed")
    in_workers(student_folder, tmp_path, "whole", tmp_path / "whole", s)
    out = tmp_path / "killed"

    killed: list[int] = []

    def kill_after_checkpoint(event: Event) -> None:
        if event.data.get("checkpoint") and not killed:
            killed.append(int(event.data["checkpoint"]))
            os.kill(int((out / "worker-1.pid").read_text()), signal.SIGKILL)

    with pytest.raises(TrainingError, match="ended without finishing") as info:
        in_workers(student_folder, tmp_path, "killed", out, s, emit=kill_after_checkpoint)
    assert "last checkpoint (step" in str(info.value) and killed
    assert len(losses(store, "killed")) < s.steps  # it did stop early
    resumed = in_workers(student_folder, tmp_path, "killed", out, s)
    assert resumed.steps_done == s.steps
    torch.testing.assert_close(
        torch.tensor(losses(store, "killed")), torch.tensor(losses(store, "whole")), rtol=RTOL, atol=ATOL
    )
    assert_same_adapter(out / ADAPTER_DIR, tmp_path / "whole" / ADAPTER_DIR)


@pytest.mark.slow
def test_fsdp_shards_the_frozen_base_and_leaves_lora_whole(student_folder: Path) -> None:
    """``prepare`` under fsdp: base weights become DTensor shards, the LoRA weights stay plain tensors
    (summed like ddp, saved in the single-process format). A one-process gloo group is enough to see it."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from jupyter_distill.train.distributed import free_port
    from jupyter_distill.train.trainer import attach_lora
    from jupyter_distill.train.workers import WorkerGroup

    student = load_student(str(student_folder), device="cpu")
    model = attach_lora(student, settings())
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        WorkerGroup(0, 1, "cpu", "fsdp").prepare(model)
        lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
        frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
        assert lora and all("lora_" in n and not isinstance(p, DTensor) for n, p in lora.items())
        assert frozen and all(isinstance(p, DTensor) for p in frozen.values())
        with pytest.raises(ValueError, match="unknown distributed strategy"):
            WorkerGroup(0, 1, "cpu", "zero3")
    finally:
        dist.destroy_process_group()
