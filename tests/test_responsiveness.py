"""The kernel stays usable while a run trains.

A real ipykernel (jupyter_client, the venv's python) loads the extension and starts a
``%%distill`` run whose training is real CPU work (tests/distill_fakes.py replaces only
``Run.run``'s stages). While it trains, another cell must answer within 1 s, and the dashboard
must keep receiving widget updates (comm messages) although no cell is running.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

TESTS_DIR = Path(__file__).parent


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Any]:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def execute(kc: Any, code: str, timeout: float = 60.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=outputs.append, allow_stdin=False)
    return reply, outputs


def text_result(outputs: list[dict[str, Any]]) -> str:
    for msg in outputs:
        if msg["msg_type"] == "execute_result":
            return msg["content"]["data"]["text/plain"]
    return ""


def test_another_cell_answers_within_a_second_while_training(kernel: Any, tmp_path: Path) -> None:
    setup = f"""
import os, sys
sys.path.insert(0, {str(TESTS_DIR)!r})
import distill_fakes
distill_fakes.install()
import torch  # imported up front, as a real run's first phases would have done before training
os.environ["FAKE_TRAIN_SECONDS"] = "12"
os.environ["FAKE_STEPS"] = "60"
%load_ext jupyter_distill
%config DistillMagics.workdir = {str(tmp_path / "wd")!r}
"""
    reply, outputs = execute(kernel, setup)
    assert reply["content"]["status"] == "ok", outputs

    started = time.monotonic()
    reply, outputs = execute(kernel, "%%distill busy\ndataset: [{prompt: a}, {prompt: b}]\nsteps: 60\n")
    assert reply["content"]["status"] == "ok", outputs
    assert time.monotonic() - started < 3.0  # the cell returned while the run goes on
    assert any(
        "application/vnd.jupyter.widget-view+json" in m["content"].get("data", {})
        for m in outputs
        if m["msg_type"] == "display_data"
    ), "the dashboard widget was displayed"

    phase = ""
    deadline = time.monotonic() + 30
    probe = "get_ipython().magics_manager.registry['DistillMagics'].runs['busy'].state.phase"
    while phase != "'training'" and time.monotonic() < deadline:
        _, outputs = execute(kernel, probe)
        phase = text_result(outputs)
        time.sleep(0.1)
    assert phase == "'training'"

    # While no cell runs, the dashboard keeps updating: widget trait changes arrive as comm messages.
    comm_updates = 0
    listen_until = time.monotonic() + 2.0
    while time.monotonic() < listen_until:
        try:
            msg = kernel.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            continue
        comm_updates += msg["msg_type"] == "comm_msg"
    assert comm_updates >= 2, "the dashboard kept updating through widget traits while no cell ran"

    for expression, expected in (("1 + 1", "2"), ("sum(range(10))", "45")):
        started = time.monotonic()
        reply, outputs = execute(kernel, expression, timeout=10)
        elapsed = time.monotonic() - started
        assert reply["content"]["status"] == "ok"
        assert text_result(outputs) == expected
        assert elapsed < 1.0, f"{expression!r} took {elapsed:.2f} s while training ran"

    _, outputs = execute(kernel, probe)
    assert text_result(outputs) == "'training'"  # it really was training during those cells

    reply, outputs = execute(kernel, "%distill stop busy")
    assert reply["content"]["status"] == "ok"
    reply, outputs = execute(kernel, "s = %distill wait busy --timeout 20\ns.status")
    assert text_result(outputs) == "'stopped'", outputs
