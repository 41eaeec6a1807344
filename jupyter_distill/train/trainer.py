"""The BOND trainer: LoRA on the student, our own loop, checkpoints, metrics and a stop flag.

Why our own loop and not a transformers/TRL ``Trainer`` subclass:

- BOND needs chosen *and* rejected through the policy in one forward, cached reference sums,
  and a per-token KL against the adapter-disabled model. TRL's ``DPOTrainer`` has none of the
  KL term, computes the reference its own way (a second model or its own pre-compute pass with
  its own data collator) and trained fewer pairs per second than our plain engine in the GPU
  table of ``docs/benchmarks.md`` (50.8 against 55.0 at 1.05B, 32.0 against 55.6 at 139M);
  ``SFTTrainer`` has no pairs at all. Subclassing either means overriding
  ``compute_loss``, the collator and the reference handling, i.e. most of it.
- The run store is the source of truth: metrics must be written per step with our names,
  checkpoints must hold the data order and the reference cache, resume must trim metrics past the
  checkpoint, and a ``threading.Event`` must stop within one step. Trainer callbacks can do
  each of those, but only indirectly (control flags, ``TrainerState`` JSON, its own RNG
  handling), and ``Trainer`` prints and may spawn its own progress bars.
- The GPU fast path swaps only the :class:`~jupyter_distill.train.engines.StepEngine`; the loop,
  the schedule and the checkpoints are the same code on every device, which keeps the "same
  loss, same results" promise checkable.

The loop itself is ~100 lines: AdamW over the LoRA parameters, linear warm-up then linear decay
to 0, gradient accumulation, grad-norm clipping, length-bucketed micro-batches from a seeded
order, checkpoints every ``checkpoint_every`` steps (adapter, optimizer, scheduler, step, RNG,
data order, reference cache) written atomically into ``output_dir/checkpoint``.
"""

from __future__ import annotations

import math
import random
import shutil
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.core.events import Emit, Event, no_emit
from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.store import PairRecord, PromptRecord, RunStore
from jupyter_distill.train.choice import select_engine
from jupyter_distill.train.engines import StepEngine, TokenizedPair
from jupyter_distill.train.rollout import step_seed
from jupyter_distill.train.student import LoadedStudent
from jupyter_distill.train.workers import WorkerGroup

ALL_PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: LoRA targets per transformers ``model_type``: all seven projections, the setting of every run
#: measured in ``docs/benchmarks.md`` (with it SmolLM2-135M learns the quickstart's JSON task, 0.0
#: to 0.8 held-out pass@1 in 30-40 steps); unknown architectures get PEFT's ``all-linear`` (every
#: linear layer but the output head).
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    arch: ALL_PROJECTIONS
    for arch in (
        "llama", "qwen2", "qwen3", "gemma3", "gemma3_text", "gemma2", "gemma", "mistral", "olmo2", "smollm3", "granite"
    )
}  # fmt: skip
# Phi-3/Phi-4-mini fuse q/k/v into one projection and gate/up into another.
DEFAULT_TARGET_MODULES["phi3"] = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")

#: Metrics every step writes to the store and sends as an event, in display order.
STEP_METRICS: tuple[str, ...] = (
    "loss",
    "nll",
    "pref",
    "kl",
    "pref_acc",
    "margin",
    "lr",
    "grad_norm",
    "tokens_per_s",
)

#: every value of ``DistillConfig.loss``, and those this trainer runs
LOSSES: tuple[str, ...] = ("sft", "bond", "jbond", "onpolicy")
TRAINABLE_LOSSES: tuple[str, ...] = ("sft", "bond", "jbond", "onpolicy")
CHECKPOINT_DIR = "checkpoint"
ADAPTER_DIR = "adapter"
STATE_FILE = "trainer_state.pt"


@dataclass
class TrainPair:
    """A training example in text: the prompt's chat messages, the chosen and rejected responses."""

    messages: list[dict[str, Any]]
    chosen: str
    rejected: str | None = None
    #: the stored prompt (its row is what a verifier judges against); on-policy losses need it
    prompt: PromptRecord | None = None

    @classmethod
    def from_records(cls, pairs: Sequence[PairRecord], prompts: Sequence[PromptRecord]) -> list[TrainPair]:
        """Join the store's pairs with their prompts' messages (pairs name prompts by hash)."""
        by_hash = {p.hash: p for p in prompts}
        out: list[TrainPair] = []
        for pair in pairs:
            prompt = by_hash.get(pair.prompt_hash)
            if prompt is None:
                raise TrainingError(
                    f"pair for prompt {pair.prompt_hash} has no matching prompt record. Fix: pass the run's prompts "
                    "(store.get_prompts(run_id)) together with its pairs.",
                    field="pairs",
                    value=pair.prompt_hash,
                    fix="pass the prompts the pairs were built from",
                )
            out.append(
                cls(messages=list(prompt.messages), chosen=pair.chosen_text, rejected=pair.rejected_text, prompt=prompt)
            )
        return out


@dataclass
class TrainSettings:
    """Everything that decides what training computes (and so what a checkpoint must match)."""

    steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    warmup: int = 5
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    #: ``sft`` and ``bond`` train through :func:`~jupyter_distill.train.bond.bond_loss` (``sft`` is
    #: it with ``beta = gamma = 0``, i.e. the plain mean NLL of the chosen); ``jbond`` through
    #: :class:`~jupyter_distill.train.jbond_engine.JBondEngine` and ``onpolicy`` through
    #: :class:`~jupyter_distill.train.onpolicy_engine.OnPolicyEngine` (plain engine only; the
    #: ``jbond_n``/``jbond_max_new_tokens``/``jbond_kl``/``jbond_anchor_decay`` knobs apply to both)
    loss: str = "bond"
    beta: float = 0.5
    gamma: float = 0.1
    tau: float = 0.1
    jbond_n: int = 2
    jbond_anchor_decay: float = 0.99
    jbond_mix: float = 0.5
    jbond_kl: float = 0.05
    jbond_max_new_tokens: int = 64
    checkpoint_every: int = 50
    seed: int = 0
    device: str = "auto"
    max_length: int = 1024
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    bucket_batches: int = 16  # length-bucket within groups of this many batches
    #: recompute activations in the backward pass; ``None`` = on for a 4/8-bit student (QLoRA's
    #: memory budget), off otherwise (a third more compute for memory a full-precision run has)
    gradient_checkpointing: bool | None = None

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("steps", self.steps >= 1, "use at least 1"),
            ("batch_size", self.batch_size >= 1, "use at least 1"),
            ("grad_accum", self.grad_accum >= 1, "use at least 1"),
            ("lr", self.lr > 0, "use a positive learning rate, e.g. 2e-4"),
            ("warmup", self.warmup >= 0, "use 0 or more steps"),
            ("lora_r", self.lora_r >= 1, "use a rank of at least 1, e.g. 16"),
            ("lora_alpha", self.lora_alpha >= 1, "use e.g. 2 x lora_r"),
            ("lora_dropout", 0.0 <= self.lora_dropout < 1.0, "use a value in [0, 1)"),
            ("loss", self.loss in LOSSES, f"use one of {', '.join(LOSSES)}"),
            ("beta", 0.0 <= self.beta <= 1.0, "use a value in [0, 1]"),
            ("gamma", self.gamma >= 0.0, "use 0 or a small positive value"),
            ("tau", self.tau > 0.0, "use a positive temperature, e.g. 0.1"),
            ("jbond_n", 1 <= self.jbond_n <= 16, "use 1 to 16 samples per prompt"),
            ("jbond_anchor_decay", 0.0 <= self.jbond_anchor_decay < 1.0, "use a value in [0, 1), e.g. 0.99"),
            ("jbond_mix", 0.0 <= self.jbond_mix <= 1.0, "use a value in [0, 1]"),
            ("jbond_kl", self.jbond_kl >= 0.0, "use 0 or a small positive value"),
            ("jbond_max_new_tokens", self.jbond_max_new_tokens >= 1, "use at least 1 token"),
            ("checkpoint_every", self.checkpoint_every >= 1, "use at least 1"),
            ("max_length", self.max_length >= 8, "use at least 8 tokens"),
            ("max_grad_norm", self.max_grad_norm > 0, "use a positive norm, e.g. 1.0"),
            ("bucket_batches", self.bucket_batches >= 1, "use at least 1"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise TrainingError(
                    f"invalid training setting {name}={getattr(self, name)!r}. Fix: {fix}.",
                    field=name,
                    value=getattr(self, name),
                    fix=fix,
                )

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> TrainSettings:
        """Build from a :class:`~jupyter_distill.core.config.DistillConfig` (its field names differ)."""
        values = {
            "steps": config.steps,
            "batch_size": config.batch_size,
            "grad_accum": config.grad_accum,
            "lr": config.learning_rate,
            "warmup": config.warmup_steps,
            "lora_r": config.lora_r,
            "lora_alpha": config.lora_alpha,
            "lora_dropout": config.lora_dropout,
            "target_modules": list(config.target_modules) if config.target_modules else None,
            "loss": config.loss,
            # sft is bond_loss with both extra terms off: exactly the mean NLL of the chosen
            "beta": 0.0 if config.loss == "sft" else config.bond_beta,
            "gamma": 0.0 if config.loss == "sft" else config.bond_gamma,
            "tau": config.bond_tau,
            "jbond_n": config.jbond_n,
            "jbond_anchor_decay": config.jbond_anchor_decay,
            "jbond_mix": config.jbond_mix,
            "jbond_kl": config.jbond_kl,
            "jbond_max_new_tokens": config.jbond_max_new_tokens,
            "checkpoint_every": config.checkpoint_every,
            "seed": config.seed,
            "device": config.device,
        }
        values.update(overrides)
        return cls(**values)

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed (not how often it is saved, nor where)."""
        data = asdict(self)
        for volatile in ("checkpoint_every", "device"):
            data.pop(volatile)
        if data["loss"] in ("sft", "bond"):  # offline losses: checkpoints written before ``loss`` existed resume
            for key in [k for k in data if k == "loss" or k.startswith("jbond_")]:
                data.pop(key)
        if data["gradient_checkpointing"] is None:  # the default: checkpoints written before it existed resume
            data.pop("gradient_checkpointing")
        return content_hash("train-settings", data)


@dataclass
class TrainResult:
    """What training produced; ``steps_done < settings.steps`` when it was stopped."""

    adapter_dir: Path
    steps_done: int
    final_metrics: dict[str, float]
    engine: str
    stopped: bool = False
    engine_reason: str = ""
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total`` (step is 0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    remaining = max(1, total - warmup)
    return max(0.0, (total - step) / remaining)


def batch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, bucket_batches: int) -> list[list[int]]:
    """One epoch of micro-batches: shuffled, then length-bucketed within groups, then shuffled.

    Sorting by length inside groups of ``bucket_batches`` batches keeps padding small while the
    group shuffle keeps batches varied; the order depends only on ``(seed, epoch)``.
    """
    rng = random.Random(content_hash("order", seed, epoch))
    indices = list(range(len(lengths)))
    rng.shuffle(indices)
    group = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(indices), group):
        chunk = sorted(indices[start : start + group], key=lambda i: lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def tokenize_pairs(student: LoadedStudent, pairs: Sequence[TrainPair], max_length: int) -> list[TokenizedPair]:
    """Chat-template the prompts, tokenize responses (+ end-of-turn), truncate to ``max_length``.

    The prompt is cut from the left (its end, where the question and the generation prompt sit,
    matters most) and the response from the right, keeping at least half the budget for it.
    """
    out: list[TokenizedPair] = []
    for index, pair in enumerate(pairs):
        if not pair.chosen or not pair.chosen.strip():
            raise TrainingError(
                f"pair {index} has an empty chosen response. Fix: drop it or review it before training.",
                field="pairs",
                value=index,
                fix="remove pairs with empty chosen text",
            )
        prompt = student.prompt_ids(pair.messages)
        chosen = student.response_ids(pair.chosen)
        rejected = student.response_ids(pair.rejected) if pair.rejected and pair.rejected.strip() else None
        response_budget = max_length // 2
        longest = max(len(chosen), len(rejected or ()))
        prompt_budget = max_length - min(longest, response_budget)
        if len(prompt) > prompt_budget:
            prompt = prompt[-prompt_budget:]
        room = max_length - len(prompt)
        out.append(TokenizedPair(index, prompt, chosen[:room], rejected[:room] if rejected else None))
    return out


def _lora_targets(settings: TrainSettings, architecture: str) -> list[str] | str:
    if settings.target_modules:
        return list(settings.target_modules)
    default = DEFAULT_TARGET_MODULES.get(architecture)
    return list(default) if default else "all-linear"


def attach_lora(student: LoadedStudent, settings: TrainSettings) -> Any:
    """Wrap ``student.model`` in a fresh LoRA adapter for training and return it (also set on ``student``).

    A student loaded in 4/8 bits has its base frozen first (and, by default, gradient checkpointing
    on: :mod:`.quantized`); a student Unsloth loaded gets Unsloth's own LoRA wrapper
    (:mod:`.unsloth_loader`). The LoRA settings are the same either way.
    """
    from peft import LoraConfig, get_peft_model

    base = student.drop_adapter()  # a re-run on the same student starts from the pristine base
    info = student.info
    targets = _lora_targets(settings, info.architecture)
    config = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(settings.seed)  # LoRA A init is random: same seed, same start
    checkpointing = settings.gradient_checkpointing
    if checkpointing is None:
        checkpointing = info.quantization is not None
    try:
        with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            if info.loader == "unsloth":
                from jupyter_distill.train.unsloth_loader import attach_lora as unsloth_lora

                model = unsloth_lora(base, config, seed=settings.seed, gradient_checkpointing=checkpointing)
            else:
                if info.quantization is not None or checkpointing:
                    from jupyter_distill.train.quantized import prepare_for_lora

                    base = prepare_for_lora(base, gradient_checkpointing=checkpointing)
                model = get_peft_model(base, config)
    except ValueError as exc:  # PEFT: "Target modules {...} not found in the base model"
        raise TrainingError(
            f"LoRA could not be attached: {exc}. Fix: set target_modules to names of linear layers of this "
            f"model ({info.architecture}), e.g. {list(ALL_PROJECTIONS)} for llama-like models.",
            field="target_modules",
            value=targets,
            fix="use module names that exist in the model",
        ) from None
    model.train()
    student.model = model
    return model


class BondTrainer:
    """Trains a LoRA adapter on ``student`` with the BOND loss; see the module docstring for why.

    After :meth:`train`, ``student.model`` is the PEFT model with the trained adapter (so the
    caller can evaluate "after" without reloading) and the adapter is saved in
    ``output_dir/adapter``. Call :meth:`train` from a worker thread in a notebook: it never
    prints, reports through ``emit``, and returns within one step of ``stop`` being set.
    """

    def __init__(
        self,
        student: LoadedStudent,
        pairs: Sequence[TrainPair],
        settings: TrainSettings,
        *,
        output_dir: str | Path,
        store: RunStore | None = None,
        run_id: str | None = None,
        emit: Emit = no_emit,
        stop: threading.Event | None = None,
        engine: str | StepEngine = "auto",
        rewards: Any = None,
        teacher_logprobs: Any = None,
        group: WorkerGroup | None = None,
    ):
        """``rewards`` (an :class:`~jupyter_distill.train.rewards.OnPolicyRewards`) is required for
        ``loss='jbond'``: the run's judge and the teacher's judged candidates. ``teacher_logprobs``
        (a :class:`~jupyter_distill.train.teacher_logprobs.TeacherLogprobs`) is required for
        ``loss='onpolicy'``: the teacher that scores the student's tokens.

        ``group`` (one of several worker processes, :mod:`.workers`): this process computes only
        its share of each step's ``grad_accum`` micro-batches, gradients and metrics are summed
        across the group, stop is decided together at step boundaries, and only the main process
        writes files, metrics and events."""
        self.rewards = rewards
        self.teacher_logprobs = teacher_logprobs
        self.group = group
        self._onpolicy: Any = None
        if not pairs:
            raise TrainingError(
                "there are no training pairs. Fix: check that sampling and judging produced at least one "
                "candidate that passed (see the judging summary), or lower the judge's threshold.",
                field="pairs",
                value=0,
                fix="produce at least one pair",
            )
        if store is not None and run_id is None:
            raise TrainingError(
                "a store was given without run_id, so metrics would have no run to go to. Fix: pass run_id=.",
                field="run_id",
                value=None,
                fix="pass run_id",
            )
        self.student = student
        self.pairs = list(pairs)
        self.settings = settings
        self.output_dir = Path(output_dir)
        self.store = store
        self.run_id = run_id
        self.emit = emit
        self.stop = stop or threading.Event()
        self.engine_choice = engine
        self.model: Any = None
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ helpers
    def _event(self, kind: str, **kw: Any) -> None:
        self.emit(Event(kind=kind, phase="training", run=self.run_id, **kw))  # type: ignore[arg-type]

    def _pairs_hash(self, examples: Sequence[TokenizedPair]) -> str:
        return content_hash("pairs", [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in examples])

    # ------------------------------------------------------------------ checkpoints
    @property
    def _writes(self) -> bool:
        """Whether this process writes checkpoints and the adapter (the group's main process does)."""
        return self.group is None or self.group.is_main

    def _stop_now(self) -> bool:
        """The stop flag at a step boundary; in a group, stopped when any process saw it (together)."""
        flag = self.stop.is_set()
        return flag if self.group is None else self.group.any(flag)

    def _save_adapter(self, model: Any, folder: Path) -> None:
        if not self._writes:
            return
        tmp = _tmp_dir(folder)
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        # The chat template prompts were rendered with travels with the adapter: export writes it
        # into the GGUF (a base model's family default would otherwise be lost on the way).
        template = getattr(self.student.tokenizer, "chat_template", None)
        if isinstance(template, str) and template:
            (tmp / "chat_template.jinja").write_text(template, encoding="utf-8")
        _replace_dir(tmp, folder)

    def _save_checkpoint(self, model: Any, state: dict[str, Any]) -> None:
        if not self._writes:
            return
        folder = self.output_dir / CHECKPOINT_DIR
        tmp = _tmp_dir(folder)
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp / ADAPTER_DIR, safe_serialization=True)
        torch.save(state, tmp / STATE_FILE)
        _replace_dir(tmp, folder)

    def _load_checkpoint(self) -> dict[str, Any] | None:
        if self._writes:  # a group's launcher recovered it before the workers started
            recover_dir(self.output_dir / CHECKPOINT_DIR)  # a crash mid-swap left it under another name
        path = self.output_dir / CHECKPOINT_DIR / STATE_FILE
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TrainingError(
                f"the checkpoint {str(path)!r} cannot be read ({exc}). Fix: delete the folder "
                f"{str(path.parent)!r} or call train(resume=False) to start over.",
                field="resume",
                value=str(path),
                fix="train(resume=False)",
            ) from None

    # ------------------------------------------------------------------ the loop
    def train(self, resume: bool = True) -> TrainResult:
        """Train to ``settings.steps`` (or until ``stop``); resume from ``output_dir/checkpoint``."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        started = time.time()
        s = self.settings
        check_trainable_loss(s.loss, self.engine_choice if isinstance(self.engine_choice, str) else "plain")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        examples = tokenize_pairs(self.student, self.pairs, s.max_length)
        pad_id = int(self.student.tokenizer.pad_token_id)
        options = {"beta": s.beta, "gamma": s.gamma, "tau": s.tau, "pad_token_id": pad_id}
        if s.loss == "jbond":
            engine, reason = self._jbond_engine(examples, pad_id), "jbond runs on the plain PEFT engine"
        elif s.loss == "onpolicy":
            engine, reason = self._onpolicy_engine(examples, pad_id), "onpolicy runs on the plain PEFT engine"
        elif isinstance(self.engine_choice, str):
            engine, reason = select_engine(self.student.info.device, self.engine_choice, **options)
        else:
            engine, reason = self.engine_choice, f"engine object {type(self.engine_choice).__name__} passed in"
        model = attach_lora(self.student, self.settings)
        if self.group is not None:
            self.group.prepare(model)  # fsdp: shard the frozen base across the workers
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, s.warmup, s.steps))
        lengths = [e.length for e in examples]
        pairs_hash = self._pairs_hash(examples)

        step, epoch, position = 0, 0, 0
        order = batch_order(lengths, s.batch_size, s.seed, epoch, s.bucket_batches)
        checkpoint = self._load_checkpoint() if resume else None
        if checkpoint is not None:
            for name, mine, theirs in (
                ("settings", s.fingerprint(), checkpoint["settings"]),
                ("pairs", pairs_hash, checkpoint["pairs"]),
            ):
                if mine != theirs:
                    before = checkpoint.get("settings_dict", {}) if name == "settings" else {}
                    now = asdict(s)
                    changed = sorted(k for k in before if k != "checkpoint_every" and before[k] != now.get(k))
                    detail = f" (changed: {', '.join(changed)})" if changed else ""
                    raise TrainingError(
                        f"the checkpoint in {str(self.output_dir / CHECKPOINT_DIR)!r} was made with different "
                        f"{name}{detail}, so resuming would mix two trainings. Fix: call train(resume=False) to "
                        "start over, or use another output_dir.",
                        field="resume",
                        value=name,
                        fix="train(resume=False)",
                    )
            adapter = load_file(str(self.output_dir / CHECKPOINT_DIR / ADAPTER_DIR / "adapter_model.safetensors"))
            set_peft_model_state_dict(model, adapter)
            if self._onpolicy is not None:
                self._onpolicy.load_state_dict(checkpoint.get("onpolicy", {}))
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            step, epoch, position = checkpoint["step"], checkpoint["epoch"], checkpoint["position"]
            order = [list(b) for b in checkpoint["order"]]
            if checkpoint.get("reference_fingerprint") == self._reference_fingerprint():
                for example, (ref_c, ref_r) in zip(examples, checkpoint["reference"], strict=True):
                    example.ref_logp_chosen, example.ref_logp_rejected = ref_c, ref_r
            else:  # computed on another device or dtype: its numbers differ, _prepare_reference redoes them
                self._event(
                    "progress",
                    message="the checkpoint's reference log-probs were computed on another device or dtype; "
                    "recomputing them here",
                    data={"stage": "reference", "recomputed": True},
                )
            _set_rng(checkpoint["rng"])
            self.history = list(checkpoint.get("history", []))
            if self.store is not None:
                self.store.delete_metrics_after(self.run_id, step)  # type: ignore[arg-type]
        else:
            if self._writes:
                shutil.rmtree(self.output_dir / CHECKPOINT_DIR, ignore_errors=True)
            if self.store is not None:
                self.store.delete_metrics_after(self.run_id, 0)  # type: ignore[arg-type]
            torch.manual_seed(s.seed)
            self.history = []

        self._event(
            "progress",
            message=f"training with the {engine.name} engine: {reason}",
            current=step,
            total=s.steps,
            data={"engine": engine.name, "engine_reason": reason, "pairs": len(examples)},
        )
        if self._onpolicy is not None:  # no reference log-probs: the EMA anchor (restored or fresh) replaces them
            self._onpolicy.prepare(model, examples)
        else:
            self._prepare_reference(engine, model, examples)

        last_saved = step
        stopped = False
        group = self.group
        while step < s.steps and not self._stop_now():
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            micro = 0
            cursor = (epoch, position, order, _get_rng())  # to rewind a step abandoned by stop
            for index in range(s.grad_accum):
                if group is None and self.stop.is_set():  # a group stops together, between steps
                    break
                if position >= len(order):
                    epoch, position = epoch + 1, 0
                    order = batch_order(lengths, s.batch_size, s.seed, epoch, s.bucket_batches)
                if group is not None and not group.owns(index, s.grad_accum):
                    position += 1  # another process computes this micro-batch; every one walks the order
                    continue
                batch = [examples[i] for i in order[position]]
                if self._onpolicy is not None:  # seeded by its place in the data order: resume redraws it
                    draw = step_seed(s.seed, epoch * 1_000_003 + position)
                    loss, parts = self._onpolicy.loss(model, batch, seed=draw)
                else:
                    loss, parts = engine.loss(model, batch)
                position += 1
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {float(loss)} at step {step + 1}. Fix: lower lr (now {s.lr}) or "
                        "bond_tau, or check the pairs for garbage text.",
                        field="lr",
                        value=s.lr,
                        fix="lower the learning rate",
                    )
                (loss / s.grad_accum).backward()
                micro += 1
                for name, value in {"loss": float(loss.detach()), **parts}.items():
                    sums[name] = sums.get(name, 0.0) + value
            if group is not None:  # the group's micro-batches together are the one process's step
                group.sum_gradients(params)
                sums = group.sum_values(sums)
                micro = s.grad_accum
            if micro < s.grad_accum:  # stopped mid-step: drop the partial step, rewind data and RNG
                epoch, position, order, rng = cursor
                _set_rng(rng)
                optimizer.zero_grad(set_to_none=True)
                break
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            if self._onpolicy is not None:
                self._onpolicy.after_step(model)
            step += 1
            elapsed = time.perf_counter() - t0
            tokens = sums.pop("tokens", 0.0)
            counted = getattr(self._onpolicy, "counted", ())
            calls = {name: sums.pop(name) for name in counted if name in sums}
            metrics = {name: value / micro for name, value in sums.items() if name != "n_pref"}
            metrics.update({"lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens / max(elapsed, 1e-9)})
            metrics.update(calls)
            names = STEP_METRICS + self._onpolicy.metric_names if self._onpolicy is not None else STEP_METRICS
            metrics = {k: metrics[k] for k in names if k in metrics and math.isfinite(metrics[k])}
            self.history.append({"step": float(step), **metrics})
            if self.store is not None:
                self.store.put_metrics(self.run_id, step, metrics)  # type: ignore[arg-type]
            self._event("metric", step=step, current=step, total=s.steps, data=metrics)
            self._event("progress", step=step, current=step, total=s.steps, data={"loss": round(metrics["loss"], 4)})
            if step % s.checkpoint_every == 0 or step == s.steps:
                self._checkpoint(model, optimizer, scheduler, step, epoch, position, order, examples, pairs_hash)
                last_saved = step

        if step < s.steps and (self.stop.is_set() if group is None else self._stop_now()):
            stopped = True
            if step != last_saved:
                self._checkpoint(model, optimizer, scheduler, step, epoch, position, order, examples, pairs_hash)
        adapter_dir = self.output_dir / ADAPTER_DIR
        self._save_adapter(model, adapter_dir)
        final = {k: v for k, v in (self.history[-1] if self.history else {}).items() if k != "step"}
        message = f"stopped at step {step}/{s.steps}" if stopped else f"trained {step} steps"
        self._event("progress", message=message, current=step, total=s.steps, data={"stopped": stopped})
        return TrainResult(
            adapter_dir=adapter_dir,
            steps_done=step,
            final_metrics=final,
            engine=engine.name,
            stopped=stopped,
            engine_reason=reason,
            seconds=time.time() - started,
            history=list(self.history),
        )

    def _jbond_engine(self, examples: Sequence[TokenizedPair], pad_id: int) -> StepEngine:
        from jupyter_distill.train.jbond_engine import JBondEngine

        if self.rewards is None:
            raise TrainingError(
                "loss='jbond' needs the run's judge and the teacher's judged candidates to reward the "
                "student's samples. Fix: pass rewards=OnPolicyRewards(judge, teacher_scores(store, prompts, "
                "judge.id)) to BondTrainer (jd.distill does this).",
                field="rewards",
                value=None,
                fix="pass rewards=OnPolicyRewards(...)",
            )
        s = self.settings
        prompts = [pair.prompt or _prompt_record(pair.messages) for pair in self.pairs]
        assert len(prompts) == len(examples)
        self._onpolicy = JBondEngine(
            self.student,
            prompts,
            self.rewards,
            n=s.jbond_n,
            max_new_tokens=s.jbond_max_new_tokens,
            mix=s.jbond_mix,
            kl_weight=s.jbond_kl,
            anchor_decay=s.jbond_anchor_decay,
            pad_token_id=pad_id,
        )
        return self._onpolicy

    def _onpolicy_engine(self, examples: Sequence[TokenizedPair], pad_id: int) -> StepEngine:
        from jupyter_distill.train.onpolicy_engine import OnPolicyEngine

        if self.teacher_logprobs is None:
            raise TrainingError(
                "loss='onpolicy' needs a teacher that scores the student's tokens. Fix: pass "
                "teacher_logprobs=TeacherLogprobs(teacher) to BondTrainer (jd.distill does this), or use loss='jbond'.",
                field="teacher_logprobs",
                value=None,
                fix="pass teacher_logprobs=TeacherLogprobs(teacher)",
            )
        s = self.settings
        prompts = [pair.prompt or _prompt_record(pair.messages) for pair in self.pairs]
        assert len(prompts) == len(examples)
        self._onpolicy = OnPolicyEngine(
            self.student,
            prompts,
            self.teacher_logprobs,
            n=s.jbond_n,
            max_new_tokens=s.jbond_max_new_tokens,
            kl_weight=s.jbond_kl,
            anchor_decay=s.jbond_anchor_decay,
            pad_token_id=pad_id,
        )
        return self._onpolicy

    def _reference_fingerprint(self) -> str:
        """Where the cached reference log-probs were computed: the same numbers need the same device
        and dtype (bf16 on a GPU and fp32 on a CPU differ in the low bits the preference term sees)."""
        return reference_fingerprint(self.student.model)

    def _prepare_reference(self, engine: StepEngine, model: Any, examples: list[TokenizedPair]) -> None:
        """Cache reference log-probs in chunks so the UI sees progress (and a stop lands quickly)."""
        todo = [e for e in examples if e.needs_reference]
        chunk = 16
        for start in range(0, len(todo), chunk):
            if self.group is None and self.stop.is_set():  # a group runs these forwards together
                return
            engine.prepare(model, todo[start : start + chunk])
            self._event(
                "progress",
                message="reference log-probs (adapter disabled)",
                current=min(start + chunk, len(todo)),
                total=len(todo),
                data={"stage": "reference"},
            )

    def _checkpoint(
        self,
        model: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        step: int,
        epoch: int,
        position: int,
        order: list[list[int]],
        examples: Sequence[TokenizedPair],
        pairs_hash: str,
    ) -> None:
        state = {
            "step": step,
            "epoch": epoch,
            "position": position,
            "order": order,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _get_rng(),
            "reference": [(e.ref_logp_chosen, e.ref_logp_rejected) for e in examples],
            "reference_fingerprint": self._reference_fingerprint(),
            "settings": self.settings.fingerprint(),
            "settings_dict": {k: v for k, v in asdict(self.settings).items() if k not in ("device",)},
            "pairs": pairs_hash,
            "history": self.history,
        }
        if self._onpolicy is not None:
            state["onpolicy"] = self._onpolicy.state_dict()
        self._save_checkpoint(model, state)
        self._event("progress", message=f"checkpoint at step {step}", step=step, data={"checkpoint": step})


def check_trainable_loss(loss: str, engine: str = "auto") -> None:
    """Refuse a loss this trainer cannot optimise (or not with ``engine``), before any model is loaded.

    ``jbond`` and ``onpolicy`` sample from the student inside the step, which the CUDA fast path
    (packed, compiled forwards) does not do yet, so they run on the plain PEFT engine ("auto"
    picks it), and an explicit "fast" is refused rather than silently replaced. (Whether the
    teacher can score tokens for ``onpolicy`` is the pipeline's pre-flight check.)
    """
    if loss not in TRAINABLE_LOSSES:
        raise TrainingError(
            f"unknown loss={loss!r}. Fix: use one of {', '.join(TRAINABLE_LOSSES)}.",
            field="loss",
            value=loss,
            fix=f"use one of {', '.join(TRAINABLE_LOSSES)}",
        )
    if loss in ("jbond", "onpolicy") and engine == "fast":
        raise TrainingError(
            f"loss={loss!r} samples from the student inside each step, which the CUDA fast engine does not do yet. "
            f"Fix: use engine='plain' or engine='auto' (it picks the plain PEFT engine for {loss}).",
            field="engine",
            value=engine,
            fix="use engine='plain' or 'auto'",
        )


def _prompt_record(messages: Sequence[dict[str, Any]]) -> PromptRecord:
    """A prompt record for a pair built without one (no row: a verifier sees only the messages)."""
    return PromptRecord(hash=content_hash("prompt", list(messages)), messages=list(messages), row={})


def _get_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def reference_fingerprint(model: Any) -> str:
    """The device (type and index) and dtype of ``model``'s first parameter, hashed."""
    try:
        param = next(model.parameters())
        where = (str(param.device), str(param.dtype))
    except (StopIteration, AttributeError, TypeError):
        where = ("unknown", "unknown")
    return content_hash("reference-logprobs", where)


_COMPLETE = ".complete"  # written last into a folder about to be swapped in: it is whole


def _tmp_dir(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp")


def _old_dir(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target`` so a crash leaves either the old or the new folder, never half.

    Two renames cannot be one atomic step: a crash between them leaves no ``target`` at all, only
    ``.target.old`` (the previous folder) and ``new`` (complete, marked by ``.complete``).
    :func:`recover_dir` puts one of them back before anything reads ``target``.
    """
    (new / _COMPLETE).write_bytes(b"")
    old = _old_dir(target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    (target / _COMPLETE).unlink(missing_ok=True)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: Path) -> None:
    """Undo a swap a crash interrupted: with ``target`` missing, promote the complete new folder,
    else the previous one. A present ``target`` is never touched (a stale ``.old`` is just litter)."""
    if target.exists():
        return
    new, old = _tmp_dir(target), _old_dir(target)
    if (new / _COMPLETE).is_file():
        new.rename(target)
    elif old.is_dir():
        old.rename(target)


__all__ = [
    "ALL_PROJECTIONS",
    "DEFAULT_TARGET_MODULES",
    "STEP_METRICS",
    "BondTrainer",
    "TrainPair",
    "TrainResult",
    "TrainSettings",
    "attach_lora",
    "batch_order",
    "lr_factor",
    "recover_dir",
    "reference_fingerprint",
    "tokenize_pairs",
]
