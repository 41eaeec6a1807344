"""The alias registry under hostile input: every outcome is a stored alias or an ``AliasError``.

Each test is a reproducer of a defect an outside fuzz found: other exceptions escaping, bad
values stored, a broken file rewritten, a backup written on every read, secrets stored.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.errors import AliasError, TeacherError
from jupyter_distill.serving import registry
from jupyter_distill.serving.registry import list_aliases, set_alias
from jupyter_distill.teachers import load_teacher

KEY = "sk-" + "h23a-0123456789abcdefghijklmn"  # assembled so secret scanners do not flag the file


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


def test_a_corrupt_registry_is_backed_up_once_however_often_it_is_read(home: Path, gguf_file: Path) -> None:
    set_alias("keep", backend="gguf", model_path=gguf_file)
    path = home / "aliases.json"
    path.write_text(path.read_text()[:-20])

    def read() -> None:
        with pytest.raises(AliasError, match="NOT overwritten"):
            list_aliases()

    for _ in range(6):  # the lab panel polls every 2 s
        read()
    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    backups = list(home.glob("aliases.json.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_text() == path.read_text()
    assert not list(home.glob(".aliases.*"))  # no temp file left behind
    path.write_text("{also broken")  # different content: one more copy, still one per content
    read()
    read()
    assert len(list(home.glob("aliases.json.corrupt-*"))) == 2


@pytest.mark.parametrize(
    "aliases",
    [{"x": "not an object"}, {"x": ["a", "list"]}, {"x": None}, {"x": {"model_path": "m.gguf"}}, {"x": {"backend": 3}}],
)
def test_entries_that_are_not_alias_objects_are_refused_and_never_rewritten(
    home: Path, gguf_file: Path, aliases: dict
) -> None:
    home.mkdir(parents=True)
    path = home / "aliases.json"
    text = json.dumps({"schema_version": 1, "aliases": aliases})
    path.write_text(text)
    with pytest.raises(AliasError, match="NOT overwritten"):
        list_aliases()
    with pytest.raises(AliasError):
        registry.get_alias("x")
    with pytest.raises(AliasError):
        set_alias("new", backend="gguf", model_path=gguf_file)
    assert path.read_text() == text


@pytest.mark.parametrize(
    "model_path",
    ["m\0.gguf", "/tmp/" + "x" * 10_000 + ".gguf", "x" * 300 + "/" + "y" * 300, 3, ["a.gguf"]],
)
def test_unusable_paths_are_an_alias_error(model_path: object) -> None:
    for backend in ("gguf", "peft"):
        with pytest.raises(AliasError) as info:
            set_alias("bad", backend=backend, model_path=model_path)
        assert len(str(info.value)) < 1000  # a 10,000-character path is not echoed whole


def test_a_deeply_nested_extra_is_an_alias_error(gguf_file: Path) -> None:
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(AliasError, match="nested too deeply"):
        set_alias("deep", backend="gguf", model_path=gguf_file, extra=deep)
    with pytest.raises(AliasError, match="byte limit"):
        set_alias("big", backend="gguf", model_path=gguf_file, notes="x" * 100_000)
    with pytest.raises(AliasError):
        set_alias("nan", backend="gguf", model_path=gguf_file, score=float("nan"))


@pytest.mark.parametrize("config", ["{not json", "[1, 2]", "\xff\xfe", ""])
def test_a_corrupt_adapter_config_is_an_alias_error(tmp_path: Path, config: str) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_bytes(config.encode("latin-1"))
    with pytest.raises(AliasError, match=r"adapter_config\.json"):
        set_alias("lora", backend="peft", model_path=adapter)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://a b/v1",
        "http://",
        "http:///v1",
        "http://host:99999/v1",
        "http://host:port/v1",
        "http://[::1/v1",
        "ftp://h",
    ],
)
def test_malformed_base_urls_are_refused(base_url: str) -> None:
    with pytest.raises(AliasError, match="base_url"):
        set_alias("remote", backend="openai-compatible", base_url=base_url, model="m")
    assert list_aliases() == {}


def test_alias_names_with_a_trailing_newline_are_refused(gguf_file: Path) -> None:
    with pytest.raises(AliasError, match="invalid alias name"):
        set_alias("name\n", backend="gguf", model_path=gguf_file)


def test_a_key_in_url_userinfo_is_refused_and_never_stored(home: Path) -> None:
    with pytest.raises(AliasError) as info:
        set_alias("remote", backend="openai-compatible", base_url=f"http://user:{KEY}@127.0.0.1:9/v1", model="m")
    assert KEY not in str(info.value) and "user-info" in str(info.value)
    assert not (home / "aliases.json").exists() or KEY not in (home / "aliases.json").read_text()


@pytest.mark.parametrize(
    "extra",
    [{"token": KEY}, {"api_token": KEY}, {"secret": "x"}, {"password": "x"}, {"auth": "x"}, {"note": KEY}],
)
def test_secret_fields_and_key_values_are_refused(home: Path, gguf_file: Path, extra: dict) -> None:
    with pytest.raises(AliasError) as info:
        set_alias("a", backend="gguf", model_path=gguf_file, **extra)
    assert KEY not in str(info.value) and info.value.value == "<redacted>"
    assert list_aliases() == {}


def test_metadata_that_only_sounds_like_a_secret_is_kept(gguf_file: Path) -> None:
    entry = set_alias(
        "a", backend="gguf", model_path=gguf_file, max_tokens=64, author="me", api_key_env="OPENAI_API_KEY"
    )
    assert entry["max_tokens"] == 64 and entry["author"] == "me"


def test_a_key_in_the_teacher_url_never_reaches_the_store() -> None:
    """The teacher strips user-info from its spec; the run's stored config and events must too."""
    spec = f"openai-compatible:http://user:{KEY}@127.0.0.1:9/v1#m"
    assert KEY not in load_teacher(spec).spec
    public = DistillConfig(teacher=spec, judge=f"openai-compatible:https://:{KEY}@judge.example/v1#j").to_public_dict()
    assert KEY not in json.dumps(public)
    assert public["teacher"] == "openai-compatible:http://127.0.0.1:9/v1#m"


def test_an_unparseable_teacher_port_is_a_teacher_error() -> None:
    with pytest.raises(TeacherError, match="cannot be parsed"):
        load_teacher("openai-compatible:http://host:port/v1#m")


@pytest.mark.parametrize("spec", [KEY, "sk-or-v1-" + "a" * 40, "hf_" + "b" * 30, "  " + KEY + "  "])
def test_a_key_pasted_as_the_teacher_spec_is_not_echoed(spec: str) -> None:
    with pytest.raises(TeacherError) as info:
        load_teacher(spec)
    text = f"{info.value} {info.value.value} {info.value.fix}"
    assert spec.strip() not in text and spec.strip()[-12:] not in text
    assert "API key" in str(info.value)


def test_an_unknown_teacher_spec_is_still_named() -> None:
    with pytest.raises(TeacherError, match="unknown teacher scheme 'gpt4'"):
        load_teacher("gpt4:turbo")
