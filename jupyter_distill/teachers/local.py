"""Local teachers: GGUF files through llama-cpp-python, the embedded offline default.

``local:NAME`` resolves a GGUF shipped inside a PyPI package (``models.LOCAL_MODELS``);
``gguf:PATH`` takes your own file. The model is loaded lazily (a re-run that finds every sample
in the store never loads it) through :func:`jupyter_distill.runtime.use_llama`, so teachers,
evaluation and serving share one copy per process, and generation holds the model exclusively
because a llama.cpp context is not re-entrant.
Generation runs in a worker thread (``asyncio.to_thread``) so the event loop, and with it
progress events and the Stop button, stays responsive.

Candidates are decoded in batches (:mod:`jupyter_distill.llama_batch`): the ``n`` candidates of
a prompt share one prompt evaluation and decode as parallel sequences, and the prompts that
sampling's workers hand in concurrently join the same batch as slots free up. Candidate ``i``
has its own sampler seeded ``seed + i`` and its own KV stream, so it is the same text whether it
is decoded alone or among others, and the same as ``create_chat_completion(seed=seed + i)`` on a
fresh context: any single candidate can be regenerated exactly on its own. Sample keys and
provenance are what they were (``n_per_request`` stays 1: each candidate has its own seed), so
stores written by the former one-by-one loop keep their samples; only candidates 1..n-1 that
loop produced may differ in text from what the batch gives for the same seed, because the loop
re-evaluated the cached prompt's last token alone (see :mod:`jupyter_distill.llama_batch`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from pathlib import Path
from typing import Any

from jupyter_distill.errors import DistillError, ExportError, TeacherError
from jupyter_distill.hashing import file_sha256
from jupyter_distill.llama_batch import DEFAULT_SEQUENCES, ChatJob, Decoder, Request
from jupyter_distill.models import LOCAL_MODELS, resolve_local_gguf
from jupyter_distill.policy import PolicyDecision, PolicyMode, decide
from jupyter_distill.runtime import use_llama
from jupyter_distill.teachers.base import FatalTeacherError, ParsedSpec, Sample, check_sample_args, local_provenance

LOCAL_OPTIONS = ("n_ctx", "n_threads", "licence", "sequences")
# Prompts in flight at once: enough to keep DEFAULT_SEQUENCES slots busy with n = 4 and leave
# the next prompts already planned when a slot frees.
PROMPTS_IN_FLIGHT = 8
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
    """A GGUF model sampled in-process; costs nothing and needs no key.

    Concurrent :meth:`sample` calls are queued for one decoding thread, which holds the model
    (``use_llama``) while it has work and decodes every queued prompt's candidates in shared
    batches of up to ``sequences`` sequences.
    """

    def __init__(
        self,
        *,
        spec: str,
        model: str,
        path: Path,
        decision: PolicyDecision,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        sequences: int = DEFAULT_SEQUENCES,
    ):
        self.spec = spec
        self.model = model
        self.path = path
        self.decision = decision
        self.provider = decision.provider
        self.endpoint = f"llama.cpp:{path.name}"
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.sequences = max(1, int(sequences))
        self.concurrency = PROMPTS_IN_FLIGHT  # prompts handed in at once; they share the batch
        self.requests_sent = 0  # candidates generated
        self.spent = 0.0
        self._sha256: str | None = None
        self._queue: list[Request] = []
        self._lock = threading.Lock()
        self._busy = False  # a decoding thread is running and will look at the queue again

    def __repr__(self) -> str:
        return f"LlamaTeacher(spec={self.spec!r}, path={str(self.path)!r})"

    def _describe(self, llm: Any) -> None:
        if not self.decision.licence:
            licence = str(llm.metadata.get("general.license") or "unknown (not in the GGUF metadata)")
            self.decision = dataclasses.replace(self.decision, licence=licence)
        if self._sha256 is None:
            self._sha256 = model_file_sha256(self.path)

    def _take(self) -> list[Request]:
        with self._lock:
            taken, self._queue = self._queue, []
            return taken

    def _decode_loop(self) -> None:
        """The decoding thread: runs until the queue stays empty, failing queued requests on a load error."""
        while True:
            try:
                with use_llama(self.path, n_ctx=self.n_ctx, n_threads=self.n_threads) as llm:
                    self._describe(llm)
                    Decoder(llm, sequences=self.sequences, threads=self.n_threads).run(self._take)
            except BaseException as exc:
                for request in self._take():
                    request.finish(exc)
                if not isinstance(exc, Exception):
                    raise
            with self._lock:
                if not self._queue:
                    self._busy = False
                    return

    def _submit(self, request: Request) -> None:
        with self._lock:
            self._queue.append(request)
            if self._busy:
                return
            self._busy = True
        threading.Thread(target=self._decode_loop, name="jupyter-distill-llama", daemon=True).start()

    async def _generate(self, job: ChatJob) -> tuple[list[dict[str, Any]], float]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[list[dict[str, Any]], float]] = loop.create_future()
        started = time.monotonic()

        def deliver(future: asyncio.Future, results: list[dict[str, Any]], error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result((results, time.monotonic() - started))

        def on_done(results: list[dict[str, Any]], error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(deliver, future, results, error)
            except RuntimeError:  # the caller's event loop is gone: nobody waits for this answer
                pass

        request = Request(job, on_done)
        self._submit(request)
        try:
            return await future
        finally:
            request.cancel()  # a cancelled caller (Stop) frees its slots at the next step

    async def sample(
        self,
        messages: list[dict[str, Any]],
        n: int = 4,
        temperature: float = 0.8,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> list[Sample]:
        """``n`` candidates decoded together, candidate ``i`` with its own sampler seeded ``seed + i``."""
        check_sample_args(n, temperature, max_tokens)
        base = seed if seed is not None else random.randrange(2**31 - n)
        job = ChatJob(messages, tuple(base + i for i in range(n)), temperature, max_tokens)
        try:
            results, seconds = await self._generate(job)
        except ExportError as exc:  # only loading raises it: the file is missing or not a model
            raise FatalTeacherError(
                f"teacher {self.spec}: {exc}", field="teacher", value=self.spec, fix=exc.fix
            ) from None
        except DistillError:
            raise
        except (ValueError, RuntimeError) as exc:  # e.g. prompt longer than the context
            raise TeacherError(
                f"teacher {self.spec} could not generate: {exc}. Fix: shorten the prompt or load the teacher "
                f"with a larger n_ctx= (now {self.n_ctx}).",
                field="teacher",
                value=self.spec,
            ) from None
        self.requests_sent += len(results)
        samples = []
        for i, result in enumerate(results):
            choice = result["choices"][0]
            usage = {k: int(v) for k, v in (result.get("usage") or {}).items() if isinstance(v, int)}
            samples.append(
                Sample(
                    text=choice["message"].get("content") or "",
                    usage=usage,
                    cost=0.0,
                    finish_reason=choice.get("finish_reason"),
                    provenance=local_provenance(
                        self,
                        {"temperature": temperature, "max_tokens": max_tokens, "seed": base + i, "n_per_request": 1},
                        usage,
                        seconds,
                        "llama-cpp-python",
                        model_file=self.path.name,
                        model_sha256=self._sha256,
                    ),
                )
            )
        return samples

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
    sequences = options.get("sequences", DEFAULT_SEQUENCES)
    if isinstance(sequences, bool) or not isinstance(sequences, int) or not 1 <= sequences <= 256:
        raise TeacherError(
            f"invalid value for 'sequences': {sequences!r}. Fix: give the number of candidates decoded "
            f"side by side as an integer from 1 to 256 (default {DEFAULT_SEQUENCES}).",
            field="sequences",
            value=sequences,
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
        sequences=sequences,
    )
