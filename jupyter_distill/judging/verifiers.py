"""Verifiers: plain Python callables that score a response against the dataset row, exactly and for free.

A verifier is ``(row, response) -> float | bool`` where ``row`` is the dataset row (reference
fields such as ``expected``). Verifiers are exact, free and instant, so they are the default for
tasks with a checkable answer. Built-ins: :func:`exact_match`, :func:`regex`, :func:`json_valid`
and a weighted :func:`combine`. :class:`JudgeResult` and the :class:`Judge` protocol (a stable
``id`` plus ``async score(prompt, response)``) live here too, because every judge, including the
LLM judge, answers with them; :class:`VerifierJudge` makes a verifier a :class:`Judge`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from jupyter_distill.core.errors import JudgeError
from jupyter_distill.core.hashing import canonical_json, content_hash
from jupyter_distill.core.store import PromptRecord
from jupyter_distill.judging.schema_score import compile_schema, is_schema_keyword

VerifierFn = Callable[[dict[str, Any], str], "float | bool"]
"""A verifier: ``(row, response) -> float | bool``; ``row`` is the dataset row dict."""


# ---------------------------------------------------------------------------- results and protocol
@dataclass
class JudgeResult:
    """One verdict. ``score`` is in [0, 1], or ``None`` when ``status == "failed"``."""

    score: float | None
    rationale: str = ""
    raw: str = ""
    cost: float = 0.0
    status: Literal["ok", "failed"] = "ok"

    @classmethod
    def failed(cls, reason: str, raw: str = "", cost: float = 0.0) -> JudgeResult:
        return cls(score=None, rationale=reason, raw=raw, cost=cost, status="failed")


@runtime_checkable
class Judge(Protocol):
    """Anything with a stable identity that can score a response to a prompt."""

    id: str

    async def score(self, prompt: PromptRecord, response: str) -> JudgeResult: ...


# ---------------------------------------------------------------------------- verifiers
class Verifier:
    """A named verifier callable: ``Verifier(fn, id)`` is itself ``(row, response) -> float``.

    The ``id`` is what judgments are keyed by, so it must change when the check changes: the
    built-ins spell out their arguments; a plain function gets its qualified name plus a hash of
    its source (or bytecode), so editing the function re-judges, and re-running the cell does not.
    """

    def __init__(self, fn: VerifierFn, id: str, description: str = ""):
        self.fn = fn
        self.id = id
        self.description = description or id

    def __call__(self, row: dict[str, Any], response: str) -> float:
        return _as_score(self.fn(row, response), self.id)

    def __repr__(self) -> str:
        return f"Verifier({self.id})"


def verifier(fn: VerifierFn | None = None, *, id: str | None = None) -> Any:
    """Wrap a callable as a :class:`Verifier`; usable as ``@verifier`` or ``@verifier(id="...")``.

    Giving an explicit ``id`` pins the cache key: judgments survive edits of the function body.
    """

    def wrap(f: VerifierFn) -> Verifier:
        if isinstance(f, Verifier) and id is None:
            return f
        if not callable(f):
            raise JudgeError(
                f"judge {f!r} is not callable. Fix: pass a function (row, response) -> float | bool, "
                "a model spec string, or None for the teacher as judge.",
                field="judge",
                value=repr(f),
            )
        return Verifier(f, id or callable_id(f))

    return wrap(fn) if fn is not None else wrap


def callable_id(fn: Callable[..., Any], _depth: int = 0) -> str:
    """A stable identity for a user function: explicit ``.id``, else its name plus a hash of its
    code *and* of the values it closes over (defaults, closure cells, a callable object's
    attributes, a partial's arguments).

    The values matter: ``make_check(0.5)`` and ``make_check(0.9)`` share their source, and must
    not share cached judgments. A value whose repr is not stable across processes (an object
    address) only costs a re-judgment, never a wrong cache hit.
    """
    explicit = getattr(fn, "id", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    depth = _depth + 1
    if isinstance(fn, functools.partial):
        inner = callable_id(fn.func, depth)
        args = content_hash("partial", _state_repr(fn.args, depth), _state_repr(fn.keywords, depth))
        return f"{inner}+{args[:12]}"
    target: Any = fn
    state: list[Any] = []
    if inspect.ismethod(fn):
        owner = fn.__self__
        target, state = fn.__func__, [_state_repr(vars(owner) if hasattr(owner, "__dict__") else None, depth)]
    elif not inspect.isfunction(fn) and callable(fn):
        target = type(fn).__call__
        state = [_state_repr(vars(fn) if hasattr(fn, "__dict__") else None, depth)]
    name = f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    try:
        code = inspect.getsource(target)
    except (OSError, TypeError):
        code_obj = getattr(target, "__code__", None)
        code = repr((code_obj.co_code, code_obj.co_consts)) if code_obj is not None else repr(fn)
    cells = getattr(target, "__closure__", None) or ()
    closure = []
    for cell in cells:
        try:
            closure.append(_state_repr(cell.cell_contents, depth))
        except ValueError:  # an empty cell
            closure.append(None)
    state += [
        _state_repr(getattr(target, "__defaults__", None), depth),
        _state_repr(getattr(target, "__kwdefaults__", None), depth),
    ]
    digest = hashlib.sha256((code + canonical_json([closure, state])).encode("utf-8", "replace")).hexdigest()[:12]
    return f"verifier:{name}#{digest}"


def _state_repr(value: Any, depth: int) -> Any:
    """A JSON-able stand-in for a closed-over value: functions by their id, the rest by JSON or repr.

    ``depth`` stops self-referencing closures (a recursive inner function) from recursing forever.
    """
    if isinstance(value, Verifier):
        return value.id
    if callable(value) and not isinstance(value, type):
        return callable_id(value, depth) if depth < 4 else getattr(value, "__qualname__", repr(type(value)))
    if isinstance(value, dict) and depth < 8:
        return {str(k): _state_repr(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple) and depth < 8:
        return [_state_repr(v, depth + 1) for v in value]
    if isinstance(value, re.Pattern):
        return ["re", value.pattern, value.flags]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _as_score(value: Any, who: str) -> float:
    """bool -> 1.0/0.0; numbers clipped to [0, 1]; anything else is the verifier's bug."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isnan(number):
            raise JudgeError(
                f"verifier {who} returned NaN. Fix: return a float in [0, 1] or a bool.",
                field="judge",
                value=who,
            )
        return min(1.0, max(0.0, number))
    try:  # numpy scalars and similar
        return _as_score(float(value), who)
    except (TypeError, ValueError):
        raise JudgeError(
            f"verifier {who} returned {value!r} ({type(value).__name__}). Fix: return a float in [0, 1] or a bool.",
            field="judge",
            value=who,
        ) from None


def _normalize_text(text: str) -> str:
    """Case, surrounding whitespace/quotes/final period and inner whitespace runs do not matter."""
    text = " ".join(str(text).split()).casefold()
    text = text.strip().strip("\"'`").strip()
    return text.rstrip(".").strip()


def _reference(row: Mapping[str, Any], field: str, who: str) -> Any:
    if field not in row:
        available = ", ".join(sorted(map(str, row))) or "none"
        raise JudgeError(
            f"{who} needs the dataset field {field!r}, but the row has only: {available}. Fix: add a "
            f"{field!r} column to the dataset or pass {who.split('(')[0]}(field=...) naming the column "
            "that holds the reference answer.",
            field="judge",
            value=field,
        )
    return row[field]


def exact_match(field: str = "expected", normalize: bool = True) -> Verifier:
    """1.0 when the response equals ``row[field]`` (any of them, when the field is a list).

    With ``normalize`` (default) case, whitespace runs, surrounding quotes and a final period are
    ignored: small models add them freely and they rarely change the meaning of a label.
    """
    name = f"exact_match(field={field!r}, normalize={normalize!r})"
    clean: Callable[[str], str] = _normalize_text if normalize else (lambda s: s)

    def check(row: dict[str, Any], response: str) -> bool:
        expected = _reference(row, field, name)
        options = expected if isinstance(expected, list | tuple) else [expected]
        got = clean(response)
        return any(got == clean(_plain(option)) for option in options)

    return Verifier(check, name)


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def regex(pattern: str, field: str | None = None, *, flags: int = 0, fullmatch: bool = False) -> Verifier:
    """Without ``field``: 1.0 when ``pattern`` is found in the response.

    With ``field``: the first match's first group (or the whole match when the pattern has no
    group) must equal ``row[field]`` after normalisation, e.g.
    ``regex(r"Answer:\\s*(\\w+)", field="expected")`` checks the final answer of a worked solution.
    """
    try:
        compiled = re.compile(pattern, flags)
    except re.error as exc:
        raise JudgeError(
            f"regex pattern {pattern!r} does not compile: {exc}. Fix: correct the pattern (use a raw "
            'string r"..." for backslashes).',
            field="judge",
            value=pattern,
        ) from None
    name = f"regex({pattern!r}, field={field!r}, flags={flags!r}, fullmatch={fullmatch!r})"

    def check(row: dict[str, Any], response: str) -> bool:
        match = compiled.fullmatch(response.strip()) if fullmatch else compiled.search(response)
        if match is None:
            return False
        if field is None:
            return True
        expected = _reference(row, field, name)
        found = match.group(1) if compiled.groups else match.group(0)
        options = expected if isinstance(expected, list | tuple) else [expected]
        return any(_normalize_text(found or "") == _normalize_text(_plain(o)) for o in options)

    return Verifier(check, name)


# -- JSON extraction and schema checking
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


def extract_json(text: str, *, strict: bool = False) -> Any:
    """The first JSON value in ``text``: code fences are tolerated, prose around an object too.

    Tries, in order: the whole text, each fenced block, then the first ``{`` that starts a
    decodable object. With ``strict`` only the whole text (or a single fenced block around it)
    counts. Raises ``ValueError`` with the reason when nothing decodes.
    """
    stripped = text.strip()
    candidates = [stripped]
    fences = _FENCE.findall(stripped)
    if strict:
        if len(fences) == 1 and stripped.startswith("```") and stripped.endswith("```"):
            candidates = [fences[0].strip()]
    else:
        candidates.extend(block.strip() for block in fences)
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
    if strict:
        raise ValueError("the response is not a single JSON value")
    decoder = json.JSONDecoder()
    for block in [*candidates[1:], stripped]:
        for match in re.finditer(r"\{", block):
            try:
                value, _ = decoder.raw_decode(block, match.start())
            except (json.JSONDecodeError, ValueError):
                continue
            if isinstance(value, dict):
                return value
    raise ValueError("no JSON object found in the response")


_PY_TYPES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _normalize_schema(schema: Mapping[str, Any] | None, required: Sequence[str] | None) -> dict[str, Any] | None:
    """Turn either accepted schema form into a JSON Schema (not yet checked)."""
    if schema is not None and not isinstance(schema, Mapping):
        raise JudgeError(
            f"json_valid schema must be a dict, got {schema!r} ({type(schema).__name__}). Fix: pass "
            '{field: python type} such as {"label": str}, or a JSON Schema such as {"type": "object", ...}.',
            field="schema",
            value=repr(schema),
            fix="pass a dict",
        )
    if required is not None and (isinstance(required, str) or not all(isinstance(name, str) for name in required)):
        raise JudgeError(
            f'json_valid required must be a list of field names, got {required!r}. Fix: e.g. required=["label"].',
            field="required",
            value=repr(required),
            fix="pass a list of strings",
        )
    if schema is None and not required:
        return None
    if schema is None:
        out: dict[str, Any] = {"type": "object", "properties": {}}
    elif _is_json_schema(schema):
        out = dict(schema)
    else:  # {field: python type or tuple of types}
        props: dict[str, Any] = {}
        for key, typ in schema.items():
            types = typ if isinstance(typ, tuple) else (typ,)
            names = []
            for t in types:
                if t not in _PY_TYPES:
                    raise JudgeError(
                        f"json_valid schema field {key!r} has type {t!r}; supported: str, int, float, bool, "
                        'list, dict, None. Fix: use one of those, or a JSON Schema such as {"type": ...}.',
                        field="schema",
                        value=key,
                    )
                names.append(_PY_TYPES[t])
            props[str(key)] = {"type": names if len(names) > 1 else names[0]}
        out = {"type": "object", "properties": props, "required": list(props)}
    if required:
        out["required"] = list(dict.fromkeys([*out.get("required", []), *required]))
    return out


def _is_json_schema(schema: Mapping[str, Any]) -> bool:
    """A JSON Schema unless it maps field names to Python types: ``type`` holds a type *name*,
    ``properties`` a dict, or some key is a JSON Schema keyword (``$ref``, ``anyOf``, ``enum``...)
    whose value is not a Python type."""
    if isinstance(schema.get("type"), str | list) or isinstance(schema.get("properties"), Mapping):
        return True
    return any(
        isinstance(key, str) and is_schema_keyword(key) and not isinstance(value, type | tuple)
        for key, value in schema.items()
    )


def json_valid(
    schema: Mapping[str, Any] | None = None,
    required: Sequence[str] | None = None,
    *,
    strict: bool = False,
    partial: bool = True,
) -> Verifier:
    """1.0 when the response holds valid JSON that satisfies ``schema``.

    ``schema`` is either ``{field: python type}`` (every field required) or a JSON Schema, checked
    by the ``jsonschema`` package (Draft 2020-12: ``pattern``, ``minimum``, ``$ref`` to ``$defs``
    and every other keyword count). ``required`` adds required fields. A schema that is not valid
    JSON Schema, or whose ``$ref`` does not resolve, raises ``JudgeError`` here, before any request.
    The first JSON value is extracted from the text, code fences and surrounding prose tolerated,
    unless ``strict``. With ``partial`` (default) a parsed value that fails the schema scores
    ``0.5 * share of the schema's assertions passed`` (see :mod:`jupyter_distill.judging.schema_score`):
    always below 0.5 so it never passes, yet best-of-N can still prefer the nearly right
    candidate. Unparsable text scores 0.
    """
    normalized = _normalize_schema(schema, required)
    compiled = compile_schema(normalized) if normalized is not None else None
    name = (
        f"json_valid(schema={canonical_json(normalized) if normalized else None}, strict={strict!r}, "
        f"partial={partial!r}, draft=2020-12)"
    )

    def check(row: dict[str, Any], response: str) -> float:
        try:
            value = extract_json(response, strict=strict)
        except ValueError:
            return 0.0
        if compiled is None:
            return 1.0
        verdict = compiled.score(value)
        if verdict.valid:
            return 1.0
        return 0.5 * verdict.share if partial else 0.0

    return Verifier(check, name)


def combine(*verifiers: VerifierFn, weights: Sequence[float] | None = None) -> Verifier:
    """The weighted mean of several verifiers (equal weights by default), e.g.
    ``combine(json_valid({"label": str}), exact_match(), weights=[1, 3])``.
    """
    if not verifiers:
        raise JudgeError(
            "combine() needs at least one verifier. Fix: pass verifiers, e.g. combine(json_valid(), exact_match()).",
            field="judge",
            value="combine()",
        )
    parts = [verifier(v) for v in verifiers]
    if weights is None:
        weights = [1.0] * len(parts)
    weights = [float(w) for w in weights]
    if len(weights) != len(parts):
        raise JudgeError(
            f"combine() got {len(parts)} verifiers but {len(weights)} weights. Fix: give one weight per verifier.",
            field="weights",
            value=list(weights),
        )
    if any(w < 0 or math.isnan(w) for w in weights) or sum(weights) <= 0:
        raise JudgeError(
            f"combine() weights must be >= 0 with a positive sum, got {list(weights)}. Fix: e.g. weights=[1, 1].",
            field="weights",
            value=list(weights),
        )
    total = sum(weights)
    name = "combine(" + ", ".join(f"{w:g}*{p.id}" for w, p in zip(weights, parts, strict=True)) + ")"

    def check(row: dict[str, Any], response: str) -> float:
        return sum(w * p(row, response) for w, p in zip(weights, parts, strict=True)) / total

    return Verifier(check, name)


class VerifierJudge:
    """A :class:`Judge` around a verifier; an exception becomes a failed judgment, not a crash."""

    def __init__(self, fn: VerifierFn):
        self.verifier = verifier(fn)
        self.id = self.verifier.id

    async def score(self, prompt: PromptRecord, response: str) -> JudgeResult:
        try:
            value = self.verifier(dict(prompt.row), response)
        except Exception as exc:  # a user's verifier may raise anything; record it, go on
            return JudgeResult.failed(f"verifier {self.id} raised {type(exc).__name__}: {exc}")
        return JudgeResult(score=value, rationale=f"{self.verifier.description} -> {value:g}")

    def __repr__(self) -> str:
        return f"VerifierJudge({self.id})"


__all__ = [
    "Judge",
    "JudgeResult",
    "Verifier",
    "VerifierFn",
    "VerifierJudge",
    "callable_id",
    "combine",
    "exact_match",
    "extract_json",
    "json_valid",
    "regex",
    "verifier",
]
