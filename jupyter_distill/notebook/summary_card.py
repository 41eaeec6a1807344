"""The summary card of one run: the result of ``%distill status``/``wait`` and the dashboard's last frame.

Why apart from the widget: the card is plain data read from the run store (or, without one, from
the dashboard's :class:`~jupyter_distill.notebook.dashboard_state.DashboardState`), and it renders
three ways from that one object: ``text/plain``, ``text/html`` (inline styles, so a saved
notebook reads well) and ``application/vnd.jupyter.distill.run+json``, the run card that
``jupyter_distill.core.runcard`` defines and the lab extension draws (the server sends the same
one, built by the same functions).

Besides the run's numbers the card says two things a user must not miss: how far the judge
agrees with the human review (once anyone reviewed), and what the exported file the alias serves
scores next to the fp32 model, with a warning when quantization costs more than
``MAX_QUANT_DROP`` of pass rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jupyter_distill.core.errors import DistillError
from jupyter_distill.core.runcard import (
    RunCard,
    RunCardPassRate,
    RunCardSignal,
    card_progress,
    downsample,
    loss_series,
    make_run_card,
    number,
    signal_points,
    signal_series,
    stored_pass_rates,
    summary_pass_rates,
)
from jupyter_distill.core.store import RunStore
from jupyter_distill.notebook.dashboard_html import _STATUS_COLOURS
from jupyter_distill.notebook.dashboard_state import DashboardState
from jupyter_distill.notebook.htmltext import no_math, text

if TYPE_CHECKING:
    from jupyter_distill.judging.agreement import Agreement

RUN_MIME_TYPE = "application/vnd.jupyter.distill.run+json"
#: How many of the prompts where judge and reviewer disagree most the card lists.
SHOWN_DISAGREEMENTS = 3


class UnknownRunError(DistillError):
    """A magic or widget names a run that is not in the run store."""


@dataclass
class RunSummary:
    """One run as the store knows it, with what a user needs next (alias, snippet, numbers)."""

    run: dict[str, Any]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher_samples: int = 0
    example_prompt: str | None = None
    student: Any = None  # the Student object when the run finished in this kernel
    loss: list[list[float]] = field(default_factory=list)  # [[step, value], ...] for the card's sparkline
    rates: dict[str, RunCardPassRate] = field(default_factory=dict)  # stored eval rows per label
    agreement: Agreement | None = None  # judge vs human review, once a human reviewed
    prompt_texts: dict[str, str] = field(default_factory=dict)  # prompt hash -> user text (disagreements)
    signal: RunCardSignal | None = None  # the on-policy signal of a jbond/onpolicy run, for the card's sparkline

    @classmethod
    def from_store(cls, store: RunStore, name: str, *, student: Any = None) -> RunSummary:
        """Read the run, its metric summary, artifacts and teacher usage from the store."""
        run = store.get_run(name)
        if run is None:
            known = ", ".join(r["id"] for r in store.list_runs()[:10]) or "(none yet)"
            raise UnknownRunError(
                f"no run named {name!r} in {str(store.path)!r}. Known runs: {known}. "
                "Fix: check the name with `%distill runs`, or point `%config DistillMagics.workdir` at the "
                "workdir the run used.",
                field="name",
                value=name,
            )
        metrics: dict[str, dict[str, float]] = {}
        for row in store.get_metrics(name):
            entry = metrics.setdefault(row["name"], {"first": row["value"], "min": row["value"], "steps": 0})
            entry["last"] = row["value"]
            entry["min"] = min(entry["min"], row["value"])
            entry["steps"] = entry["steps"] + 1
            entry["last_step"] = row["step"]
        row = store.conn.execute(
            "SELECT COUNT(*) AS n FROM samples s JOIN run_prompts rp ON rp.prompt_hash = s.prompt_hash "
            "WHERE rp.run_id=?",
            (name,),
        ).fetchone()
        heldout = store.get_prompts(name, split="heldout")
        example = _user_text(heldout[0].messages) if heldout else None
        agreement = review_agreement(store, name)
        artifacts = {
            kind: {"path": a["path"], "sha256": a["sha256"], "size": a["size"]}
            for kind, a in store.get_artifacts(name).items()
        }
        return cls(
            run=run,
            metrics=metrics,
            artifacts=artifacts,
            teacher_samples=int(row["n"]),
            example_prompt=example,
            student=student,
            loss=loss_series(store, name),
            rates=stored_pass_rates(store, run),
            agreement=agreement,
            prompt_texts=disagreement_texts(store, name, agreement),
            signal=signal_series(store, name),
        )

    @classmethod
    def from_state(cls, state: DashboardState) -> RunSummary | None:
        """The card of a run known only from its events (no store at hand): None before it ends."""
        if state.summary is None and state.error is None:
            return None
        summary = dict(state.summary or {})
        if state.error:
            summary["error"] = state.error
        metrics = {
            name: {"first": pts[0][1], "last": pts[-1][1], "min": min(v for _, v in pts), "steps": len(pts)}
            for name, pts in state.series.items()
            if pts
        }
        loss = [[float(step), float(value)] for step, value in state.series.get("loss", [])]
        return cls(
            run={"id": state.run, "status": state.status, "summary": summary},
            metrics=metrics,
            loss=loss,
            signal=signal_points(state.series),
        )

    # ------------------------------------------------------------------ derived numbers
    @property
    def name(self) -> str:
        return str(self.run.get("id", ""))

    @property
    def status(self) -> str:
        return str(self.run.get("status", "unknown"))

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.run.get("summary") or {})

    @property
    def alias(self) -> str | None:
        return self.summary.get("alias") or None

    def pass_rates(self) -> dict[str, float | None]:
        """Held-out pass rates: student before, teacher best-of-N, student after."""
        out: dict[str, float | None] = {}
        for key in ("student_before", "teacher_best_of_n", "student_after"):
            value = self.summary.get(key)
            out[key] = value.get("pass_rate") if isinstance(value, dict) else None
        return out

    def cost_per_1k(self) -> dict[str, float]:
        """USD per 1000 answers: the teacher as paid in this run, the student served locally (free)."""
        cost = float(self.summary.get("teacher_cost") or 0.0)
        teacher = cost / self.teacher_samples * 1000 if self.teacher_samples else 0.0
        return {"teacher": round(teacher, 6), "student": 0.0}

    def snippet(self) -> str:
        """A ready-to-run call that reaches the new student, with a held-out prompt as example."""
        prompt = json.dumps(self.example_prompt or "your prompt here", ensure_ascii=False)
        lines = ["import jupyter_distill as jd", ""]
        model = self.alias
        if model is None:
            gguf = self.artifacts.get("gguf", {}).get("path") or self.summary.get("gguf")
            if not gguf:
                return ""
            model = self.name
            lines.append(f"jd.set_alias({model!r}, backend='gguf', model_path={str(gguf)!r})")
        lines += [
            f"resp = jd.completion(model={model!r}, messages=[{{'role': 'user', 'content': {prompt}}}])",
            "print(resp.choices[0].message.content)",
        ]
        return "\n".join(lines)

    def to_json(self) -> RunCard:
        """The ``application/vnd.jupyter.distill.run+json`` payload: a run card as ``core.runcard`` defines it.

        The server's panel sends the same shape, so the lab card draws both without telling them apart.
        """
        run = self.run
        config = run.get("config") or {}
        current: float | None = None
        total = number(config.get("steps"))
        if run.get("phase") == "training" and total:
            current = self.loss[-1][0] if self.loss else 0.0
        else:
            total = None
        error = self.summary.get("error")
        card = make_run_card(
            run,
            progress=card_progress(run, current, total),
            cost=number(self.summary.get("teacher_cost")) or 0.0,
            loss=downsample(self.loss),
            pass_rates=summary_pass_rates(self.summary, self.rates),
            error=str(error) if error else None,
            snippet=self.snippet(),
            signal=self.signal,
        )
        return json.loads(json.dumps(card, default=str))

    # ------------------------------------------------------------------ rendering
    def _rows(self) -> list[tuple[str, str]]:
        summary = self.summary
        rates = self.pass_rates()
        rows: list[tuple[str, str]] = [("status", self.status)]
        if self.status == "failed" and summary.get("error"):
            rows.append(("error", str(summary["error"])))
        if summary.get("teacher"):
            rows.append(("teacher", str(summary["teacher"])))
        if summary.get("judge"):
            rows.append(("judge", str(summary["judge"])))
        if any(v is not None for v in rates.values()):
            n = next((v.get("n") for v in summary.values() if isinstance(v, dict) and "n" in v), None)
            rows.append(
                (
                    f"pass rate{f' ({n} held-out)' if n else ''}",
                    f"student before {_rate(rates['student_before'])} · teacher best-of-N "
                    f"{_rate(rates['teacher_best_of_n'])} · student after {_rate(rates['student_after'])}",
                )
            )
        rows += self._served_rows()
        rows += self._agreement_rows()
        per_1k = self.cost_per_1k()
        rows.append(
            (
                "cost per 1k calls",
                f"teacher ${per_1k['teacher']:.4f} · student ${per_1k['student']:.4f} (local)",
            )
        )
        if "teacher_cost" in summary:
            rows.append(
                ("teacher cost", f"${float(summary['teacher_cost'] or 0):.4f} for {self.teacher_samples} samples")
            )
        if "judge_cost" in summary:
            judge, teacher = float(summary["judge_cost"] or 0), float(summary.get("teacher_cost") or 0)
            rows.append(("judge cost", f"${judge:.4f}"))
            rows.append(("total cost", f"${teacher + judge:.4f}"))
        loss = self.metrics.get("loss")
        if loss:
            rows.append(
                (
                    "training",
                    f"{summary.get('steps', loss['steps'])} steps, loss {loss['first']:.3f} → {loss['last']:.3f}",
                )
            )
        for kind, artifact in sorted(self.artifacts.items()):
            rows.append((kind, str(artifact["path"])))
        if self.alias:
            rows.append(("alias", self.alias))
        if self.status == "stopped":
            rows.append(("resume", f"%distill resume {self.name}"))
        elif self.status == "failed":
            rows.append(("next", f"fix the error, then %distill resume {self.name} (paid samples are reused)"))
        return rows

    def _served_rows(self) -> list[tuple[str, str]]:
        """The exported file the alias serves, measured like the fp32 model, and what quantization cost."""
        served, after = self.summary.get("student_served"), self.summary.get("student_after")
        if not isinstance(served, dict) or number(served.get("pass_rate")) is None:
            return []
        qtype = str(served.get("quantize") or "gguf")
        line = f"{qtype} GGUF: pass rate {_rate(served['pass_rate'])} · mean score {_score(served.get('mean_score'))}"
        if isinstance(after, dict) and number(after.get("pass_rate")) is not None:
            line += f" (fp32: {_rate(after['pass_rate'])} · {_score(after.get('mean_score'))})"
        rows = [("served model", line)]
        from jupyter_distill.pipeline.run import MAX_QUANT_DROP  # the pipeline's own threshold

        warning = self.summary.get("quantization_warning")
        if not warning and isinstance(after, dict) and number(after.get("pass_rate")) is not None:
            drop = round(float(after["pass_rate"]) - float(served["pass_rate"]), 6)
            if drop > MAX_QUANT_DROP:
                warning = (
                    f"quantize={qtype!r} costs {drop * 100:.0f} points of held-out pass rate "
                    f"({float(after['pass_rate']):.2f} in fp32, {float(served['pass_rate']):.2f} served)"
                )
        if warning:
            rows.append(("quantization", str(warning)))
        return rows

    def _agreement_rows(self) -> list[tuple[str, str]]:
        return agreement_rows(self.agreement, self.prompt_texts)

    def __repr__(self) -> str:
        lines = [f"Run {self.name!r}"] + [f"  {k:<18} {v}" for k, v in self._rows()]
        snippet = self.snippet()
        if snippet and self.status == "done":
            lines += ["", *snippet.splitlines()]
        return "\n".join(lines)

    def html(self) -> str:
        """The card as self-contained HTML (inline styles: it must read well in a saved notebook)."""
        colour = _STATUS_COLOURS.get(
            {"done": "done", "failed": "failed", "stopped": "stopped"}.get(self.status, "active"), "#1976d2"
        )
        snippet = self.snippet()
        code = (
            f"<pre style='background:var(--jp-layout-color2,#f5f5f5);color:var(--jp-content-font-color1,#212121);"
            f"padding:6px;margin:6px 0 0 0'>{text(snippet)}</pre>"
            if snippet and self.status == "done"
            else ""
        )
        return no_math(
            f"<b>jupyter-distill run {text(self.name)}</b>{rows_html(self._rows())}{code}",
            css_class="jd-run-card",
            style=f"border-left:4px solid {colour};padding:4px 10px",
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"text/plain": repr(self), "text/html": self.html(), RUN_MIME_TYPE: self.to_json()}


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{float(value):.2f}"


def _short(value: str, limit: int = 60) -> str:
    flat = " ".join(value.split())
    return json.dumps(flat if len(flat) <= limit else flat[: limit - 1] + "…", ensure_ascii=False)


def _user_text(messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    return str((users or messages)[-1].get("content", "")) if messages else ""


def agreement_rows(a: Agreement | None, prompt_texts: dict[str, str]) -> list[tuple[str, str]]:
    """Judge vs human review: agreement, kappa, prompts reviewed, and where they differ most."""
    if a is None or not a.reviewed_prompts:
        return []
    line = (
        f"{_rate(a.agreement)} of {a.items} labelled candidates · Cohen's kappa {_score(a.kappa)} · "
        f"{a.reviewed_prompts} reviewed prompt{'s' if a.reviewed_prompts != 1 else ''}"
    )
    if a.top_pick_prompts:
        line += f" · judge's top pick is the reviewer's best on {_rate(a.top_pick_agreement)}"
    rows = [(f"judge agreement ({a.judge or 'judge'})", line)]
    for rank, d in enumerate(a.disagreements[:SHOWN_DISAGREEMENTS], start=1):
        prompt = _short(prompt_texts.get(d.prompt_hash) or d.prompt_hash[:12])
        pick = "" if d.human_best is None or d.judge_best == d.human_best else "; judge ranks another answer first"
        rows.append((f"disagreement {rank}", f"{prompt}: reviewer {d.human}{pick} (distance {d.distance:.2f})"))
    return rows


def disagreement_texts(store: RunStore, name: str, agreement: Agreement | None) -> dict[str, str]:
    """The user text of the prompts the card lists as disagreements, by prompt hash."""
    if agreement is None:
        return {}
    wanted = {d.prompt_hash for d in agreement.disagreements[:SHOWN_DISAGREEMENTS]}
    return {p.hash: _user_text(p.messages) for p in store.get_prompts(name) if p.hash in wanted}


def rows_html(rows: list[tuple[str, str]]) -> str:
    """Label/value rows as an HTML table (values that are paths in ``<code>``)."""
    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:1em;vertical-align:top'>{text(k)}</th>"
        f"<td style='text-align:left'>{_html_value(k, v)}</td></tr>"
        for k, v in rows
    )
    return f"<table style='margin-top:4px'>{cells}</table>"


def agreement_html(store: RunStore, name: str) -> str:
    """Judge agreement with the human review of run ``name`` as HTML; "" when nobody reviewed."""
    agreement = review_agreement(store, name)
    rows = agreement_rows(agreement, disagreement_texts(store, name, agreement))
    return no_math(rows_html(rows), css_class="jd-agreement") if rows else ""


def review_agreement(store: RunStore, name: str) -> Agreement | None:
    """How the run's judge agrees with its human review; None when nobody reviewed (or it cannot be told)."""
    if not store.get_reviews(name):
        return None
    from jupyter_distill.pipeline.calibration import judge_agreement

    try:
        result = judge_agreement(name, workdir=store.workdir)
    except DistillError:  # e.g. a store opened under another file name: the card goes on without it
        return None
    return result if result.reviewed_prompts else None


def _html_value(key: str, value: str) -> str:
    if key in ("adapter", "gguf", "merged", "f16_gguf", "card") or "/" in value:
        return f"<code>{text(value)}</code>"
    return text(value)


__all__ = ["RUN_MIME_TYPE", "RunSummary", "UnknownRunError", "agreement_html", "agreement_rows", "review_agreement"]
