"""``export: adapter``: LoRA GGUFs over one shared base GGUF, served by aliases over one loaded base."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_models import CHECK_PROMPTS, add_lora_adapter, build_tiny_llama

from jupyter_distill.core import runtime
from jupyter_distill.core.errors import AliasError
from jupyter_distill.export.gguf import ExportResult, export_adapter_gguf, export_gguf
from jupyter_distill.serving import gguf_backend, registry
from jupyter_distill.serving.student import Student, completion

PROMPTS = ["What is the capital of France?", "Classify: refund please 123", "Name: Ada, age 36"]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    runtime.release_all()


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two LoRAs on one tiny base: each exported as an adapter (shared base) and as a merged f16 GGUF."""
    root = tmp_path_factory.mktemp("adapters")
    base = build_tiny_llama(root / "base")
    out: dict[str, object] = {"root": root, "base": base}
    for seed in (1, 2):
        adapter = root / f"adapter{seed}"
        add_lora_adapter(base, adapter, seed=seed)
        out[f"adapter{seed}"] = export_adapter_gguf(
            adapter, root / f"lora{seed}", quantize="q8_0", shared_dir=root / "shared",
            check_prompts=CHECK_PROMPTS, check_tokens=8, name=f"a{seed}",
        )  # fmt: skip
        out[f"merged{seed}"] = export_gguf(
            adapter, root / f"merged{seed}", quantize="f16", check_prompts=CHECK_PROMPTS[:1], check_tokens=4
        )
    return out


def _answers(model: object) -> list[str]:
    return [completion(model, p, max_tokens=12, temperature=0.0).choices[0].message.content for p in PROMPTS]


def test_two_adapter_aliases_over_one_base_answer_like_their_merged_exports(two: dict) -> None:
    first, second = two["adapter1"], two["adapter2"]
    assert isinstance(first, ExportResult) and first.f16_gguf == second.f16_gguf  # one base file for both
    base = str(first.f16_gguf)
    for seed, result in ((1, first), (2, second)):
        registry.set_alias(f"a{seed}", backend="gguf", model_path=base, lora_path=result.files["gguf_lora"])
    registry.set_alias("plain", backend="gguf", model_path=base)
    served = {name: _answers(name) for name in ("a1", "plain", "a2", "a1")}  # switches back and forth
    assert runtime.loaded_models() == [str(Path(base).resolve())]  # one base in memory for three aliases
    assert gguf_backend.loaded_adapters(base) == sorted(
        str(r.files["gguf_lora"].resolve()) for r in (first, second)
    )  # each adapter loaded once onto it
    assert served["a1"] == _answers(two["merged1"].gguf)
    assert served["a2"] == _answers(two["merged2"].gguf)
    assert served["a1"] != served["a2"] != served["plain"]  # the adapters really change the answers
    resp = completion("a1", PROMPTS[0], max_tokens=4)
    assert resp._routing["lora_path"] == str(first.files["gguf_lora"].resolve())


def test_a_quantized_base_serves_the_adapter(two: dict) -> None:
    """quantize + export: adapter: the alias over the q8_0 base answers like the merged model on most tokens."""
    result = two["adapter1"]
    assert result.gguf.name.endswith(".q8_0.gguf") and result.agreement["q8_0"] >= 0.85, result.agreement
    student = Student.from_export(result, name="a1q")
    student.deploy("a1q")
    entry = registry.get_alias("a1q")
    assert entry["model_path"] == str(result.gguf) and entry["lora_path"] == str(result.files["gguf_lora"])
    assert all(isinstance(a, str) for a in _answers("a1q"))
    saved = Student.load(student.save(two["root"] / "saved-a1q"))
    assert saved.lora_path is not None and saved.lora_path.name == result.files["gguf_lora"].name
    assert _answers(saved) == _answers("a1q")


def test_adapter_aliases_hammered_from_several_threads_keep_their_answers(two: dict) -> None:
    base = str(two["adapter1"].f16_gguf)
    for seed in (1, 2):
        registry.set_alias(
            f"t{seed}", backend="gguf", model_path=base, lora_path=two[f"adapter{seed}"].files["gguf_lora"]
        )
    registry.set_alias("tplain", backend="gguf", model_path=base)
    expected = {name: _answers(name) for name in ("t1", "t2", "tplain")}
    got: list[tuple[str, list[str]]] = []
    errors: list[BaseException] = []

    def worker(order: tuple[str, ...]) -> None:
        try:
            for name in order * 2:
                got.append((name, _answers(name)))
        except BaseException as exc:
            errors.append(exc)

    orders = [("t1", "t2", "tplain"), ("t2", "tplain", "t1"), ("tplain", "t1", "t2"), ("t1", "t1", "t2")]
    threads = [threading.Thread(target=worker, args=(o,)) for o in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == sum(len(o) * 2 for o in orders)
    assert all(answers == expected[name] for name, answers in got)


def test_a_stream_over_an_adapter_gives_the_same_answer(two: dict) -> None:
    base = str(two["adapter2"].f16_gguf)
    registry.set_alias("s2", backend="gguf", model_path=base, lora_path=two["adapter2"].files["gguf_lora"])
    whole = completion("s2", PROMPTS[1], max_tokens=12).choices[0].message.content
    pieces = [c.choices[0].delta.get("content") or "" for c in completion("s2", PROMPTS[1], max_tokens=12, stream=True)]
    assert "".join(pieces) == whole
    assert _answers("s2") == _answers(two["merged2"].gguf)


def test_alias_refuses_a_lora_that_does_not_fit(two: dict, tmp_path: Path) -> None:
    base = two["adapter1"].f16_gguf
    with pytest.raises(AliasError) as info:  # a full model is not an adapter
        registry.set_alias("bad", backend="gguf", model_path=base, lora_path=two["merged1"].gguf)
    assert info.value.field == "lora_path" and "not a LoRA GGUF" in str(info.value)
    with pytest.raises(AliasError) as info:
        registry.set_alias("bad", backend="peft", model_path=two["root"] / "adapter1", lora_path=two["adapter1"].gguf)
    assert info.value.field == "lora_path"
    with pytest.raises(AliasError) as info:
        registry.set_alias("bad", backend="gguf", model_path=base, lora_path=tmp_path / "missing.gguf")
    assert info.value.field == "lora_path"
    with pytest.raises(AliasError) as info:
        registry.set_alias(
            "bad", backend="gguf", model_path=base, lora_path=two["adapter1"].files["gguf_lora"], lora_scale="x"
        )
    assert info.value.field == "lora_scale"
    assert "bad" not in registry.list_aliases()


def test_the_shared_base_is_content_addressed(tmp_path: Path) -> None:
    """The same base bytes in another folder reuse the same GGUF; another chat template makes another one."""
    import shutil

    from jupyter_distill.export.gguf import shared_base_gguf

    base = build_tiny_llama(tmp_path / "base")
    f16, same = shared_base_gguf(base, "f16", shared_dir=tmp_path / "shared")
    assert f16 == same and f16.is_file()
    written = f16.stat().st_mtime_ns
    copy = shutil.copytree(base, tmp_path / "elsewhere" / "base")
    again, _ = shared_base_gguf(copy, "f16", shared_dir=tmp_path / "shared")
    assert again == f16 and again.stat().st_mtime_ns == written  # found by content, not converted again
    other, _ = shared_base_gguf(copy, "f16", shared_dir=tmp_path / "shared", chat_template="{{ messages }}")
    assert other != f16
    with open(copy / "model.safetensors", "r+b") as handle:  # one changed byte of the weights
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    changed, _ = shared_base_gguf(copy, "f16", shared_dir=tmp_path / "shared")
    assert changed not in (f16, other)
    assert len(list((tmp_path / "shared").glob("*.f16.gguf"))) == 3


def test_distill_with_export_adapter_deploys_base_plus_lora(tmp_path: Path, openai_server, monkeypatch) -> None:
    """export='adapter' in a run: the alias points at the shared base + the run's LoRA, and the served
    figure is measured on that pair."""
    import jupyter_distill as jd
    from jupyter_distill.core.errors import ConfigError
    from jupyter_distill.core.store import RunStore
    from jupyter_distill.judging.verifiers import exact_match

    monkeypatch.setenv("JUPYTER_DISTILL_CACHE", str(tmp_path / "cache"))
    openai_server.responder = lambda body, index: body["messages"][-1]["content"].rsplit(" ", 1)[-1]
    options = dict(
        dataset=[{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(8)],
        teacher=openai_server.spec("test-model"),
        student=str(build_tiny_llama(tmp_path / "student")),
        judge=exact_match("expected"),
        n_samples=2, top_k=1, steps=2, batch_size=2, max_tokens=8,
        workdir=str(tmp_path / "wd"), name="ad",
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        jd.distill(export="adapter", quantize=None, **options)
    assert "export" in str(info.value)
    assert openai_server.requests_total == 0
    student = jd.distill(export="adapter", quantize="q8_0", alias="tiny-ad", **options)
    entry = registry.get_alias("tiny-ad")
    assert entry["model_path"].endswith(".q8_0.gguf") and entry["lora_path"].endswith(".lora.gguf")
    assert student.lora_path is not None and str(student.lora_path) == entry["lora_path"]
    artifacts = RunStore(tmp_path / "wd").get_artifacts("ad")
    assert {"gguf", "gguf_f16", "gguf_lora", "adapter", "model_card"} <= set(artifacts)
    summary = RunStore(tmp_path / "wd").get_run("ad")["summary"]
    assert summary["student_served"]["quantize"] == "q8_0" and summary["gguf_lora"] == entry["lora_path"]
    reply = completion("tiny-ad", "Repeat the number 3", max_tokens=4)
    assert reply._routing["lora_path"] == entry["lora_path"]
