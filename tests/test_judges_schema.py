"""json_valid's JSON Schema checks agree with the jsonschema package, with partial credit on top."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

import jsonschema
import pytest

from jupyter_distill.core.errors import JudgeError
from jupyter_distill.judging.schema_score import compile_schema, is_schema_keyword
from jupyter_distill.judging.verifiers import json_valid

PERSON = {
    "$defs": {
        "address": {
            "type": "object",
            "required": ["city"],
            "properties": {
                "city": {"type": "string", "minLength": 1},
                "zip": {"type": "string", "pattern": r"^\d{5}$"},
            },
            "additionalProperties": False,
        }
    },
    "type": "object",
    "required": ["name", "age", "role"],
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "user"]},
        "home": {"$ref": "#/$defs/address"},
        "tags": {
            "type": "array",
            "items": {"type": "string", "pattern": "^[a-z]+$"},
            "minItems": 1,
            "uniqueItems": True,
        },
        "scores": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number", "exclusiveMinimum": 0}]},
    },
}

GOOD = {"name": "Ada", "age": 36, "role": "admin", "home": {"city": "London", "zip": "12345"}, "tags": ["math"]}

# (case, value, valid per the schema): every keyword the old subset ignored is exercised.
CASES: list[tuple[str, Any, bool]] = [
    ("all good", GOOD, True),
    ("minimum", {**GOOD, "age": -1}, False),
    ("maximum", {**GOOD, "age": 151}, False),
    ("integer accepts 36.0", {**GOOD, "age": 36.0}, True),
    ("bool is no integer", {**GOOD, "age": True}, False),
    ("enum", {**GOOD, "role": "root"}, False),
    ("required", {k: v for k, v in GOOD.items() if k != "role"}, False),
    ("$ref nested required", {**GOOD, "home": {"zip": "12345"}}, False),
    ("$ref nested pattern", {**GOOD, "home": {"city": "Paris", "zip": "75OO1"}}, False),
    ("$ref nested minLength", {**GOOD, "home": {"city": ""}}, False),
    ("$ref nested additionalProperties", {**GOOD, "home": {"city": "Rome", "country": "IT"}}, False),
    ("array item pattern", {**GOOD, "tags": ["math", "Logic"]}, False),
    ("array minItems", {**GOOD, "tags": []}, False),
    ("array uniqueItems", {**GOOD, "tags": ["a", "a"]}, False),
    ("prefixItems", {**GOOD, "scores": [1, 2.5, "extra"]}, True),
    ("prefixItems exclusiveMinimum", {**GOOD, "scores": [1, 0]}, False),
    ("not an object", ["Ada"], False),
]


@pytest.mark.parametrize(("case", "value", "valid"), CASES, ids=[c[0] for c in CASES])
def test_verdicts_match_jsonschema(case: str, value: Any, valid: bool) -> None:
    assert jsonschema.Draft202012Validator(PERSON).is_valid(value) is valid  # the expectation is right
    check = json_valid(PERSON)
    score = check({}, json.dumps(value))
    if valid:
        assert score == 1.0
    else:
        assert 0.0 <= score < 0.5
        assert json_valid(PERSON, partial=False)({}, json.dumps(value)) == 0.0


def test_partial_credit_counts_assertions_that_apply() -> None:
    schema = {
        "type": "object",
        "required": ["a", "b"],
        "properties": {"a": {"type": "integer", "minimum": 10}, "b": {"type": "string", "pattern": "^x"}},
    }
    compiled = compile_schema(schema)
    # object type, 2 required fields, a: type + minimum, b: type + pattern = 7 assertions
    assert compiled.score({"a": 11, "b": "xy"}).total == 7
    one_wrong = compiled.score({"a": 5, "b": "xy"})
    assert (one_wrong.valid, one_wrong.passed, one_wrong.total) == (False, 6, 7)
    # a string is not checked against minimum, nor an integer against pattern: they do not count
    swapped = compiled.score({"a": "x", "b": 3})
    assert (swapped.passed, swapped.total) == (3, 5)
    check = json_valid(schema)
    assert check({}, '{"a": 5, "b": "xy"}') == pytest.approx(0.5 * 6 / 7)
    nearly = check({}, '{"a": 5, "b": "xy"}')
    worse = check({}, '{"a": "x", "b": 3}')
    missing = check({}, '{"a": 11}')
    assert 0.0 < worse < nearly < 0.5 and 0.0 < missing < 0.5


def test_alternatives_count_once_whatever_their_branches_did() -> None:
    schema = {"anyOf": [{"type": "string", "minLength": 3}, {"type": "integer", "minimum": 0}]}
    compiled = compile_schema(schema)
    ok = compiled.score(5)  # the string branch failed, and that costs nothing
    assert ok.valid and (ok.passed, ok.total) == (1, 1)
    bad = compiled.score(-1)
    assert not bad.valid and (bad.passed, bad.total) == (0, 1)
    conditional = compile_schema(
        {
            "type": "object",
            "if": {"properties": {"kind": {"const": "card"}}},
            "then": {"required": ["number"]},
        }
    )
    assert conditional.score({"kind": "cash"}).valid
    assert not conditional.score({"kind": "card"}).valid
    assert conditional.score({"kind": "card"}).share < 1.0


def test_false_subschema_is_invalid_without_an_assertion_keyword() -> None:
    check = json_valid({"type": "object", "properties": {"secret": False}})
    assert check({}, '{"ok": 1}') == 1.0
    assert 0.0 <= check({}, '{"secret": 1}') < 0.5


def test_python_type_form_and_required_still_work() -> None:
    assert json_valid({"x": int})({}, '{"x": 3}') == 1.0
    assert json_valid({"x": (int, type(None))})({}, '{"x": null}') == 1.0
    assert json_valid({"x": int})({}, '{"x": "3"}') < 0.5
    assert json_valid({"enum": ["a", "b"]})({}, '"a"') == 1.0  # a keyword-only schema is a JSON Schema
    assert json_valid({"enum": ["a", "b"]})({}, '"c"') < 0.5
    assert json_valid({"$ref": "#/$defs/n", "$defs": {"n": {"type": "number"}}})({}, "2.5") == 1.0


@pytest.mark.parametrize(
    ("schema", "value", "mentions"),
    [
        ({"type": "object", "properties": {"code": {"type": "string", "pattern": "(["}}}, "([", ["'pattern'", "(["]),
        ({"type": "object", "properties": {"age": {"minimum": "zero"}}}, "zero", ["'minimum'", "zero", "number"]),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "#/$defs/missing", ["$defs"]),
        ({"$ref": "https://example.com/person.json"}, "https://example.com/person.json", ["not fetched"]),
        ({"type": "object", "properties": {"a": {"type": "text"}}}, "text", ["unknown type 'text'", "'a'"]),
        ({"type": "object", "required": "name"}, "name", ["'required'", "array"]),
        ({"type": "array", "items": 3}, 3, ["'items'"]),
        ({"enum": "abc"}, "abc", ["'enum'"]),
    ],
)
def test_invalid_schemas_fail_naming_place_value_and_fix(schema: Any, value: Any, mentions: list[str]) -> None:
    with pytest.raises(JudgeError) as info:
        json_valid(schema)
    error = info.value
    message = str(error)
    assert error.field == "schema" and error.value == value
    assert "Fix:" in message and error.fix
    for text in mentions:
        assert text in message, message


def test_a_property_named_type_is_not_mistaken_for_the_type_keyword() -> None:
    check = json_valid({"type": "object", "properties": {"type": {"type": "string"}}, "required": ["type"]})
    assert check({}, '{"type": "x"}') == 1.0
    with pytest.raises(JudgeError, match="not valid JSON Schema"):
        json_valid({"type": "object", "properties": {"type": 5}})


def test_nested_id_scopes_refs() -> None:
    schema = {
        "type": "object",
        "properties": {
            "item": {
                "$id": "https://example.com/item",
                "$defs": {"price": {"type": "number", "minimum": 0}},
                "type": "object",
                "properties": {"price": {"$ref": "#/$defs/price"}},
            }
        },
    }
    check = json_valid(schema)
    assert check({}, '{"item": {"price": 2}}') == 1.0
    assert check({}, '{"item": {"price": -2}}') < 0.5


def test_one_verifier_shared_by_many_threads_gives_the_serial_answers() -> None:
    check = json_valid(PERSON)
    texts = [json.dumps(value) for _, value, _ in CASES]
    expected = [check({}, text) for text in texts]
    results: list[list[float]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def hammer() -> None:
        try:
            start.wait()
            for _ in range(30):
                results.append([check({}, text) for text in texts])
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 8 * 30 and all(r == expected for r in results)


def test_every_keyword_jsonschema_validates_is_known() -> None:
    """A JSON-Schema-only dict (``{"anyOf": [...]}``) is told from ``{field: type}`` by its keywords."""
    for cls in (jsonschema.Draft202012Validator, jsonschema.Draft7Validator):
        unknown = [k for k in cls.VALIDATORS if not is_schema_keyword(k)]
        assert not unknown, unknown
    assert not is_schema_keyword("label")


def test_importing_the_judges_does_not_import_jsonschema() -> None:
    """Its import takes about a second; only a json_valid schema pays it."""
    code = (
        "import sys, jupyter_distill.judging.stage, jupyter_distill.judging.verifiers as j; "
        "assert 'jsonschema' not in sys.modules; "
        "j.json_valid({'a': int}); assert 'jsonschema' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_schema_or_required_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(JudgeError, match="must be a dict") as info:
        json_valid("label")  # type: ignore[arg-type]
    assert info.value.field == "schema" and "Fix:" in str(info.value)
    with pytest.raises(JudgeError, match="list of field names") as info:
        json_valid(required="label")  # a string would be read as the fields "l", "a", "b", ...
    assert info.value.field == "required" and "Fix:" in str(info.value)
