"""Many llama.cpp chat completions decoded as parallel sequences of one context.

On a CPU, one decode step costs about the same for one sequence as for a dozen: the time goes
into reading the weights, and a batch reads them once for every sequence in it. So the N
candidates of a prompt, and the candidates of several prompts, are decoded together:

- each prompt is evaluated once, into one sequence, and its KV cache is copied to the other
  sequences of that prompt (``llama_memory_seq_cp``), so the candidates share one prompt pass;
- every decode step carries one token of every running sequence (``llama_batch`` with one
  sequence id per token); a finished sequence frees its slot and the next prompt takes it.

**Reproducibility.** Candidate ``i`` with seed ``s`` is what ``Llama.create_chat_completion(...,
seed=s)`` returns for the same messages: the prompt goes through the model's own chat handler
(captured, not re-implemented), each sequence has its own sampler chain built by llama-cpp-python
with seed ``s``, and the stop rules (end-of-generation token, stop strings, ``max_tokens``,
incomplete UTF-8) are the same. The logits of a sequence do not depend on what else is in the
batch because every sequence has its *own* KV stream (``kv_unified = false``), filled from its
first cell in position order exactly as a lone sequence fills it, and llama.cpp's CPU matrix
products compute each token's row on its own. ``tests/test_llama_batch.py`` checks that a
candidate decoded alone, in a full batch, with fewer slots, and through ``create_chat_completion``
on a fresh context are equal. (A plain loop of ``create_chat_completion`` calls on one context is
*not* that reproducible: from the second call on, llama-cpp-python keeps the cached prompt and
re-evaluates only its last token, in a one-token batch, which rounds differently from the
prompt-wide batch and can change the first sampled token. The batch always evaluates a prompt
whole, so candidate ``i`` depends only on the prompt and its seed.)

The batched context is a second ``llama_context`` on the already-loaded model (weights shared,
only a KV cache and compute buffers added), created on first use and freed with the model.
Callers hold the model through :func:`jupyter_distill.runtime.use_llama` while they decode.
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Sequences decoded side by side: beyond ~16 a step on 2 cores is no longer weight-bound.
DEFAULT_SEQUENCES = 16
# Threads of the batched context when nobody says: measured on a 2-core machine shared with
# other work (``benchmarks/local_sampling.py``), 2 threads decoded 16 sequences 5-8x *slower*
# than 1, because llama.cpp's threads spin-wait for each other and lose their core to the other
# processes. ``JUPYTER_DISTILL_LLAMA_THREADS`` or an explicit ``n_threads`` overrides it.
DEFAULT_BATCH_THREADS = 1


def batch_threads(n_threads: int | None = None) -> int:
    """Threads for batched decoding: ``n_threads``, else ``JUPYTER_DISTILL_LLAMA_THREADS``, else 1."""
    if n_threads:
        return max(1, int(n_threads))
    value = os.environ.get("JUPYTER_DISTILL_LLAMA_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_BATCH_THREADS


_UNSUPPORTED = ("logits_processor", "grammar", "logit_bias", "logprobs")
# The one stopping criterion chat templates add: "the last evaluated token is a stop token". It
# reads only the token ids, so the batch can ask it the same question ``Llama.generate`` does.
_TOKEN_ONLY_CRITERIA = ("stop_on_last_token",)


@dataclass(frozen=True)
class ChatJob:
    """One prompt and the seeds of the candidates wanted for it (one candidate per seed)."""

    messages: list[dict[str, Any]]
    seeds: tuple[int, ...]
    temperature: float = 0.8
    max_tokens: int = 256


class _Captured(Exception):
    def __init__(self, kwargs: dict[str, Any]):
        super().__init__("captured")
        self.kwargs = kwargs


class _CaptureProxy:
    """Stands in for the ``Llama`` inside its own chat handler and stops at ``create_completion``.

    The handler formats the chat template, tokenizes and adds its stop strings exactly as a
    real call would; what it would pass to ``create_completion`` is what the batch decodes.
    """

    def __init__(self, llm: Any):
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, **kwargs: Any) -> Any:
        raise _Captured(kwargs)


@dataclass
class _Plan:
    """What ``create_completion`` would do for one prompt, computed once for all its seeds."""

    prompt_tokens: list[int]
    stop: list[bytes]
    max_tokens: int
    sampler_args: dict[str, Any]
    criteria: Any = None  # a StoppingCriteriaList of token-only criteria, or None


def _plan(llm: Any, job: ChatJob) -> _Plan | None:
    """The decoding plan for ``job``, or ``None`` when it needs a feature the batch lacks."""
    import llama_cpp

    try:
        llama_cpp.Llama.create_chat_completion(
            _CaptureProxy(llm), messages=job.messages, temperature=job.temperature, max_tokens=job.max_tokens, seed=0
        )
    except _Captured as captured:
        kwargs = captured.kwargs
    else:  # a handler that never calls create_completion (e.g. a multimodal one)
        return None
    prompt = kwargs.get("prompt")
    if (
        not isinstance(prompt, list)
        or kwargs.get("stream")
        or kwargs.get("mirostat_mode", 0) != 0
        or any(kwargs.get(name) is not None for name in _UNSUPPORTED)
    ):
        return None
    criteria = kwargs.get("stopping_criteria")
    if criteria is not None and not all(getattr(f, "__name__", "") in _TOKEN_ONLY_CRITERIA for f in criteria):
        return None
    n_ctx = int(llm.n_ctx())
    if len(prompt) >= n_ctx:  # the same error create_completion raises
        raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {n_ctx}")
    max_tokens = kwargs.get("max_tokens")
    if max_tokens is None or max_tokens <= 0:
        max_tokens = n_ctx - len(prompt)
    max_tokens = max_tokens if max_tokens + len(prompt) < n_ctx else n_ctx - len(prompt)
    stop = kwargs.get("stop") or []
    stop = stop if isinstance(stop, list) else [stop]
    sampler_args = {
        name: kwargs[name]
        for name in (
            "top_k",
            "top_p",
            "min_p",
            "typical_p",
            "repeat_penalty",
            "frequency_penalty",
            "presence_penalty",
            "tfs_z",
            "mirostat_mode",
            "mirostat_tau",
            "mirostat_eta",
        )
        if name in kwargs
    }
    sampler_args["temp"] = kwargs.get("temperature", job.temperature)
    return _Plan(list(prompt), [s.encode("utf-8") for s in stop], int(max_tokens), sampler_args, criteria)


class _Pieces:
    """Detokenization as ``Llama.detokenize`` does it, but incremental (one piece per new token).

    ``LlamaTokenizer.detokenize`` concatenates ``llama_token_to_piece`` of each token and strips
    one leading space when the first token is BOS; anything else (a custom tokenizer) is asked
    for the whole text every time.
    """

    def __init__(self, llm: Any):
        import llama_cpp
        import llama_cpp.llama_tokenizer as tokenizers

        self.llm = llm
        self.plain = type(getattr(llm, "tokenizer_", None)) is tokenizers.LlamaTokenizer
        self.cache: dict[int, bytes] = {}
        self.bos = int(llm.token_bos())
        self.vocab = llm._model.vocab
        self.to_piece = llama_cpp.llama_token_to_piece
        self.token_type = llama_cpp.llama_token
        self.buffer = (ctypes.c_char * 32)()

    def piece(self, token: int) -> bytes:
        cached = self.cache.get(token)
        if cached is None:
            n = self.to_piece(self.vocab, self.token_type(token), self.buffer, 32, 0, False)
            cached = self.cache[token] = bytes(self.buffer[:n])
        return cached

    def text(self, tokens: list[int], previous: bytes | None) -> bytes:
        """``llm.detokenize(tokens)``; ``previous`` is its value for ``tokens[:-1]`` (or None)."""
        if not self.plain or previous is None or not tokens or tokens[0] == self.bos:
            return self.llm.detokenize(tokens)
        return previous + self.piece(tokens[-1])


@dataclass
class _Sequence:
    """One candidate being decoded: the stop rules of ``Llama._create_completion``, token by token."""

    candidate: int
    plan: _Plan
    sampler: Any
    slot: int = -1
    position: int = 0
    tokens: list[int] = field(default_factory=list)
    all_text: bytes | None = None
    text: bytes = b""
    finish_reason: str | None = None
    multibyte_fix: int = 0

    def accept(self, token: int, is_eog: bool, pieces: _Pieces) -> bool:
        """Take one sampled token; True when the candidate is complete.

        The order is ``Llama.generate``'s then ``_create_completion``'s: the stopping criteria
        look at the tokens evaluated so far (prompt and earlier candidates tokens) before the
        new token counts, then the end-of-generation token, stop strings and ``max_tokens``.
        """
        criteria = self.plan.criteria
        if criteria is not None and criteria(np.asarray(self.plan.prompt_tokens + self.tokens, dtype=np.intc), None):
            self.text = pieces.text(self.tokens, None)
            self.finish_reason = "stop"
            return True
        if is_eog:
            self.text = self.all_text if self.all_text is not None else pieces.text(self.tokens, None)
            self.finish_reason = "stop"
            return True
        self.tokens.append(token)
        self.all_text = pieces.text(self.tokens, self.all_text)
        all_text = self.all_text
        for k, char in enumerate(all_text[-3:]):
            k = 3 - k
            for num, pattern in [(2, 192), (3, 224), (4, 240)]:
                if num > k and pattern & char == pattern:
                    self.multibyte_fix = num - k
        if self.multibyte_fix > 0:
            self.multibyte_fix -= 1
            return False
        hits = [s for s in self.plan.stop if s in all_text]
        if hits:
            self.text = all_text[: all_text.index(hits[0])]
            self.finish_reason = "stop"
            return True
        if len(self.tokens) >= self.plan.max_tokens:
            self.text = all_text
            self.finish_reason = "length"
            return True
        return False

    def result(self, llm: Any) -> dict[str, Any]:
        """The OpenAI-shaped chat completion ``create_chat_completion`` would return."""
        n_prompt, n_completion = len(self.plan.prompt_tokens), len(self.tokens)
        return {
            "object": "chat.completion",
            "model": llm.model_path,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text.decode("utf-8", errors="ignore")},
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": n_completion,
                "total_tokens": n_prompt + n_completion,
            },
        }


class BatchContext:
    """A second llama.cpp context on a loaded model with ``sequences`` independent KV streams.

    ``per_sequence`` tokens of KV cache per stream; it grows (the context is rebuilt) when a
    longer prompt plus ``max_tokens`` arrives.
    """

    def __init__(
        self, llm: Any, sequences: int, per_sequence: int, *, threads: int | None = None, flash_attn: bool = False
    ):
        """``flash_attn`` stays off by default, as in ``Llama``'s own context, so that the
        attention arithmetic (and with it every sampled token) is the one a lone
        ``create_chat_completion`` uses."""
        import llama_cpp

        self.llm = llm
        self.sequences = sequences
        self.per_sequence = per_sequence
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = sequences * per_sequence
        params.n_batch = max(512, sequences)
        params.n_ubatch = params.n_batch
        params.n_seq_max = sequences
        params.kv_unified = False
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        # Every decode here is a batch, which llama.cpp runs on ``n_threads_batch`` threads; both
        # get the same count (``Llama`` would default the batch count to every core).
        threads = batch_threads(threads)
        self.threads = threads
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise RuntimeError(
                f"llama.cpp could not create a batched context ({sequences} sequences x {per_sequence} tokens)"
            )
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch_size = int(params.n_batch)
        self.batch = llama_cpp.llama_batch_init(self.batch_size, 0, 1)
        self.closed = False

    def close(self) -> None:
        import llama_cpp

        if not self.closed:
            self.closed = True
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Decode ``(token, position, slot, wants_logits)`` entries, ``batch_size`` at a time."""
        import llama_cpp

        batch = self.batch
        for start in range(0, len(entries), self.batch_size):
            chunk = entries[start : start + self.batch_size]
            for i, (token, position, slot, logits) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = position
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = slot
                batch.logits[i] = logits
            batch.n_tokens = len(chunk)
            status = llama_cpp.llama_decode(self.ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode failed with status {status} ({len(chunk)} tokens)")

    def sample(self, sampler: Any, index: int) -> int:
        import llama_cpp

        return int(llama_cpp.llama_sampler_sample(sampler.sampler, self.ctx, index))

    def copy_prompt(self, source: int, target: int) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_cp(self.memory, source, target, -1, -1)

    def free_slot(self, slot: int) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.memory, slot, -1, -1)


_contexts: weakref.WeakKeyDictionary[Any, BatchContext] = weakref.WeakKeyDictionary()
_contexts_lock = threading.Lock()


def batch_context(llm: Any, sequences: int, per_sequence: int, threads: int | None = None) -> BatchContext:
    """The batched context of ``llm`` with at least this shape, created (or grown) on demand.

    It is registered on the model's own exit stack, so ``llm.close()`` frees it before the
    weights it points at.
    """
    per_sequence = -(-per_sequence // 256) * 256
    threads = batch_threads(threads)
    with _contexts_lock:
        current = _contexts.get(llm)
        if current is not None and not current.closed:
            big_enough = current.sequences >= sequences and current.per_sequence >= per_sequence
            if big_enough and current.threads == threads:
                return current
            sequences = max(sequences, current.sequences)
            per_sequence = max(per_sequence, current.per_sequence)
            current.close()
        context = BatchContext(llm, sequences, per_sequence, threads=threads)
        llm._stack.callback(context.close)
        _contexts[llm] = context
        return context


def _new_sampler(llm: Any, plan: _Plan, seed: int) -> Any:
    """The sampler chain ``Llama.generate`` builds for this call, seeded with ``seed``."""
    saved = llm._seed
    try:
        llm.set_seed(seed)
        return llm._init_sampler(**plan.sampler_args)
    finally:
        llm._seed = saved


def _sequential(llm: Any, job: ChatJob) -> list[dict[str, Any]]:
    return [
        llm.create_chat_completion(
            messages=job.messages, temperature=job.temperature, max_tokens=job.max_tokens, seed=seed
        )
        for seed in job.seeds
    ]


class Request:
    """A job on its way through a :class:`Decoder`: its results, and whether anyone still wants them.

    ``on_done(results, error)`` is called once, from the decoding thread, with one completion
    per seed (or the error that stopped the job). ``cancel()`` drops the job at the next step.
    """

    def __init__(self, job: ChatJob, on_done: Any = None):
        self.job = job
        self.on_done = on_done
        self.results: list[dict[str, Any] | None] = [None] * len(job.seeds)
        self.error: BaseException | None = None
        self.plan: _Plan | None = None
        self._cancelled = threading.Event()
        self._finished = False

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def finish(self, error: BaseException | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        self.error = error
        if self.on_done is not None:
            self.on_done([r for r in self.results if r is not None], error)


class Decoder:
    """Continuous batching on one model: prompts join while others decode, one token per step.

    ``feed()`` is asked for new :class:`Request` objects before every step (it must not block);
    :meth:`run` returns when nothing is waiting, nothing is running and ``feed`` has nothing.
    A finished candidate frees its slot at once, and the next waiting prompt takes it.
    """

    def __init__(self, llm: Any, *, sequences: int = DEFAULT_SEQUENCES, threads: int | None = None):
        import llama_cpp

        self.llm = llm
        self.threads = threads
        self.sequences = max(1, int(sequences))
        self.context: BatchContext | None = None
        self.vocab = llm._model.vocab
        self.is_eog = llama_cpp.llama_vocab_is_eog
        self.pieces = _Pieces(llm)
        self.waiting: deque[tuple[Request, list[int]]] = deque()
        self.free: list[int] = []
        self.running: list[_Sequence] = []
        self.owners: dict[int, Request] = {}  # id(sequence) -> its request
        self.unbatched = False  # no multi-sequence context could be made: every request one by one

    def run(self, feed: Any) -> None:
        error: BaseException | None = None
        try:
            while True:
                self._take_in(feed())
                self._drop_cancelled()
                self._admit()
                if self.running:
                    self._step()
                elif not self.waiting:
                    more = feed()
                    if not more:
                        return
                    self._take_in(more)
        except BaseException as exc:
            error = exc
            raise
        finally:  # every request still here hears why it will get no answer
            unanswered = {id(r): r for r in [self.owners[id(seq)] for seq in self.running]}
            unanswered.update((id(r), r) for r, _ in self.waiting)
            for seq in self.running:
                self._release(seq)
            self.running, self.waiting = [], deque()
            for request in unanswered.values():
                request.finish(error or RuntimeError("the decoder stopped before this prompt was decoded"))

    def _take_in(self, requests: Sequence[Request]) -> None:
        for request in requests:
            try:
                request.plan = _plan(self.llm, request.job)
            except Exception as exc:  # e.g. a prompt longer than the context: this prompt only
                request.finish(exc)
                continue
            if request.plan is None or self.unbatched:  # a feature the batch lacks: the plain path
                self._answer_one_by_one(request)
                continue
            if not request.job.seeds:
                request.finish()
                continue
            candidates = list(range(len(request.job.seeds)))
            for start in range(0, len(candidates), self.sequences):  # more seeds than slots: several groups
                self.waiting.append((request, candidates[start : start + self.sequences]))

    def _drop_cancelled(self) -> None:
        if any(r.cancelled for r, _ in self.waiting):
            self.waiting = deque((r, c) for r, c in self.waiting if not r.cancelled)
        dropped = [seq for seq in self.running if self.owners[id(seq)].cancelled]
        for seq in dropped:
            self.running.remove(seq)
            self._release(seq)

    def _fit(self, request: Request) -> bool:
        """Make sure the context holds ``request``'s prompt plus ``max_tokens`` in one stream.

        A context is (re)built only while nothing runs on it; until then a prompt too long
        for the current streams waits.
        """
        assert request.plan is not None
        need = len(request.plan.prompt_tokens) + request.plan.max_tokens + 8
        if self.context is not None and not self.context.closed and self.context.per_sequence >= need:
            return True
        if self.running:
            return False
        try:
            self.context = batch_context(self.llm, self.sequences, max(need, 512), self.threads)
        except RuntimeError:  # llama.cpp refused the multi-sequence context (memory, model kind)
            self.unbatched = True
            return False
        self.free = list(range(min(self.sequences, self.context.sequences)))
        return True

    def _answer_one_by_one(self, request: Request) -> None:
        """The plain path for a request the batch cannot take: ``create_chat_completion`` per seed."""
        try:
            request.results = list(_sequential(self.llm, request.job))
        except Exception as exc:
            request.finish(exc)
        else:
            request.finish()

    def _admit(self) -> None:
        """Evaluate each new prompt once into its first slot and copy it to the group's other slots.

        Prompts are packed into decode calls of up to ``batch_size`` tokens; each group's
        candidates sample their first token from the logits of the prompt's last token.
        """
        groups: list[list[_Sequence]] = []
        fits = bool(self.waiting) and self._fit(self.waiting[0][0])
        if self.unbatched and not self.running:
            for request in {id(r): r for r, _ in self.waiting}.values():
                self._answer_one_by_one(request)
            self.waiting = deque()
            return
        while fits and self.waiting and self._fit(self.waiting[0][0]) and len(self.waiting[0][1]) <= len(self.free):
            request, candidates = self.waiting.popleft()
            plan = request.plan
            assert plan is not None
            group = []
            for c in candidates:
                seq = _Sequence(c, plan, _new_sampler(self.llm, plan, request.job.seeds[c]))
                seq.slot = self.free.pop(0)
                self.owners[id(seq)] = request
                group.append(seq)
            groups.append(group)
        if not groups:
            return
        assert self.context is not None
        entries: list[tuple[int, int, int, bool]] = []
        ready: list[tuple[list[_Sequence], int]] = []  # groups whose last prompt token is in ``entries``
        for group in groups:
            head = group[0]
            tokens = head.plan.prompt_tokens
            for pos, token in enumerate(tokens):
                if len(entries) == self.context.batch_size:
                    self._prefill(entries, ready)
                    entries, ready = [], []
                entries.append((token, pos, head.slot, pos == len(tokens) - 1))
            ready.append((group, len(entries) - 1))
        if entries:
            self._prefill(entries, ready)

    def _prefill(self, entries: list[tuple[int, int, int, bool]], ready: list[tuple[list[_Sequence], int]]) -> None:
        assert self.context is not None
        self.context.decode(entries)
        for group, index in ready:
            head = group[0]
            for seq in group[1:]:  # all copies before any slot can be freed by a finished candidate
                self.context.copy_prompt(head.slot, seq.slot)
            for seq in group:
                seq.position = len(head.plan.prompt_tokens)
                if not self._take(seq, index):
                    self.running.append(seq)

    def _step(self) -> None:
        assert self.context is not None
        entries = [(seq.tokens[-1], seq.position, seq.slot, True) for seq in self.running]
        self.context.decode(entries)
        still = []
        for index, seq in enumerate(self.running):
            seq.position += 1
            if not self._take(seq, index):
                still.append(seq)
        self.running = still

    def _take(self, seq: _Sequence, index: int) -> bool:
        """Sample ``seq``'s next token from batch output ``index``; True (and slot freed) when done."""
        assert self.context is not None
        token = self.context.sample(seq.sampler, index)
        done = seq.accept(token, bool(self.is_eog(self.vocab, token)), self.pieces)
        if not done and seq.position + 1 >= self.context.per_sequence:  # never past the stream's end
            seq.text, seq.finish_reason, done = seq.all_text or b"", "length", True
        if done:
            request = self.owners[id(seq)]
            request.results[seq.candidate] = seq.result(self.llm)
            self._release(seq)
            if all(r is not None for r in request.results):
                request.finish()
        return done

    def _release(self, seq: _Sequence) -> None:
        self.owners.pop(id(seq), None)
        if self.context is not None and not self.context.closed:
            self.context.free_slot(seq.slot)
            self.free.append(seq.slot)
            self.free.sort()
        seq.sampler.close()


def batched_chat_completions(
    llm: Any, jobs: Sequence[ChatJob], *, sequences: int = DEFAULT_SEQUENCES, threads: int | None = None
) -> list[list[dict[str, Any]]]:
    """For each job, one chat completion per seed, equal to ``create_chat_completion(seed=...)``.

    The caller holds ``llm`` exclusively (``use_llama``). Jobs whose request needs something
    the batch does not do (a grammar, logprobs, a custom handler) are generated one by one
    with ``create_chat_completion``; an error in one job (e.g. a prompt longer than the
    context) is raised after the other jobs are decoded. ``sequences`` bounds the sequences
    decoded at once; ``threads`` defaults to :func:`batch_threads`.
    """
    requests = [Request(job) for job in jobs]
    pending = list(requests)

    def feed() -> list[Request]:
        taken = list(pending)
        pending.clear()
        return taken

    Decoder(llm, sequences=sequences, threads=threads).run(feed)
    for request in requests:
        if request.error is not None:
            raise request.error
    return [[r for r in request.results if r is not None] for request in requests]


__all__ = [
    "DEFAULT_BATCH_THREADS",
    "DEFAULT_SEQUENCES",
    "BatchContext",
    "ChatJob",
    "Decoder",
    "Request",
    "batch_context",
    "batch_threads",
    "batched_chat_completions",
]
