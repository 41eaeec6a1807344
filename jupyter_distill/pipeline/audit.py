"""``jd.audit(run or alias)``: walk a run store into a :class:`~jupyter_distill.core.ledger.Ledger`.

samples -> teacher, provider, endpoint, time, terms version and verdict (each sample's
provenance) -> the student's base licence -> the exported files (store artifacts) -> the aliases
serving them. A run is given as a name, a ``Run`` or the ``Student`` it returned; an alias is
followed to the run that made its target (recorded when it was promoted or deployed).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jupyter_distill.core import policy
from jupyter_distill.core.errors import AliasError, ConfigError
from jupyter_distill.core.ledger import Ledger, TermsChange, TermsRow, terms_changed
from jupyter_distill.core.models import STUDENT_MODEL_MAP
from jupyter_distill.core.store import SampleRecord
from jupyter_distill.pipeline.runref import RunRef, resolve_run, workdir_from_path
from jupyter_distill.serving import registry


def _run_samples(ref: RunRef) -> list[SampleRecord]:
    """The run's own teacher's samples of its prompts (every teacher's when none was recorded)."""
    teacher = ref.summary.get("teacher") or ref.config.get("teacher")
    teacher = str(teacher) if teacher else None
    out: list[SampleRecord] = []
    for prompt in ref.store.get_prompts(ref.run_id):
        found = ref.store.samples_for_prompt(prompt.hash, teacher=teacher)
        out.extend(found or (ref.store.samples_for_prompt(prompt.hash) if teacher else []))
    return out


def _trained_keys(ref: RunRef) -> set[str]:
    keys: set[str] = set()
    for pair in ref.store.get_pairs(ref.run_id):
        keys.update(k for k in (pair.chosen_key, pair.rejected_key) if k)
    return keys


def _resolved(path: Any) -> str:
    try:
        return str(Path(str(path)).expanduser().resolve())
    except (OSError, ValueError):
        return str(path)


def _aliases_of(run_id: str, paths: set[str], aliases: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name, entry in aliases.items():
        made_by_run = run_id in (entry.get("run"), entry.get("student"))
        if made_by_run or (entry.get("model_path") and _resolved(entry["model_path"]) in paths):
            out.append(name)
    return sorted(out)


def _subject(subject: Any, workdir: Any) -> tuple[str, RunRef]:
    """``(description, run)`` for a run reference or an alias name."""
    if isinstance(subject, str):
        try:
            return f"run {subject}", resolve_run(subject, workdir)
        except ConfigError as not_a_run:
            aliases = registry.list_aliases()
            if subject not in aliases:
                raise not_a_run from None
            entry = aliases[subject]
            run_id = entry.get("run") or entry.get("student")
            if not run_id:
                raise ConfigError(
                    f"alias {subject!r} serves {entry.get('model_path') or entry.get('base_url')}, which no run "
                    "recorded making, so there are no samples to audit. Fix: audit the run that trained it.",
                    field="alias",
                    value=subject,
                ) from None
            folder = workdir or entry.get("workdir")
            if folder is None and entry.get("model_path"):
                folder = workdir_from_path(Path(entry["model_path"]), str(run_id))
            return f"alias {subject}", resolve_run(str(run_id), folder)
    ref = resolve_run(subject, workdir)
    return f"run {ref.run_id}", ref


def audit(subject: Any, *, workdir: Any = None) -> Ledger:
    """The rights ledger of a run (name, ``Run`` or ``Student``) or of the run behind an alias.

    Per teacher and terms: how many samples were made and how many a training pair used; the
    student's base licence; the run's files and the aliases serving them; and every group of
    samples whose verdict changed under the terms table installed now, with what it reaches.
    """
    what, ref = _subject(subject, workdir)
    samples = _run_samples(ref)
    trained = _trained_keys(ref)
    artifacts = ref.store.get_artifacts(ref.run_id)
    files = [
        {"run": ref.run_id, "kind": kind, "path": a["path"], "sha256": a["sha256"], "size": a["size"]}
        for kind, a in sorted(artifacts.items())
    ]
    notes: list[str] = []
    try:
        registered = registry.list_aliases()
    except AliasError as exc:  # a broken registry must not hide the samples' terms (or fail an export)
        registered = {}
        notes.append(f"aliases not read: {exc}")
    aliases = _aliases_of(ref.run_id, {_resolved(f["path"]) for f in files}, registered)
    student = str(ref.config.get("student") or "")
    known = STUDENT_MODEL_MAP.get(student)
    students = [{"run": ref.run_id, "student": student or "unknown", "licence": known.licence if known else "unknown"}]

    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    changes: dict[tuple[Any, ...], dict[str, Any]] = {}
    for s in samples:
        prov = s.provenance or {}
        recorded = prov.get("policy") or {}
        teacher = str(prov.get("teacher") or s.teacher)
        terms = prov.get("terms_version") or recorded.get("terms_version")
        verdict = recorded.get("verdict")
        key = (teacher, terms, verdict, recorded.get("authorization"))
        row = rows.setdefault(
            key,
            {
                "teacher": teacher,
                "provider": str(prov.get("provider") or recorded.get("provider") or ""),
                "endpoint": prov.get("endpoint"),
                "model": prov.get("model") or recorded.get("model"),
                "terms_version": terms,
                "verdict": verdict,
                "authorization": recorded.get("authorization"),
                "licence": prov.get("licence") or recorded.get("licence"),
                "sampled": 0,
                "trained_on": 0,
                "first_time": None,
                "last_time": None,
            },
        )
        row["sampled"] += 1
        row["trained_on"] += s.key in trained
        when = prov.get("time")
        if isinstance(when, str):
            row["first_time"] = min(filter(None, [row["first_time"], when]))
            row["last_time"] = max(filter(None, [row["last_time"], when]))
        changed, now_verdict, now_terms = terms_changed(prov)
        if changed:
            group = changes.setdefault(
                (teacher, verdict, terms, now_verdict),
                {"provider": row["provider"], "current_terms": now_terms, "samples": [], "trained_on": []},
            )
            group["samples"].append(s.key)
            if s.key in trained:
                group["trained_on"].append(s.key)
    changed = [
        TermsChange(
            teacher=teacher,
            provider=g["provider"],
            recorded_verdict=verdict,
            current_verdict=now_verdict,
            recorded_terms=terms,
            current_terms=g["current_terms"],
            samples=g["samples"],
            trained_on=g["trained_on"],
            runs=[ref.run_id],
            files=[f["path"] for f in files],
            aliases=aliases,
        )
        for (teacher, verdict, terms, now_verdict), g in changes.items()
    ]
    return Ledger(
        subject=what,
        runs=[ref.run_id],
        teachers=[TermsRow(**row) for row in rows.values()],
        students=students,
        files=files,
        aliases=aliases,
        terms_version=policy.TERMS_VERSION,
        changes=changed,
        generated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        notes=notes,
    )


__all__ = ["audit"]
