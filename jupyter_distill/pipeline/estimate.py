"""``estimate()``: what a run will cost in requests, tokens, dollars, time and memory, before it runs.

Nothing is sent and nothing is trained: the dataset is read, tokens are approximated from
characters (about four per token for English), prices come from ``TEACHER_MODEL_MAP`` through
``models.teacher_price`` (the lookup a run's spend uses), samples
already in the store are subtracted (they are never paid twice), and training time is scaled
from the throughput measured on a 2-core CPU (see ``docs/benchmarks.md``) or the GPU's peak,
and peak training memory is predicted from the student's shape, its quantization and the step's
token counts by :func:`jupyter_distill.train.memory.training_peak`.
"""

from __future__ import annotations

import json
import os
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jupyter_distill.core import data as data_module
from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.models import (
    STUDENT_MODEL_MAP,
    STUDENT_SHAPES,
    ModelShape,
    shape_from_config,
    teacher_batch_discount,
    teacher_price,
)
from jupyter_distill.core.store import RunStore
from jupyter_distill.export import memory as export_memory
from jupyter_distill.teachers.batch import BATCH_SCHEMES
from jupyter_distill.teachers.throughput import Throughput, local_throughput
from jupyter_distill.train.memory import training_peak

CHARS_PER_TOKEN = 4.0
CHAT_OVERHEAD_TOKENS = 8  # role markers and separators per message
TYPICAL_OUTPUT_SHARE = 0.5  # answers usually stop well before max_tokens
# Effective training throughput in FLOP/s: measured LoRA fwd+bwd on SmolLM2-135M, 2 CPU cores
# (~140 tokens/s), and a conservative 35% of bf16 peak on a datacenter GPU.
CPU_FLOPS_PER_CORE = 5.5e10
GPU_EFFECTIVE_FLOPS = 2.5e14
# What the batch APIs promise (OpenAI's and Anthropic's completion window is 24 h; most finish sooner).
BATCH_WAIT = "up to 24 h (often minutes to a few hours); re-run the cell to collect"


@dataclass
class Estimate:
    """The numbers a user needs to decide whether to press run."""

    prompts: int
    train_prompts: int
    heldout_prompts: int
    teacher_requests: int
    cached_samples: int
    judge_requests: int
    input_tokens: int
    output_tokens_typical: int
    output_tokens_max: int
    teacher_cost_typical: float
    teacher_cost_max: float
    priced: bool
    student_params_m: float
    device: str
    training_seconds: float
    memory_gb: float
    quantization: str | None = None
    memory_breakdown: dict[str, float] | None = None  # GB by what holds it (weights, lora, activations, logits)
    #: loss='jbond': at most this many judge calls on the student's own samples (repeats are cached)
    onpolicy_judge_requests: int = 0
    #: loss='onpolicy': at most this many teacher scoring requests (one per prompt per micro-batch)
    #: and tokens scored (prompt + samples); priced like the teacher's input tokens, free when local
    onpolicy_scoring_requests: int = 0
    onpolicy_scoring_tokens: int = 0
    # the teacher's share of the cost online and through its provider's batch API (None: no batch API)
    teacher_only_cost_online: float | None = None
    teacher_only_cost_batch: float | None = None
    batch: bool = False  # the config asks for batch sampling
    batch_wait: str | None = None
    #: RAM of the merge/export step (GB): merge in the stored dtype, check in fp32; None: no GGUF export
    export_memory_gb: float | None = None
    export_memory_breakdown: dict[str, Any] | None = None
    available_memory_gb: float | None = None  # what this machine has free now
    #: local teachers: the new completions' decoding time at this machine's measured tokens/s
    #: (``teachers.throughput``); None for HTTP teachers, whose time is the provider's
    sampling_seconds: float | None = None
    sampling_throughput: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _lines(self) -> list[tuple[str, str]]:
        cost = (
            f"${self.teacher_cost_typical:.4f} typical, ${self.teacher_cost_max:.4f} at most"
            if self.priced
            else "$0 (local teacher)"
        )
        return [
            ("prompts", f"{self.prompts} ({self.train_prompts} train, {self.heldout_prompts} held-out)"),
            ("teacher requests", f"{self.teacher_requests} new ({self.cached_samples} samples already cached)"),
            (
                "judge requests",
                str(self.judge_requests)
                + (
                    f" + at most {self.onpolicy_judge_requests} on the student's samples (jbond)"
                    if self.onpolicy_judge_requests
                    else ""
                ),
            ),
            (
                "tokens",
                f"{self.input_tokens:,} in, {self.output_tokens_typical:,} out typical "
                f"({self.output_tokens_max:,} max)",
            ),
            *(
                [
                    (
                        "teacher scoring",
                        f"at most {self.onpolicy_scoring_requests} requests, {self.onpolicy_scoring_tokens:,} tokens "
                        "on the student's samples (onpolicy; included in the cost)",
                    )
                ]
                if self.onpolicy_scoring_requests
                else []
            ),
            ("teacher cost", cost),
            *self._sampling_lines(),
            *self._batch_lines(),
            ("student", f"{self.student_params_m:.0f}M parameters"),
            ("training", f"~{_duration(self.training_seconds)} on {self.device}"),
            (
                "memory",
                f"~{self.memory_gb:.1f} GB {'VRAM' if self.device.startswith('cuda') else 'RAM'} peak while training"
                + (f" ({self.quantization} student)" if self.quantization else "")
                + (
                    "; a lower bound: bitsandbytes' 8-bit backward was measured at about 3x it, "
                    "quantization='4bit' is smaller and faster"
                    if self.quantization == "8bit"
                    else ""
                ),
            ),
            *self._export_lines(),
        ]

    def _export_lines(self) -> list[tuple[str, str]]:
        if self.export_memory_gb is None or not self.export_memory_breakdown:
            return []
        parts = self.export_memory_breakdown
        free = f"; {self.available_memory_gb:.1f} GB available now" if self.available_memory_gb is not None else ""
        lines = [
            (
                "export memory",
                f"~{self.export_memory_gb:.1f} GB RAM peak (merge in {parts['stored_dtype']}: "
                f"{parts['merge'] / 1e9:.1f} GB, fp32 agreement check: {parts['check'] / 1e9:.1f} GB"
                f"{self._offload_text(parts)}){free}",
            )
        ]
        return lines + [("warning", w) for w in self.warnings]

    def _sampling_lines(self) -> list[tuple[str, str]]:
        if self.sampling_seconds is None or not self.sampling_throughput:
            return []
        speed = Throughput(**self.sampling_throughput).describe()
        return [("sampling", f"~{_duration(self.sampling_seconds)} at {speed}")]

    @staticmethod
    def _offload_text(parts: dict[str, Any]) -> str:
        """The part of the check's fp32 reference that will not fit in RAM and is read from disk."""
        offloaded = parts.get("check_offloaded") or 0
        return f" in RAM + {offloaded / 1e9:.1f} GB read from disk" if offloaded else ""

    def _batch_lines(self) -> list[tuple[str, str]]:
        if self.teacher_only_cost_batch is None or not self.priced:
            return []
        chosen = "batch: true (chosen)" if self.batch else "set batch: true to use it"
        return [
            (
                "online vs batch",
                f"${self.teacher_only_cost_online:.4f} online, ${self.teacher_only_cost_batch:.4f} as a provider batch "
                f"(typical sampling cost; {chosen}); batch wait: {self.batch_wait}",
            )
        ]

    def __repr__(self) -> str:
        return "Estimate\n" + "\n".join(f"  {k:<17} {v}" for k, v in self._lines())

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in self._lines())
        return {
            "text/plain": repr(self),
            "text/html": f"<table class='jd-estimate'><caption>jupyter-distill estimate</caption>{rows}</table>",
            "application/json": json.loads(json.dumps(self.to_dict())),
        }


def estimate(
    dataset: Any = None,
    teacher: Any = "local:smollm2-135m",
    student: str = "smollm2-135m",
    judge: Any = None,
    calibrate: bool = True,
    **options: Any,
) -> Estimate:
    """Estimate a run of ``distill()`` with the same arguments, without sending or training.

    ``calibrate``: for a local GGUF teacher, time its decoding on this machine (a few seconds the
    first time, then cached per model and thread count) to estimate the sampling time.
    """
    config = DistillConfig.from_kwargs(dataset=dataset, teacher=teacher, student=student, judge=judge, **options)
    return estimate_config(config, calibrate=calibrate)


def estimate_config(config: DistillConfig, *, calibrate: bool = True) -> Estimate:
    prompts = data_module.load_dataset(
        config.dataset, prompt_field=config.prompt_field, system_prompt=config.system_prompt,
        max_prompts=config.max_prompts,
    )  # fmt: skip
    data_module.split(prompts, config.heldout_fraction, config.seed)
    heldout = sum(p.split == "heldout" for p in prompts)
    prompt_tokens = [_tokens(p.messages) for p in prompts]

    teacher_spec = config.teacher if isinstance(config.teacher, str) else getattr(config.teacher, "spec", "")
    cached = _cached_samples(config, teacher_spec, prompts)
    requests = len(prompts) * config.n_samples - cached
    new_share = requests / max(1, len(prompts) * config.n_samples)
    input_tokens = int(sum(prompt_tokens) * config.n_samples * new_share)
    out_max = requests * config.max_tokens
    out_typical = int(out_max * TYPICAL_OUTPUT_SHARE)

    price = teacher_price(teacher_spec)
    judge_requests = requests if config.judge is None or isinstance(config.judge, str) else 0
    judge_spec = config.judge if isinstance(config.judge, str) else ""
    judge_price = price if config.judge is None else teacher_price(judge_spec)
    cost_typical = cost_max = 0.0
    if price is not None:
        cost_typical = (input_tokens * price[0] + out_typical * price[1]) / 1e6
        cost_max = (input_tokens * price[0] + out_max * price[1]) / 1e6
    online_only = cost_typical
    batch_cost = None
    if teacher_spec.partition(":")[0] in BATCH_SCHEMES and price is not None:
        batch_cost = round(online_only * teacher_batch_discount(teacher_spec), 6)
    if judge_requests and judge_price is not None:
        judge_in = input_tokens + out_typical + judge_requests * 120
        cost_typical += (judge_in * judge_price[0] + judge_requests * 60 * judge_price[1]) / 1e6
        cost_max += (
            (input_tokens + out_max + judge_requests * 120) * judge_price[0] + judge_requests * 60 * judge_price[1]
        ) / 1e6

    # jbond: every step judges jbond_n samples per prompt (an LLM judge is paid; a verifier is free)
    onpolicy = config.steps * config.batch_size * config.grad_accum * config.jbond_n if config.loss == "jbond" else 0
    paid_judge = config.judge is None or isinstance(config.judge, str)
    if onpolicy and paid_judge and judge_price is not None:
        per_call_in = sum(prompt_tokens) / max(1, len(prompt_tokens)) + config.jbond_max_new_tokens + 120
        cost_max += onpolicy * (per_call_in * judge_price[0] + 60 * judge_price[1]) / 1e6
        cost_typical += onpolicy * (per_call_in * judge_price[0] + 60 * judge_price[1]) / 1e6  # repeats are cached

    # onpolicy: each micro-batch sends each prompt's jbond_n samples to the teacher in one scoring request
    mean_prompt = sum(prompt_tokens) / max(1, len(prompt_tokens))
    scoring = config.steps * config.batch_size * config.grad_accum if config.loss == "onpolicy" else 0
    scoring_tokens = int(scoring * config.jbond_n * (mean_prompt + config.jbond_max_new_tokens))
    if scoring and price is not None:  # every token is billed as input, plus one generated token per sample
        typical_tokens = scoring * config.jbond_n * (mean_prompt + config.jbond_max_new_tokens * TYPICAL_OUTPUT_SHARE)
        cost_max += (scoring_tokens * price[0] + scoring * config.jbond_n * price[1]) / 1e6
        cost_typical += (typical_tokens * price[0] + scoring * config.jbond_n * price[1]) / 1e6
    if scoring:
        onpolicy = scoring * config.jbond_n  # the student samples as in jbond (time below); no judge calls
        paid_judge = False

    params_m = _student_params_m(config.student)
    device = _device(config.device)
    response_tokens = config.max_tokens * TYPICAL_OUTPUT_SHARE
    pair_tokens = 2 * mean_prompt + 2 * response_tokens
    # policy fwd+bwd on chosen and rejected (6PT) + reference fwd on the chosen tokens (2PT)
    flops = (
        config.steps * config.batch_size * config.grad_accum * params_m * 1e6 * (6 * pair_tokens + 2 * response_tokens)
    )
    if onpolicy:  # sampling (a forward per generated token) + policy fwd/bwd and anchor fwd on the samples
        sample_tokens = mean_prompt + config.jbond_max_new_tokens * TYPICAL_OUTPUT_SHARE
        flops += (
            onpolicy * params_m * 1e6 * (2 * config.jbond_max_new_tokens * TYPICAL_OUTPUT_SHARE + 8 * sample_tokens)
        )
    cuda = device.startswith("cuda")
    seconds = flops / (GPU_EFFECTIVE_FLOPS if cuda else CPU_FLOPS_PER_CORE * max(1, os.cpu_count() or 1))
    shape = _student_shape(config.student, params_m)
    peak = training_peak(
        shape,
        quantization=config.quantization,
        cuda=cuda,
        engine="fast" if cuda and config.engine != "plain" else "plain",
        batch_size=config.batch_size,
        prompt_tokens=mean_prompt,
        response_tokens=response_tokens,
        lora_rank=config.lora_r,
        gradient_checkpointing=config.quantization is not None,
    )
    export_gb, export_parts, free_gb, warnings = _export_memory(config, shape)
    speed = _local_speed(config, teacher_spec) if calibrate and requests else None
    return Estimate(
        prompts=len(prompts),
        train_prompts=len(prompts) - heldout,
        heldout_prompts=heldout,
        teacher_requests=requests,
        cached_samples=cached,
        judge_requests=judge_requests,
        input_tokens=input_tokens,
        output_tokens_typical=out_typical,
        output_tokens_max=out_max,
        teacher_cost_typical=round(cost_typical, 6),
        teacher_cost_max=round(cost_max, 6),
        priced=price is not None and price != (0.0, 0.0),
        student_params_m=params_m,
        device=device,
        training_seconds=round(seconds, 1),
        memory_gb=round(peak.total / 1e9, 2),
        quantization=config.quantization,
        memory_breakdown=peak.to_dict(),
        onpolicy_judge_requests=onpolicy if paid_judge else 0,
        onpolicy_scoring_requests=scoring,
        onpolicy_scoring_tokens=scoring_tokens,
        teacher_only_cost_online=round(online_only, 6) if batch_cost is not None else None,
        teacher_only_cost_batch=batch_cost,
        batch=bool(config.batch),
        batch_wait=BATCH_WAIT if batch_cost is not None else None,
        export_memory_gb=export_gb,
        export_memory_breakdown=export_parts,
        available_memory_gb=free_gb,
        sampling_seconds=round(out_typical / speed.tokens_per_s, 1) if speed else None,
        sampling_throughput=speed.to_dict() if speed else None,
        warnings=warnings,
    )


def _local_speed(config: DistillConfig, teacher_spec: str) -> Throughput | None:
    """This machine's measured decoding speed for a local GGUF teacher (None for other teachers).

    The run decodes the ``n_samples`` candidates of a prompt as one batch, so that is the width
    measured. A spec that does not resolve is left to preflight to report.
    """
    from jupyter_distill.core.errors import DistillError
    from jupyter_distill.teachers import load_teacher
    from jupyter_distill.teachers.local import LlamaTeacher

    teacher: Any = config.teacher
    if isinstance(teacher, str):
        if not teacher_spec.startswith(("local:", "gguf:")):
            return None
        try:
            teacher = load_teacher(teacher_spec, policy="off")
        except DistillError:
            return None
    if not isinstance(teacher, LlamaTeacher):
        return None
    return local_throughput(teacher, config.n_samples)


def _export_memory(
    config: DistillConfig, shape: ModelShape
) -> tuple[float | None, dict[str, Any] | None, float | None, list[str]]:
    """Peak RAM of the merge/export step, what the machine has free, and a warning when it lacks it."""
    free = export_memory.available_memory()
    free_gb = round(free / 1e9, 2) if free is not None else None
    if config.quantize is None:
        return None, None, free_gb, []
    lora = config.lora_r * 2 * shape.layers * (4 * shape.hidden + 3 * (shape.hidden + shape.ffn))
    need = export_memory.export_peak(
        shape.params, shape.vocab, dtype=_student_dtype(config.student), lora_params=lora, available=free
    )
    warnings = []
    if free is not None and need.peak > free:
        warnings.append(
            f"the export needs ~{need.peak / 1e9:.1f} GB of RAM (merge {need.merge / 1e9:.1f} GB in "
            f"{need.stored_dtype}, fp32 agreement check {need.check / 1e9:.1f} GB in RAM) but {free / 1e9:.1f} GB are "
            "available: it would fail after the teacher was paid. Fix: free memory or use a larger machine, pick a "
            "smaller student, or set quantize=None and serve the adapter with the PEFT backend."
        )
    return round(need.peak / 1e9, 2), need.to_dict(), free_gb, warnings


def _student_dtype(student: str) -> str:
    """The dtype the student's weights are stored in: a local folder's config, fp32 for a student
    dequantized from a GGUF, else bf16 (what the map's Hub checkpoints ship)."""
    path = Path(student)
    if path.is_dir() and (path / "config.json").is_file():
        return export_memory.stored_dtype(json.loads((path / "config.json").read_text()))
    entry = STUDENT_MODEL_MAP.get(student)
    if path.suffix == ".gguf" or (entry is not None and entry.offline_source):
        return "float32"
    return "bfloat16"


def _tokens(messages: list[dict[str, str]]) -> int:
    return int(sum(len(m["content"]) / CHARS_PER_TOKEN + CHAT_OVERHEAD_TOKENS for m in messages))


def _cached_samples(config: DistillConfig, teacher_spec: str, prompts: list[Any]) -> int:
    """Samples already in the store for exactly these prompts, teacher and decoding params."""
    db = Path(config.workdir) / "runs.db"
    if not db.is_file() or not teacher_spec:
        return 0
    from jupyter_distill.sampling.stage import decoding_params, sample_key

    store = RunStore(config.workdir)
    params = decoding_params(config.temperature, config.max_tokens, config.seed)
    keys = [sample_key(p.hash, teacher_spec, params, index) for p in prompts for index in range(config.n_samples)]
    found = len(store.existing_sample_keys(keys))
    store.close()
    return found


def _student_params_m(student: str) -> float:
    if student in STUDENT_MODEL_MAP:
        return STUDENT_MODEL_MAP[student].params_m
    path = Path(student)
    if path.is_dir() and (path / "config.json").is_file():
        return shape_from_config(json.loads((path / "config.json").read_text())).params / 1e6
    if path.is_file() and path.suffix == ".gguf":
        return path.stat().st_size / 1e6 * 1.6  # ~5 bits per parameter in typical quantized files
    return 0.0


def _student_shape(student: str, params_m: float) -> ModelShape:
    """The map's shape, a local folder's ``config.json``, or (a bare GGUF) a llama-like shape of that size."""
    if student in STUDENT_SHAPES:
        return STUDENT_SHAPES[student]
    path = Path(student)
    if path.is_dir() and (path / "config.json").is_file():
        return shape_from_config(json.loads((path / "config.json").read_text()))
    hidden = 576 if params_m < 200 else 1024 if params_m < 700 else 2048 if params_m < 2500 else 4096
    layers = max(1, round(params_m * 1e6 / (12 * hidden * hidden)))
    return ModelShape(hidden, layers, max(1, hidden // 64), max(1, hidden // 256), 4 * hidden, 32000, True)


def _device(preference: str) -> str:
    if preference == "cpu":
        return f"cpu ({os.cpu_count()} cores)"
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda ({torch.cuda.get_device_name(0)})"
    except ImportError:
        pass
    return f"cpu ({os.cpu_count()} cores)"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _CallableModule(types.ModuleType):
    """Importing ``jupyter_distill.pipeline.estimate`` sets the package attribute ``estimate`` to this module,
    replacing the lazily exported function; calling the module calls the function, so
    ``jd.estimate(...)`` works whether or not something imported the module first."""

    def __call__(self, *args: Any, **kwargs: Any) -> Estimate:
        return estimate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
