"""Write a run's curated pairs as a dataset folder the Hugging Face Hub takes as it is.

    <folder>/README.md              dataset card: YAML front matter (configs/data_files, licence,
                                    task categories), the counts, the judge and the rights ledger
    <folder>/data/train.jsonl       one curated row per training pair (or data/train.parquet)

The rows are in :mod:`jupyter_distill.core.curated`'s format, so ``jd.distill(dataset=<the data
file>)`` trains on them again without a teacher call. The front matter is written by
``huggingface_hub``'s own ``DatasetCardData``, the same code the Hub uses to read it back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import ExportError
from jupyter_distill.core.hashing import file_sha256
from jupyter_distill.export.card import ledger_markdown

FORMATS = ("jsonl", "parquet")


def check_format(format: str) -> str:
    """``"jsonl"`` or ``"parquet"``; anything else is refused before a file is written."""
    name = str(format).lower().lstrip(".")
    if name not in FORMATS:
        raise ExportError(
            f"format={format!r} is not a dataset format this export writes. Fix: use format='jsonl' or "
            "format='parquet'.",
            field="format",
            value=format,
        )
    return name


def _write_jsonl(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_parquet(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist(list(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # reference fields of mixed types across rows (a number here, a string there): as JSON text
        fixed = [
            {k: v if k == "prompt" or isinstance(v, str | None) else json.dumps(v) for k, v in r.items()} for r in rows
        ]
        table = pa.Table.from_pylist(fixed)
    pq.write_table(table, path)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def dataset_licence(ledger: dict[str, Any] | None) -> str:
    """The card's ``license``: the teachers' one licence when they agree on a known one, else ``other``.

    The texts are the teachers' outputs, so their terms, not the student's licence, bind the data;
    with several or unknown ones the card says ``other`` and its ledger section lists each.
    """
    found = {str(t.get("licence")) for t in (ledger or {}).get("teachers") or [] if t.get("licence")}
    return found.pop() if len(found) == 1 and "unknown" not in found else "other"


def write_dataset(
    rows: Sequence[dict[str, Any]],
    folder: str | Path,
    *,
    format: str = "jsonl",
    name: str,
    ledger: dict[str, Any] | None,
    judge: str | None,
    counts: dict[str, Any],
) -> Path:
    """Write ``rows`` and the dataset card into ``folder``; returns the data file written.

    Each file is written under a temporary name and renamed, so an interrupted export leaves the
    previous export (or nothing) rather than half a file.
    """
    from huggingface_hub import DatasetCardData

    fmt = check_format(format)
    if not rows:
        raise ExportError(
            f"run {name!r} has no training pairs to export. Fix: export a run that reached training "
            "(its pairs are made after judging and review).",
            field="run",
            value=name,
        )
    folder = Path(folder).expanduser()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    data = folder / "data" / f"train.{fmt}"
    tmp = data.with_name(f".{data.name}.tmp")
    (_write_jsonl if fmt == "jsonl" else _write_parquet)(rows, tmp)
    os.replace(tmp, data)
    for stale in FORMATS:  # a folder re-exported in the other format must not list two train files
        if stale != fmt:
            (folder / "data" / f"train.{stale}").unlink(missing_ok=True)

    licence = dataset_licence(ledger)
    extra: dict[str, Any] = {"license_name": "teacher-terms", "license_link": "README.md"} if licence == "other" else {}
    card_data = DatasetCardData(
        license=licence,
        task_categories=["text-generation"],
        language=None,
        pretty_name=f"{name} (curated by jupyter-distill)",
        size_categories=[_size_category(len(rows))],
        tags=["distillation", "jupyter-distill", "preference", "dpo"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": f"data/train.{fmt}"}]}],
        **extra,
    )
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        f"# {name}",
        "",
        "Training pairs curated by jupyter-distill: teacher "
        "samples ranked by a judge and, where a human reviewed them, by that review. Each row holds the prompt "
        "(chat messages), the chosen and rejected answers, their scores, the human decision and where the chosen "
        "answer came from (teacher, provider, terms verdict, sample hash, time).",
        "",
        'Train on it again without calling a teacher: `jd.distill(dataset="data/train.' + fmt + '", judge=...)`.',
        "",
        "## Counts",
        "",
        *[f"- {k.replace('_', ' ')}: {v}" for k, v in counts.items()],
        f"- file: `data/train.{fmt}`, sha256 `{file_sha256(data)}`",
        "",
        "## Judge",
        "",
        f"`{judge or 'not recorded'}`",
        "",
        *ledger_markdown(ledger),
    ]
    card = folder / "README.md"
    tmp_card = card.with_name(f".{card.name}.tmp")
    tmp_card.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp_card, card)
    return data


__all__ = ["FORMATS", "check_format", "dataset_licence", "write_dataset"]
