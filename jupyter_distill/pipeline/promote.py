"""Gated promotion: swap an alias to a run's exported model only when it is good enough.

``promote(run, alias, min_pass_rate=..., max_latency_ms=...)`` answers the run's held-out
prompts twice through ``completion()``, once with the run's exported model and once with what the
alias serves now (a teacher behind an OpenAI-compatible URL, an older student...), scores every
answer with the run's judge, and compares pass rate, mean judge score, p50/p95 latency and cost
per 1000 calls in a :class:`PromotionReport`. A local model is loaded by one untimed call first, so
the latencies are serving latencies, not a weight load. The alias is swapped only when every gate holds, in
one locked write that also records the version (see ``serving.registry.promote_alias``); a
refused promotion writes nothing at all. ``rollback(alias)`` restores the previous target and
``alias_history(alias)`` lists the versions.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import AliasError, ConfigError, JudgeError
from jupyter_distill.core.loops import run_sync
from jupyter_distill.core.store import PromptRecord
from jupyter_distill.evaluation.heldout import PASS_THRESHOLD
from jupyter_distill.pipeline.runref import RunRef, resolve_run
from jupyter_distill.serving import registry

ScoreFn = Callable[[PromptRecord, str], "float | None"]


@dataclass(frozen=True)
class SideStats:
    """One model's numbers on the held-out prompts."""

    label: str  # "candidate" or "current"
    target: str  # what was called, in words
    n: int
    pass_rate: float
    mean_score: float
    p50_ms: float
    p95_ms: float
    cost_per_1k: float | None  # USD per 1000 calls; None when the backend reports no cost


@dataclass(frozen=True)
class Gate:
    """One condition of the promotion and whether it held."""

    name: str
    passed: bool
    detail: str


@dataclass
class PromotionReport:
    """The comparison, the gates, and what was done (``promoted``, ``version``)."""

    run: str
    alias: str
    sides: list[SideStats]
    gates: list[Gate]
    promoted: bool
    version: dict[str, Any] | None = None
    prompts: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _rows(self) -> list[list[str]]:
        def cost(value: float | None) -> str:
            return "unknown" if value is None else f"${value:.4f}"

        return [
            [s.label, s.target, f"{s.pass_rate:.2f}", f"{s.mean_score:.3f}", f"{s.p50_ms:.1f}", f"{s.p95_ms:.1f}",
             cost(s.cost_per_1k)]
            for s in self.sides
        ]  # fmt: skip

    _HEAD = ("model", "target", "pass rate", "mean score", "p50 ms", "p95 ms", "cost / 1k calls")

    def _verdict(self) -> str:
        if self.promoted:
            number = (self.version or {}).get("version")
            return f"alias {self.alias!r} now serves run {self.run!r} (version {number})"
        failed = ", ".join(g.name for g in self.gates if not g.passed) or "none"
        return f"alias {self.alias!r} unchanged: gate failed ({failed})"

    def __repr__(self) -> str:
        rows = [list(self._HEAD), *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEAD))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines += [f"{'ok  ' if g.passed else 'FAIL'} {g.name}: {g.detail}" for g in self.gates]
        lines.append(self._verdict())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self._HEAD)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self._rows())
        gates = "".join(
            f"<li>{'&#10003;' if g.passed else '&#10007;'} {html.escape(g.name)}: {html.escape(g.detail)}</li>"
            for g in self.gates
        )
        return (
            f"<div><b>Promotion of run {html.escape(self.run)} to alias {html.escape(self.alias)}</b> "
            f"({self.prompts} held-out prompts)<table><tr>{head}</tr>{body}</table><ul>{gates}</ul>"
            f"<p>{html.escape(self._verdict())}</p></div>"
        )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in (0, 100]): the smallest value with at least q% at or below it."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


def _candidate(ref: RunRef, run: Any) -> tuple[dict[str, Any], Any]:
    """The alias target for the run's exported model, and what ``completion()`` calls for it."""
    from jupyter_distill.serving.student import Student

    if isinstance(run, Student):
        target = run._routing()
        return {k: v for k, v in target.items() if k in ("backend", "model_path", "base_model")}, run
    artifacts = ref.store.get_artifacts(ref.run_id)
    if "gguf" in artifacts and Path(artifacts["gguf"]["path"]).is_file():
        path = artifacts["gguf"]["path"]
        return {"backend": "gguf", "model_path": path}, path
    if "merged" in artifacts and Path(artifacts["merged"]["path"]).is_dir():
        path = artifacts["merged"]["path"]
        return {"backend": "peft", "model_path": path}, Student(merged_dir=path, name=ref.run_id)
    raise ConfigError(
        f"run {ref.run_id!r} has no exported model in {str(ref.store.workdir)!r} (artifacts: "
        f"{', '.join(artifacts) or 'none'}). Fix: finish the run with quantize= set, or pass the Student it returned.",
        field="run",
        value=ref.run_id,
    )


def _score_fn(ref: RunRef, judge: Any) -> ScoreFn:
    """Scores on the run's scale: ``judge`` when given, else the run's own judge."""
    from jupyter_distill.judging.llm_judge import load_judge

    the_judge = None
    if judge is not None:
        the_judge = load_judge(judge)
    elif ref.run is not None and getattr(ref.run, "_loaded_judge", None) is not None:
        the_judge = ref.run._loaded_judge
    else:
        config = ref.config
        spec = config.get("judge")
        if isinstance(spec, str) and spec.startswith("<"):
            raise JudgeError(
                f"run {ref.run_id!r} was judged by {spec}, a function that is not stored with the run. Fix: pass "
                "judge=<the same verifier> to promote().",
                field="judge",
                value=spec,
            )
        the_judge = load_judge(spec, teacher=config.get("teacher"), rubric=config.get("rubric"))

    def score(prompt: PromptRecord, response: str) -> float | None:
        return run_sync(lambda: the_judge.score(prompt, response)).score

    return score


def _measure(
    label: str,
    target: str,
    model: Any,
    prompts: Sequence[PromptRecord],
    score: ScoreFn,
    max_tokens: int,
    *,
    local: bool,
) -> SideStats:
    from jupyter_distill.serving.student import completion

    latencies, scores, costs = [], [], []
    passed = 0
    if local:  # load the model before timing: a first call that loads weights is not serving latency
        completion(model, prompts[0].messages, max_tokens=1, temperature=0.0)
    for prompt in prompts:
        resp = completion(model, prompt.messages, max_tokens=max_tokens, temperature=0.0)
        latencies.append(float(resp._latency_ms))
        costs.append(resp._cost)
        value = score(prompt, resp.choices[0].message.content or "")
        scores.append(value)
        passed += value is not None and value >= PASS_THRESHOLD
    scored = [s for s in scores if s is not None]
    known = None if any(c is None for c in costs) else sum(costs) / len(costs) * 1000
    return SideStats(
        label=label,
        target=target,
        n=len(prompts),
        pass_rate=round(passed / len(prompts), 6),
        mean_score=round(sum(scored) / len(scored), 6) if scored else 0.0,
        p50_ms=round(percentile(latencies, 50), 3),
        p95_ms=round(percentile(latencies, 95), 3),
        cost_per_1k=None if known is None else round(known, 6),
    )


def _describe(entry: dict[str, Any]) -> str:
    if entry.get("backend") == "openai-compatible":
        return f"openai-compatible {entry.get('model')} @ {entry.get('base_url')}"
    return f"{entry.get('backend')} {Path(str(entry.get('model_path'))).name}"


def promote(
    run: Any,
    alias: str,
    *,
    min_pass_rate: float | None = None,
    max_latency_ms: float | None = None,
    min_gain: float | None = 0.0,
    judge: Any = None,
    max_tokens: int = 128,
    workdir: Any = None,
) -> PromotionReport:
    """Compare the run's exported model with what ``alias`` serves now; swap only if the gate holds.

    Gates: candidate pass rate ``>= min_pass_rate``; candidate p95 latency ``<= max_latency_ms``;
    candidate pass rate at least ``min_gain`` above the current model's (0.0: not worse; None: no
    comparison gate). ``judge`` scores the answers (default: the run's judge). A new alias has
    no current model and is gated on the candidate alone. Returns the report; the swap, when it
    happens, records a version that :func:`rollback` can undo.
    """
    registry.validate_name(alias)
    for name, value, low in (("min_pass_rate", min_pass_rate, 0.0), ("min_gain", min_gain, -1.0)):
        if value is not None and not low <= float(value) <= 1.0:
            raise ConfigError(
                f"{name} must be in [{low:g}, 1] (pass rates are ratios), got {value!r}. Fix: e.g. {name}=0.05.",
                field=name,
                value=value,
            )
    if max_latency_ms is not None and float(max_latency_ms) <= 0:
        raise ConfigError(
            f"max_latency_ms must be > 0, got {max_latency_ms!r}. Fix: e.g. 500.", field="max_latency_ms",
            value=max_latency_ms,
        )  # fmt: skip
    ref = resolve_run(run, workdir)
    prompts = ref.store.get_prompts(ref.run_id, split="heldout")
    if not prompts:
        raise ConfigError(
            f"run {ref.run_id!r} has no held-out prompts to compare on. Fix: run it with heldout_fraction > 0.",
            field="heldout_fraction",
            value=0,
        )
    target, model = _candidate(ref, run)
    current = registry.list_aliases().get(alias)
    score = _score_fn(ref, judge)
    sides = [
        _measure("candidate", f"run {ref.run_id}: {_describe(target)}", model, prompts, score, max_tokens, local=True)
    ]
    if current is not None:
        local = current.get("backend") != "openai-compatible"  # a remote warm-up call would cost money
        sides.append(_measure("current", _describe(current), alias, prompts, score, max_tokens, local=local))
    cand = sides[0]
    gates: list[Gate] = []
    if min_pass_rate is not None:
        gates.append(
            Gate("min_pass_rate", cand.pass_rate >= min_pass_rate, f"{cand.pass_rate:.2f} >= {min_pass_rate:.2f}")
        )
    if max_latency_ms is not None:
        gates.append(
            Gate("max_latency_ms", cand.p95_ms <= max_latency_ms, f"p95 {cand.p95_ms:.1f} ms <= {max_latency_ms} ms")
        )
    if min_gain is not None and current is not None:
        gain = round(cand.pass_rate - sides[1].pass_rate, 6)
        gates.append(Gate("min_gain", gain >= min_gain, f"pass rate gain {gain:+.2f} >= {min_gain:+.2f}"))
    report = PromotionReport(ref.run_id, alias, sides, gates, promoted=False, prompts=len(prompts))
    if not all(g.passed for g in gates):
        return report
    info = {"run": ref.run_id, "workdir": str(Path(ref.store.workdir).resolve())}
    summary = {s.label: {k: v for k, v in asdict(s).items() if k not in ("label", "target")} for s in sides}
    try:
        report.version = registry.promote_alias(
            alias, {**target, "student": ref.run_id, **info}, expected=current, report=summary, **info
        )
    except AliasError as exc:
        report.notes.append(str(exc))
        raise
    report.promoted = True
    return report


def rollback(alias: str) -> dict[str, Any]:
    """Point ``alias`` back at its previous target (through the registry's lock); returns the new version."""
    return registry.rollback_alias(alias)


def alias_history(alias: str) -> list[dict[str, Any]]:
    """Every recorded version of ``alias``, oldest first."""
    return registry.alias_history(alias)


__all__ = ["Gate", "PromotionReport", "SideStats", "alias_history", "percentile", "promote", "rollback"]
