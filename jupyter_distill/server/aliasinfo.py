"""One alias for the lab panel: what it serves now, its recorded versions, and its audit verdict.

The versions are the registry's own (``aliases.json`` keeps them with every change), read without
writing anything. The verdict is :func:`jupyter_distill.pipeline.audit.audit` of the run that made
the alias's target, cut down to what a sidebar shows: ok or changed, per teacher how many samples
were made and trained on under which terms, and for a changed verdict how many samples it reaches.

Why a cache: the panel refreshes every few seconds while a run is live, and an audit re-decides
every sample of the run against the terms table. The verdict moves only when the alias points
elsewhere, the terms table changes (a new jupyter-distill) or the run's samples do (a resumed
run), so it is kept per (alias, target, terms version) for :data:`AUDIT_MAX_AGE_S` and
``generated_at`` tells the user when it was made.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from jupyter_distill.core import policy
from jupyter_distill.core.errors import DistillError
from jupyter_distill.core.ledger import Ledger
from jupyter_distill.server.public import public_message

#: Seconds an audit verdict is reused for an alias whose target and terms table did not change.
AUDIT_MAX_AGE_S = 300.0
#: Aliases whose verdicts are kept (one per alias; the oldest is dropped first).
AUDIT_CACHE_SIZE = 256

log = logging.getLogger(__name__)


def audit_verdict(ledger: Ledger) -> dict[str, Any]:
    """The sidebar's form of a ledger: status, one line, per-teacher rows and the changes counted."""
    teachers = [
        {
            "teacher": row.teacher,
            "provider": row.provider,
            "verdict": row.verdict,
            "terms_version": row.terms_version,
            "sampled": row.sampled,
            "trained_on": row.trained_on,
        }
        for row in ledger.teachers
    ]
    changes = [
        {
            "teacher": c.teacher,
            "recorded_verdict": c.recorded_verdict,
            "current_verdict": c.current_verdict,
            "recorded_terms": c.recorded_terms,
            "current_terms": c.current_terms,
            "samples": len(c.samples),
            "trained_on": len(c.trained_on),
        }
        for c in ledger.changes
    ]
    if ledger.ok:
        sampled = sum(t["sampled"] for t in teachers)
        trained = sum(t["trained_on"] for t in teachers)
        message = (
            f"no terms changed under the terms table {ledger.terms_version}: {trained} of {sampled} samples "
            f"trained on, from {len(teachers)} teacher(s)"
        )
    else:
        message = "; ".join(
            f"{c['teacher']}: {c['recorded_verdict']} under {c['recorded_terms']} -> {c['current_verdict']} under "
            f"{c['current_terms']} ({c['samples']} samples, {c['trained_on']} trained on)"
            for c in changes
        )
    return {
        "status": "ok" if ledger.ok else "changed",
        "message": public_message(message),
        "terms_version": ledger.terms_version,
        "runs": list(ledger.runs),
        "teachers": teachers,
        "changes": changes,
        "notes": [public_message(note) for note in ledger.notes],
        "generated_at": ledger.generated_at,
    }


def _unavailable(message: str) -> dict[str, Any]:
    return {
        "status": "unavailable",
        "message": public_message(message),
        "terms_version": policy.TERMS_VERSION,
        "runs": [],
        "teachers": [],
        "changes": [],
        "notes": [],
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def audit_alias(entry: dict[str, Any], fallback_workdir: Path) -> dict[str, Any]:
    """The verdict for the run that made ``entry``'s target (the alias as the registry holds it).

    The run is the one the registry recorded (``run``/``student`` and ``workdir``, written by a
    promotion or a deploy), else found from the model file's place under ``<workdir>/runs/<name>/``,
    else looked up in the panel's run folder. An alias no run made (a teacher behind a URL) has no
    samples: its verdict is ``unavailable`` with the reason.
    """
    from jupyter_distill.pipeline.audit import audit
    from jupyter_distill.pipeline.runref import workdir_from_path

    run_id = entry.get("run") or entry.get("student")
    if not run_id:
        return _unavailable(
            "no run recorded making this alias's target, so there are no samples to audit "
            "(set by hand or a model served from a URL)."
        )
    folder: Any = entry.get("workdir")
    if folder is None and entry.get("model_path"):
        folder = workdir_from_path(Path(str(entry["model_path"])), str(run_id))
    try:
        return audit_verdict(audit(str(run_id), workdir=folder if folder is not None else fallback_workdir))
    except DistillError as exc:
        return _unavailable(str(exc))


class AuditCache:
    """Verdicts per alias, reused while the alias's target and the terms table stay the same.

    Shared by the server's request threads: lookups and stores hold one lock, the audit itself
    runs outside it (two threads may audit the same alias at once; both store the same verdict).
    """

    def __init__(self, max_age_s: float = AUDIT_MAX_AGE_S, size: int = AUDIT_CACHE_SIZE):
        self.max_age_s = max_age_s
        self.size = size
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str, float, dict[str, Any]]] = {}

    @staticmethod
    def key(entry: dict[str, Any]) -> str:
        """What a verdict depends on besides the run's samples: the target and the terms table."""
        target = {k: v for k, v in entry.items() if k not in ("created_at", "updated_at")}
        return json.dumps([target, policy.TERMS_VERSION], sort_keys=True, default=str)

    def verdict(self, name: str, entry: dict[str, Any], fallback_workdir: Path) -> dict[str, Any]:
        """The cached verdict of ``name`` when still valid, else a new audit (then cached)."""
        key = self.key(entry)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(name)
            if hit is not None and hit[0] == key and now - hit[1] < self.max_age_s:
                return hit[2]
        try:
            verdict = audit_alias(entry, fallback_workdir)
        except Exception:  # a broken run store must not hide the alias's history
            log.exception("jupyter-distill: audit of alias %r failed", name)
            return _unavailable("the audit failed; see the server log.")
        with self._lock:
            self._entries.pop(name, None)
            self._entries[name] = (key, time.monotonic(), verdict)
            while len(self._entries) > self.size:
                self._entries.pop(next(iter(self._entries)))
        return verdict


def alias_detail(name: str, cache: AuditCache, fallback_workdir: Path) -> dict[str, Any] | None:
    """``{name, current, version, history, audit}`` for the panel, or None when no such alias ever existed.

    ``history`` is newest first (the registry keeps the last ``HISTORY_LIMIT`` versions); an alias
    that was unset still shows its history, with ``current`` null and no audit.
    """
    from jupyter_distill.pipeline.promote import alias_history

    history = alias_history(name)  # validates the name; one read of the registry, so both agree
    if not history:
        return None
    current = history[-1]["entry"]
    return {
        "name": name,
        "current": current,
        "version": history[-1]["version"] if history else None,
        "history": list(reversed(history)),
        "audit": cache.verdict(name, current, fallback_workdir) if current is not None else None,
    }


__all__ = ["AUDIT_CACHE_SIZE", "AUDIT_MAX_AGE_S", "AuditCache", "alias_detail", "audit_alias", "audit_verdict"]
