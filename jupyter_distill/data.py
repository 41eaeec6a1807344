"""Datasets in, chat prompts out.

Whatever the user hands over (a .jsonl/.csv/.parquet/.json path, a list of dicts or strings, a
pandas DataFrame, a ``datasets.Dataset`` or a callable returning rows) becomes a list of
:class:`~jupyter_distill.store.PromptRecord`: chat messages plus the original row, so verifiers
can read reference fields such as ``expected``. Prompts are deduplicated by content hash and
split into train/held-out by a seeded hash, so the split never changes between re-runs.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from jupyter_distill.errors import DatasetError
from jupyter_distill.hashing import content_hash
from jupyter_distill.store import PromptRecord

ROLES = ("system", "user", "assistant", "tool")


def load_dataset(
    source: Any,
    *,
    prompt_field: str = "prompt",
    system_prompt: str | None = None,
    max_prompts: int | None = None,
) -> list[PromptRecord]:
    """Read ``source`` into deduplicated prompts, in input order."""
    rows = _read_rows(source)
    prompts: list[PromptRecord] = []
    seen: set[str] = set()
    for index, raw in enumerate(rows, start=1):
        row = _as_row(raw, index, prompt_field)
        messages = _messages(row, index, prompt_field, system_prompt)
        digest = content_hash("prompt", messages)
        if digest in seen:
            continue
        seen.add(digest)
        reference = {k: _json_safe(v) for k, v in row.items() if k not in (prompt_field, "messages")}
        prompts.append(PromptRecord(hash=digest, messages=messages, row=reference, position=len(prompts)))
        if max_prompts is not None and len(prompts) >= max_prompts:
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
    if source is None:
        raise DatasetError(
            "no dataset given. Fix: pass dataset='data.jsonl', a list of dicts, a DataFrame or a callable.",
            field="dataset",
            value=None,
        )
    if isinstance(source, str | Path):
        return _read_path(Path(source))
    if callable(source) and not hasattr(source, "to_dict"):
        try:
            produced = source()
        except Exception as exc:  # the user's callable; report what it raised
            raise DatasetError(
                f"the dataset callable {getattr(source, '__name__', source)!r} raised {type(exc).__name__}: {exc}. "
                "Fix: make it return an iterable of dicts.",
                field="dataset",
                value=repr(source),
            ) from exc
        return _read_rows(produced) if isinstance(produced, str | Path) else list(produced)
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas.DataFrame
        return source.to_dict("records")
    if hasattr(source, "features") and hasattr(source, "__iter__"):  # datasets.Dataset
        return list(source)
    if isinstance(source, dict):
        raise DatasetError(
            "the dataset is a single dict. Fix: wrap it in a list: dataset=[{...}].", field="dataset", value="dict"
        )
    if isinstance(source, Iterable):
        return list(source)
    raise DatasetError(
        f"cannot read a dataset from a {type(source).__name__}. Fix: pass a path (.jsonl/.csv/.parquet/.json), "
        "a list of dicts, a pandas DataFrame, a datasets.Dataset or a callable.",
        field="dataset",
        value=type(source).__name__,
    )


def _read_path(path: Path) -> list[Any]:
    if not path.exists():
        raise DatasetError(
            f"dataset file {str(path)!r} does not exist. Fix: check the path (relative paths start at the "
            "notebook's folder).",
            field="dataset",
            value=str(path),
        )
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{path.name}: invalid JSON on line {exc.lineno}: {exc.msg}. Fix: the file must hold a JSON list.",
                field="dataset",
                value=str(path),
            ) from None
        if not isinstance(data, list):
            raise DatasetError(
                f"{path.name} holds a JSON {type(data).__name__}, not a list of rows. Fix: use a list or .jsonl.",
                field="dataset",
                value=str(path),
            )
        return data
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DatasetError(
                "reading .parquet needs pyarrow. Fix: pip install pyarrow.", field="dataset", value=str(path)
            ) from None
        return pq.read_table(path).to_pylist()
    raise DatasetError(
        f"unsupported dataset file type {suffix!r} ({path.name}). Fix: use .jsonl, .json, .csv, .tsv or .parquet.",
        field="dataset",
        value=str(path),
    )


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
                    f"{path.name}: bad JSON on line {number}: {exc.msg} (column {exc.colno}). "
                    "Fix: each line must be one JSON object.",
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
        messages = [{"role": "user", "content": value}]
    else:
        fields = ", ".join(sorted(map(str, row))) or "none"
        raise DatasetError(
            f"row {index} has no '{prompt_field}' field and no 'messages' (fields: {fields}). "
            f"Fix: rename the prompt column to '{prompt_field}' or pass prompt_field='<your column>'.",
            field=prompt_field,
            value=f"row {index}",
        )
    if system_prompt and messages[0]["role"] != "system":
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
        if message["role"] not in ROLES:
            raise DatasetError(
                f"row {index}, message {number}: unknown role {message['role']!r}. Fix: use one of {', '.join(ROLES)}.",
                field="messages",
                value=f"row {index}",
            )
        if not isinstance(message["content"], str):
            raise DatasetError(
                f"row {index}, message {number}: content is a {type(message['content']).__name__}, not a string.",
                field="messages",
                value=f"row {index}",
            )
        clean.append({"role": message["role"], "content": message["content"]})
    if clean[-1]["role"] == "assistant":
        raise DatasetError(
            f"row {index}: the last message is the assistant's; the prompt must end with a user message. "
            "Fix: drop the trailing assistant message (put the reference answer in a field such as 'expected').",
            field="messages",
            value=f"row {index}",
        )
    return clean


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    return str(value)


def _describe(source: Any) -> str:
    if isinstance(source, str | Path):
        return repr(str(source))
    if isinstance(source, Callable):  # type: ignore[arg-type]
        return f"returned by {getattr(source, '__name__', 'the callable')}"
    return f"({type(source).__name__})"
