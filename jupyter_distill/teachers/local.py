"""Local teachers: GGUF files through llama-cpp-python, the embedded offline default.

``local:NAME`` resolves a GGUF shipped inside a PyPI package (``models.LOCAL_MODELS``);
``gguf:PATH`` takes your own file. The model is loaded lazily (a re-run that finds every sample
in the store never loads it) through :func:`jupyter_distill.core.runtime.use_llama`, so teachers,
evaluation and serving share one copy per process, and generation holds the model exclusively
because a llama.cpp context is not re-entrant.
Generation runs in a worker thread (``asyncio.to_thread``) so the event loop, and with it
progress events and the Stop button, stays responsive.

The ``n`` candidates of a prompt decode as parallel sequences over one evaluation of the prompt
(:mod:`jupyter_distill.teachers.llama_batch`): on a CPU a decode step costs about the same for one
sequence as for several, because it is bound by reading the weights. Candidate ``i`` samples with
its own sampler seeded ``seed + i`` (the seed recorded in its provenance and key), so the same
seeds give the same texts. Cancelling the call (the Stop button) sets an event the decode loop
checks before every step, so the worker thread ends within one step instead of finishing the batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import DistillError, ExportError, TeacherError
from jupyter_distill.core.hashing import file_sha256
from jupyter_distill.core.models import LOCAL_MODELS, resolve_local_gguf
from jupyter_distill.core.policy import PolicyDecision, PolicyMode, decide
from jupyter_distill.core.runtime import use_llama
from jupyter_distill.core.tokenizer_id import TokenizerFingerprint, fingerprint
from jupyter_distill.teachers.base import (
    FatalTeacherError,
    ParsedSpec,
    Sample,
    TokenScores,
    check_sample_args,
    local_provenance,
)
from jupyter_distill.teachers.llama_batch import (
    BatchContext,
    Generation,
    GenerationStopped,
    batched_threads,
    format_chat,
)

LOCAL_OPTIONS = ("n_ctx", "n_threads", "licence")
_sha_cache: dict[tuple[str, int, int], str] = {}
_sha_lock = threading.Lock()


def model_file_sha256(path: Path) -> str:
    """SHA-256 of a model file, computed once per (path, size, mtime) per process."""
    stat = path.stat()
    key = (str(path), stat.st_size, int(stat.st_mtime))
    with _sha_lock:
        if key in _sha_cache:
            return _sha_cache[key]
    digest = file_sha256(path)
    with _sha_lock:
        _sha_cache[key] = digest
    return digest


class LlamaTeacher:
    """A GGUF model sampled in-process; costs nothing and needs no key."""

    def __init__(
        self,
        *,
        spec: str,
        model: str,
        path: Path,
        decision: PolicyDecision,
        n_ctx: int = 2048,
        n_threads: int | None = None,
    ):
        self.spec = spec
        self.model = model
        self.path = path
        self.decision = decision
        self.provider = decision.provider
        self.endpoint = f"llama.cpp:{path.name}"
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.concurrency = 1  # one context: parallel prompts would only queue on the lock
        self.requests_sent = 0  # generations run
        self.spent = 0.0
        self.tokens_scored = 0  # completion tokens scored for loss='onpolicy'
        self._sha256: str | None = None

    def __repr__(self) -> str:
        return f"LlamaTeacher(spec={self.spec!r}, path={str(self.path)!r})"

    def _generate(
        self,
        messages: list[dict[str, Any]],
        temperature: float,
        max_tokens: int,
        seeds: list[int],
        stop: threading.Event,
    ) -> tuple[list[Generation], float]:
        try:
            with use_llama(self.path, n_ctx=self.n_ctx, n_threads=self.n_threads) as llm:
                if not self.decision.licence:
                    licence = str(llm.metadata.get("general.license") or "unknown (not in the GGUF metadata)")
                    self.decision = dataclasses.replace(self.decision, licence=licence)
                if self._sha256 is None:
                    self._sha256 = model_file_sha256(self.path)
                started = time.monotonic()
                tokens, stop_strings = format_chat(llm, messages)
                if len(tokens) + max_tokens > self.n_ctx:
                    raise TeacherError(
                        f"teacher {self.spec}: the prompt ({len(tokens)} tokens) plus max_tokens={max_tokens} "
                        f"does not fit the context of {self.n_ctx} tokens. Fix: shorten the prompt, lower "
                        "max_tokens, or load the teacher with a larger n_ctx=.",
                        field="n_ctx",
                        value=self.n_ctx,
                    )
                # The KV cells of the prompt are shared, so the context holds one prompt plus each
                # candidate's own tokens.
                size = -(-(len(tokens) + len(seeds) * max_tokens) // 256) * 256
                threads = self.n_threads or batched_threads()
                with BatchContext(llm, n_seq=len(seeds), n_ctx=size, n_threads=threads) as batch:
                    generations = batch.generate(
                        [tokens],
                        [seeds],
                        temperature=temperature,
                        max_tokens=max_tokens,
                        stop_strings=stop_strings,
                        stop=stop,
                    )[0]
                return generations, time.monotonic() - started
        except ExportError as exc:  # only loading raises it: the file is missing or not a model
            raise FatalTeacherError(
                f"teacher {self.spec}: {exc}", field="teacher", value=self.spec, fix=exc.fix
            ) from None

    async def sample(
        self,
        messages: list[dict[str, Any]],
        n: int = 4,
        temperature: float = 0.8,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> list[Sample]:
        """``n`` candidates decoded together, candidate ``i`` sampled with seed ``seed + i``."""
        check_sample_args(n, temperature, max_tokens)
        base = seed if seed is not None else random.randrange(2**31 - n)
        seeds = [base + i for i in range(n)]
        stop = threading.Event()
        try:
            generations, seconds = await asyncio.to_thread(
                self._generate, messages, temperature, max_tokens, seeds, stop
            )
        except asyncio.CancelledError:
            stop.set()  # the worker thread ends at its next decode step
            raise
        except GenerationStopped:
            raise asyncio.CancelledError from None
        except DistillError:
            raise
        except (ValueError, RuntimeError) as exc:
            raise TeacherError(
                f"teacher {self.spec} could not generate: {exc}. Fix: shorten the prompt or load the teacher "
                f"with a larger n_ctx= (now {self.n_ctx}).",
                field="teacher",
                value=self.spec,
            ) from None
        self.requests_sent += n
        samples = []
        for i, generation in enumerate(generations):
            usage = {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.completion_tokens,
                "total_tokens": generation.prompt_tokens + generation.completion_tokens,
            }
            samples.append(
                Sample(
                    text=generation.text,
                    usage=usage,
                    cost=0.0,
                    finish_reason=generation.finish_reason,
                    provenance=local_provenance(
                        self,
                        {"temperature": temperature, "max_tokens": max_tokens, "seed": seeds[i], "n_per_request": 1},
                        usage,
                        seconds / n,
                        "llama-cpp-python",
                        model_file=self.path.name,
                        model_sha256=self._sha256,
                    ),
                )
            )
        return samples

    # ------------------------------------------------------------------ scoring (loss: onpolicy)
    can_score = True  # llama.cpp returns the logits of any token sequence we feed it

    def _fingerprint(self) -> TokenizerFingerprint:
        with use_llama(self.path, n_ctx=self.n_ctx, n_threads=self.n_threads) as llm:
            return fingerprint(
                lambda text: llm.tokenize(text.encode("utf-8"), add_bos=False, special=False), llm.n_vocab()
            )

    async def tokenizer_fingerprint(self) -> TokenizerFingerprint:
        """How the GGUF's tokenizer encodes the probe texts (loads the model; sends nothing anywhere)."""
        return await asyncio.to_thread(self._fingerprint)

    def _score(self, prompt_ids: list[int], completions: list[list[int]], stop: threading.Event) -> list[list[float]]:
        with use_llama(self.path, n_ctx=self.n_ctx, n_threads=self.n_threads) as llm:
            total = len(prompt_ids) + sum(len(c) for c in completions)
            if len(prompt_ids) + max((len(c) for c in completions), default=0) > self.n_ctx:
                raise TeacherError(
                    f"teacher {self.spec}: a prompt of {len(prompt_ids)} tokens plus a sample does not fit the "
                    f"context of {self.n_ctx} tokens. Fix: lower jbond_max_new_tokens or load the teacher with a "
                    "larger n_ctx=.",
                    field="n_ctx",
                    value=self.n_ctx,
                )
            size = -(-total // 256) * 256
            threads = self.n_threads or batched_threads()
            with BatchContext(llm, n_seq=len(completions) + 1, n_ctx=size, n_threads=threads) as batch:
                return batch.score(prompt_ids, completions, stop)

    async def token_logprobs(self, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]]) -> TokenScores:
        """The teacher's ``log p`` of each completion token after ``prompt_ids`` (the student's own ids).

        One evaluation of the prompt shared by the completions; free. The ids must come from the
        same tokenizer (checked before the run by comparing :meth:`tokenizer_fingerprint`).
        """
        prompt, items = [int(t) for t in prompt_ids], [[int(t) for t in c] for c in completions]
        stop = threading.Event()
        try:
            values = await asyncio.to_thread(self._score, prompt, items, stop)
        except asyncio.CancelledError:
            stop.set()
            raise
        except GenerationStopped:
            raise asyncio.CancelledError from None
        except DistillError:
            raise
        except (ValueError, RuntimeError) as exc:
            raise TeacherError(
                f"teacher {self.spec} could not score the student's tokens: {exc}. Fix: check that the teacher "
                "shares the student's tokenizer, or load it with a larger n_ctx=.",
                field="teacher",
                value=self.spec,
            ) from None
        self.tokens_scored += sum(len(c) for c in items)
        return TokenScores(values, cost=0.0, prompt_tokens=len(prompt) + sum(len(c) for c in items))

    async def aclose(self) -> None:
        """Nothing to close: the model stays in the shared runtime cache for other callers."""


def build_llama_teacher(
    parsed: ParsedSpec,
    *,
    policy: PolicyMode = "strict",
    authorization: str | None = None,
    **options: Any,
) -> LlamaTeacher:
    """Resolve the GGUF and decide the policy; the model itself loads on first use."""
    unknown = sorted(set(options) - set(LOCAL_OPTIONS))
    if unknown:
        raise TeacherError(
            f"unknown option {unknown[0]!r} for teacher '{parsed.scheme}:{parsed.target}'. "
            f"Known options: {', '.join(LOCAL_OPTIONS)}.",
            field=unknown[0],
            value=unknown[0],
        )
    licence = str(options.get("licence") or "")
    if parsed.scheme == "local":
        path = resolve_local_gguf(parsed.target)
        licence = licence or LOCAL_MODELS[parsed.target].licence
        spec = f"local:{parsed.target}"
    else:
        path = Path(parsed.target).expanduser()
        if not path.is_file():
            raise TeacherError(
                f"teacher 'gguf:{parsed.target}': no such file. Fix: give the path of a .gguf file, or use "
                f"'local:NAME' with one of {', '.join(LOCAL_MODELS)}.",
                field="teacher",
                value=f"gguf:{parsed.target}",
            )
        path = path.resolve()
        spec = f"gguf:{path}"
    decision = decide("local", parsed.target, mode=policy, authorization=authorization, licence=licence)
    return LlamaTeacher(
        spec=spec,
        model=parsed.target if parsed.scheme == "local" else path.stem,
        path=path,
        decision=decision,
        n_ctx=int(options.get("n_ctx", 2048)),
        n_threads=options.get("n_threads"),
    )
