"""The LLM judge: a model grades a response against a rubric through the Teacher protocol.

:class:`LLMJudge` asks for ``{"score": 1-10, "rationale": "..."}`` at temperature 0. An unparsable
answer gets exactly one repair request; after that the judgment is *recorded as failed* (score
``None``). A failure is never turned into a default score: a default such as 0.5 would pass
``min_score`` and silently put unjudged answers into the training set. :func:`load_judge` turns
the ``judge=`` argument of a run (None, a model spec, a verifier, a Judge) into a judge.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from jupyter_distill.core.errors import BudgetExceeded, JudgeError, PolicyError
from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.store import PromptRecord
from jupyter_distill.judging.verifiers import Judge, JudgeResult, VerifierJudge, extract_json
from jupyter_distill.teachers.base import FatalTeacherError

DEFAULT_RUBRIC = """\
Grade how well the response answers the user's request.
- Correctness: is it right? When reference data is given, does it agree with it?
- Instruction following: does it do exactly what was asked, in the requested format?
- Helpfulness and concision: complete, with nothing irrelevant or invented.
10 = fully correct and follows every instruction; 7 = correct with minor flaws;
4 = partly correct or ignores part of the request; 1 = wrong, off-topic or empty."""

_SYSTEM = """\
You are a strict, consistent grader of AI assistant responses.

Rubric:
{rubric}

Reply with only a JSON object and nothing else:
{{"score": <integer from 1 to 10>, "rationale": "<one or two sentences>"}}"""

_REPAIR = (
    "Your reply could not be read ({reason}). Reply again with only the JSON object "
    '{{"score": <integer from 1 to 10>, "rationale": "<one or two sentences>"}} and nothing else.'
)

REFERENCE_FIELDS = ("expected", "reference", "answer", "label", "target", "solution")
_SCORE_TEXT = re.compile(r"[\"']?score[\"']?\s*[:=]\s*[\"']?(\d+(?:\.\d+)?)", re.IGNORECASE)
_RATIONALE_TEXT = re.compile(r"[\"']?rationale[\"']?\s*[:=]\s*[\"']?(.+?)[\"']?\s*[},]?\s*$", re.I | re.S)


def parse_judge_output(text: str) -> tuple[float, str]:
    """``(raw score in 1..10, rationale)`` from a judge's reply, or ``ValueError`` with the reason.

    JSON first (fences and prose tolerated); then an explicit ``score: N`` in plain text, which
    small models often write instead of JSON. Out-of-range or missing scores are errors: the
    caller repairs once and then records a failure; there is no default score.
    """
    rationale = ""
    score: Any = None
    try:
        value = extract_json(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        lowered = {str(k).lower(): v for k, v in value.items()}
        score = lowered.get("score", lowered.get("rating", lowered.get("grade")))
        rationale = str(lowered.get("rationale", lowered.get("reason", lowered.get("explanation", ""))) or "")
    if score is None:
        match = _SCORE_TEXT.search(text)
        if match is None:
            raise ValueError("no score found" if not text.strip() else "no JSON object with a 'score' field")
        score = match.group(1)
        found = _RATIONALE_TEXT.search(text[match.end() :])
        rationale = found.group(1).strip() if found else text.strip()
    if isinstance(score, str):
        cleaned = score.strip().split("/")[0].strip()
        try:
            score = float(cleaned)
        except ValueError:
            raise ValueError(f"score {score!r} is not a number") from None
    if isinstance(score, bool) or not isinstance(score, int | float) or math.isnan(float(score)):
        raise ValueError(f"score {score!r} is not a number")
    if not 1.0 <= float(score) <= 10.0:
        raise ValueError(f"score {score!r} is outside 1..10")
    return float(score), rationale.strip()


def render_messages(messages: Sequence[Mapping[str, Any]]) -> str:
    """A chat as plain text for the judge: ``[role] content`` blocks."""
    return "\n\n".join(f"[{m.get('role', 'user')}]\n{_content_text(m.get('content'))}" for m in messages)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content)
    return "" if content is None else str(content)


class LLMJudge:
    """Grades responses with a model through the Teacher protocol (same HTTP machinery as sampling).

    ``rubric`` replaces :data:`DEFAULT_RUBRIC` (the grading criteria; the JSON answer format is
    always appended). The judge's ``id`` contains the teacher spec and a hash of the rubric and
    settings, so changing either re-judges while a re-run re-uses every stored judgment.
    """

    def __init__(
        self,
        teacher: Any,
        *,
        rubric: str | None = None,
        max_tokens: int = 256,
        reference_fields: Sequence[str] = REFERENCE_FIELDS,
    ):
        if not hasattr(teacher, "sample") or not hasattr(teacher, "spec"):
            raise JudgeError(
                f"the LLM judge needs a Teacher (with .spec and async .sample()), got {teacher!r}. Fix: pass a "
                "model spec string such as 'openrouter:openai/gpt-4o-mini' or a Teacher from load_teacher().",
                field="judge",
                value=repr(teacher),
            )
        if rubric is not None and not str(rubric).strip():
            raise JudgeError(
                "rubric is empty. Fix: pass rubric=None for the default rubric, or describe what a good answer is.",
                field="rubric",
                value=rubric,
            )
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 16:
            raise JudgeError(
                f"judge max_tokens must be an integer >= 16 (room for the JSON verdict), got {max_tokens!r}. "
                "Fix: e.g. max_tokens=256.",
                field="max_tokens",
                value=max_tokens,
            )
        self.teacher = teacher
        self.rubric = (rubric or DEFAULT_RUBRIC).strip()
        self.max_tokens = int(max_tokens)
        self.reference_fields = tuple(reference_fields)
        settings = {"rubric": self.rubric, "max_tokens": self.max_tokens, "reference_fields": self.reference_fields}
        self.id = f"llm:{teacher.spec}#{content_hash('llm-judge', settings)[:12]}"

    def messages(self, prompt: PromptRecord, response: str) -> list[dict[str, str]]:
        """The grading conversation for one candidate."""
        parts = [f"## Conversation to grade\n{render_messages(prompt.messages)}"]
        reference = {k: prompt.row[k] for k in self.reference_fields if k in (prompt.row or {})}
        if reference:
            parts.append("## Reference data\n" + json.dumps(reference, ensure_ascii=False, indent=1))
        parts.append(f"## Response to grade\n{response}")
        parts.append("Grade the response. Reply with only the JSON object.")
        return [
            {"role": "system", "content": _SYSTEM.format(rubric=self.rubric)},
            {"role": "user", "content": "\n\n".join(parts)},
        ]

    async def _ask(self, messages: list[dict[str, str]]) -> tuple[str, float]:
        samples = await self.teacher.sample(messages, n=1, temperature=0.0, max_tokens=self.max_tokens, seed=0)
        if not samples:
            return "", 0.0
        return str(samples[0].text or ""), float(getattr(samples[0], "cost", 0.0) or 0.0)

    async def score(self, prompt: PromptRecord, response: str) -> JudgeResult:
        messages = self.messages(prompt, response)
        cost = 0.0
        raws: list[str] = []
        try:
            text, spent = await self._ask(messages)
            cost += spent
            raws.append(text)
            try:
                raw_score, rationale = parse_judge_output(text)
            except ValueError as first:
                repair = [
                    *messages,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": _REPAIR.format(reason=first)},
                ]
                text, spent = await self._ask(repair)
                cost += spent
                raws.append(text)
                try:
                    raw_score, rationale = parse_judge_output(text)
                except ValueError as second:
                    return JudgeResult.failed(
                        f"judge output unparsable after one repair request: {second}", raw=_join_raw(raws), cost=cost
                    )
        except (BudgetExceeded, PolicyError, FatalTeacherError):
            raise  # the run must stop: money, terms or a dead endpoint, not one bad answer
        except Exception as exc:  # network errors after the teacher's own retries: retry on re-run
            return JudgeResult.failed(f"judge request failed: {type(exc).__name__}: {exc}", _join_raw(raws), cost)
        return JudgeResult(score=(raw_score - 1.0) / 9.0, rationale=rationale, raw=_join_raw(raws), cost=cost)

    async def aclose(self) -> None:
        """Close the teacher's connections of the running loop (it reconnects on demand)."""
        if hasattr(self.teacher, "aclose"):
            await self.teacher.aclose()

    def __repr__(self) -> str:
        return f"LLMJudge({self.id})"


def _join_raw(raws: list[str]) -> str:
    return raws[0] if len(raws) == 1 else json.dumps({"attempts": raws}, ensure_ascii=False)


def load_judge(
    judge: Any = None,
    *,
    teacher: Any = None,
    rubric: str | None = None,
    max_tokens: int = 256,
    **options: Any,
) -> Judge:
    """Turn the ``judge=`` argument into a :class:`Judge`.

    ``None`` -> the teacher as LLM judge; a string -> ``load_teacher(spec, **options)`` as LLM
    judge; a Judge object -> itself; any other callable -> a verifier judge.
    """
    if judge is None:
        if teacher is None:
            raise JudgeError(
                "judge=None means 'the teacher grades its own candidates', but no teacher was given. Fix: pass "
                "teacher=, a judge model spec (judge='openrouter:...'), or a verifier function.",
                field="judge",
                value=None,
            )
        if isinstance(teacher, str):
            from jupyter_distill.teachers import load_teacher

            return LLMJudge(load_teacher(teacher, **options), rubric=rubric, max_tokens=max_tokens)
        return LLMJudge(teacher, rubric=rubric, max_tokens=max_tokens)
    if isinstance(judge, str):
        if not judge.strip():
            raise JudgeError(
                "judge is an empty string. Fix: pass None (teacher as judge), a model spec, or a verifier function.",
                field="judge",
                value=judge,
            )
        from jupyter_distill.teachers import load_teacher

        return LLMJudge(load_teacher(judge, **options), rubric=rubric, max_tokens=max_tokens)
    if isinstance(judge, VerifierJudge | LLMJudge):
        return judge
    if hasattr(judge, "sample") and hasattr(judge, "spec"):  # a Teacher object
        return LLMJudge(judge, rubric=rubric, max_tokens=max_tokens)
    if isinstance(getattr(judge, "id", None), str) and inspect.iscoroutinefunction(getattr(judge, "score", None)):
        return judge  # a user-made Judge
    if callable(judge):
        return VerifierJudge(judge)
    raise JudgeError(
        f"judge={judge!r} is not a judge. Fix: pass None (teacher as judge), a model spec string, a verifier "
        "function (row, response) -> float | bool, or a Judge object.",
        field="judge",
        value=repr(judge),
    )


__all__ = [
    "DEFAULT_RUBRIC",
    "REFERENCE_FIELDS",
    "LLMJudge",
    "load_judge",
    "parse_judge_output",
    "render_messages",
]
