"""A jbond/onpolicy run's card carries its on-policy signal for the lab's sparkline; a bond card does not.

The kernel's card (``RunSummary``) and the server's (``run_summary``) are built from the same store
rows, so both are checked, and against the schema, which must still take cards saved before the
field existed (``tests/fixtures/run_card.json``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest

from jupyter_distill.core.events import Event
from jupyter_distill.core.runcard import MAX_SPARK_POINTS, ON_POLICY_SIGNALS, RUN_CARD_SCHEMA
from jupyter_distill.core.store import RunStore
from jupyter_distill.notebook.dashboard_state import DashboardState
from jupyter_distill.notebook.summary_card import RunSummary
from jupyter_distill.server.summary import run_detail, run_summary

EXAMPLE = Path(__file__).resolve().parent / "fixtures" / "run_card.json"


def cards(store: RunStore, name: str) -> tuple[dict, dict]:
    """The server's and the kernel's card of run ``name``, both checked against the schema."""
    server = dict(run_summary(store, store.get_run(name)))
    kernel = dict(RunSummary.from_store(store, name).to_json())
    jsonschema.validate(server, RUN_CARD_SCHEMA)
    jsonschema.validate(kernel, RUN_CARD_SCHEMA)
    return server, kernel


def test_a_trained_jbond_run_carries_its_win_rate_and_a_bond_run_none(tmp_path: Path) -> None:
    """The real trainer writes the metrics (tiny random Llama, a length judge): what users' runs store."""
    pytest.importorskip("torch")
    from test_trainer import pairs, settings, tiny_student
    from test_trainer_jbond import run

    from jupyter_distill.train.trainer import BondTrainer

    store = RunStore(tmp_path / "store")
    store.create_run("r", {"loss": "jbond", "steps": 2})
    result, _ = run(tmp_path / "jbond", steps=2, store=store)
    server, kernel = cards(store, "r")
    expected = [[float(h["step"]), h["win_rate"]] for h in result.history if "win_rate" in h]
    assert expected, result.history
    assert server["signal"] == {"name": "win_rate", "points": expected}
    assert kernel["signal"] == server["signal"]

    store.create_run("b", {"loss": "bond", "steps": 2})
    BondTrainer(
        tiny_student(), pairs(4), settings(steps=2), output_dir=tmp_path / "bond", store=store, run_id="b"
    ).train()
    server, kernel = cards(store, "b")
    assert server["loss"] and "signal" not in server and "signal" not in kernel
    store.close()


def test_each_on_policy_engine_logs_a_signal_and_bond_logs_none() -> None:
    pytest.importorskip("torch")
    from jupyter_distill.train.jbond_engine import JBOND_METRICS
    from jupyter_distill.train.onpolicy_engine import ONPOLICY_METRICS
    from jupyter_distill.train.trainer import STEP_METRICS

    assert set(JBOND_METRICS) & set(ON_POLICY_SIGNALS)
    assert set(ONPOLICY_METRICS) & set(ON_POLICY_SIGNALS)
    assert not set(STEP_METRICS) & set(ON_POLICY_SIGNALS)


def test_an_onpolicy_run_shows_its_reverse_kl(tmp_path: Path) -> None:
    """The metric names the onpolicy engine logs, written as the trainer writes them."""
    pytest.importorskip("torch")
    from jupyter_distill.train.onpolicy_engine import ONPOLICY_METRICS

    store = RunStore(tmp_path / "store")
    store.create_run("op", {"loss": "onpolicy"})
    for step in range(1, 4):
        store.put_metrics("op", step, {"loss": 1.0 / step, **{name: 0.5 / step for name in ONPOLICY_METRICS}})
    server, kernel = cards(store, "op")
    assert server["signal"]["name"] == "reverse_kl"
    assert server["signal"]["points"] == [[1.0, 0.5], [2.0, 0.25], [3.0, 0.5 / 3]]
    assert kernel["signal"] == server["signal"]


def test_win_rate_comes_first_and_reward_stands_in_when_no_win_rate_was_logged(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "store")
    store.create_run("both", {})
    store.create_run("reward", {})
    for step in (1, 2):
        store.put_metrics("both", step, {"loss": 1.0, "reward": -0.5, "win_rate": 0.5})
        store.put_metrics("reward", step, {"loss": 1.0, "reward": -0.25 * step})
    assert cards(store, "both")[0]["signal"]["name"] == "win_rate"
    assert cards(store, "reward")[0]["signal"] == {"name": "reward", "points": [[1.0, -0.25], [2.0, -0.5]]}


def test_a_long_signal_is_thinned_for_the_sparkline_and_infinities_are_dropped(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "store")
    store.create_run("long", {})
    for step in range(1, 301):
        store.put_metrics("long", step, {"loss": 1.0, "reverse_kl": math.inf if step == 150 else step / 300})
    server, _ = cards(store, "long")  # jsonschema + json: an infinity would fail both
    points = server["signal"]["points"]
    assert len(points) == MAX_SPARK_POINTS
    assert points[0] == [1.0, 1 / 300] and points[-1] == [300.0, 1.0]
    assert all(math.isfinite(v) for _, v in points) and [150.0, math.inf] not in points
    json.dumps(server, allow_nan=False)
    detail = run_detail(store, store.get_run("long"))
    assert len(detail["signal"]["points"]) == MAX_SPARK_POINTS


def test_a_card_known_only_from_events_carries_the_signal() -> None:
    """The dashboard's last frame when no store is at hand (``RunSummary.from_state``)."""
    state = DashboardState(run="r")
    state.apply(Event("run_start", run="r"))
    for step in (1, 2, 3):
        data = {"loss": 2.0 / step, "win_rate": step / 4 if step != 2 else math.nan}
        state.apply(Event("metric", run="r", phase="training", step=step, data=data))
    state.apply(Event("run_end", run="r", message="done", data={"teacher_cost": 0.0}))
    summary = RunSummary.from_state(state)
    assert summary is not None
    card = summary.to_json()
    jsonschema.validate(card, RUN_CARD_SCHEMA)
    assert card["signal"] == {"name": "win_rate", "points": [[1.0, 0.25], [3.0, 0.75]]}


def test_the_schema_takes_old_cards_and_checks_the_signal() -> None:
    old = json.loads(EXAMPLE.read_text())
    assert "signal" not in old
    jsonschema.validate(old, RUN_CARD_SCHEMA)
    jsonschema.validate({**old, "signal": {"name": "reverse_kl", "points": [[1.0, 0.9]]}}, RUN_CARD_SCHEMA)
    for bad in (
        {"name": "loss", "points": [[1.0, 0.9]]},  # not an on-policy signal
        {"name": "win_rate", "points": []},  # a signal is sent only with a point
        {"name": "win_rate"},
        {"name": "win_rate", "points": [[1.0, 0.5]], "extra": 1},
        None,  # absent, never null
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**old, "signal": bad}, RUN_CARD_SCHEMA)


def test_the_dashboard_and_the_card_share_one_list_of_signals() -> None:
    from jupyter_distill.notebook import plot_svg

    assert plot_svg.ON_POLICY_SIGNALS is ON_POLICY_SIGNALS
    assert plot_svg.on_policy_name({"reward": [(1, 0.1)], "win_rate": [(1, 0.5)]}) == "win_rate"
    assert plot_svg.on_policy_name({"win_rate": [], "loss": [(1, 1.0)]}) is None
