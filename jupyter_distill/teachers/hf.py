"""``hf:PATH``: a local transformers model folder as teacher.

For teachers that exist only as safetensors (a fine-tuned checkpoint of your own, a model you
downloaded once). transformers and torch are imported on first use, so loading the package and
re-runs served from the store stay fast. The folder is loaded once per process and guarded by a
lock; candidates are generated one by one with ``torch.manual_seed(seed + i)`` so candidate ``i``
can be regenerated on its own, like the GGUF teacher.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

from jupyter_distill.core.errors import TeacherError
from jupyter_distill.core.policy import PolicyDecision, PolicyMode, decide
from jupyter_distill.teachers.base import FatalTeacherError, ParsedSpec, Sample, check_sample_args, local_provenance

HF_OPTIONS = ("device", "licence", "dtype")
_loaded: dict[tuple[str, str], tuple[Any, Any]] = {}
_load_lock = threading.Lock()
_generate_locks: dict[tuple[str, str], threading.Lock] = {}


def folder_licence(folder: Path) -> str:
    """The ``license:`` of a model card's YAML front matter, or '' when there is none."""
    card = folder / "README.md"
    if not card.is_file():
        return ""
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return ""
    front = text[3:].split("\n---", 1)[0]
    match = re.search(r"^licen[cs]e:\s*['\"]?([^'\"\n]+)", front, re.MULTILINE)
    return match.group(1).strip() if match else ""


class HFTeacher:
    """A transformers causal LM sampled in-process; costs nothing and needs no key."""

    def __init__(self, *, spec: str, path: Path, decision: PolicyDecision, device: str = "auto", dtype: str = "auto"):
        self.spec = spec
        self.model = path.name
        self.path = path
        self.decision = decision
        self.provider = decision.provider
        self.endpoint = f"transformers:{path.name}"
        self.device = device
        self.dtype = dtype
        self.concurrency = 1
        self.requests_sent = 0
        self.spent = 0.0

    def __repr__(self) -> str:
        return f"HFTeacher(spec={self.spec!r})"

    def _resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _load(self) -> tuple[Any, Any, threading.Lock]:
        device = self._resolved_device()
        key = (str(self.path), device)
        with _load_lock:
            if key not in _loaded:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer

                dtype: Any = self.dtype
                if dtype == "auto":
                    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
                elif isinstance(dtype, str):
                    dtype = getattr(torch, dtype)
                try:  # safetensors only, never remote code: a pickle or an auto_map can run anything
                    tokenizer = AutoTokenizer.from_pretrained(str(self.path), trust_remote_code=False)
                    model = AutoModelForCausalLM.from_pretrained(
                        str(self.path), dtype=dtype, use_safetensors=True, trust_remote_code=False
                    ).to(device)
                except Exception as exc:  # transformers raises OSError, ValueError, pickle errors...
                    raise FatalTeacherError(
                        f"teacher {self.spec}: transformers cannot load {str(self.path)!r}: {exc}. Fix: point hf: at "
                        "a folder with config.json, weights and a tokenizer.",
                        field="teacher",
                        value=self.spec,
                    ) from None
                model.eval()
                _loaded[key] = (model, tokenizer)
                _generate_locks[key] = threading.Lock()
            model, tokenizer = _loaded[key]
            return model, tokenizer, _generate_locks[key]

    def _generate(
        self, messages: list[dict[str, Any]], temperature: float, max_tokens: int, seed: int
    ) -> tuple[str, dict[str, int], str, float]:
        import torch

        model, tokenizer, lock = self._load()
        if getattr(tokenizer, "chat_template", None):
            prompt_ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
        else:  # a base model: plain concatenation of the contents
            text = "\n".join(str(m.get("content", "")) for m in messages)
            prompt_ids = tokenizer(text, return_tensors="pt")["input_ids"]
        prompt_ids = prompt_ids.to(model.device)
        with lock, torch.inference_mode():
            started = time.monotonic()
            torch.manual_seed(seed)
            kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": temperature > 0}
            if temperature > 0:
                kwargs["temperature"] = temperature
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            output = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), pad_token_id=pad, **kwargs)
            seconds = time.monotonic() - started
        new_tokens = output[0, prompt_ids.shape[1] :]
        eos = tokenizer.eos_token_id
        finish = "stop" if eos is not None and len(new_tokens) and int(new_tokens[-1]) == eos else "length"
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        usage = {
            "prompt_tokens": int(prompt_ids.shape[1]),
            "completion_tokens": int(new_tokens.shape[0]),
            "total_tokens": int(prompt_ids.shape[1] + new_tokens.shape[0]),
        }
        return text, usage, finish, seconds

    async def sample(
        self,
        messages: list[dict[str, Any]],
        n: int = 4,
        temperature: float = 0.8,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> list[Sample]:
        """``n`` candidates, candidate ``i`` generated with ``torch.manual_seed(seed + i)``."""
        check_sample_args(n, temperature, max_tokens)
        base = seed if seed is not None else random.randrange(2**31 - n)
        samples = []
        for i in range(n):
            text, usage, finish, seconds = await asyncio.to_thread(
                self._generate, messages, temperature, max_tokens, base + i
            )
            self.requests_sent += 1
            samples.append(
                Sample(
                    text=text,
                    usage=usage,
                    cost=0.0,
                    finish_reason=finish,
                    provenance=local_provenance(
                        self,
                        {"temperature": temperature, "max_tokens": max_tokens, "seed": base + i},
                        usage,
                        seconds,
                        "transformers",
                    ),
                )
            )
        return samples

    async def aclose(self) -> None:
        """Nothing to close: the loaded model stays cached for the process."""


def build_hf_teacher(
    parsed: ParsedSpec, *, policy: PolicyMode = "strict", authorization: str | None = None, **options: Any
) -> HFTeacher:
    """Check the folder and decide the policy; the model loads on first use."""
    unknown = sorted(set(options) - set(HF_OPTIONS))
    if unknown:
        raise TeacherError(
            f"unknown option {unknown[0]!r} for teacher 'hf:{parsed.target}'. Known options: {', '.join(HF_OPTIONS)}.",
            field=unknown[0],
            value=unknown[0],
        )
    path = Path(parsed.target).expanduser()
    if not (path / "config.json").is_file():
        raise TeacherError(
            f"teacher 'hf:{parsed.target}': {str(path)!r} is not a transformers model folder (no config.json). "
            "Fix: point hf: at a folder saved with save_pretrained, or use 'gguf:PATH' for a GGUF file.",
            field="teacher",
            value=f"hf:{parsed.target}",
        )
    if not any(path.glob("*.safetensors")):
        raise TeacherError(
            f"teacher 'hf:{parsed.target}': {str(path)!r} has no *.safetensors weights. jupyter-distill loads only "
            "safetensors (pickled .bin weights can run code when loaded). Fix: re-save the model with "
            "save_pretrained(folder, safe_serialization=True) in a trusted environment.",
            field="teacher",
            value=f"hf:{parsed.target}",
        )
    path = path.resolve()
    licence = str(options.get("licence") or folder_licence(path) or "unknown (no licence in the model card)")
    decision = decide("local", path.name, mode=policy, authorization=authorization, licence=licence)
    return HFTeacher(
        spec=f"hf:{path}",
        path=path,
        decision=decision,
        device=str(options.get("device", "auto")),
        dtype=options.get("dtype", "auto"),
    )
