"""The pipeline: ``distill()`` and ``Run``, the stages in order over one run store.

    prompts -> sampling -> judging -> review -> training -> eval -> export -> alias

Each phase reads its inputs from the store and writes its outputs there, so re-running a cell
(or ``resume=True`` after a kernel restart) skips every teacher call and judgment already paid
for. Everything user-caused is validated before the first request (``validate_before_requests``):
the config, the dataset, the teacher's distillation terms, the judge, the student (found, loadable
here, trainable on the device), its export for the chosen ``quantize``, the alias name and the
workdir. No check loads weights, and none sends a request.

``Run`` executes in the caller's thread (``run()``) or a background thread (``start()``), so a
notebook stays usable while it trains; ``stop()`` is honoured within one request or step.
"""

from __future__ import annotations

import threading
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from jupyter_distill.core import capture
from jupyter_distill.core import data as data_module
from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.curated import CuratedPair
from jupyter_distill.core.errors import ConfigError, DistillError, ReviewError, TrainingError
from jupyter_distill.core.events import PHASES, Emit, Event, fan_out
from jupyter_distill.core.hashing import content_hash, file_sha256
from jupyter_distill.core.loops import run_sync
from jupyter_distill.core.runlog import RunLog
from jupyter_distill.core.store import PromptRecord, RunLock, RunLockedError, RunStore
from jupyter_distill.pipeline.curated_run import check_curated_terms, curated_pairs, import_curated
from jupyter_distill.sampling.batched import BatchPending

#: Held-out pass rate the served (quantized) model may lose against fp32 before the summary warns.
T = TypeVar("T")
MAX_QUANT_DROP = 0.05
STORED_EVENT_KINDS = frozenset({"run_start", "phase_start", "phase_end", "warning", "error", "run_end", "log"})


class RunStopped(DistillError):
    """The run was stopped by the user; ``resume`` continues it from the store."""


@dataclass
class RunState:
    """What a front end shows: the phase, what each phase did, and the numbers so far."""

    name: str
    status: str = "created"  # created | running | waiting-review | done | stopped | failed
    phase: str | None = None
    phases_done: list[str] = field(default_factory=list)
    cost: float = 0.0  # teacher spend (sampling); the judge's is kept apart in judge_cost
    judge_cost: float = 0.0
    requests: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def total_cost(self) -> float:
        return self.cost + self.judge_cost


def resume_hint(name: str) -> str:
    """How to continue a stopped or failed run, in the notebook's own syntax first.

    Most runs are started from a ``%%distill`` cell, so the hint a user can paste is the magic;
    the Python form follows for scripts. Both reuse every sample and judgment already paid for.
    """
    return f"Resume: `%distill resume {name}` (Python: call distill(..., name={name!r}) again)."


def default_run_name(config: DistillConfig) -> str:
    """A stable name from what defines the run, so calling ``distill()`` again resumes it."""
    public = config.to_public_dict()
    identity = {k: public.get(k) for k in ("dataset", "teacher", "student", "judge", "n_samples", "seed")}
    student = str(config.student).replace("/", "-").replace(".gguf", "")[-24:]
    return f"{Path(student).name or 'run'}-{content_hash(identity)[:8]}"


class Run:
    """One distillation run over the store in ``config.workdir``."""

    def __init__(
        self,
        config: DistillConfig,
        *,
        on_progress: Emit | None = None,
        review_handler: Callable[[Run], None] | None = None,
        resume: bool = True,
    ):
        self.config = config
        self.name = config.name or default_run_name(config)
        self.store = RunStore(config.workdir)
        self.state = RunState(name=self.name)
        self.result: Any = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._loaded_judge: Any = None
        self._curated: dict[str, list[CuratedPair]] = {}  # made pairs the dataset brought (no teacher call)
        self._loaded_teacher: Any = None
        self._review_done = threading.Event()
        self._review_handler = review_handler
        self.resume = resume
        self._thread: threading.Thread | None = None
        self._lock: RunLock | None = None  # held while run() executes
        self._sinks: list[Emit] = [self._record]
        if on_progress is not None:
            self._sinks.append(on_progress)
        self._announce = fan_out(self._sinks, announce_failures=True)  # counted for the run summary
        self.log = RunLog(self._announce, self.name)  # what libraries print while the run executes

    # ------------------------------------------------------------------ control
    def add_listener(self, sink: Emit) -> None:
        """Attach another event sink (a dashboard) before or while the run goes."""
        self._sinks.append(sink)
        self._announce.add(sink)

    def emit(self, event: Event) -> None:
        """The sink handed to stages. The pipeline alone marks phase boundaries, so a stage's own
        ``phase_start`` (which carries the amount of work) becomes a progress event at 0 and its
        ``phase_end`` a final progress event: listeners see each phase start and end once."""
        if event.kind == "phase_start":
            event = replace(event, kind="progress", current=event.current or 0)
        elif event.kind == "phase_end":
            event = replace(event, kind="progress")
        self._announce(replace(event, run=event.run or self.name))

    def start(self) -> Run:
        """Run in a background thread and return at once (the notebook path)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._thread = threading.Thread(target=self._run_captured, name=f"distill-{self.name}", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the background run ends; re-raise its error; return the Student."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return None
        if self.error is not None:
            raise self.error
        return self.result

    def stop(self) -> None:
        """Ask the run to stop; it ends within one request or training step."""
        self._stop.set()
        self._review_done.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def review_pending(self) -> bool:
        """True while the run waits for a human to finish reviewing (the widget's train button)."""
        return self.state.status == "waiting-review" and not self._review_done.is_set()

    def continue_after_review(self) -> None:
        """Release a run waiting for human review (the review widget's "train" button)."""
        self._review_done.set()

    def judge_agreement(self, **options: Any) -> Any:
        """How often the judge matches the human review so far (see :mod:`jupyter_distill.pipeline.calibration`)."""
        from jupyter_distill.pipeline.calibration import judge_agreement

        return judge_agreement(self, **options)

    def rights_ledger(self) -> dict[str, Any]:
        """The run's rights ledger as JSON data (what the model card and GGUF metadata embed)."""
        from jupyter_distill.pipeline.audit import audit

        return audit(self).to_dict()

    def rejudge(self, rubric: str, **options: Any) -> Any:
        """Judge the reviewed candidates again with an edited rubric; returns the new agreement."""
        from jupyter_distill.pipeline.calibration import rejudge

        return rejudge(self, rubric, **options)

    def _run_captured(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # stored for wait(); the thread must not die loudly
            self.error = exc

    # ------------------------------------------------------------------ the stages
    def run(self) -> Any:
        """Execute every phase in order in this thread and return the Student.

        What libraries print meanwhile on this thread (llama.cpp, warnings, transformers' logging,
        progress bars) goes to the run's log (``log`` events), not to the notebook cell that
        happens to be executing: see :mod:`jupyter_distill.core.capture`.
        """
        try:
            with capture.routed_output(self.log):
                try:
                    return self._run_phases()
                finally:
                    self.log.flush()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _take_lock(self) -> None:
        """One writer per run, taken before the first write and held until :meth:`run` returns: a
        second kernel or process starting this run gets an error naming the holder."""
        lock = RunLock(self.config.workdir, self.name)
        try:
            lock.acquire()
        except RunLockedError as exc:  # the other writer's run is untouched: nothing is written here
            self.state.status = "failed"
            self.state.error = str(exc)
            fan_out(self._sinks[1:])(Event("error", run=self.name, message=str(exc), data={"detail": ""}))
            raise
        self._lock = lock

    def _run_phases(self) -> Any:
        config = self.config
        store = self.store
        self.state.status = "running"
        try:
            # Everything the user handed over is checked before the store is touched: a typo in a
            # re-run must not mark a finished run failed or replace its config (tests/test_bad_input.py).
            prompts = self._prepare_prompts()
            self._check_student()
            if self._curated and config.loss == "onpolicy":
                raise ConfigError(
                    "loss='onpolicy' has a live teacher score the student's own tokens, and a dataset of curated "
                    "pairs calls no teacher. Fix: use loss='bond' (or 'jbond') on the curated pairs, or pass the "
                    "prompts without answers and a teacher that scores tokens.",
                    field="loss",
                    value=config.loss,
                )
            teacher = None if self._curated else self._load_teacher()
            judge = self._load_curated_judge(prompts) if self._curated else self._load_judge(teacher)
            validate_before_requests(config, self.name, judge, teacher)
        except BaseException as exc:
            self.state.status = "failed"
            self.state.error = str(exc)
            fan_out(self._sinks[1:])(Event("error", run=self.name, message=str(exc), data={"detail": ""}))
            raise
        self._take_lock()
        store.create_run(self.name, config.to_public_dict())
        # the run's own teacher and judge, recorded now: costs and the licence chain are attributed by them
        store.update_run(
            self.name,
            status="running",
            summary={"teacher": self.state.summary.get("teacher"), "judge": self.state.summary.get("judge")},
        )
        self._announce(Event("run_start", run=self.name, message=f"run {self.name}", data=config.to_public_dict()))
        try:
            store.put_prompts(self.name, prompts)
            if self._curated:  # the dataset's own pairs: stored as samples, scores and pairs, no teacher call
                samples, judgments = self._phase("sampling", lambda: self._import_curated(prompts))
                self._phase("judging", lambda: judgments)
                pairs = self._phase("review", lambda: self._curated_pairs(prompts, samples))
            else:
                samples = self._phase("sampling", lambda: self._sample(teacher, prompts))
                judgments = self._phase("judging", lambda: self._judge(judge, prompts, samples))
                pairs = self._phase("review", lambda: self._select_and_review(prompts, samples, judgments))
            student_info = self._phase("training", lambda: self._train(pairs))
            self._phase("eval", lambda: self._evaluate(prompts, samples, judgments, judge, student_info))
            exported = self._phase("export", lambda: self._export(student_info, prompts))
            result = self._phase("alias", lambda: self._finish(student_info, exported))
        except RunStopped as exc:
            self.state.status = "stopped"
            store.update_run(self.name, status="stopped")
            self._announce(Event("run_end", run=self.name, message=str(exc), data={"status": "stopped"}))
            raise
        except BatchPending as exc:  # not a failure: the provider batch runs on; a re-run collects it
            self.state.status = "waiting-batch"
            store.update_run(self.name, status="waiting-batch")
            self._announce(Event("run_end", run=self.name, message=str(exc), data={"status": "waiting-batch"}))
            raise
        except DistillError as exc:
            self._fail(str(exc))
            raise
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}", detail=traceback.format_exc(limit=8))
            raise
        self.state.status = "done"
        summary = self._summary()
        store.update_run(self.name, status="done", phase="done", summary=summary)
        self.state.summary.update(summary)
        self._announce(Event("run_end", run=self.name, message=_summary_line(summary), data=summary))
        self.result = result
        return result

    def _fail(self, message: str, detail: str | None = None) -> None:
        self.state.status = "failed"
        self.state.error = message
        # keep what the run had found out (prompts, teacher, costs) so its card still says it
        self.store.update_run(self.name, status="failed", summary={**_jsonable(self.state.summary), "error": message})
        self._announce(
            Event("error", run=self.name, phase=self.state.phase, message=message, data={"detail": detail or ""})
        )

    def _phase(self, name: str, work: Callable[[], Any]) -> Any:
        if self._stop.is_set():
            raise RunStopped(f"run {self.name!r} stopped before {name}. {resume_hint(self.name)}")
        self.state.phase = name
        self.store.update_run(self.name, phase=name)
        self._announce(Event("phase_start", run=self.name, phase=name))
        started = time.time()
        self.log.set_phase(name)
        capture.refresh()  # libraries imported by the phases before: route them too
        try:
            result = work()
        finally:
            self.log.flush()  # the phase's folded lines (quantization fallbacks) before its end
        if self._stop.is_set():
            raise RunStopped(f"run {self.name!r} stopped during {name}. {resume_hint(self.name)}")
        self.state.phases_done.append(name)
        self._announce(Event("phase_end", run=self.name, phase=name, data={"seconds": round(time.time() - started, 2)}))
        return result

    def _record(self, event: Event) -> None:
        """Keep state for front ends and persist the coarse events for the lab panel."""
        if event.kind == "progress":
            if "cost" in event.data:  # each paying phase reports its own spend: never mix the two
                if event.phase == "judging":
                    self.state.judge_cost = float(event.data["cost"])
                elif event.phase == "sampling":
                    self.state.cost = float(event.data["cost"])
            if "requests" in event.data:
                self.state.requests = int(event.data["requests"])
        if event.kind in STORED_EVENT_KINDS:
            self.store.put_event(self.name, event.kind, event.phase, event.message, _jsonable(event.data))

    # ------------------------------------------------------------------ phase bodies
    def _prepare_prompts(self) -> list[PromptRecord]:
        config = self.config
        self._curated = {}
        prompts = data_module.load_dataset(
            config.dataset,
            prompt_field=config.prompt_field,
            system_prompt=config.system_prompt,
            max_prompts=config.max_prompts,
            pairs=self._curated,
        )
        if self._curated:
            if config.review:
                raise ReviewError(
                    f"the dataset holds {sum(map(len, self._curated.values()))} curated pairs (chosen/rejected "
                    "columns), already judged and reviewed, so review=True has no candidates to show. Fix: pass "
                    "review=False, or review in the run that made the pairs.",
                    field="review",
                    value=True,
                )
            check_curated_terms(self._curated, config)
            teachers = {p.teacher for group in self._curated.values() for p in group}
            # the ledger finds the run's samples by this teacher; several teachers: every teacher's
            self.state.summary["teacher"] = teachers.pop() if len(teachers) == 1 else None
        data_module.split(prompts, config.heldout_fraction, config.seed)
        heldout = sum(p.split == "heldout" for p in prompts)
        self.state.summary.update(
            {"prompts": len(prompts), "train_prompts": len(prompts) - heldout, "heldout": heldout}
        )
        return prompts

    def _load_teacher(self) -> Any:
        from jupyter_distill.teachers import load_teacher

        config = self.config
        teacher = load_teacher(
            config.teacher,
            policy=config.policy,
            authorization=config.authorization,
            enforce_distillable=config.enforce_distillable,
            concurrency=config.concurrency,
            max_cost=config.max_cost,
            **({"batch": True} if config.batch else {}),
        )
        # a policy='warn' decision is announced by the sampling stage, with the samples it affects
        self.state.summary["teacher"] = teacher.spec
        self._loaded_teacher = teacher
        return teacher

    def _load_curated_judge(self, prompts: list[PromptRecord]) -> Any:
        """The judge of a run on curated pairs: scores held-out answers only, and never the teacher."""
        if self.config.judge is None:
            if not any(p.split == "heldout" for p in prompts):
                self.state.summary["judge"] = None
                return None
            raise ConfigError(
                "the dataset holds curated pairs, so no teacher is called, and judge=None means the teacher grades "
                "the held-out answers. Fix: pass judge= a verifier (e.g. jd.judges.exact_match('expected')) or a "
                "judge model spec, or heldout_fraction=0 to skip the held-out evaluation.",
                field="judge",
                value=None,
            )
        return self._load_judge(None)

    def _import_curated(self, prompts: list[PromptRecord]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        samples, judgments, summary = import_curated(
            self.store, self._curated, prompts, _dataset_source(self.config.dataset)
        )
        self.state.summary.update(summary)
        return samples, judgments

    def _curated_pairs(self, prompts: list[PromptRecord], samples: dict[str, list[Any]]) -> list[Any]:
        pairs, counts = curated_pairs(
            self.store, self.name, self._curated, prompts, samples, self.config.heldout_fraction
        )
        self.state.summary.update(counts)
        return pairs

    def _load_judge(self, teacher: Any) -> Any:
        from jupyter_distill.judging.llm_judge import load_judge

        judge = load_judge(self.config.judge, teacher=teacher, rubric=self.config.rubric)
        self.state.summary["judge"] = judge.id
        self._loaded_judge = judge
        return judge

    def _sample(self, teacher: Any, prompts: list[PromptRecord]) -> dict[str, list[Any]]:
        from jupyter_distill.sampling.stage import sample

        config = self.config
        result = sample(
            self.store,
            teacher,
            prompts,
            config.n_samples,
            run_id=self.name,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            seed=config.seed,
            emit=self.emit,
            stop=self._stop,
        )
        self.state.summary.update(
            {
                "teacher_requests": result.requests_sent,
                "teacher_cost": round(result.cost, 6),
                "failed_prompts": sorted(result.failed),
                "unsaved_samples": result.unsaved,
            }
        )
        self.state.cost = result.cost
        if result.failed:
            self.emit(
                Event(
                    "warning",
                    run=self.name,
                    phase="sampling",
                    message=f"{len(result.failed)} prompt(s) failed permanently and are listed in the run summary; "
                    "re-run to retry them.",
                    data={"failed": sorted(result.failed)},
                )
            )
        return result.samples

    def _judge(self, judge: Any, prompts: list[PromptRecord], samples: dict[str, list[Any]]) -> dict[str, Any]:
        from jupyter_distill.judging.stage import judge as run_judge

        return run_judge(self.store, judge, prompts, samples, run_id=self.name, emit=self.emit, stop=self._stop)

    def _select_and_review(
        self, prompts: list[PromptRecord], samples: dict[str, list[Any]], judgments: dict[str, Any]
    ) -> list[Any]:
        from jupyter_distill.judging.selection import select

        train_prompts = [p for p in prompts if p.split == "train"]
        selection = select(
            self.store, self.name, train_prompts, samples, judgments, self.config.top_k,
            min_score=self.config.min_score,
        )  # fmt: skip
        if self.config.review:
            if self._review_handler is None:
                raise ReviewError(
                    f"review=True needs a human: run {self.name!r} has {len(train_prompts)} prompts waiting. "
                    f"Fix: in a notebook, run `%distill review {self.name}` (or distill(..., review=True) there); "
                    "from a script, review with jupyter_distill.judging.review.ReviewSession(store, run) and then call "
                    "distill(..., review=False, resume=True).",
                    field="review",
                    value=True,
                )
            self.state.status = "waiting-review"
            self.store.update_run(self.name, status="waiting-review")
            self.emit(Event("progress", run=self.name, phase="review", message="waiting for review"))
            self._review_handler(self)
            self._review_done.wait()
            self.state.status = "running"
            self.store.update_run(self.name, status="running")
            selection = select(
            self.store, self.name, train_prompts, samples, judgments, self.config.top_k,
            min_score=self.config.min_score,
        )  # fmt: skip
        pairs = selection.pairs
        if not pairs:
            raise TrainingError(
                f"no training pairs for run {self.name!r}: no candidate scored at least min_score="
                f"{self.config.min_score} (or every one was rejected in review). Fix: check the judge (verifier) "
                "against a few teacher samples, raise n_samples, lower min_score, or review fewer rejections.",
                field="judge",
                value=self.state.summary.get("judge"),
            )
        self.state.summary["pairs"] = len(pairs)
        self.state.summary["pairs_with_rejected"] = sum(p.rejected_text is not None for p in pairs)
        return pairs

    def _check_student(self) -> None:
        """Before any teacher request: the student's prompts can be rendered, and it can be exported."""
        from jupyter_distill.export.gguf import check_exportable
        from jupyter_distill.train.student import student_preflight

        found = student_preflight(self.config.student, self.config.chat_template)
        if found["architecture"]:
            check_exportable(found["architecture"], self.config.quantize)

    def _train(self, pairs: list[Any]) -> dict[str, Any]:
        from jupyter_distill.train.trainer import BondTrainer, TrainPair, TrainSettings

        config = self.config
        settings = TrainSettings.from_config(config)
        if config.num_processes > 1:  # worker processes train; the kernel loads the student after them
            return self._train_in_workers(settings)
        student = self._load_student(settings)
        examples = TrainPair.from_records(pairs, self.store.get_prompts(self.name))
        output_dir = Path(config.workdir) / "runs" / self.name / "train"
        rewards = teacher_logprobs = None
        if config.loss == "onpolicy":  # the teacher scores the student's own tokens
            from jupyter_distill.train.teacher_logprobs import TeacherLogprobs

            teacher_logprobs = TeacherLogprobs(self._loaded_teacher)
        if config.loss == "jbond":  # the run's judge scores the student's samples against the teacher's
            from jupyter_distill.train.rewards import OnPolicyRewards, teacher_scores

            prompts = [e.prompt for e in examples if e.prompt is not None]
            judge = self._loaded_judge
            rewards = OnPolicyRewards(
                judge, teacher_scores(self.store, prompts, judge.id), concurrency=config.concurrency
            )
        trainer = BondTrainer(
            student, examples, settings, output_dir=output_dir, store=self.store, run_id=self.name,
            emit=self.emit, stop=self._stop, engine=config.engine, rewards=rewards, teacher_logprobs=teacher_logprobs,
        )  # fmt: skip
        self._preparing("measuring the student before training")
        before = self._evaluate_student(student, label="student_before")
        try:
            result = trainer.train(resume=self.resume)
        except TrainingError as exc:
            # A re-run that retried failed prompts (or changed a training setting) has other pairs
            # than the checkpoint: mixing them is wrong, failing the re-run is worse. Start over.
            if exc.field != "resume" or exc.value not in ("pairs", "settings"):
                raise
            self.emit(
                Event(
                    "warning",
                    run=self.name,
                    phase="training",
                    message=f"the training {exc.value} changed since the last checkpoint; training restarts "
                    "from the initial student.",
                )
            )
            result = trainer.train(resume=False)
        return self._trained(student, result, before, rewards=rewards, teacher_logprobs=teacher_logprobs)

    def _trained(
        self, student: Any, result: Any, before: Any, *, rewards: Any = None, teacher_logprobs: Any = None
    ) -> dict[str, Any]:
        """Record a finished training: steps, engine, the adapter, and what the step's own calls cost.

        ``rewards`` (``loss='jbond'``) judged the student's samples during training and
        ``teacher_logprobs`` (``loss='onpolicy'``) had the teacher score them: both are paid calls,
        so their counts and cost enter the run's summary and its total cost.
        """
        if result.stopped:
            raise RunStopped(f"run {self.name!r} stopped at step {result.steps_done}. {resume_hint(self.name)}")
        self.state.summary.update({"steps": result.steps_done, "engine": result.engine})
        if teacher_logprobs is not None:  # the teacher's scoring of the student's samples: counted and priced
            self.state.summary.update(
                {
                    "teacher_scoring_calls": teacher_logprobs.calls,
                    "teacher_scoring_tokens": teacher_logprobs.tokens,
                    "teacher_scoring_cost": round(teacher_logprobs.cost, 6),
                }
            )
        if rewards is not None:  # the judge scoring the student's samples inside each jbond step
            self.state.summary.update({"train_judge_calls": rewards.calls, "train_judge_cost": round(rewards.cost, 6)})
            self.state.judge_cost += rewards.cost
        if result.engine_reason:
            self.emit(Event("warning", run=self.name, phase="training", message=result.engine_reason))
        self.store.put_artifact(self.name, "adapter", result.adapter_dir)
        return {"student": student, "result": result, "before": before}

    def _train_in_workers(self, settings: Any) -> dict[str, Any]:
        """``num_processes > 1``: train in accelerate workers (:mod:`jupyter_distill.train.distributed`),
        then load the student here for the evaluations: the kernel touches no GPU before the workers."""
        from jupyter_distill.train.distributed import attach_adapter, train_in_workers

        config = self.config
        result = train_in_workers(
            settings=settings, student=config.student, workdir=config.workdir, run_id=self.name,
            output_dir=Path(config.workdir) / "runs" / self.name / "train", num_processes=config.num_processes,
            distributed=config.distributed, device=config.device, engine=config.engine,
            chat_template=config.chat_template, quantization=config.quantization, resume=self.resume,
            emit=self.emit, stop=self._stop,
        )  # fmt: skip
        if result.stopped:
            return self._trained(None, result, None)
        student = self._load_student(settings)
        self._preparing("measuring the student before training")
        before = self._evaluate_student(student, label="student_before")
        attach_adapter(student, result.adapter_dir)
        return self._trained(student, result, before)

    def _load_student(self, settings: Any) -> Any:
        """The student for training or evaluation, loaded as the config says (device, engine, template)."""
        from jupyter_distill.train.choice import student_loader
        from jupyter_distill.train.student import load_student, resolve_device

        config = self.config
        self._preparing("loading the student")
        return load_student(
            config.student, device=config.device, chat_template=config.chat_template,
            quantization=config.quantization, loader=student_loader(config.engine, resolve_device(config.device)),
            max_length=settings.max_length,
        )  # fmt: skip

    def _preparing(self, what: str) -> None:
        """Tell front ends the training phase is still preparing (its step count has not begun)."""
        self.emit(Event("progress", run=self.name, phase="training", message=what, data={"stage": "prepare"}))

    def _evaluate_student(self, student: Any, label: str, respond: Any = None) -> Any:
        """Held-out pass rate of one model; recorded at the training step of the model it measures."""
        from jupyter_distill.evaluation.heldout import HFResponder, evaluate

        heldout = self.store.get_prompts(self.name, split="heldout")
        if not heldout:
            return None
        judge = self._judge_fn()
        # An LLM judge costs money: a resumed run re-uses the stored score of an identical answer
        # judged by the same judge (recorded as eval_judge/<label> once the results are stored).
        judge_id = self.state.summary.get("judge")
        recorded = ((self.store.get_run(self.name) or {}).get("summary") or {}).get(f"eval_judge/{label}")
        paid: dict[tuple[str, str], float] = {}
        if judge_id and recorded == judge_id:
            for row in self.store.get_eval_results(self.name, label):
                if row["score"] is not None:
                    paid[(row["prompt_hash"], row["response"])] = row["score"]

        def score(prompt: PromptRecord, response: str) -> float | None:
            key = (prompt.hash, response)
            return paid[key] if key in paid else judge(prompt, response)

        if respond is None:
            respond = HFResponder(
                student.model, student.tokenizer, max_new_tokens=self.config.max_tokens,
                stop_token_ids=student.stop_token_ids(), stop=self._stop,
            )  # fmt: skip
        step = 0 if label == "student_before" else int(self.state.summary.get("steps") or 0)
        summary = evaluate(
            self.store, self.name, heldout, respond, score, label, emit=self.emit, stop=self._stop, step=step
        )
        if self._stop.is_set():  # a partial evaluation is no result: the resumed run evaluates again
            raise RunStopped(f"run {self.name!r} stopped during evaluation ({label}). {resume_hint(self.name)}")
        if judge_id:
            self.store.update_run(self.name, summary={f"eval_judge/{label}": judge_id})
        self.state.summary[label] = _summary_dict(summary)
        return summary

    def _judge_fn(self) -> Callable[[PromptRecord, str], float | None]:
        """Score held-out answers with the judge that scored the teacher's samples (same scale)."""
        judge = self._loaded_judge
        stored = ((self.store.get_run(self.name) or {}).get("summary") or {}).get("eval_judge_cost", 0.0)
        self.state.summary.setdefault("eval_judge_cost", float(stored or 0.0))

        def score(prompt: PromptRecord, response: str) -> float | None:
            result = run_sync(lambda: judge.score(prompt, response))
            spent = float(getattr(result, "cost", 0.0) or 0.0)  # an LLM judge scoring held-out answers is paid
            self.state.summary["eval_judge_cost"] = round(self.state.summary["eval_judge_cost"] + spent, 8)
            self.state.judge_cost += spent
            return result.score

        return score

    def _evaluate(
        self,
        prompts: list[PromptRecord],
        samples: dict[str, list[Any]],
        judgments: dict[str, Any],
        judge: Any,
        student_info: dict[str, Any],
    ) -> None:
        heldout = [p for p in prompts if p.split == "heldout"]
        if heldout:
            best = []
            for prompt in heldout:
                scores = [
                    judgments[s.key].score
                    for s in samples.get(prompt.hash, [])
                    if s.key in judgments and judgments[s.key].score is not None
                ]
                best.append(max(scores) if scores else 0.0)
            self.state.summary["teacher_best_of_n"] = {
                "label": "teacher_best_of_n",
                "n": len(best),
                "pass_rate": round(sum(score >= 0.5 for score in best) / len(best), 4),
                "mean_score": round(sum(best) / len(best), 4),
            }
        self._evaluate_student(student_info["student"], label="student_after")

    def _export(self, student_info: dict[str, Any], prompts: list[PromptRecord]) -> Any:
        config = self.config
        if config.quantize is None:
            return None
        from jupyter_distill.export.gguf import ExportStopped, export_adapter_gguf, export_gguf

        out_dir = Path(config.workdir) / "runs" / self.name / "export"
        heldout = [p.messages for p in prompts if p.split == "heldout"][:8]
        card = {
            "run": self.name,
            "teacher": self.state.summary.get("teacher"),
            "teacher_terms": _teacher_terms(self.store, self.name, self.state.summary.get("teacher")),
            "student": config.student,
            "student_licence": getattr(student_info["student"].info, "licence", None),
            "dataset": _dataset_source(config.dataset),
            "judge": self.state.summary.get("judge"),
            "metrics": {k: self.state.summary.get(k) for k in ("teacher_best_of_n", "student_before", "student_after")},
            "rights_ledger": self.rights_ledger(),
        }
        # export: adapter writes the LoRA as a GGUF adapter over one shared, content-addressed base GGUF
        export = export_adapter_gguf if config.export == "adapter" else export_gguf
        try:
            result = export(
                student_info["result"].adapter_dir,
                out_dir,
                base_folder=student_info["student"].hf_folder,
                quantize=config.quantize,
                check_prompts=heldout,
                store=self.store,
                run_id=self.name,
                card=card,
                emit=self.emit,
                stop=self._stop,
            )
        except ExportStopped as exc:
            raise RunStopped(f"run {self.name!r} stopped during export ({exc}). {resume_hint(self.name)}") from None
        self.state.summary["gguf"] = str(result.gguf)
        if result.files.get("gguf_lora"):
            self.state.summary["gguf_lora"] = str(result.files["gguf_lora"])
        self.state.summary["agreement"] = result.agreement
        self._measure_served(result)
        return result

    def _measure_served(self, result: Any) -> None:
        """Held-out pass rate of the quantized file the alias will serve, next to the fp32 figure.

        When quantization costs more than :data:`MAX_QUANT_DROP` of pass rate, the lighter
        quantizations are measured too and the summary names the first that keeps the figure.
        """
        from jupyter_distill.evaluation.heldout import llama_responder
        from jupyter_distill.export.gguf import quantize_gguf

        qtype = result.quantize
        lora = result.files.get("gguf_lora")
        respond = (
            _adapter_responder(result.gguf, lora, self.config.max_tokens)
            if lora
            else llama_responder(result.gguf, max_tokens=self.config.max_tokens)
        )
        served = self._evaluate_student(None, label="student_served", respond=respond)
        after = self.state.summary.get("student_after") or {}
        if served is None or "pass_rate" not in after:
            return
        self.state.summary["student_served"]["quantize"] = qtype
        drop = round(after["pass_rate"] - served.pass_rate, 6)  # pass rates are ratios of small counts
        if drop <= MAX_QUANT_DROP:
            return
        keeps = None
        for lighter in ("q8_0", "f16"):
            if lighter == qtype or (lighter == "q8_0" and qtype == "f16"):
                continue
            path = result.files.get(f"gguf_{lighter}") or (result.f16_gguf if lighter == "f16" else None)
            if path is None:
                path = quantize_gguf(
                    result.f16_gguf, result.f16_gguf.with_name(f"served-check.{lighter}.gguf"), lighter
                )
            check = self._evaluate_student(
                None,
                label=f"student_served_{lighter}",
                respond=_adapter_responder(path, lora, self.config.max_tokens)
                if lora
                else llama_responder(path, max_tokens=self.config.max_tokens),
            )
            if check is not None and round(after["pass_rate"] - check.pass_rate, 6) <= MAX_QUANT_DROP:
                keeps = lighter
                break
        self.state.summary["quantization_warning"] = (
            f"quantize={qtype!r} costs {drop * 100:.0f} points of held-out pass rate "
            f"({after['pass_rate']:.2f} in fp32, {served.pass_rate:.2f} served)"
            + (f"; quantize={keeps!r} keeps it" if keeps else "; no lighter quantization keeps it")
        )
        self.emit(Event("warning", run=self.name, phase="export", message=self.state.summary["quantization_warning"]))

    def _finish(self, student_info: dict[str, Any], exported: Any) -> Any:
        from jupyter_distill.serving.student import Student

        keys = ("teacher_best_of_n", "student_before", "student_after", "student_served")
        metrics = {k: self.state.summary.get(k) for k in keys if k != "student_served" or self.state.summary.get(k)}
        base_model = str(student_info["student"].hf_folder)
        if exported is not None:
            student = Student.from_export(exported, metrics=metrics, base_model=base_model, name=self.name)
        else:
            student = Student(
                adapter_dir=student_info["result"].adapter_dir, base_model=base_model, metrics=metrics, name=self.name
            )
        student.metadata["run"] = {"name": self.name, "workdir": str(Path(self.config.workdir).resolve())}
        if self.config.alias:
            student.deploy(self.config.alias)
            self.state.summary["alias"] = self.config.alias
        return student

    def _summary(self) -> dict[str, Any]:
        summary = dict(self.state.summary)
        teacher_cost = self.store.teacher_cost(self.name, self.state.summary.get("teacher"))
        judge_cost = self.store.judge_cost(
            self.name, self.state.summary.get("judge"), self.state.summary.get("teacher")
        ) + float(self.state.summary.get("eval_judge_cost") or 0.0)
        judge_cost += float(self.state.summary.get("train_judge_cost") or 0.0)  # loss: jbond
        summary["teacher_cost"] = round(teacher_cost, 6)
        summary["judge_cost"] = round(judge_cost, 6)
        scoring_cost = float(self.state.summary.get("teacher_scoring_cost") or 0.0)  # loss: onpolicy
        summary["total_cost"] = round(teacher_cost + judge_cost + scoring_cost, 6)
        summary["failed"] = [f["prompt_hash"] for f in self.store.get_failures(self.name)]
        if self._announce.failures:  # e.g. the store refused to record events: say so, do not hide it
            summary["event_sink_failures"] = dict(self._announce.failures)
        return _jsonable(summary)


def _adapter_responder(base: Path, lora: Path, max_tokens: int) -> Any:
    """Greedy answers of a base GGUF with a LoRA GGUF applied, exactly as an alias over them serves them."""
    from jupyter_distill.serving.student import Student, completion

    student = Student(base, lora_path=lora, name=lora.stem)

    def respond(messages: Any) -> str:
        resp = completion(student, messages, max_tokens=max_tokens, temperature=0.0)
        return resp.choices[0].message.content or ""

    return respond


def validate_before_requests(config: DistillConfig, run_name: str, judge: Any = None, teacher: Any = None) -> None:
    """Refuse, before the first paid request, a run that could only fail after it.

    The student (map key, HF folder or .gguf: found, readable, loadable here, an architecture
    transformers trains on ``config.device``), the export of that architecture for
    ``config.quantize``, the alias name and registry, the loaded judge's signature and the
    workdir. Metadata only: no weights are loaded and no request is sent.
    """
    from jupyter_distill.pipeline.preflight import check_run

    check_run(config, run_name, judge, teacher)


def distill(
    dataset: Any = None,
    teacher: Any = "local:smollm2-135m",
    student: str = "smollm2-135m",
    judge: Any = None,
    *,
    on_progress: Emit | None = None,
    resume: bool = True,
    review_handler: Callable[[Run], None] | None = None,
    **options: Any,
) -> Any:
    """Distil ``student`` from ``teacher`` on ``dataset`` and return the trained Student.

    Every argument of :class:`~jupyter_distill.core.config.DistillConfig` is accepted. With no
    ``on_progress`` a console progress display (tqdm) is drawn on stderr. A run of the same name
    always re-uses every sample and judgment already in the store (never paying twice);
    ``resume=False`` only restarts training from the initial student instead of the last checkpoint.
    ``review_handler(run)`` shows a review UI when ``review=True`` (the notebook front end passes
    one; without it ``review=True`` raises a ``ReviewError`` saying how to review).
    """
    config = DistillConfig.from_kwargs(dataset=dataset, teacher=teacher, student=student, judge=judge, **options)
    console = None
    if on_progress is None:
        from jupyter_distill.core.events import ConsoleRenderer

        console = ConsoleRenderer()
    run = Run(config, on_progress=on_progress or console, review_handler=review_handler, resume=resume)
    try:
        return run.run()
    finally:
        if console is not None:
            console.close()


def run_async_safely(coro: Awaitable[T]) -> T:
    """Deprecated: use :func:`jupyter_distill.core.loops.run_sync`, which takes a coroutine *factory*."""
    warnings.warn(
        "jupyter_distill.pipeline.run.run_async_safely is deprecated; "
        "use jupyter_distill.core.loops.run_sync(lambda: coro)",
        DeprecationWarning,
        stacklevel=2,
    )
    return run_sync(lambda: coro)


def _summary_dict(summary: Any) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {k: getattr(summary, k) for k in ("label", "n", "pass_rate", "mean_score") if hasattr(summary, k)}


def _summary_line(summary: dict[str, Any]) -> str:
    def rate(key: str) -> str:
        value = summary.get(key) or {}
        return f"{value.get('pass_rate', float('nan')):.2f}" if value else "n/a"

    parts = [
        f"pass@1 before {rate('student_before')}",
        f"teacher best-of-N {rate('teacher_best_of_n')}",
        f"pass@1 after {rate('student_after')}",
        f"teacher cost ${summary.get('teacher_cost', 0.0):.4f} + judge ${summary.get('judge_cost', 0.0):.4f} "
        f"= ${summary.get('total_cost', summary.get('teacher_cost', 0.0)):.4f}",
    ]
    if summary.get("student_served"):
        parts.append(f"served ({summary['student_served'].get('quantize', 'gguf')}) {rate('student_served')}")
    if summary.get("quantization_warning"):
        parts.append(f"warning: {summary['quantization_warning']}")
    if summary.get("alias"):
        parts.append(f"alias '{summary['alias']}'")
    return "done: " + ", ".join(parts)


def _teacher_terms(store: RunStore, run_id: str, teacher: str | None) -> dict[str, Any] | None:
    """The policy verdict and terms of the run's own teacher (not of another run's teacher that
    sampled the same prompts): what the model card's licence chain must name."""
    prompts = store.get_prompts(run_id)
    for prompt in prompts:
        for sample in store.samples_for_prompt(prompt.hash, teacher=teacher):
            policy = sample.provenance.get("policy")
            if policy:
                return policy
    return None


def _dataset_source(dataset: Any) -> str:
    if isinstance(dataset, str | Path):
        path = Path(dataset)
        if path.is_file():
            return f"{path.name} (sha256 {file_sha256(path)[:16]})"
        return str(dataset)
    from jupyter_distill.core.config import describe_object

    return describe_object(dataset)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable({k: getattr(value, k) for k in value.__dataclass_fields__})
    return str(value)


__all__ = [
    "PHASES",
    "Run",
    "RunState",
    "RunStopped",
    "default_run_name",
    "distill",
    "resume_hint",
    "run_async_safely",
    "validate_before_requests",
]
