"""Held-out evaluation: did the student get better, judged the same way as the teacher's samples?

The evaluation stage answers the one question a distillation run exists for. It takes the
held-out prompts (never trained on), a ``respond`` callable (greedy answers of the student before
or after training, or anything else) and the *same* judge function used on the teacher's
samples, so "teacher best-of-N", "student before" and "student after" are scored on one scale.
A score ``>= 0.5`` (scores are normalised to [0, 1]) counts as a pass.

Results go to the store (``eval_results`` per prompt, summary ``metrics`` under
``eval/<label>/pass_rate``, ``.../mean_score``, ``.../n``) and out as ``metric`` events for the
live plot. Helpers build ``respond`` from an HF model + tokenizer (greedy, the student's chat
template, batched generation) and from a GGUF served by llama.cpp.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.core.events import Emit, Event, no_emit
from jupyter_distill.core.store import PromptRecord, RunStore

Messages = list[dict[str, Any]]
Respond = Callable[[Messages], str]
JudgeFn = Callable[[PromptRecord, str], "float | bool | None"]

PASS_THRESHOLD = 0.5


@dataclass(frozen=True)
class EvalSummary:
    """Pass rate and mean score of one label (e.g. ``student_before``) on ``n`` held-out prompts.

    ``mean_score`` is over the prompts the judge could score; ``n_unscored`` counts the others
    (they count as failures in ``pass_rate``).
    """

    label: str
    n: int
    pass_rate: float
    mean_score: float
    n_unscored: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "n": self.n,
            "pass_rate": self.pass_rate,
            "mean_score": self.mean_score,
            "n_unscored": self.n_unscored,
        }


def _score(judge_fn: JudgeFn, prompt: PromptRecord, response: str) -> float | None:
    value = judge_fn(prompt, response)
    if value is None:
        return None
    score = float(value)  # bool -> 0.0 / 1.0
    if not 0.0 <= score <= 1.0:
        raise TrainingError(
            f"the judge returned {score} for prompt {prompt.hash}; scores must be in [0, 1]. Fix: normalise the "
            "judge's output (a verifier may return a bool or a float in [0, 1]).",
            field="judge",
            value=score,
            fix="return a float in [0, 1] or a bool",
        )
    return score


def _summary_metrics(summary: EvalSummary) -> dict[str, float]:
    prefix = f"eval/{summary.label}"
    return {
        f"{prefix}/pass_rate": summary.pass_rate,
        f"{prefix}/mean_score": summary.mean_score,
        f"{prefix}/n": summary.n,
    }


def _record(
    store: RunStore | None,
    run_id: str,
    label: str,
    results: list[dict[str, Any]],
    step: int,
    emit: Emit,
    started: float,
) -> EvalSummary:
    n = len(results)
    scored = [r["score"] for r in results if r["score"] is not None]
    summary = EvalSummary(
        label=label,
        n=n,
        pass_rate=sum(1 for r in results if r["passed"]) / n if n else 0.0,
        mean_score=sum(scored) / len(scored) if scored else 0.0,
        n_unscored=n - len(scored),
        seconds=time.time() - started,
    )
    metrics = _summary_metrics(summary)
    if store is not None:
        store.put_eval_results(run_id, label, results)
        store.put_metrics(run_id, step, metrics)
    emit(
        Event(
            kind="metric",
            phase="eval",
            run=run_id,
            step=step,
            message=f"{label}: pass rate {summary.pass_rate:.2f} on {n} held-out prompts",
            data={**metrics, "label": label, "pass_rate": summary.pass_rate, "mean_score": summary.mean_score},
        )
    )
    return summary


def _check_label(label: str) -> None:
    if not label or "/" in label:
        raise TrainingError(
            f"evaluation label {label!r} must be a non-empty name without '/'. Fix: use e.g. 'student_after'.",
            field="label",
            value=label,
            fix="use a plain name such as 'student_before'",
        )


def evaluate(
    store: RunStore | None,
    run_id: str,
    prompts: Sequence[PromptRecord],
    respond: Respond,
    judge_fn: JudgeFn,
    label: str,
    emit: Emit = no_emit,
    *,
    step: int = 0,
    stop: threading.Event | None = None,
) -> EvalSummary:
    """Answer every prompt with ``respond``, judge it with ``judge_fn``, record and summarise.

    ``respond`` may carry a ``batch(list_of_messages) -> list[str]`` attribute (the HF responder
    does): it is then called in batches, which is several times faster for transformers models.
    ``step`` is the training step the evaluation belongs to (0 before training, the last step
    after), so summary metrics line up with the loss curve. ``stop`` is checked between batches and
    ends early: the summary then covers the prompts answered so far, and nothing is recorded (a
    partial pass rate in the store or on the live plot would read as a result; a resumed run
    evaluates again, re-using stored judge scores).
    """
    _check_label(label)
    started = time.time()
    prompts = list(prompts)
    emit(Event(kind="progress", phase="eval", run=run_id, message=label, current=0, total=len(prompts)))
    results: list[dict[str, Any]] = []
    batch = getattr(respond, "batch", None)
    size = int(getattr(respond, "batch_size", 1)) if batch is not None else 1
    for start in range(0, len(prompts), size):
        if stop is not None and stop.is_set():
            break
        chunk = prompts[start : start + size]
        answers = batch([p.messages for p in chunk]) if batch is not None else [respond(p.messages) for p in chunk]
        for prompt, answer in zip(chunk, answers, strict=True):
            score = _score(judge_fn, prompt, answer)
            passed = score is not None and score >= PASS_THRESHOLD
            results.append({"prompt_hash": prompt.hash, "response": answer, "score": score, "passed": int(passed)})
        emit(Event(kind="progress", phase="eval", run=run_id, message=label, current=len(results), total=len(prompts)))
    if stop is not None and stop.is_set():  # also set during the last batch: its answers may be cut short
        return _record(None, run_id, label, results, step, no_emit, started)
    return _record(store, run_id, label, results, step, emit, started)


def evaluate_best_of_n(
    store: RunStore | None,
    run_id: str,
    prompts: Sequence[PromptRecord],
    candidates: dict[str, Sequence[str]],
    judge_fn: JudgeFn,
    label: str = "teacher_best_of_n",
    emit: Emit = no_emit,
    *,
    step: int = 0,
) -> EvalSummary:
    """The teacher's best-of-N on held-out prompts: each prompt scores its best candidate.

    This is the ceiling the student is distilled toward; ``candidates`` maps prompt hash to the
    teacher's N samples. A prompt without candidates counts as unscored (a failure).
    """
    _check_label(label)
    started = time.time()
    results: list[dict[str, Any]] = []
    for prompt in prompts:
        best_text, best = "", None
        for text in candidates.get(prompt.hash, ()):
            score = _score(judge_fn, prompt, text)
            if score is not None and (best is None or score > best):
                best_text, best = text, score
        passed = best is not None and best >= PASS_THRESHOLD
        results.append({"prompt_hash": prompt.hash, "response": best_text, "score": best, "passed": int(passed)})
    return _record(store, run_id, label, results, step, emit, started)


class HFResponder:
    """Greedy answers from a transformers model (a PEFT model too) with the student's chat template.

    Prompts are rendered and tokenized exactly like training does (``LoadedStudent`` semantics:
    chat template with generation prompt, no extra BOS), generation stops at the end-of-turn
    token, and batches are left-padded so ``generate`` can run several prompts at once.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        stop_token_ids: Sequence[int] | None = None,
        stop: threading.Event | None = None,
    ):
        self.model = model
        self.stop = stop  # ends a batch's generation at the next token (Stop within a token, not a batch)
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        stops = list(stop_token_ids) if stop_token_ids else []
        if not stops and tokenizer.eos_token_id is not None:
            stops = [int(tokenizer.eos_token_id)]
        self.stop_token_ids = stops

    def _prompt_ids(self, messages: Messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, messages: Messages) -> str:
        return self.batch([messages])[0]

    def batch(self, batch: Sequence[Messages]) -> list[str]:
        import torch

        encoded = [self._prompt_ids(m) for m in batch]
        width = max(len(e) for e in encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_token_ids[0]
        device = next(self.model.parameters()).device
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, seq in enumerate(encoded):  # left padding: every prompt ends where generation starts
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    do_sample=False,
                    max_new_tokens=self.max_new_tokens,
                    eos_token_id=self.stop_token_ids,
                    pad_token_id=pad,
                    use_cache=True,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    stopping_criteria=_stopping(self.stop),
                )
        finally:
            self.model.train(was_training)
        answers = []
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in self.stop_token_ids), len(row))
            answers.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True))
        return answers


def _stopping(stop: threading.Event | None) -> Any:
    """A transformers stopping criterion that ends generation once ``stop`` is set (None without one)."""
    if stop is None:
        return None
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _OnEvent(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_OnEvent()])


def student_responder(student: Any, *, max_new_tokens: int = 128, batch_size: int = 8) -> HFResponder:
    """``respond`` for a :class:`~jupyter_distill.train.student.LoadedStudent` (before or after training)."""
    return HFResponder(
        student.model,
        student.tokenizer,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop_token_ids=student.stop_token_ids(),
    )


class LlamaResponder:
    """Greedy answers from a GGUF through llama.cpp, several prompts decoded as one batch.

    ``evaluate`` hands it ``batch_size`` prompts at a time; each becomes one sequence of a
    :class:`~jupyter_distill.teachers.llama_batch.BatchContext`, so a decode step reads the
    weights once for all of them. Greedy decoding depends on the other sequences of the batch only
    through float rounding (see ``teachers/llama_batch``), so an answer is the one ``completion()``
    gives for the prompt alone unless two top tokens are tied to the last bits.
    """

    def __init__(self, gguf_path: Any, *, max_tokens: int = 128, n_ctx: int = 2048, batch_size: int = 8):
        self.gguf_path = gguf_path
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx
        self.batch_size = batch_size

    def __call__(self, messages: Messages) -> str:
        return self.batch([messages])[0]

    def batch(self, batch: Sequence[Messages]) -> list[str]:
        from jupyter_distill.core.runtime import use_llama
        from jupyter_distill.teachers.llama_batch import BatchContext, batched_threads, format_chat

        with use_llama(self.gguf_path, n_ctx=self.n_ctx) as llm:
            prompts = [format_chat(llm, list(m)) for m in batch]
            size = sum(len(t) for t, _ in prompts) + len(prompts) * self.max_tokens
            with BatchContext(
                llm, n_seq=len(prompts), n_ctx=-(-size // 256) * 256, n_threads=batched_threads()
            ) as context:
                results = context.generate(
                    [t for t, _ in prompts],
                    [[0] for _ in prompts],
                    temperature=0.0,
                    max_tokens=self.max_tokens,
                    stop_strings=prompts[0][1],
                )
        return [r[0].text for r in results]


def llama_responder(gguf_path: Any, *, max_tokens: int = 128, n_ctx: int = 2048) -> Respond:
    """``respond`` for a GGUF served by llama.cpp (greedy), as ``completion()`` would serve it."""
    return LlamaResponder(gguf_path, max_tokens=max_tokens, n_ctx=n_ctx)


__all__ = [
    "PASS_THRESHOLD",
    "EvalSummary",
    "HFResponder",
    "LlamaResponder",
    "evaluate",
    "evaluate_best_of_n",
    "llama_responder",
    "student_responder",
]
