"""The run-card JSON has one definition (core.runcard) that the server, the example and the lab type share."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from distill_server_fixtures import build_fixture_store

from jupyter_distill.core.runcard import RUN_CARD_SCHEMA, run_card_fields
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
    match = re.search(r"export interface IRunSummary \{(.*?)\n\}", source, re.S)
    assert match, "IRunSummary is missing from labextension/src/format.ts"
    declared = set(re.findall(r"^\s+(\w+)\??:", match.group(1), re.M))
    missing = set(run_card_fields()) - declared
    assert not missing, f"IRunSummary lacks the run-card fields {sorted(missing)}"
