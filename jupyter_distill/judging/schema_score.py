"""JSON Schema checking with partial credit, the engine behind ``judges.json_valid``.

Validity is decided by the ``jsonschema`` package (Draft 2020-12 unless the schema's ``$schema``
names another draft), so every keyword counts: ``pattern``, ``minimum``, ``$ref``, ``if``/``then``,
``unevaluatedProperties`` and the rest; ``format`` stays an annotation, as the draft says.

On top of validity sits the partial credit that best-of-N selection needs to prefer a nearly right
candidate over a wrong one: the share of the schema's *assertions* that pass, counted at every place
in the value where they apply. An assertion is one keyword at one place (``type``, ``enum``,
``minimum``, ``pattern``, ...), except ``required``, which counts once per field. Keywords that try
alternatives (``anyOf``, ``oneOf``, ``not``, ``if``, ``contains``, ``unevaluated*``) count as one
assertion each, whatever their branches did, so a branch that was allowed to fail costs nothing.

A schema is checked when it is given (:func:`compile_schema`), so a bad one fails before any teacher
request, with an error naming where in the schema the problem is, the offending value and the fix.

``jsonschema`` is imported on first use, not with this module: its import takes about a second
(its format checkers compile a URI grammar), which every process importing the judges would pay.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jupyter_distill.core.errors import JudgeError

if TYPE_CHECKING:
    import referencing
    from jsonschema.exceptions import SchemaError, ValidationError

JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")

# Assertion keywords -> the JSON type of value they constrain (None: any value). They count only
# where they apply: ``minimum`` says nothing about a string, so it is neither passed nor failed there.
ASSERTIONS: dict[str, str | None] = {
    "type": None,
    "enum": None,
    "const": None,
    "multipleOf": "number",
    "maximum": "number",
    "exclusiveMaximum": "number",
    "minimum": "number",
    "exclusiveMinimum": "number",
    "maxLength": "string",
    "minLength": "string",
    "pattern": "string",
    "maxItems": "array",
    "minItems": "array",
    "uniqueItems": "array",
    "maxProperties": "object",
    "minProperties": "object",
    "required": "object",
    "dependentRequired": "object",
    "additionalProperties": "object",  # an assertion only when it is ``false``; else it descends
}
# Keywords whose sub-evaluations are tests rather than assertions: one assertion each, and what
# happens inside them is not counted.
ALTERNATIVES: dict[str, str | None] = {
    "anyOf": None,
    "oneOf": None,
    "not": None,
    "if": None,
    "contains": "array",
    "unevaluatedItems": "array",
    "unevaluatedProperties": "object",
}
# Keywords that hold subschemas (walked to check that every ``$ref`` resolves).
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_VALUES = (
    "items",
    "additionalItems",
    "additionalProperties",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
)
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")


@dataclass
class _Tally:
    """Assertions passed and failed during one validation (one per call, held in a ContextVar)."""

    passed: int = 0
    failed: int = 0
    muted: int = 0  # > 0 inside an alternative, whose inner assertions do not count


_TALLY: ContextVar[_Tally | None] = ContextVar("jupyter_distill_schema_tally", default=None)

KeywordFn = Callable[[Any, Any, Any, Mapping[str, Any]], Any]


def _counting(keyword: str, fn: KeywordFn, applies_to: str | None, alternative: bool) -> KeywordFn:
    """Wrap one jsonschema keyword function so that it also tallies its assertions.

    The errors are collected before the first is handed on, so the tally is complete even when a
    caller stops at the first error (``is_valid``), and the mute counter is balanced within one step.
    """

    def keyword_fn(validator: Any, value: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
        tally = _TALLY.get()
        if tally is None:
            yield from fn(validator, value, instance, schema) or ()
            return
        counts = tally.muted == 0 and (applies_to is None or validator.is_type(instance, applies_to))
        if keyword == "additionalProperties" and value is not False:
            counts = False  # a subschema: its own keywords count
        if alternative:
            tally.muted += 1
        try:
            errors = list(fn(validator, value, instance, schema) or ())
        finally:
            if alternative:
                tally.muted -= 1
        if counts:
            if alternative:
                weight, failed = 1, min(1, len(errors))
            else:
                weight = _weight(keyword, value, instance)
                failed = min(weight, len(errors))
            tally.passed += weight - failed
            tally.failed += failed
        yield from errors

    return keyword_fn


def _weight(keyword: str, value: Any, instance: Any) -> int:
    """How many assertions one keyword makes: ``required`` one per field, the rest one."""
    if keyword == "required" and isinstance(value, list):
        return max(1, len(value))
    if keyword == "dependentRequired" and isinstance(value, Mapping):
        return max(1, sum(len(deps) for name, deps in value.items() if name in instance and isinstance(deps, list)))
    return 1


@functools.cache
def _scoring_class(base: type) -> type:
    """``base`` (a jsonschema validator class) with every keyword wrapped by :func:`_counting`."""
    import jsonschema.validators

    wrapped: dict[str, KeywordFn] = {}
    for keyword, fn in base.VALIDATORS.items():
        if keyword in ASSERTIONS:
            wrapped[keyword] = _counting(keyword, fn, ASSERTIONS[keyword], alternative=False)
        elif keyword in ALTERNATIVES:
            wrapped[keyword] = _counting(keyword, fn, ALTERNATIVES[keyword], alternative=True)
    return jsonschema.validators.extend(base, validators=wrapped)


@dataclass(frozen=True)
class SchemaScore:
    """The verdict on one value: ``valid`` per jsonschema, and the assertions that passed."""

    valid: bool
    passed: int
    total: int
    problems: tuple[str, ...]

    @property
    def share(self) -> float:
        """Share of assertions passed; below 1.0 whenever the value is invalid."""
        if self.valid:
            return 1.0
        return self.passed / self.total if self.total else 0.0


class CompiledSchema:
    """A schema ready to score values; safe to share between threads. Make it with
    :func:`compile_schema`, which checks the schema first."""

    def __init__(self, schema: Mapping[str, Any]):
        import jsonschema

        base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        self.schema = schema
        self._validator = _scoring_class(base)(schema)

    def score(self, value: Any) -> SchemaScore:
        """Validate ``value`` and count its assertions (see the module docstring)."""
        tally = _Tally()
        token = _TALLY.set(tally)
        try:
            errors = list(self._validator.iter_errors(value))
        finally:
            _TALLY.reset(token)
        problems = tuple(f"{_location(e.absolute_path)}: {e.message}" for e in errors)
        if not errors:
            return SchemaScore(True, tally.passed, tally.passed + tally.failed, ())
        failed = max(tally.failed, 1)  # a ``false`` subschema fails without an assertion keyword
        return SchemaScore(False, tally.passed, tally.passed + failed, problems)


def compile_schema(schema: Mapping[str, Any], *, where: str = "schema") -> CompiledSchema:
    """Check ``schema`` against its draft's meta-schema and resolve every ``$ref``, or raise.

    The ``JudgeError`` names the place in the schema (``schema['properties']['age']['minimum']``),
    the offending value and the fix.
    """
    import jsonschema
    from jsonschema.exceptions import SchemaError

    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        base.check_schema(schema)
    except SchemaError as error:
        raise _schema_error(error, where) from None
    _check_refs(schema, where)
    return CompiledSchema(schema)


def _location(path: Any) -> str:
    return "".join(f"[{part!r}]" for part in path) or "(the whole value)"


def _schema_error(error: SchemaError, where: str) -> JudgeError:
    place = where + "".join(f"[{part!r}]" for part in error.absolute_path)
    value = error.instance
    path = list(error.absolute_path)
    if path[-1:] == ["type"] and (len(path) < 2 or path[-2] not in _SCHEMA_MAPS):  # not a property named "type"
        names = value if isinstance(value, list) else [value]
        unknown = [n for n in names if n not in JSON_TYPES] or names
        shown = unknown[0] if len(unknown) == 1 else unknown
        return JudgeError(
            f"json_valid {place} has unknown type {shown!r}. Fix: use one of {list(JSON_TYPES)} (or a list of them).",
            field="schema",
            value=shown,
            fix=f"use one of {', '.join(JSON_TYPES)}",
        )
    if error.validator == "format" and error.validator_value == "regex":
        return JudgeError(
            f"json_valid {place} = {value!r} is not a valid regular expression. Fix: correct the pattern "
            "(JSON Schema patterns use regular-expression syntax; escape backslashes in JSON).",
            field="schema",
            value=value,
            fix="correct the regular expression",
        )
    return JudgeError(
        f"json_valid {place} = {value!r} is not valid JSON Schema (Draft 2020-12): {error.message}. "
        f"Fix: correct {place} so that it is a valid value for that keyword.",
        field="schema",
        value=value,
        fix=f"correct {place}",
    )


def _check_refs(schema: Mapping[str, Any], where: str) -> None:
    """Every ``$ref``/``$dynamicRef`` must resolve inside the schema: remote schemas are never fetched."""
    import referencing
    import referencing.jsonschema

    resource = referencing.Resource.from_contents(schema, default_specification=referencing.jsonschema.DRAFT202012)
    resolver = referencing.Registry().resolver_with_root(resource)
    _walk_refs(schema, resolver, where, root=True)


def _walk_refs(schema: Any, resolver: referencing.Resolver, place: str, *, root: bool = False) -> None:
    import referencing
    import referencing.exceptions
    import referencing.jsonschema

    if not isinstance(schema, Mapping):
        return
    if "$id" in schema and not root:  # a nested resource: its refs are relative to its own $id
        sub = referencing.Resource.from_contents(schema, default_specification=referencing.jsonschema.DRAFT202012)
        resolver = resolver.in_subresource(sub)
    for keyword in ("$ref", "$dynamicRef"):
        ref = schema.get(keyword)
        if isinstance(ref, str):
            try:
                resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                raise JudgeError(
                    f"json_valid {place}[{keyword!r}] = {ref!r} does not resolve: there is no such definition "
                    "in the schema, and remote schemas are not fetched. Fix: put the definition under "
                    "\"$defs\" and refer to it as '#/$defs/NAME'.",
                    field="schema",
                    value=ref,
                    fix="define it under $defs",
                ) from None
    for keyword in _SCHEMA_MAPS:
        subs = schema.get(keyword)
        if isinstance(subs, Mapping):
            for name, sub in subs.items():
                _walk_refs(sub, resolver, f"{place}[{keyword!r}][{name!r}]")
    for keyword in _SCHEMA_VALUES:
        _walk_refs(schema.get(keyword), resolver, f"{place}[{keyword!r}]")
    for keyword in _SCHEMA_LISTS:
        subs = schema.get(keyword)
        if isinstance(subs, list):
            for index, sub in enumerate(subs):
                _walk_refs(sub, resolver, f"{place}[{keyword!r}][{index}]")


# Every keyword of Draft 2020-12 and Draft 7 (assertions, applicators, annotations, identifiers);
# tests/test_judges_schema.py checks it covers every keyword jsonschema validates.
_KEYWORDS = frozenset(
    {
        *ASSERTIONS,
        *ALTERNATIVES,
        *_SCHEMA_MAPS,
        *_SCHEMA_VALUES,
        *_SCHEMA_LISTS,
        "format",
        "dependencies",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
        "minContains",
        "maxContains",
    }
)


def is_schema_keyword(key: str) -> bool:
    """Whether ``key`` is a JSON Schema keyword (any draft jsonschema knows, or a ``$`` keyword)."""
    return key.startswith("$") or key in _KEYWORDS


__all__ = [
    "ALTERNATIVES",
    "ASSERTIONS",
    "JSON_TYPES",
    "CompiledSchema",
    "SchemaScore",
    "compile_schema",
    "is_schema_keyword",
]
