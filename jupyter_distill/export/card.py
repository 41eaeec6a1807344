"""Say where an exported model came from: the model card, the provenance summary and its GGUF keys.

The licence chain (teacher terms, student base licence, dataset) and the run's spend are read from
the run store and written both as README.md and as GGUF header keys, so the provenance travels
with the file even when the card does not. The run's rights ledger (per teacher: samples, provider,
endpoint, terms version and verdict; the student's base licence; run id; dataset hash) is written
the same way, in one form (:func:`travelling_ledger`) shared by the model card, the GGUF header
(``jupyter_distill.ledger``) and the dataset card.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

#: GGUF header key holding the travelling rights ledger as JSON.
LEDGER_KEY = "jupyter_distill.ledger"


# ---------------------------------------------------------------------------------------- rights ledger
def travelling_ledger(
    ledger: dict[str, Any] | None, *, run_id: str | None = None, dataset_hash: str | None = None
) -> dict[str, Any] | None:
    """The rights ledger (``Ledger.to_dict()``) in the form that leaves the machine with an artifact.

    Files are named by file name, hash and size (a local path says nothing to whoever downloads
    the model, and tells them about the exporter's disk); a terms change keeps its counts, not
    every sample key. The run id and the hash of the run's prompts are added, so a model card, a
    GGUF header and a dataset card made from one run can be matched to each other and to the run.
    Already travelling ledgers pass through unchanged (apart from a missing run id or hash).
    """
    if not ledger:
        return None
    out = {
        k: ledger.get(k)
        for k in ("format", "version", "subject", "runs", "teachers", "students", "aliases", "terms_version",
                  "ok", "generated_at", "notes")
    }  # fmt: skip
    out["run_id"] = ledger.get("run_id") or run_id or ((ledger.get("runs") or [None])[0])
    out["dataset_hash"] = ledger.get("dataset_hash") or dataset_hash
    out["files"] = [
        {"kind": f.get("kind"), "name": f.get("name") or Path(str(f.get("path") or "")).name,
         "sha256": f.get("sha256"), "size": f.get("size")}
        for f in ledger.get("files") or []
    ]  # fmt: skip
    out["changes"] = [
        {
            **{k: c.get(k) for k in ("teacher", "provider", "recorded_verdict", "current_verdict", "recorded_terms",
                                     "current_terms", "runs", "aliases")},
            "samples": c["samples"] if isinstance(c.get("samples"), int) else len(c.get("samples") or []),
            "trained_on": c["trained_on"] if isinstance(c.get("trained_on"), int) else len(c.get("trained_on") or []),
        }
        for c in ledger.get("changes") or []
    ]  # fmt: skip
    return out


def ledger_markdown(ledger: dict[str, Any] | None) -> list[str]:
    """The "Rights ledger" section of a model or dataset card: a table per teacher and the JSON itself."""
    if not ledger:
        return ["## Rights ledger", "", "Not recorded (the export was not given the run's ledger).", ""]
    lines = ["## Rights ledger", ""]
    lines.append(f"- run: `{ledger.get('run_id')}`; dataset hash: `{ledger.get('dataset_hash') or 'not recorded'}`")
    for s in ledger.get("students") or []:
        lines.append(f"- student base model `{s.get('student')}`, licence `{s.get('licence')}`")
    lines.append(f"- terms table: {ledger.get('terms_version')}; audited {ledger.get('generated_at') or 'n/a'}")
    lines += [
        "",
        "| teacher | provider | endpoint | terms version | verdict | trained on | sampled |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in ledger.get("teachers") or []:
        verdict = str(t.get("verdict")) + (" (authorised)" if t.get("authorization") else "")
        lines.append(
            f"| `{t.get('teacher')}` | {t.get('provider') or ''} | {t.get('endpoint') or ''} | "
            f"{t.get('terms_version')} | {verdict} | {t.get('trained_on')} | {t.get('sampled')} |"
        )
    for c in ledger.get("changes") or []:
        lines.append(
            f"\n**Terms changed** for `{c['teacher']}`: {c['recorded_verdict']} under {c['recorded_terms']} -> "
            f"{c['current_verdict']} under {c['current_terms']} ({c['trained_on']} trained-on samples)."
        )
    lines += ["", "```json", json.dumps(ledger, ensure_ascii=False, indent=1, sort_keys=True), "```", ""]
    return lines


# ---------------------------------------------------------------------------------------- model card
def _trained_teachers(store: Any, run_id: str) -> list[Any]:
    """One row per teacher whose samples the run trained on (its pairs' chosen and rejected texts).

    Other teachers may have sampled the same prompts for other runs: their terms do not bind this
    model. A run whose pairs name no sample (every one edited in review) falls back to the
    samples of its own teacher.
    """
    rows = store.conn.execute(
        "SELECT s.teacher, s.provenance_json, COUNT(*) AS n FROM samples s WHERE s.key IN "
        "(SELECT chosen_key FROM pairs WHERE run_id=? AND chosen_key IS NOT NULL "
        "UNION SELECT rejected_key FROM pairs WHERE run_id=? AND rejected_key IS NOT NULL) GROUP BY s.teacher",
        (run_id, run_id),
    ).fetchall()
    if rows:
        return list(rows)
    run = store.get_run(run_id) or {}
    teacher = (run.get("summary") or {}).get("teacher") or (run.get("config") or {}).get("teacher")
    query = (
        "SELECT s.teacher, s.provenance_json, COUNT(*) AS n FROM samples s JOIN run_prompts rp "
        "ON rp.prompt_hash = s.prompt_hash WHERE rp.run_id=?"
    )
    args: list[Any] = [run_id]
    if teacher:  # a run that recorded no teacher (an older version made it) lists every teacher
        query += " AND s.teacher=?"
        args.append(teacher)
    return list(store.conn.execute(query + " GROUP BY s.teacher", args).fetchall())


def provenance_summary(store: Any, run_id: str | None) -> dict[str, Any]:
    """Teacher ids, providers, policy verdicts and terms of the samples the run trained on."""
    if store is None or run_id is None:
        return {}
    run = store.get_run(run_id) or {}
    summary: dict[str, Any] = {"run_id": run_id, "config": run.get("config", {})}
    teachers: dict[str, dict[str, Any]] = {}
    rows = _trained_teachers(store, run_id)
    for row in rows:
        prov = json.loads(row["provenance_json"] or "{}")
        policy = prov.get("policy") or prov.get("policy_decision") or {}
        teachers[row["teacher"]] = {
            "samples": row["n"],
            "provider": prov.get("provider"),
            "endpoint": prov.get("endpoint"),
            "model": prov.get("model") or prov.get("teacher"),
            "verdict": policy.get("verdict"),
            "terms_version": policy.get("terms_version"),
            "reason": policy.get("reason"),
            "licence": policy.get("licence"),
            "authorization": policy.get("authorization"),
        }
    summary["teachers"] = teachers
    summary["teacher_cost_usd"] = store.teacher_cost(run_id)
    if hasattr(store, "judge_cost"):
        summary["judge_cost_usd"] = store.judge_cost(run_id)
    counts = store.conn.execute("SELECT split, COUNT(*) AS n FROM run_prompts WHERE run_id=? GROUP BY split", (run_id,))
    summary["prompts"] = {row["split"]: row["n"] for row in counts}
    return summary


def write_model_card(path: str | Path, info: dict[str, Any]) -> Path:
    """README.md with YAML front matter, the licence chain and the provenance summary.

    The licence chain is what a user must check before shipping: the teacher's terms (may the
    outputs train a model?), the student base model's licence (what the weights allow), and
    where the prompts came from.
    """
    from jupyter_distill.core.models import STUDENT_MODEL_MAP

    path = Path(path)
    student = info.get("student") or info.get("provenance", {}).get("config", {}).get("student")
    base = STUDENT_MODEL_MAP.get(str(student)) if student else None
    licence = info.get("student_licence") or (base.licence if base else None) or "unknown: check the base model"
    base_id = info.get("base_model") or (base.hf_id if base else student) or "unknown"
    prov = info.get("provenance", {})
    dataset = info.get("dataset") or prov.get("config", {}).get("dataset") or "not recorded"
    teachers = prov.get("teachers", {})
    if not teachers and info.get("teacher"):
        teachers = {str(info["teacher"]): {"verdict": info.get("teacher_terms"), "reason": info.get("teacher_terms")}}
    lines = [
        "---",
        f"license: {json.dumps(str(licence))}",
        f"base_model: {json.dumps(str(base_id))}",
        "tags: [gguf, jupyter-distill, distillation, bond]",
        "---",
        "",
        f"# {info.get('name') or 'Distilled student'}",
        "",
        "A student model distilled with jupyter-distill "
        "(best-of-N teacher sampling, judge, BOND training, LoRA merge, GGUF export).",
        "",
        "## Licence chain",
        "",
        f"- **Student base model**: `{base_id}`, licence `{licence}`.",
    ]
    if teachers:
        for spec, t in teachers.items():
            verdict = t.get("verdict") or "not recorded"
            extra = f"; authorization: {t['authorization']}" if t.get("authorization") else ""
            lines.append(
                f"- **Teacher** `{spec}`: terms verdict `{verdict}` (terms version {t.get('terms_version') or 'n/a'})"
                f"{extra}. {t.get('reason') or ''}".rstrip()
            )
    else:
        lines.append("- **Teacher**: not recorded (no run store was given to the export).")
    lines += [f"- **Dataset**: {dataset}", ""]
    lines += ["Check each of these before you ship the model: the most restrictive one applies.", ""]
    lines += ["## Files", "", "| file | kind | sha256 | size |", "|---|---|---|---|"]
    for kind, f in info.get("files", {}).items():
        lines.append(f"| `{f['name']}` | {kind} | `{f['sha256']}` | {f['size']:,} B |")
    lines += ["", "## Export check", ""]
    agreement = info.get("agreement", {})
    if agreement:
        lines.append(
            "Greedy next-token agreement with the merged HF model "
            f"({info.get('positions', '?')} positions over {info.get('check_prompts', '?')} prompts):"
        )
        lines.append("")
        lines += [f"- `{q}`: {a:.1%}" for q, a in agreement.items()]
        if "tokenizer_match" in info:
            lines.append(f"- llama.cpp tokenization identical to HF on {info['tokenizer_match']:.0%} of the prompts")
    if prov:
        lines += ["", "## Provenance", ""]
        lines.append(f"- run: `{prov.get('run_id')}`")
        teacher_spend, judge_spend = prov.get("teacher_cost_usd", 0.0), prov.get("judge_cost_usd", 0.0)
        lines.append(f"- teacher spend: ${teacher_spend:.4f}")
        lines.append(f"- judge spend: ${judge_spend:.4f}")
        lines.append(f"- total spend: ${teacher_spend + judge_spend:.4f}")
        if prov.get("prompts"):
            lines.append(f"- prompts: {json.dumps(prov['prompts'])}")
    if info.get("metrics"):
        lines += ["", "## Metrics", ""]
        lines += [f"- {k}: {v}" for k, v in info["metrics"].items()]
    if info.get("rights_ledger") or prov:
        lines += ["", *ledger_markdown(info.get("rights_ledger"))]
    lines += ["", f"Exported {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def dataset_hash(store: Any, run_id: str | None) -> str | None:
    """A content hash of the run's prompts (their content hashes, every split), or None without a store."""
    if store is None or run_id is None:
        return None
    from jupyter_distill.core.hashing import content_hash

    rows = store.conn.execute(
        "SELECT prompt_hash, split FROM run_prompts WHERE run_id=? ORDER BY prompt_hash", (run_id,)
    ).fetchall()
    if not rows:
        return None
    return content_hash([[row["prompt_hash"], row["split"]] for row in rows])


def gguf_provenance(
    info: dict[str, Any], provenance: dict[str, Any], store: Any = None, run_id: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the model card says about where the model came from, as GGUF header keys.

    Returns ``(metadata, extra_kv)``: the converter's standard ``general.*`` overrides (licence,
    base model) and ``jupyter_distill.*`` keys (teachers and their terms verdicts, dataset hash, run
    id), so the provenance travels with the file even when the card does not.
    """
    from jupyter_distill.core.models import STUDENT_MODEL_MAP

    student = info.get("student") or provenance.get("config", {}).get("student")
    base = STUDENT_MODEL_MAP.get(str(student)) if student else None
    licence = info.get("student_licence") or (base.licence if base else None)
    base_id = info.get("base_model") or (base.hf_id if base else None)
    metadata: dict[str, Any] = {}
    if base_id:
        entry: dict[str, Any] = {"name": str(base_id)}
        if "/" in str(base_id):
            entry["organization"] = str(base_id).split("/", 1)[0]
            entry["repo_url"] = f"https://huggingface.co/{base_id}"
        metadata["general.base_models"] = [entry]
    teachers = provenance.get("teachers") or {}
    if not teachers and info.get("teacher"):
        teachers = {str(info["teacher"]): {"verdict": info.get("teacher_terms")}}
    extra: dict[str, Any] = {
        # not a key the converter's metadata override reads, so it is written directly
        "general.license": str(licence) if licence else None,
        "jupyter_distill.run_id": provenance.get("run_id") or run_id,
        "jupyter_distill.student": str(student) if student else None,
        "jupyter_distill.dataset": str(info.get("dataset") or provenance.get("config", {}).get("dataset") or "")
        or None,
        "jupyter_distill.dataset_hash": info.get("dataset_sha256") or dataset_hash(store, run_id),
    }
    ledger = info.get("rights_ledger")
    if ledger:
        extra[LEDGER_KEY] = travelling_ledger(ledger, run_id=extra["jupyter_distill.run_id"],
                                              dataset_hash=extra["jupyter_distill.dataset_hash"])  # fmt: skip
    if teachers:
        extra["jupyter_distill.teachers"] = ",".join(teachers)
        extra["jupyter_distill.teacher_terms"] = {
            spec: {k: t.get(k) for k in ("verdict", "terms_version", "licence", "authorization") if t.get(k)}
            for spec, t in teachers.items()
        }
    return metadata, {k: v for k, v in extra.items() if v is not None}


__all__ = [
    "LEDGER_KEY",
    "dataset_hash",
    "gguf_provenance",
    "ledger_markdown",
    "provenance_summary",
    "travelling_ledger",
    "write_model_card",
]
