"""Human review decisions, without any UI.

A reviewer looks at one prompt and its N teacher candidates and says which is best, which are
good, which are wrong, fixes one by editing it, or throws the prompt out. Every decision is
appended to the store's ``reviews`` table the moment it is made (a kernel crash loses nothing),
and :meth:`ReviewSession.decisions` replays that log, honouring undos, into one
:class:`Decision` per prompt. :func:`jupyter_distill.judging.selection.select` reads those decisions
before judge scores, so the human always overrides the judge.

The widget in ``jupyter_distill.notebook.review_widget`` and the lab panel are thin views over
this class; tests and scripts can review programmatically with the same calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from jupyter_distill.core.errors import ReviewError
from jupyter_distill.core.store import JudgmentRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.judging.llm_judge import REFERENCE_FIELDS
from jupyter_distill.judging.scoring import candidate_scores, prompt_uncertainty

Order = Literal["least_certain", "position"]
PromptState = Literal["open", "chosen", "rejected", "reviewed"]


@dataclass
class Decision:
    """The current human verdict on one prompt, after replaying its decision log.

    ``best`` is the candidate chosen as best (rank 0), ``accepted`` further good candidates in
    the order they were accepted, ``rejected`` candidates that must never be chosen,
    ``edits`` replacement texts by sample key, and ``rejected_prompt`` drops the prompt.
    """

    prompt_hash: str
    best: str | None = None
    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    edits: dict[str, str] = field(default_factory=dict)
    rejected_prompt: bool = False
    actions: int = 0

    @property
    def chosen(self) -> list[str]:
        """Candidates the human picked, best first, then edited, then accepted ones."""
        out: list[str] = [self.best] if self.best else []
        for key in [*self.edits, *self.accepted]:
            if key not in out and key not in self.rejected:
                out.append(key)
        return out

    @property
    def reviewed(self) -> bool:
        """Whether anything the human said still stands (a fully undone prompt is unreviewed)."""
        return bool(self.best or self.accepted or self.rejected or self.edits or self.rejected_prompt)

    @property
    def state(self) -> PromptState:
        """The prompt's place in a review status strip.

        ``"rejected"``: the prompt is dropped; ``"chosen"``: the human picked, edited or accepted
        a candidate to train on; ``"reviewed"``: only single candidates were rejected (the judge
        still picks among the rest); ``"open"``: nothing stands.
        """
        if self.rejected_prompt:
            return "rejected"
        if self.chosen:
            return "chosen"
        return "reviewed" if self.reviewed else "open"

    def summary(self) -> str:
        """One line for labels and text fallbacks."""
        if self.rejected_prompt:
            return "prompt rejected"
        parts = []
        if self.best:
            parts.append("best chosen")
        if self.edits:
            parts.append(f"{len(self.edits)} edited")
        if self.accepted:
            parts.append(f"{len(self.accepted)} accepted")
        if self.rejected:
            parts.append(f"{len(self.rejected)} rejected")
        return ", ".join(parts) or "not reviewed"


def replay(reviews: Iterable[Mapping[str, Any]]) -> dict[str, Decision]:
    """Fold live review rows (oldest first, undone ones already excluded) into decisions.

    The latest statement about a candidate wins: accepting a rejected candidate un-rejects it,
    rejecting the best one clears ``best``; any decision about a candidate brings a rejected
    prompt back.
    """
    out: dict[str, Decision] = {}
    for row in reviews:
        action = row["action"]
        if action == "undo" or row.get("undone"):
            continue
        prompt_hash = row["prompt_hash"]
        d = out.setdefault(prompt_hash, Decision(prompt_hash))
        d.actions += 1
        key = row.get("sample_key")
        if action == "reject" and key is None:
            d.rejected_prompt = True
            continue
        if action == "skip" or key is None:
            continue
        d.rejected_prompt = False
        if action == "reject":
            _discard(d.accepted, key)
            d.edits.pop(key, None)
            if d.best == key:
                d.best = None
            if key not in d.rejected:
                d.rejected.append(key)
            continue
        _discard(d.rejected, key)
        if action == "choose":
            d.best = key
        elif action == "accept":
            if key not in d.accepted:
                d.accepted.append(key)
        elif action == "edit":
            d.edits[key] = row.get("text") or ""
    return out


def _discard(items: list[str], key: str) -> None:
    if key in items:
        items.remove(key)


def judge_label(judge_id: str) -> str:
    """A judge id as a reviewer reads it: what kind of judge, and which one.

    LLM judge ids are ``llm:<model spec>#<hash of rubric and settings>``: shown as the model and
    a short rubric tag, so two rubrics of one model stay apart. A plain function's verifier id is
    ``<module>.<name>#<source hash>``: shown as its name. Built-in verifiers spell out their
    arguments, which is already readable.
    """
    if judge_id.startswith("llm:"):
        spec, _, tag = judge_id[4:].partition("#")
        return f"LLM judge {spec}" + (f" (rubric {tag[:6]})" if tag else "")
    head, sep, tag = judge_id.partition("#")
    if sep and "(" not in head:
        return f"check {head.rsplit('.', 1)[-1]}"
    return f"check {judge_id}"


@dataclass(frozen=True)
class Rationale:
    """One judge's verdict on a candidate, readable: who judged, the score, the judge's own words."""

    judge: str  # the judge id, as stored
    label: str  # judge_label(judge)
    score: float | None  # on the 0..1 scale; None when the judge failed
    text: str  # the judge's reason; a verifier's "<id> -> <value>" is shortened to what it returned
    status: str

    @classmethod
    def from_judgment(cls, judgment: JudgmentRecord) -> Rationale:
        text = (judgment.rationale or "").strip()
        head, arrow, value = text.rpartition(" -> ")
        if arrow and head and (head == judgment.judge or head.split("#")[0] == judgment.judge.split("#")[0]):
            text = f"returned {value}"  # a verifier restating its own id: keep the value only
        if judgment.status != "ok" and not text:
            text = "the judge failed on this candidate"
        return cls(judgment.judge, judge_label(judgment.judge), judgment.score, text, judgment.status)

    def line(self) -> str:
        """``label · score · text`` for text views."""
        score = "failed" if self.status != "ok" or self.score is None else f"{self.score:.2f}"
        return " · ".join(part for part in (self.label, score, self.text) if part)


@dataclass
class Candidate:
    """One teacher candidate as a review UI shows it."""

    key: str
    index: int  # 0-based position shown to the user as index + 1 (the digit key)
    text: str
    score: float | None
    rationale: str
    status: str  # "ok", "failed" or "unjudged"
    judgments: list[JudgmentRecord] = field(default_factory=list)
    mark: str | None = None  # "best" | "accepted" | "rejected" | None
    edited_text: str | None = None

    @property
    def rationales(self) -> list[Rationale]:
        """Each judge's verdict on this candidate, readable (judge name, score, its own text)."""
        return [Rationale.from_judgment(j) for j in self.judgments]


@dataclass
class ReviewItem:
    """One prompt with its candidates, the judge's certainty and the current human decision."""

    prompt: PromptRecord
    candidates: list[Candidate]
    uncertainty: float
    decision: Decision

    @property
    def prompt_hash(self) -> str:
        return self.prompt.hash

    @property
    def reference(self) -> dict[str, Any]:
        """The row's reference answer fields (``expected``, ``answer``, ...), as the LLM judge reads them."""
        row = self.prompt.row or {}
        return {k: row[k] for k in REFERENCE_FIELDS if row.get(k) not in (None, "")}

    @property
    def judge_best(self) -> str | None:
        """The candidate the judge would choose (best ok score; ties -> lowest index)."""
        ok = [c for c in self.candidates if c.score is not None and c.mark != "rejected"]
        return min(ok, key=lambda c: (-(c.score or 0.0), c.index)).key if ok else None


class ReviewSession:
    """Review decisions for one run; every call writes to the store at once.

    Candidates are the run's stored samples: pass ``samples`` (``{prompt_hash: [SampleRecord]}``,
    as sampling returns them) to pin them, or ``teacher`` (a spec) to pick one teacher's samples
    when a workdir holds several; otherwise the teacher recorded in the run's summary or config
    is used when present, else every stored sample of the prompt. ``judge`` (an id or Judge;
    default: the judge recorded in the run's summary) limits the scores shown to that judge's.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        *,
        samples: Mapping[str, Sequence[SampleRecord]] | None = None,
        teacher: str | None = None,
        judge: Any = None,
        prompts: Sequence[PromptRecord] | None = None,
    ):
        self.store = store
        self.run_id = run_id
        if store.get_run(run_id) is None:
            known = ", ".join(r["id"] for r in store.list_runs()[:10]) or "none"
            raise ReviewError(
                f"no run named {run_id!r} in {str(store.workdir)!r} (runs there: {known}). Fix: check the name "
                "with `%distill runs`, or pass the workdir= the run was made in.",
                field="run",
                value=run_id,
            )
        all_prompts = list(prompts) if prompts is not None else store.get_prompts(run_id)
        self.prompts: list[PromptRecord] = [p for p in all_prompts if p.split == "train"] or all_prompts
        self._by_hash = {p.hash: p for p in self.prompts}
        self._teacher = teacher or self._run_teacher()
        self._samples = {h: list(v) for h, v in samples.items()} if samples is not None else None
        self._judge_from_run = judge is None
        run_judge = ((store.get_run(run_id) or {}).get("summary") or {}).get("judge")
        if judge is None and isinstance(run_judge, str):
            judge = run_judge
        self.judge_id: str | None = judge if isinstance(judge, str) or judge is None else judge.id

    # ------------------------------------------------------------------ candidates
    def _run_teacher(self) -> str | None:
        run = self.store.get_run(self.run_id) or {}
        for source in (run.get("summary") or {}, run.get("config") or {}):
            for key in ("teacher_spec", "teacher"):
                value = source.get(key)
                if isinstance(value, str) and value:
                    return value
        return None

    def candidates(self, prompt_hash: str) -> list[SampleRecord]:
        """The prompt's candidates in sample-index order (the order the digit keys use)."""
        self._prompt(prompt_hash)
        if self._samples is not None:
            found = list(self._samples.get(prompt_hash, []))
        else:
            found = self.store.samples_for_prompt(prompt_hash)
            if self._teacher is not None:
                mine = [s for s in found if s.teacher == self._teacher]
                found = mine or found  # a config alias that is not the canonical spec: show all
        found.sort(key=lambda s: (s.sample_index, s.created_at, s.key))
        unique: dict[str, SampleRecord] = {}
        for s in found:
            unique.setdefault(s.key, s)
        return list(unique.values())

    def _prompt(self, prompt_hash: str) -> PromptRecord:
        prompt = self._by_hash.get(prompt_hash)
        if prompt is None:
            raise ReviewError(
                f"prompt {prompt_hash!r} is not a training prompt of run {self.run_id!r}. Fix: use a prompt_hash "
                "from session.items() (PromptRecord.hash).",
                field="prompt_hash",
                value=prompt_hash,
            )
        return prompt

    def _candidate(self, prompt_hash: str, sample_key: str) -> SampleRecord:
        for s in self.candidates(prompt_hash):
            if s.key == sample_key:
                return s
        keys = ", ".join(s.key for s in self.candidates(prompt_hash)) or "none (sample this prompt first)"
        raise ReviewError(
            f"sample {sample_key!r} is not a candidate of prompt {prompt_hash!r} in run {self.run_id!r}. Fix: use one "
            f"of its candidate keys: {keys}.",
            field="sample_key",
            value=sample_key,
        )

    # ------------------------------------------------------------------ decisions
    def accept(self, prompt_hash: str, sample_key: str) -> Decision:
        """Mark a candidate as good: it survives, after the best one."""
        self._candidate(prompt_hash, sample_key)
        return self._add(prompt_hash, "accept", sample_key)

    def choose_best(self, prompt_hash: str, sample_key: str) -> Decision:
        """Make a candidate the chosen response (rank 0) of its prompt."""
        self._candidate(prompt_hash, sample_key)
        return self._add(prompt_hash, "choose", sample_key)

    def reject(self, prompt_hash: str, sample_key: str | None = None) -> Decision:
        """Reject one candidate (never chosen; preferred as the 'rejected' example), or, with no
        ``sample_key``, the whole prompt (dropped from training)."""
        if sample_key is None:
            self._prompt(prompt_hash)
        else:
            self._candidate(prompt_hash, sample_key)
        return self._add(prompt_hash, "reject", sample_key)

    def edit(self, prompt_hash: str, sample_key: str, text: str) -> Decision:
        """Replace a candidate's text; the edited text is trained on as a human-chosen response."""
        self._candidate(prompt_hash, sample_key)
        if not isinstance(text, str) or not text.strip():
            raise ReviewError(
                f"edited text for sample {sample_key!r} is empty. Fix: give the corrected response, or reject the "
                "candidate instead.",
                field="text",
                value=text,
            )
        return self._add(prompt_hash, "edit", sample_key, text)

    def undo(self, prompt_hash: str) -> Decision | None:
        """Take back the prompt's latest standing decision; ``None`` (and no write) when there is none."""
        self._prompt(prompt_hash)
        live = [r for r in self.store.get_reviews(self.run_id) if r["prompt_hash"] == prompt_hash]
        if not live:
            return None
        return self._add(prompt_hash, "undo", None)

    def _add(self, prompt_hash: str, action: str, sample_key: str | None, text: str | None = None) -> Decision:
        self.store.add_review(self.run_id, prompt_hash, action, sample_key, text)
        return self.decision(prompt_hash)

    def decision(self, prompt_hash: str) -> Decision:
        """The current decision of one prompt (empty when it was never reviewed)."""
        self._prompt(prompt_hash)
        return self.decisions().get(prompt_hash, Decision(prompt_hash))

    def decisions(self) -> dict[str, Decision]:
        """Current decisions of every prompt that has a standing one, replayed from the store."""
        replayed = replay(self.store.get_reviews(self.run_id))
        return {h: d for h, d in replayed.items() if h in self._by_hash and d.reviewed}

    def progress(self) -> tuple[int, int]:
        """``(reviewed, total)`` prompts."""
        return len(self.decisions()), len(self.prompts)

    # ------------------------------------------------------------------ items for a UI
    def items(self, order: Order = "position") -> list[ReviewItem]:
        """Every prompt with its candidates, scores, rationales and decision, in review order.

        ``"least_certain"`` puts the prompts the judge is least sure about first (ties by
        position), so a reviewer with ten minutes spends them where they matter most.
        """
        if order not in ("least_certain", "position"):
            raise ReviewError(
                f"order={order!r} is not known. Fix: use 'least_certain' or 'position'.", field="order", value=order
            )
        decisions = self.decisions()
        per_prompt = {p.hash: self.candidates(p.hash) for p in self.prompts}
        judgments = self._judgments([s.key for group in per_prompt.values() for s in group])
        items = [
            self._build(p, per_prompt[p.hash], judgments, decisions.get(p.hash, Decision(p.hash))) for p in self.prompts
        ]
        if order == "least_certain":
            items.sort(key=lambda it: (-it.uncertainty, it.prompt.position))
        return items

    def item(self, prompt_hash: str) -> ReviewItem:
        """One prompt's review item, fresh from the store."""
        prompt = self._prompt(prompt_hash)
        samples = self.candidates(prompt_hash)
        return self._build(prompt, samples, self._judgments([s.key for s in samples]), self.decision(prompt_hash))

    def _judgments(self, sample_keys: list[str]) -> dict[str, list[JudgmentRecord]]:
        out: dict[str, list[JudgmentRecord]] = {}
        found = self.store.judgments_for_samples(sample_keys, judge=self.judge_id)
        if not found and self.judge_id is not None and self._judge_from_run:
            found = self.store.judgments_for_samples(sample_keys)  # the run's judge id is stale: show all
        for j in found:
            out.setdefault(j.sample_key, []).append(j)
        return out

    @staticmethod
    def _build(
        prompt: PromptRecord,
        samples: list[SampleRecord],
        judgments: Mapping[str, list[JudgmentRecord]],
        decision: Decision,
    ) -> ReviewItem:
        scores = candidate_scores(samples, judgments)
        candidates = []
        for i, s in enumerate(samples):
            js = sorted(judgments.get(s.key, []), key=lambda j: j.judge)
            score, status = scores[s.key]
            if decision.best == s.key:
                mark: str | None = "best"
            elif s.key in decision.rejected:
                mark = "rejected"
            elif s.key in decision.accepted or s.key in decision.edits:
                mark = "accepted"
            else:
                mark = None
            candidates.append(
                Candidate(
                    key=s.key,
                    index=i,
                    text=s.text,
                    score=score,
                    rationale=" | ".join(Rationale.from_judgment(j).line() for j in js),
                    status=status,
                    judgments=js,
                    mark=mark,
                    edited_text=decision.edits.get(s.key),
                )
            )
        return ReviewItem(prompt, candidates, prompt_uncertainty(samples, judgments), decision)

    def export_decisions(self) -> str:
        """The decision state as JSON (for the lab panel and for people reading the store)."""
        return json.dumps(
            {
                h: {
                    "best": d.best,
                    "accepted": d.accepted,
                    "rejected": d.rejected,
                    "edits": d.edits,
                    "rejected_prompt": d.rejected_prompt,
                }
                for h, d in self.decisions().items()
            },
            ensure_ascii=False,
        )


__all__ = ["Candidate", "Decision", "Rationale", "ReviewItem", "ReviewSession", "judge_label", "replay"]
