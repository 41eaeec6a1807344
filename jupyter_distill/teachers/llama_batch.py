"""Batched llama.cpp generation: the N candidates of a prompt decode together over one prompt pass.

On a CPU a decode step is bound by reading the weights, so decoding several sequences in one
``llama_batch`` costs little more than decoding one. The prompt is evaluated once as sequence 0
and its KV cells are shared with the other sequences (``llama_memory_seq_cp``, a unified KV cache
so the cells are not duplicated); every step then decodes one token for each live sequence.

Reproducibility: each sequence samples with its own sampler chain (top-k 40, top-p 0.95, min-p
0.05, temperature, then a ``dist`` sampler seeded with that candidate's seed), the same chain and
defaults ``Llama.create_chat_completion`` uses. Candidate ``i`` is therefore a function of its
seed and the model's logits for its own sequence. The logits of a sequence do not depend on which
other sequences share the batch in exact arithmetic; llama.cpp's CPU kernels compute each row of
a batch independently, but the matrix kernels pick their tiling from the batch size, so the last
bits of a float can differ with the batch width, and a sampled token can (rarely) flip when two
tokens are nearly tied. What is guaranteed, and tested: the same prompts, seeds and batch layout
give the same texts (the decode is deterministic). That a prompt's greedy text is the same alone
and in a shared batch is tested on a few prompts; it holds unless two top logits are within
float rounding of each other.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any

from jupyter_distill.core.errors import TeacherError

# The sampler defaults of ``Llama.create_chat_completion``, so switching paths keeps the distribution.
TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05


@dataclass(frozen=True)
class Generation:
    """One finished sequence: its text, why it ended and how many tokens it produced."""

    text: str
    finish_reason: str  # "stop" (end-of-generation token or stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


class GenerationStopped(Exception):
    """The caller's stop event was set while a batch was decoding; nothing is returned."""


def format_chat(llm: Any, messages: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
    """The prompt tokens and stop strings ``create_chat_completion`` would use for ``messages``.

    The GGUF's own chat template is applied through the handler the ``Llama`` object chose, so
    both paths see identical prompt tokens.
    """
    from llama_cpp import llama_chat_format

    name = llm.chat_format or "chat_template.default"
    handler = llm._chat_handlers.get(name) or llama_chat_format.get_chat_completion_handler(name)
    formatter = getattr(handler, "formatter", None)
    if formatter is None:  # handlers built by chat_formatter_to_chat_completion_handler close over it
        cells = [c.cell_contents for c in (handler.__closure__ or ()) if callable(c.cell_contents)]
        formatter = next((c for c in cells if c is not handler), None)
    if formatter is None:
        raise TeacherError(
            f"chat format {name!r} of {llm.model_path} cannot be applied outside create_chat_completion. "
            "Fix: use a GGUF with a tokenizer.chat_template.",
            field="chat_format",
            value=name,
        )
    result = formatter(messages=messages)
    tokens = llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
    stops = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
    return tokens, [s for s in stops if s]


def _sampler(temperature: float, seed: int) -> Any:
    import llama_cpp

    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if temperature <= 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(TOP_K))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(TOP_P, 1))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_min_p(MIN_P, 1))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain


class BatchContext:
    """A llama.cpp context of its own over a loaded model, sized for ``n_seq`` parallel sequences.

    ``Llama`` creates its context with one sequence, so the batched path needs its own; it shares
    the model weights and is freed with :meth:`close`. Not thread-safe: hold the model's lock
    (``runtime.use_llama``) while using it.
    """

    def __init__(self, llm: Any, *, n_seq: int, n_ctx: int, n_threads: int, n_batch: int = 512):
        import llama_cpp

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.kv_unified = True
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        self._llama_cpp = llama_cpp
        self.model = llm._model.model
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise TeacherError(
                f"llama.cpp could not create a context for {n_seq} sequences of {n_ctx} tokens. "
                "Fix: lower n_ctx= or the number of candidates.",
                field="n_ctx",
                value=n_ctx,
            )
        self.n_seq = n_seq
        self.n_ctx = n_ctx
        # llama.cpp clamps the batch to the context and aborts the process (not an error code) on
        # a batch larger than that, so every decode call is cut to the size it actually took.
        self.n_batch = int(llama_cpp.llama_n_batch(self.ctx))
        self.batch = llama_cpp.llama_batch_init(max(self.n_batch, n_seq), 0, 1)
        if n_seq > self.n_batch:
            self.close()
            raise ValueError(f"{n_seq} sequences do not fit one decode batch of {self.n_batch} tokens")

    def close(self) -> None:
        if self.ctx:
            self._llama_cpp.llama_batch_free(self.batch)
            self._llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> BatchContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Decode (token, position, sequence, wants_logits) entries as one batch; fail loudly."""
        batch = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        code = self._llama_cpp.llama_decode(self.ctx, batch)
        if code != 0:
            used = max(pos for _, pos, _, _ in entries) + 1
            raise TeacherError(
                f"llama_decode failed with code {code} ({'no room in the KV cache' if code == 1 else 'error'}) "
                f"at position {used} with {self.n_seq} sequences in a context of {self.n_ctx} tokens. "
                "Fix: lower max_tokens or the number of candidates, or load the teacher with a larger n_ctx=.",
                field="n_ctx",
                value=self.n_ctx,
            )

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        return buf.raw[: max(n, 0)]

    def generate(
        self,
        prompts: list[list[int]],
        seeds: list[list[int]],
        *,
        temperature: float,
        max_tokens: int,
        stop_strings: list[str] | None = None,
        stop: threading.Event | None = None,
    ) -> list[list[Generation]]:
        """Candidates for each prompt (``len(seeds[p])`` of them), decoded together.

        Every prompt is evaluated once; its KV cells are shared with its candidates' sequences.
        ``stop`` is checked before every decode call, so a set event ends the call within one
        step (raising :class:`GenerationStopped`). Bounded: at most ``max_tokens`` decode steps.
        """
        llama_cpp = self._llama_cpp
        n_total = sum(len(s) for s in seeds)
        if n_total > self.n_seq:
            raise ValueError(f"{n_total} sequences requested from a context sized for {self.n_seq}")
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        stops = [s.encode("utf-8") for s in (stop_strings or []) if s]
        # Sequence bookkeeping: (prompt index, candidate index, sampler, position, bytes, n, finish, logit row)
        seqs: list[dict[str, Any]] = []
        first_seq = 0
        mem = llama_cpp.llama_get_memory(self.ctx)
        try:
            for p, (tokens, prompt_seeds) in enumerate(zip(prompts, seeds, strict=True)):
                if not tokens:
                    raise ValueError("an empty prompt cannot be decoded")
                for start in range(0, len(tokens), self.n_batch):
                    if stop is not None and stop.is_set():
                        raise GenerationStopped
                    chunk = tokens[start : start + self.n_batch]
                    last = start + len(chunk) == len(tokens)
                    self._decode([(t, start + j, first_seq, last and j == len(chunk) - 1) for j, t in enumerate(chunk)])
                # Sample each candidate's first token from the prompt's last logits now: the
                # next decode overwrites them.
                for i, seed in enumerate(prompt_seeds):
                    seq_id = first_seq + i
                    if i:
                        llama_cpp.llama_memory_seq_cp(mem, first_seq, seq_id, -1, -1)
                    seqs.append(
                        {
                            "prompt": p,
                            "seq": seq_id,
                            "sampler": _sampler(temperature, seed),
                            "pos": len(tokens),
                            "text": b"",
                            "n": 0,
                            "finish": None,
                            "prompt_tokens": len(tokens),
                        }
                    )
                    self._accept(seqs[-1], -1, max_tokens, stops)
                first_seq += len(prompt_seeds)
            for _ in range(max_tokens):
                live = [s for s in seqs if s["finish"] is None]
                if not live:
                    break
                if stop is not None and stop.is_set():
                    raise GenerationStopped
                self._decode([(s["token"], s["pos"], s["seq"], True) for s in live])
                for row, s in enumerate(live):
                    s["pos"] += 1
                    self._accept(s, row, max_tokens, stops)
        finally:
            for s in seqs:
                llama_cpp.llama_sampler_free(s["sampler"])
        results: list[list[Generation]] = [[] for _ in prompts]
        for s in seqs:
            text = s["text"]
            for marker in stops:
                cut = text.find(marker)
                if cut >= 0:
                    text = text[:cut]
            results[s["prompt"]].append(
                Generation(
                    text=text.decode("utf-8", errors="ignore"),
                    finish_reason=s["finish"] or "length",
                    prompt_tokens=s["prompt_tokens"],
                    completion_tokens=s["n"],
                )
            )
        return results

    def score(
        self, prompt: list[int], completions: list[list[int]], stop: threading.Event | None = None
    ) -> list[list[float]]:
        """``log p(token)`` of every token of every completion after ``prompt``, at temperature 1.

        The prompt is evaluated once as sequence 0; completion ``i`` then runs as sequence
        ``i + 1`` over a copy of the prompt's KV cells, with logits requested only where a
        completion token is predicted (the prompt's last position, then every completion position
        but the last). Log-softmax over the full vocabulary in float64. Needs ``n_seq`` at least
        ``len(completions) + 1`` and a context holding the prompt plus every completion.
        """
        import numpy as np

        llama_cpp = self._llama_cpp
        if not prompt:
            raise ValueError("an empty prompt cannot be scored")
        if len(completions) + 1 > self.n_seq:
            raise ValueError(f"{len(completions)} completions need {len(completions) + 1} sequences, not {self.n_seq}")
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        mem = llama_cpp.llama_get_memory(self.ctx)
        llama_cpp.llama_memory_clear(mem, True)

        def logprob(row: int, token: int) -> float:
            if not 0 <= token < n_vocab:
                raise ValueError(f"token id {token} is outside the teacher's vocabulary of {n_vocab}")
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, row), shape=(n_vocab,))
            values = logits.astype(np.float64)
            top = float(values.max())
            return float(values[token] - top - np.log(np.exp(values - top).sum()))

        first_row: int | None = None
        for start in range(0, len(prompt), self.n_batch):
            if stop is not None and stop.is_set():
                raise GenerationStopped
            chunk = prompt[start : start + self.n_batch]
            last = start + len(chunk) == len(prompt)
            self._decode([(t, start + j, 0, last and j == len(chunk) - 1) for j, t in enumerate(chunk)])
            if last:
                first_row = len(chunk) - 1
        assert first_row is not None
        # the prompt's last logits predict every completion's first token: read them before the next decode
        out: list[list[float]] = [[logprob(first_row, c[0])] if c else [] for c in completions]
        for i, completion in enumerate(completions):
            seq = i + 1
            llama_cpp.llama_memory_seq_cp(mem, 0, seq, -1, -1)
            inputs = completion[:-1]  # the last token is predicted, never fed
            for start in range(0, len(inputs), self.n_batch):
                if stop is not None and stop.is_set():
                    raise GenerationStopped
                chunk = inputs[start : start + self.n_batch]
                self._decode([(t, len(prompt) + start + j, seq, True) for j, t in enumerate(chunk)])
                out[i].extend(logprob(j, completion[start + j + 1]) for j in range(len(chunk)))
        return out

    def _accept(self, s: dict[str, Any], row: int, max_tokens: int, stops: list[bytes]) -> None:
        """Sample the next token of ``s`` from logit row ``row`` and decide whether it is finished."""
        llama_cpp = self._llama_cpp
        token = llama_cpp.llama_sampler_sample(s["sampler"], self.ctx, row)
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            s["finish"] = "stop"
            return
        s["text"] += self._piece(token)
        s["n"] += 1
        s["token"] = token
        if stops and any(marker in s["text"] for marker in stops):
            s["finish"] = "stop"
        elif s["n"] >= max_tokens:
            s["finish"] = "length"


def batched_threads() -> int:
    """Threads for the batched path: ``JUPYTER_DISTILL_LLAMA_THREADS`` if set, else the idle cores.

    llama.cpp threads spin-wait for each other, so a thread on a core that another process is
    using stalls every step: on a 2-core machine with a load of about 5, two threads decoded
    4-7 tokens/s where one thread decoded 53-80 (``benchmarks/local_sampling.py --threads 1,2``).
    The default therefore counts the cores the 1-minute load average leaves idle (at least one).
    """
    import os

    value = os.environ.get("JUPYTER_DISTILL_LLAMA_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    cores = max(1, os.cpu_count() or 1)
    idle = cores - os.getloadavg()[0]
    return max(1, min(cores, int(idle + 0.5)))
