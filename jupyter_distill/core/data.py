"""Datasets in, chat prompts out.

Whatever the user hands over (a .jsonl/.csv/.parquet/.json path, a list of dicts or strings, a
pandas DataFrame, a ``datasets.Dataset`` or a callable returning rows) becomes a list of
:class:`~jupyter_distill.core.store.PromptRecord`: chat messages plus the original row, so verifiers
can read reference fields such as ``expected``. Prompts are deduplicated by content hash and
split into train/held-out by a seeded hash, so the split never changes between re-runs.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jupyter_distill.core.config import short_repr
from jupyter_distill.core.curated import COLUMNS as CURATED_COLUMNS
from jupyter_distill.core.curated import CuratedPair, from_row, is_curated
from jupyter_distill.core.errors import DatasetError, DistillError
from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.store import PromptRecord

ROLES = ("system", "user", "assistant", "tool")
# A row's reference fields are stored as JSON and handed to verifiers: bound what one row may
# expand to (shared references count every time they are reached, as they will in JSON).
MAX_ROW_VALUES = 100_000
MAX_ROW_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def load_dataset(
    source: Any,
    *,
    prompt_field: str = "prompt",
    system_prompt: str | None = None,
    max_prompts: int | None = None,
    pairs: dict[str, list[CuratedPair]] | None = None,
) -> list[PromptRecord]:
    """Read ``source`` into deduplicated prompts, in input order.

    Rows that carry a made pair (a ``chosen`` text: the curated rows ``jd.export_dataset``
    writes, see :mod:`jupyter_distill.core.curated`) are collected into ``pairs`` by prompt hash
    when a dict is given; their pair and provenance columns are not reference fields.
    """
    rows = _guarded(_read_rows(source), source)
    prompts: list[PromptRecord] = []
    seen: set[str] = set()
    full = False
    for index, raw in enumerate(rows, start=1):
        row = _as_row(raw, index, prompt_field)
        messages = _messages(row, index, prompt_field, system_prompt)
        digest = content_hash("prompt", messages)
        if full and digest not in seen:
            break  # the last kept prompt's further pairs are read up to here
        if pairs is not None and is_curated(row):
            pairs.setdefault(digest, []).append(from_row(row, digest, len(pairs.get(digest, []))))
        if digest in seen:
            continue
        seen.add(digest)
        reference = _reference(row, index, prompt_field)
        prompts.append(PromptRecord(hash=digest, messages=messages, row=reference, position=len(prompts)))
        if max_prompts is not None and len(prompts) >= max_prompts:
            full = True
            if pairs is None:
                break
    if not prompts:
        raise DatasetError(
            f"the dataset {_describe(source)} has no rows. Fix: give at least one row with a "
            f"'{prompt_field}' string or a 'messages' list.",
            field="dataset",
            value=_describe(source),
        )
    return prompts


def split(prompts: Sequence[PromptRecord], heldout_fraction: float, seed: int = 0) -> list[PromptRecord]:
    """Mark a deterministic, seeded share of prompts as held-out; returns the same records.

    The order is by ``hash(seed, prompt hash)``, so adding rows to a dataset keeps every old
    prompt on its side unless the held-out count itself changes.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise DatasetError(
            f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}. Fix: use e.g. 0.2.",
            field="heldout_fraction",
            value=heldout_fraction,
        )
    count = round(len(prompts) * heldout_fraction)
    if heldout_fraction > 0 and len(prompts) >= 2:
        count = min(max(count, 1), len(prompts) - 1)
    order = sorted(prompts, key=lambda p: content_hash("split", seed, p.hash))
    heldout = {p.hash for p in order[:count]}
    for prompt in prompts:
        prompt.split = "heldout" if prompt.hash in heldout else "train"
    return list(prompts)


# ---------------------------------------------------------------------- reading
def _read_rows(source: Any) -> Iterable[Any]:
    """The rows of ``source``, lazily where it is an iterable (``_guarded`` reports its errors)."""
    if source is None:
        raise DatasetError(
            "no dataset given. Fix: pass dataset='data.jsonl', a list of dicts, a DataFrame or a callable.",
            field="dataset",
            value=None,
        )
    if isinstance(source, str | Path):
        return _read_path(Path(source))
    if callable(source) and not _is_frame(source):
        return _read_rows(_call(source))
    if _is_frame(source):  # pandas.DataFrame
        try:
            return source.to_dict("records")
        except Exception as exc:
            raise DatasetError(
                f"the DataFrame cannot be turned into rows: {type(exc).__name__}: {_short(exc)}. "
                "Fix: give it unique, plain column names.",
                field="dataset",
                value="DataFrame",
            ) from None
    if isinstance(source, dict):
        raise DatasetError(
            "the dataset is a single dict. Fix: wrap it in a list: dataset=[{...}].", field="dataset", value="dict"
        )
    if isinstance(source, Iterable):  # lists, generators, datasets.Dataset
        return source
    raise DatasetError(
        f"cannot read a dataset from a {type(source).__name__}. Fix: pass a path (.jsonl/.csv/.parquet/.json), "
        "a list of dicts, a pandas DataFrame, a datasets.Dataset or a callable.",
        field="dataset",
        value=type(source).__name__,
    )


def _resolved(path: Path) -> str:
    """`` (looked for /abs/path)`` for a relative path: where the kernel actually looked."""
    if path.is_absolute():
        return ""
    try:
        return f" (looked for {_short(str(path.resolve()))})"
    except (OSError, RuntimeError, ValueError):
        return ""


def _is_frame(source: Any) -> bool:
    return hasattr(source, "to_dict") and hasattr(source, "columns")


def _call(source: Callable[[], Any]) -> Any:
    """Call the user's dataset function once; what it returns must itself be a dataset, not a function."""
    name = _short(getattr(source, "__name__", None) or type(source).__name__)
    try:
        produced = source()
    except Exception as exc:  # the user's callable; report what it raised
        raise DatasetError(
            f"the dataset callable {name!r} raised {type(exc).__name__}: {_short(exc)}. "
            "Fix: make it return an iterable of dicts.",
            field="dataset",
            value=name,
        ) from exc
    if produced is None or (callable(produced) and not _is_frame(produced)):
        what = "None" if produced is None else "another callable"
        raise DatasetError(
            f"the dataset callable {name!r} returned {what}. Fix: make it return the rows (a list of dicts, a "
            "DataFrame, a datasets.Dataset or a path), e.g. `return [{'prompt': ...}]`.",
            field="dataset",
            value=name,
        )
    return produced


def _guarded(rows: Iterable[Any], source: Any) -> Iterator[Any]:
    """Iterate the user's rows; an error their iterable raises (a generator failing) is a DatasetError."""
    count = 0
    try:
        iterator = iter(rows)
        while True:
            try:
                row = next(iterator)
            except StopIteration:
                return
            count += 1
            yield row
    except DistillError:
        raise
    except Exception as exc:
        raise DatasetError(
            f"reading the dataset {_describe(source)} failed after {count} row(s): {type(exc).__name__}: "
            f"{_short(exc)}. Fix: make the dataset (its generator or iterable) produce every row without raising.",
            field="dataset",
            value=_describe(source),
        ) from None


def check_source(source: Any) -> None:
    """Raise the error :func:`load_dataset` would raise for a missing or unusable dataset *path*.

    Cheap (no file is read), so a front end can refuse a typo in ``dataset:`` before it starts a
    background run and draws a dashboard for it. Other sources (lists, frames, callables) are
    left to :func:`load_dataset`: checking them means reading them.
    """
    if source is None:
        _read_rows(source)  # raises the "no dataset given" error
    if isinstance(source, str | Path):
        _check_path(Path(source))


def _check_path(path: Path) -> None:
    try:
        exists, is_file = path.exists(), path.is_file()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the file system
        raise DatasetError(
            f"dataset path {_short(str(path))} cannot be used: {_short(exc)}. Fix: check the path.",
            field="dataset",
            value=_short(str(path)),
        ) from None
    if not exists:
        raise DatasetError(
            f"dataset file {_short(str(path))} does not exist{_resolved(path)}. Fix: check the path (relative "
            "paths start at the notebook's folder, the kernel's working directory).",
            field="dataset",
            value=str(path),
        )
    if not is_file:
        raise DatasetError(
            f"dataset path {_short(str(path))} is not a file (a folder?). Fix: pass the file itself, "
            "e.g. data/train.jsonl.",
            field="dataset",
            value=str(path),
        )


def _read_path(path: Path) -> list[Any]:
    name = _short(path.name, quote=False)
    _check_path(path)
    try:
        return _read_file(path)
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{name} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r}). "
            "Fix: save the file as UTF-8.",
            field="dataset",
            value=str(path),
        ) from None
    except RecursionError:
        raise DatasetError(
            f"{name}: a value nests too deeply to read. Fix: flatten the rows.", field="dataset", value=str(path)
        ) from None
    except OSError as exc:
        raise DatasetError(
            f"{name} cannot be read: {exc.strerror or _short(exc)}. Fix: check the file and its permissions.",
            field="dataset",
            value=str(path),
        ) from None


def _read_file(path: Path) -> list[Any]:
    suffix = path.suffix.lower()
    name = _short(path.name, quote=False)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        text = path.read_text(encoding="utf-8")  # not UTF-8: reported by _read_path
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{name}: invalid JSON on line {exc.lineno}: {exc.msg}. Fix: the file must hold a JSON list.",
                field="dataset",
                value=str(path),
            ) from None
        except ValueError as exc:  # an integer beyond Python's digit limit
            raise DatasetError(
                f"{name}: {_short(exc)}. Fix: write such numbers as strings.", field="dataset", value=str(path)
            ) from None
        if not isinstance(data, list):
            raise DatasetError(
                f"{name} holds a JSON {type(data).__name__}, not a list of rows. Fix: use a list or .jsonl.",
                field="dataset",
                value=str(path),
            )
        return data
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _read_parquet(path)
    raise DatasetError(
        f"unsupported dataset file type {_short(suffix)} ({name}). Fix: use .jsonl, .json, .csv, .tsv or .parquet.",
        field="dataset",
        value=str(path),
    )


def _read_csv(path: Path, delimiter: str) -> list[Any]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        try:
            return list(reader)
        except csv.Error as exc:  # a field over csv.field_size_limit(), a NUL byte, a bad quote
            raise DatasetError(
                f"{_short(path.name, quote=False)}: line {reader.line_num}: {_short(exc)}. Fix: fields are limited "
                f"to {csv.field_size_limit():,} characters and may not hold NUL bytes; put long texts in a .jsonl "
                "file instead.",
                field="dataset",
                value=f"{path.name}:{reader.line_num}",
            ) from None


def _read_parquet(path: Path) -> list[Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            "reading .parquet needs pyarrow. Fix: pip install pyarrow.", field="dataset", value=str(path)
        ) from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a corrupt file
        raise DatasetError(
            f"{_short(path.name, quote=False)} is not a readable parquet file: {type(exc).__name__}: {_short(exc)}. "
            "Fix: write it again (e.g. DataFrame.to_parquet) or use .jsonl.",
            field="dataset",
            value=str(path),
        ) from None


def _read_jsonl(path: Path) -> list[Any]:
    rows: list[Any] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{_short(path.name, quote=False)}: bad JSON on line {number}: {exc.msg} (column {exc.colno}). "
                    "Fix: each line must be one JSON object.",
                    field="dataset",
                    value=f"{path.name}:{number}",
                ) from None
            except ValueError as exc:  # an integer beyond Python's digit limit
                raise DatasetError(
                    f"{_short(path.name, quote=False)}: line {number}: {_short(exc)}. Fix: write such numbers as "
                    "strings.",
                    field="dataset",
                    value=f"{path.name}:{number}",
                ) from None
    return rows


# ---------------------------------------------------------------------- rows
def _as_row(raw: Any, index: int, prompt_field: str) -> dict[str, Any]:
    if isinstance(raw, str):
        return {prompt_field: raw}
    if isinstance(raw, dict):
        return raw
    raise DatasetError(
        f"row {index} is a {type(raw).__name__}, not an object. Fix: each row must be a dict with a "
        f"'{prompt_field}' string or a 'messages' list (or a plain string prompt).",
        field="dataset",
        value=f"row {index}",
    )


def _messages(row: dict[str, Any], index: int, prompt_field: str, system_prompt: str | None) -> list[dict[str, str]]:
    if "messages" in row and row["messages"] is not None and prompt_field not in row:
        messages = _check_messages(row["messages"], index)
    elif isinstance(row.get(prompt_field), list):  # a conversational prompt: a list of messages
        messages = _check_messages(row[prompt_field], index)
    elif prompt_field in row:
        value = row[prompt_field]
        if not isinstance(value, str):
            raise DatasetError(
                f"row {index}: '{prompt_field}' is a {type(value).__name__}, not a string. "
                "Fix: make every prompt a string.",
                field=prompt_field,
                value=f"row {index}",
            )
        if not value.strip():
            raise DatasetError(
                f"row {index}: '{prompt_field}' is empty. Fix: remove the row or give it text.",
                field=prompt_field,
                value=f"row {index}",
            )
        messages = [{"role": "user", "content": _check_text(value, index, f"'{prompt_field}'", prompt_field)}]
    else:
        fields = _short(", ".join(sorted(_as_text(k) for k in list(row)[:20])), quote=False) or "none"
        raise DatasetError(
            f"row {index} has no '{prompt_field}' field and no 'messages' (fields: {fields}). "
            f"Fix: rename the prompt column to '{prompt_field}' or pass prompt_field='<your column>'.",
            field=prompt_field,
            value=f"row {index}",
        )
    if system_prompt and messages[0]["role"] != "system":
        _check_text(system_prompt, index, "the system_prompt", "system_prompt")
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _check_messages(messages: Any, index: int) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DatasetError(
            f"row {index}: 'messages' must be a non-empty list of {{role, content}} objects.",
            field="messages",
            value=f"row {index}",
        )
    clean: list[dict[str, str]] = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DatasetError(
                f"row {index}, message {number}: needs 'role' and 'content'. Fix: e.g. "
                '{"role": "user", "content": "..."}.',
                field="messages",
                value=f"row {index}",
            )
        if not (isinstance(message["role"], str) and message["role"] in ROLES):
            raise DatasetError(
                f"row {index}, message {number}: unknown role {_short(message['role'])}. "
                f"Fix: use one of {', '.join(ROLES)}.",
                field="messages",
                value=f"row {index}",
            )
        if not isinstance(message["content"], str):
            raise DatasetError(
                f"row {index}, message {number}: content is a {type(message['content']).__name__}, not a string.",
                field="messages",
                value=f"row {index}",
            )
        _check_text(message["content"], index, f"message {number}", "messages")
        clean.append({"role": message["role"], "content": message["content"]})
    if clean[-1]["role"] == "assistant":
        raise DatasetError(
            f"row {index}: the last message is the assistant's; the prompt must end with a user message. "
            "Fix: drop the trailing assistant message (put the reference answer in a field such as 'expected').",
            field="messages",
            value=f"row {index}",
        )
    return clean


def _check_text(text: str, index: int, what: str, field: str) -> str:
    """Refuse a lone surrogate: it cannot be encoded as UTF-8 for the store, a hash or a request."""
    found = _SURROGATE.search(text)
    if found is not None:
        raise DatasetError(
            f"row {index}: {what} holds a lone surrogate {found.group()!r} at character {found.start()}, which is "
            "not valid Unicode text. Fix: repair the text (e.g. decode it with errors='replace').",
            field=field,
            value=f"row {index}",
        )
    return text


def _reference(row: dict[str, Any], index: int, prompt_field: str) -> dict[str, Any]:
    """The row's other fields as JSON-safe values, for verifiers and the store, within a bound."""
    budget = [MAX_ROW_VALUES]
    skip = {prompt_field, "messages", *(CURATED_COLUMNS if is_curated(row) else ())}
    return {_key(k, index): _json_safe(v, index, budget, 1) for k, v in row.items() if k not in skip}


def _key(key: Any, index: int) -> str:
    return _check_text(key if isinstance(key, str) else _as_text(key), index, "a field name", "dataset")


def _as_text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # a user object whose __str__ fails
        return f"<{type(value).__name__}>"


def _json_safe(value: Any, index: int, budget: list[int], depth: int) -> Any:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_ROW_DEPTH:
        bound = (
            f"more than {MAX_ROW_VALUES:,} values (a shared list or dict counts each time it is reached)"
            if budget[0] < 0
            else f"values nested deeper than {MAX_ROW_DEPTH} levels"
        )
        raise DatasetError(
            f"row {index} holds {bound}. Fix: keep the reference fields of a row small; put large data in files "
            "and their paths in the row.",
            field="dataset",
            value=f"row {index}",
        )
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        return _check_text(value, index, "a field", "dataset")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 14_000:
        return _check_text(f"<integer of {value.bit_length()} bits>", index, "a field", "dataset")
    if isinstance(value, int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {_key(k, index): _json_safe(v, index, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v, index, budget, depth + 1) for v in value]
    try:
        as_list = value.tolist() if hasattr(value, "tolist") else None
    except Exception:
        as_list = None
    if as_list is not None:
        return _json_safe(as_list, index, budget, depth + 1)
    return _check_text(_as_text(value), index, "a field", "dataset")


def _short(value: Any, *, quote: bool = True) -> str:
    """A bounded text of a value or an exception for an error message."""
    if isinstance(value, BaseException):
        return short_repr(_as_text(value), 200, quote=False)
    return short_repr(value, quote=quote)


def _describe(source: Any) -> str:
    if isinstance(source, str | Path):
        return _short(str(source))
    if callable(source) and not _is_frame(source):
        return f"returned by {_short(getattr(source, '__name__', None) or 'the callable', quote=False)}"
    return f"({type(source).__name__})"
