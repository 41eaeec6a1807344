"""The alias registry: validation, atomic writes under a cross-process lock, corrupt files kept."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from jupyter_distill.core.errors import AliasError
from jupyter_distill.serving import registry
from jupyter_distill.serving.registry import get_alias, list_aliases, set_alias, unset_alias


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(folder))
    return folder


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def test_env_override_and_default_location(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert registry.registry_path() == home / "aliases.json"
    monkeypatch.delenv("JUPYTER_DISTILL_HOME")
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jdata"))
    assert registry.registry_path() == tmp_path / "jdata" / "distill" / "aliases.json"


def test_set_get_list_unset_round_trip(home: Path, gguf_file: Path) -> None:
    entry = set_alias("ticket-classifier", backend="gguf", model_path=gguf_file, note="v1", metrics={"pass@1": 0.9})
    assert entry["model_path"] == str(gguf_file.resolve()) and entry["note"] == "v1"
    got = get_alias("ticket-classifier")
    assert got["backend"] == "gguf" and got["name"] == "ticket-classifier" and got["metrics"] == {"pass@1": 0.9}
    doc = json.loads((home / "aliases.json").read_text())
    assert doc["schema_version"] == registry.SCHEMA_VERSION and "ticket-classifier" in doc["aliases"]
    created = got["created_at"]
    set_alias("ticket-classifier", backend="gguf", model_path=gguf_file, note="v2")
    again = get_alias("ticket-classifier")
    assert again["note"] == "v2" and again["created_at"] == created and again["updated_at"] >= created
    set_alias("a.b_c-1", backend="openai-compatible", base_url="http://127.0.0.1:9/v1/", model="m")
    assert list(list_aliases()) == ["a.b_c-1", "ticket-classifier"]
    assert get_alias("a.b_c-1")["base_url"] == "http://127.0.0.1:9/v1"
    assert unset_alias("ticket-classifier") is True and unset_alias("ticket-classifier") is False
    assert list(list_aliases()) == ["a.b_c-1"]


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "with space", "", ".", "..", "x" * 200, "naïve", None])
def test_names_are_validated(name: object, gguf_file: Path) -> None:
    with pytest.raises(AliasError) as info:
        set_alias(name, backend="gguf", model_path=gguf_file)  # type: ignore[arg-type]
    assert info.value.field == "name"
    assert not registry.registry_path().exists()


def test_entries_are_validated(tmp_path: Path, gguf_file: Path) -> None:
    with pytest.raises(AliasError, match="unknown backend 'vllm'"):
        set_alias("x", backend="vllm", model_path=gguf_file)
    with pytest.raises(AliasError, match="needs model_path"):
        set_alias("x", backend="gguf")
    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(AliasError, match="is not a GGUF file") as info:
        set_alias("x", backend="gguf", model_path=not_gguf)
    assert info.value.field == "model_path"
    with pytest.raises(AliasError, match="is not a GGUF file"):
        set_alias("x", backend="gguf", model_path=tmp_path / "missing.gguf")
    with pytest.raises(AliasError, match="never stores an API key"):
        set_alias("x", backend="openai-compatible", base_url="http://h/v1", model="m", api_key="sk-secret")
    with pytest.raises(AliasError, match="NAME of an environment variable") as info:
        set_alias("x", backend="openai-compatible", base_url="http://h/v1", model="m", api_key_env="sk-live abc")
    assert "sk-live" not in str(info.value)
    with pytest.raises(AliasError, match="base_url"):
        set_alias("x", backend="openai-compatible", base_url="ftp://h", model="m")
    with pytest.raises(AliasError, match="cannot be stored in JSON"):
        set_alias("x", backend="gguf", model_path=gguf_file, thing=object())
    with pytest.raises(AliasError, match="adapter or HF model folder"):
        set_alias("x", backend="peft", model_path=tmp_path)
    assert list_aliases() == {}


def test_peft_alias_reads_base_from_adapter_config(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    entry = set_alias("p", backend="peft", model_path=adapter)
    assert entry["base_model"] == str(base.resolve()) and entry["model_path"] == str(adapter.resolve())
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "some/hub-id"}))
    with pytest.raises(AliasError, match="base_model"):
        set_alias("q", backend="peft", model_path=adapter)


def test_unknown_alias_lists_known_ones(gguf_file: Path) -> None:
    set_alias("alpha", backend="gguf", model_path=gguf_file)
    set_alias("beta", backend="gguf", model_path=gguf_file)
    with pytest.raises(AliasError) as info:
        get_alias("gamma")
    assert "'gamma'" in str(info.value) and "alpha, beta" in str(info.value)


def test_corrupt_file_gives_clear_error_and_is_backed_up_not_wiped(home: Path, gguf_file: Path) -> None:
    set_alias("keep", backend="gguf", model_path=gguf_file)
    path = home / "aliases.json"
    broken = path.read_text()[:-20]  # a truncated write by some other tool
    path.write_text(broken)
    with pytest.raises(AliasError) as info:
        list_aliases()
    message = str(info.value)
    assert str(path) in message and "NOT overwritten" in message and ".corrupt-" in message
    backups = sorted(home.glob("aliases.json.corrupt-*"))
    assert backups and backups[0].read_text() == broken
    with pytest.raises(AliasError):
        set_alias("new", backend="gguf", model_path=gguf_file)
    assert path.read_text() == broken  # a write never replaces what it could not read
    path.write_text(json.dumps(["not", "a", "registry"]))
    with pytest.raises(AliasError, match="no 'aliases' object"):
        get_alias("keep")


def test_newer_schema_is_refused_not_rewritten(home: Path, gguf_file: Path) -> None:
    home.mkdir(parents=True)
    doc = {"schema_version": registry.SCHEMA_VERSION + 1, "aliases": {}}
    (home / "aliases.json").write_text(json.dumps(doc))
    with pytest.raises(AliasError, match="upgrade jupyter-distill"):
        set_alias("x", backend="gguf", model_path=gguf_file)
    assert json.loads((home / "aliases.json").read_text()) == doc


def _writer(worker: int, count: int) -> None:
    for i in range(count):
        set_alias(f"w{worker}-{i}", backend="openai-compatible", base_url="http://127.0.0.1:9/v1", model=f"m{i}")
        if i % 5 == 4:
            unset_alias(f"w{worker}-{i}")


def test_four_processes_lose_no_alias(home: Path) -> None:
    workers, count = 4, 30
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(w, count)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    expected = {f"w{w}-{i}" for w in range(workers) for i in range(count) if i % 5 != 4}
    assert set(list_aliases()) == expected
    leftovers = [f for f in os.listdir(home) if f.endswith(".tmp")]
    assert leftovers == []
