"""The rights ledger: under which terms every training sample was made, as one JSON-able record.

Provider terms change, sometimes retroactively, and restrictions follow the data into every model
trained on it. Each sample already stores the policy decision it was made under (teacher,
provider, endpoint, time, terms version, verdict, authorisation); the ledger groups those per
teacher and terms, names the student's base licence, the exported files and the aliases serving
them, and re-decides every sample against the terms table installed now. A sample whose verdict
differs under newer terms is listed with the runs, files and aliases it reaches.

This module holds the data shape and the re-decision only (no store): the walk over a run store
is ``jupyter_distill.pipeline.audit``. ``Ledger.to_dict()`` is the form a model card, GGUF
metadata or a dataset card embeds.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from jupyter_distill.core import policy
from jupyter_distill.core.errors import ConfigError
from jupyter_distill.core.models import find_teacher_model

LEDGER_FORMAT = "jupyter-distill-rights-ledger"
LEDGER_VERSION = 1


@dataclass(frozen=True)
class TermsRow:
    """Samples of one teacher made under one terms version and verdict."""

    teacher: str
    provider: str
    endpoint: str | None
    model: str | None
    terms_version: str | None
    verdict: str | None
    authorization: str | None
    licence: str | None
    sampled: int  # samples of the audited runs' prompts
    trained_on: int  # of those, samples a training pair used (chosen or rejected side)
    first_time: str | None
    last_time: str | None


@dataclass(frozen=True)
class TermsChange:
    """Samples whose verdict differs under the terms installed now, and what they reach."""

    teacher: str
    provider: str
    recorded_verdict: str | None
    current_verdict: str
    recorded_terms: str | None
    current_terms: str
    samples: list[str]
    trained_on: list[str]
    runs: list[str]
    files: list[str]
    aliases: list[str]


@dataclass
class Ledger:
    """The audit of one run or alias: see the module docstring."""

    subject: str
    runs: list[str]
    teachers: list[TermsRow]
    students: list[dict[str, Any]]  # {run, student, licence}
    files: list[dict[str, Any]]  # {run, kind, path, sha256, size}
    aliases: list[str]
    terms_version: str  # the terms table installed now
    changes: list[TermsChange] = field(default_factory=list)
    generated_at: str = ""
    notes: list[str] = field(default_factory=list)  # what the audit could not read, and why

    @property
    def ok(self) -> bool:
        """True when no sample's verdict changed under newer terms."""
        return not self.changes

    def to_dict(self) -> dict[str, Any]:
        return {"format": LEDGER_FORMAT, "version": LEDGER_VERSION, **asdict(self), "ok": self.ok}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1, sort_keys=True)

    def _lines(self) -> list[str]:
        lines = [f"rights ledger of {self.subject} (terms table {self.terms_version}); runs: {', '.join(self.runs)}"]
        for row in self.teachers:
            lines.append(
                f"  {row.teacher}: {row.trained_on} trained on / {row.sampled} sampled under terms "
                f"{row.terms_version} ({row.verdict}{', authorised' if row.authorization else ''})"
            )
        for s in self.students:
            lines.append(f"  student {s['student']} ({s['licence']}) in run {s['run']}")
        lines.append(f"  files: {len(self.files)}; aliases: {', '.join(self.aliases) or 'none'}")
        lines += [f"  note: {note}" for note in self.notes]
        for c in self.changes:
            lines.append(
                f"  CHANGED {c.teacher}: {c.recorded_verdict} under {c.recorded_terms} -> {c.current_verdict} under "
                f"{c.current_terms}: {len(c.samples)} samples ({len(c.trained_on)} trained on), runs "
                f"{', '.join(c.runs)}, {len(c.files)} files, aliases {', '.join(c.aliases) or 'none'}"
            )
        return lines

    def __repr__(self) -> str:
        return "\n".join(self._lines())

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{html.escape(line.strip())}</li>" for line in self._lines()[1:])
        status = "no terms changed" if self.ok else f"{len(self.changes)} terms change(s) affect this model"
        return f"<div><b>{html.escape(self._lines()[0])}</b> ({status})<ul>{items}</ul></div>"


def redecide(provenance: dict[str, Any]) -> tuple[str, str]:
    """``(verdict, terms version)`` the installed terms table gives the sample's teacher now.

    The decision is re-made with what the sample recorded (provider, model, authorisation,
    OpenRouter routing flag, licence) in ``warn`` mode (a refusal is a verdict here, not an
    error); a provider the table no longer knows reads ``unknown``.
    """
    recorded = provenance.get("policy") or {}
    provider = str(provenance.get("provider") or recorded.get("provider") or "")
    model = str(provenance.get("model") or recorded.get("model") or "")
    scheme = provenance.get("scheme")
    entry = find_teacher_model(str(scheme), model) if scheme else None
    enforce = recorded.get("enforce_distillable")
    try:
        decision = policy.decide(
            provider,
            model,
            mode="off" if recorded.get("mode") == "off" else "warn",
            authorization=recorded.get("authorization"),
            enforce_distillable=True if enforce is None else bool(enforce),
            licence=str(provenance.get("licence") or recorded.get("licence") or ""),
            model_terms=entry.terms if entry else None,
        )
    except ConfigError:
        return "unknown", policy.TERMS_VERSION
    return decision.verdict, decision.terms_version


def terms_changed(provenance: dict[str, Any]) -> tuple[bool, str, str]:
    """Whether the sample's verdict changed under a newer terms table: ``(changed, verdict, version)``."""
    verdict, version = redecide(provenance)
    recorded = (provenance.get("policy") or {}).get("verdict")
    made_under = str(provenance.get("terms_version") or (provenance.get("policy") or {}).get("terms_version") or "")
    return (verdict != recorded and version > made_under), verdict, version


__all__ = ["LEDGER_FORMAT", "LEDGER_VERSION", "Ledger", "TermsChange", "TermsRow", "redecide", "terms_changed"]
