"""The run-card JSON has one definition (core.runcard) that the server, the example and the lab type share."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from distill_server_fixtures import build_fixture_store

from jupyter_distill.core.runcard import RUN_CARD_SCHEMA, run_card_fields
from jupyter_distill.notebook.dashboard import RunSummary
from jupyter_distill.server.summary import run_summary

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "fixtures" / "run_card.json"
FORMAT_TS = ROOT / "labextension" / "src" / "format.ts"


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(RUN_CARD_SCHEMA)


def test_shared_example_matches_the_schema() -> None:
    jsonschema.validate(json.loads(EXAMPLE.read_text()), RUN_CARD_SCHEMA)


def test_schema_rejects_the_old_nested_shape() -> None:
    old = {"version": 1, "run": {"id": "x", "status": "done"}, "metrics": {}, "snippet": ""}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(old, RUN_CARD_SCHEMA)


def test_server_summaries_match_the_schema(tmp_path: Path) -> None:
    store = build_fixture_store(tmp_path / ".distill")
    runs = store.list_runs()
    assert runs
    for run in runs:
        jsonschema.validate(run_summary(store, store.get_run(run["id"])), RUN_CARD_SCHEMA)


def test_typescript_type_declares_the_schema_fields() -> None:
    source = FORMAT_TS.read_text()
    match = re.search(r"export interface IRunCard \{(.*?)\n\}", source, re.S)
    assert match, "IRunCard is missing from labextension/src/format.ts"
    declared = set(re.findall(r"^  (\w+)\??:", match.group(1), re.M))
    schema = set(run_card_fields())
    assert declared == schema, (
        f"IRunCard in format.ts and RUN_CARD_SCHEMA differ: only in TypeScript {sorted(declared - schema)}, "
        f"only in the schema {sorted(schema - declared)}"
    )


def test_kernel_cards_match_the_schema_and_agree_with_the_server(tmp_path: Path) -> None:
    store = build_fixture_store(tmp_path / ".distill")
    for run in store.list_runs():
        kernel = RunSummary.from_store(store, run["id"]).to_json()
        server = run_summary(store, store.get_run(run["id"]))
        jsonschema.validate(kernel, RUN_CARD_SCHEMA)
        for key in ("version", "id", "status", "phase", "created_at", "live", "loss", "alias", "pass_rates"):
            assert kernel[key] == server[key], (run["id"], key, kernel[key], server[key])
        if run["status"] == "done":
            assert kernel["progress"] == server["progress"]


def test_a_card_built_without_a_store_matches_the_schema() -> None:
    failed = RunSummary(run={"id": "tickets", "status": "failed", "summary": {"error": "teacher down"}})
    card = failed.to_json()
    jsonschema.validate(card, RUN_CARD_SCHEMA)
    assert card["error"] == "teacher down" and card["live"] is False and card["snippet"] is None
