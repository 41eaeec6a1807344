"""The ``peft`` backend: a chat completion from a PEFT adapter on its base model, or a plain HF folder.

transformers loads safetensors only and never runs ``trust_remote_code``. Loaded models stay in a
per-process LRU cache (:data:`_HF_CACHE`, bounded by ``runtime.MAX_LOADED``) shared by every
thread: a model is loaded once however many threads ask for it, and generation holds the model's
lock so two threads never interleave inside one model.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jupyter_distill.core import runtime
from jupyter_distill.core.errors import AliasError
from jupyter_distill.serving import registry
from jupyter_distill.serving.response import Messages, model_name


class _HFModel:
    """A loaded transformers model (with its adapter) and the lock to hold while generating."""

    def __init__(self, model: Any, tokenizer: Any, device: str):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.lock = threading.RLock()


_HF_CACHE: OrderedDict[tuple[str, str | None], _HFModel] = OrderedDict()
_HF_CACHE_LOCK = threading.Lock()
_HF_LOAD_LOCK = threading.Lock()
HF_LOAD_COUNT: dict[tuple[str, str | None], int] = {}


def _require_safetensors(folder: Path, what: str) -> None:
    if not any(folder.glob("*.safetensors")):
        raise AliasError(
            f"{what} {str(folder)!r} has no .safetensors weights; pickle (.bin) weights are never loaded. "
            "Fix: re-save it with safe_serialization=True.",
            field="model_path",
            value=str(folder),
        )


def _load_hf(model_path: str, base_model: str | None) -> _HFModel:
    """Load (once per process, LRU-bounded) an adapter on its base, or a plain HF folder."""
    key = (model_path, base_model)
    with _HF_CACHE_LOCK:
        if key in _HF_CACHE:
            _HF_CACHE.move_to_end(key)
            return _HF_CACHE[key]
    with _HF_LOAD_LOCK:
        with _HF_CACHE_LOCK:
            if key in _HF_CACHE:
                return _HF_CACHE[key]
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        folder = Path(model_path)
        is_adapter = (folder / "adapter_config.json").is_file()
        if is_adapter and not base_model:
            named = registry.adapter_base_model(folder)
            if not named or not (Path(named) / "config.json").is_file():
                raise AliasError(
                    f"the adapter {str(folder)!r} names base model {named!r}, which is not a local HF folder. "
                    "Fix: pass base_model=<the local folder it was trained on> (no hub downloads at serve time).",
                    field="base_model",
                    value=named,
                )
            base_model = named
        weights_folder = Path(base_model) if is_adapter and base_model else folder
        _require_safetensors(weights_folder, "model folder")
        model = AutoModelForCausalLM.from_pretrained(
            str(weights_folder), dtype=dtype, trust_remote_code=False, use_safetensors=True
        )
        if is_adapter:
            from peft import PeftModel

            _require_safetensors(folder, "adapter folder")
            model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        model.to(device).eval()
        tok_src = folder if (folder / "tokenizer_config.json").is_file() else weights_folder
        tokenizer = AutoTokenizer.from_pretrained(str(tok_src), trust_remote_code=False)
        loaded = _HFModel(model, tokenizer, device)
        HF_LOAD_COUNT[key] = HF_LOAD_COUNT.get(key, 0) + 1
        with _HF_CACHE_LOCK:
            _HF_CACHE[key] = loaded
            while len(_HF_CACHE) > runtime.MAX_LOADED:
                _HF_CACHE.popitem(last=False)
        return loaded


def loaded_models() -> list[str]:
    """Every model loaded in this process: GGUF files and PEFT/HF folders."""
    with _HF_CACHE_LOCK:
        hf = [path if base is None else f"{path} (on {base})" for path, base in _HF_CACHE]
    return [*runtime.loaded_models(), *hf]


def release_all() -> None:
    """Drop every cached model (tests, freeing memory in a long kernel)."""
    runtime.release_all()
    with _HF_CACHE_LOCK:
        _HF_CACHE.clear()


def _hf_generate(
    loaded: _HFModel, msgs: Messages, max_tokens: int, temperature: float, kw: dict[str, Any]
) -> Iterator[tuple[str, str | None, dict[str, int]]]:
    """Yield (text delta, finish_reason or None, usage) one token at a time.

    One loop serves both streamed and whole answers, so the chunks of a stream always
    concatenate to exactly the non-streamed text. Deltas are cut on whole characters: a token
    that ends inside a UTF-8 sequence waits for the next one.
    """
    import torch

    tok, model = loaded.tokenizer, loaded.model
    if tok.chat_template:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
    else:
        prompt = tok("\n".join(str(m["content"]) for m in msgs))["input_ids"]
    eos = model.generation_config.eos_token_id
    stop_ids = {*(eos if isinstance(eos, list) else [eos]), tok.eos_token_id} - {None}
    top_p = float(kw.get("top_p", 1.0))
    generator = torch.Generator(device=loaded.device)
    if kw.get("seed") is not None:
        generator.manual_seed(int(kw["seed"]))
    usage = {"prompt_tokens": len(prompt), "completion_tokens": 0, "total_tokens": len(prompt)}
    generated: list[int] = []
    emitted = ""
    past = None
    current = torch.tensor([prompt], device=loaded.device)
    finish = "length"
    with loaded.lock, torch.inference_mode():
        for _ in range(max_tokens):
            out = model(input_ids=current, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1].float()
            if temperature <= 0:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                if top_p < 1.0:
                    sorted_p, order = probs.sort(descending=True)
                    keep = sorted_p.cumsum(0) - sorted_p < top_p
                    probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
                token = int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
            if token in stop_ids:
                finish = "stop"
                break
            generated.append(token)
            usage["completion_tokens"] += 1
            usage["total_tokens"] += 1
            text = tok.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            if text.endswith("\ufffd") or not text.startswith(emitted):
                current = torch.tensor([[token]], device=loaded.device)
                continue
            delta, emitted = text[len(emitted) :], text
            if delta:
                yield delta, None, dict(usage)
            current = torch.tensor([[token]], device=loaded.device)
    yield "", finish, dict(usage)


def hf_completion(
    route: dict[str, Any], msgs: Messages, max_tokens: int, temperature: float, stream: bool, kw: dict[str, Any]
) -> Any:
    loaded = _load_hf(route["model_path"], route.get("base_model"))
    name = model_name(route)
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if not stream:
        parts: list[str] = []
        finish: str = "length"
        usage: dict[str, int] = {}
        for delta, fin, step_usage in _hf_generate(loaded, msgs, max_tokens, temperature, kw):
            parts.append(delta)
            finish, usage = fin or finish, step_usage
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts)},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
            "_cost": 0.0,
        }

    def chunks() -> Iterator[dict[str, Any]]:
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name, "_cost": 0.0}
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        for delta, fin, _usage in _hf_generate(loaded, msgs, max_tokens, temperature, kw):
            if fin is None:
                yield {**base, "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}]}
            else:
                yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": fin}]}

    return chunks()


__all__ = ["HF_LOAD_COUNT", "hf_completion", "loaded_models", "release_all"]
