"""Property-based fuzz of the alias registry and the REST handlers, on a bounded budget.

Every outcome must be a clean result or the documented error: an ``AliasError`` from the
registry, an HTTP 2xx or a 4xx with a JSON body from the server. Never another exception, never a
500, never a server path or a traceback in an error body, never a broken registry rewritten.
Budget: about 430 cases (see each ``max_examples``); ``derandomize=True`` makes a run repeatable.
Outcome counts print with ``pytest -s``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from distill_server_fixtures import build_fixture_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from jupyter_distill.core.errors import AliasError
from jupyter_distill.serving import registry

pytest_plugins = ["pytest_jupyter.jupyter_server"]

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
PROTECTED = {"remote", "broken", "tiny"}  # aliases the REST fuzz needs; DELETE fuzzing spares them

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
nasty_text = (
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from(["\0", "\n", "/", "\\"]),
        max_size=40,
    )
    | st.builds(lambda n, c: c * n, st.integers(0, 12_000), st.sampled_from(["x", "/", "é"]))
    | st.sampled_from(["..", ".", "../etc/passwd"])
)


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


# ------------------------------------------------------------------------------------ registry


@pytest.fixture
def registry_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="distill-fuzz-"))
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(folder / "home"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _reset(home: Path) -> None:
    shutil.rmtree(home, ignore_errors=True)


def test_fuzz_set_alias(registry_home: Path) -> None:
    gguf = registry_home / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    hf = registry_home / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    home = registry_home / "home"
    outcomes: Counter[str] = Counter()

    # A valid call for each backend, then one or two of its fields replaced by hostile values.
    valid = st.sampled_from(
        [
            {"name": "ok", "backend": "gguf", "model_path": str(gguf), "base_model": None, "extra": {}},
            {"name": "ok-2", "backend": "peft", "model_path": str(hf), "base_model": None, "extra": {"note": "v1"}},
            {
                "name": "a.b_c",
                "backend": "openai-compatible",
                "model_path": None,
                "base_model": None,
                "extra": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "OPENAI_API_KEY"},
            },
        ]
    )
    paths = st.sampled_from([str(gguf), str(hf), str(registry_home / "missing.gguf")]) | nasty_text | json_scalars
    hostile = {
        "name": nasty_text | json_scalars,
        "backend": st.sampled_from(registry.BACKENDS) | st.text(max_size=10) | json_scalars,
        "model_path": paths,
        "base_model": st.none() | paths,
        "extra": st.dictionaries(
            st.sampled_from(["note", "base_url", "model", "api_key_env", "token", "n_ctx"]) | st.text(max_size=12),
            json_values | nasty_text | st.integers(0, 6000).map(_deep),
            max_size=3,
        ),
    }
    cases = st.builds(
        lambda case, changes: {**case, **changes},
        valid,
        st.lists(st.sampled_from(sorted(hostile)), max_size=2, unique=True).flatmap(
            lambda keys: st.fixed_dictionaries({key: hostile[key] for key in keys})
        ),
    )

    @settings(FUZZ, max_examples=120)
    @given(case=cases)
    def run(case: dict[str, Any]) -> None:
        _reset(home)
        name, backend, extra = case["name"], case["backend"], case["extra"]
        try:
            entry = registry.set_alias(
                name, backend=backend, model_path=case["model_path"], base_model=case["base_model"], **extra
            )
        except AliasError as exc:
            assert len(str(exc)) < 4000
            outcomes["AliasError"] += 1
            return
        assert isinstance(entry, dict)
        assert registry.get_alias(name)["backend"] == backend  # what was stored reads back
        outcomes["stored"] += 1

    run()
    print(f"\nfuzz set_alias: {sum(outcomes.values())} cases, {dict(outcomes)}")
    assert outcomes["stored"] and outcomes["AliasError"]


def test_fuzz_registry_file_contents(registry_home: Path) -> None:
    home = registry_home / "home"
    gguf = registry_home / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    outcomes: Counter[str] = Counter()
    entries = json_values | st.fixed_dictionaries(
        {"backend": st.sampled_from(registry.BACKENDS)}, optional={"model_path": st.text(max_size=20), "x": json_values}
    )
    documents = st.builds(
        lambda aliases, version: {"schema_version": version, "aliases": aliases},
        st.dictionaries(st.text(max_size=8), entries, max_size=3),
        st.sampled_from([1, 1, 1, 0, 2, "1", None, True]),
    ).map(json.dumps) | json_values.map(json.dumps)
    contents = documents.map(str.encode) | st.binary(max_size=200)

    @settings(FUZZ, max_examples=80)
    @given(content=contents)
    def run(content: bytes) -> None:
        _reset(home)
        home.mkdir(parents=True)
        path = home / "aliases.json"
        path.write_bytes(content)
        results = []
        for _ in range(3):  # repeated reads, as the lab panel polls
            try:
                results.append(sorted(registry.list_aliases()))
            except AliasError:
                results.append("AliasError")
        assert len(set(map(str, results))) == 1
        try:
            registry.set_alias("new", backend="gguf", model_path=gguf)
            written = True
        except AliasError:
            written = False
        if results[0] == "AliasError":
            assert not written and path.read_bytes() == content  # never rewritten
            assert len(list(home.glob("aliases.json.corrupt-*"))) <= 1  # one copy, however many reads
        outcomes["read" if results[0] != "AliasError" else "AliasError"] += 1

    run()
    print(f"\nfuzz aliases.json: {sum(outcomes.values())} cases, {dict(outcomes)}")
    assert outcomes["AliasError"]


# ------------------------------------------------------------------------------------ REST


@pytest.fixture
def server_paths(tmp_path: Path) -> list[str]:
    return [str(tmp_path), os.path.expanduser("~"), str(Path(tempfile.gettempdir()) / "pytest-of-")]


@pytest.fixture
def jp_server_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openai_server: Any) -> dict[str, Any]:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "alias-home"))
    build_fixture_store(tmp_path / "workdir")
    gguf = tmp_path / "models" / "broken.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 60)  # passes the registry, fails in llama.cpp
    registry.set_alias("broken", backend="gguf", model_path=gguf)
    registry.set_alias("remote", backend="openai-compatible", base_url=openai_server.url, model="m")
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_distill": True}},
        "DistillServer": {"workdir": str(tmp_path / "workdir")},
    }


@pytest.fixture
def fetch(jp_serverapp: Any, http_server_client: Any, jp_http_port: int, jp_base_url: str, jp_asyncio_loop: Any) -> Any:
    """A synchronous raw request (the path is sent as given) on the server's own loop."""
    token = jp_serverapp.identity_provider.token
    client = AsyncHTTPClient()

    def run(path: str, method: str = "GET", body: bytes | None = None) -> HTTPResponse:
        url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}jupyter-distill/{path}"
        request = client.fetch(
            url,
            method=method,
            body=body,
            headers={"Authorization": f"token {token}"},
            raise_error=False,
            request_timeout=60,
            allow_nonstandard_methods=True,
        )
        return jp_asyncio_loop.run_until_complete(request)

    return run


def _check(response: HTTPResponse, outcomes: Counter[str], server_paths: list[str]) -> None:
    code = response.code
    assert code in (200, 204) or 400 <= code < 500, (code, response.body[:300])
    outcomes[str(code)] += 1
    if code >= 400:
        text = response.body.decode("utf-8")
        assert response.headers["Content-Type"].startswith("application/json")
        json.loads(text)
        assert "Traceback" not in text and 'File "' not in text
        for path in server_paths:
            assert path not in text, (path, text[:300])


def _request_with_fields(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    return {**base, **changes}


def test_fuzz_chat_completions(fetch: Any, server_paths: list[str]) -> None:
    outcomes: Counter[str] = Counter()
    base = {"model": "remote", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    fields = st.sampled_from(
        ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "n", "stream", "stream_options"]
    )
    messages = st.lists(
        st.dictionaries(
            st.sampled_from(["role", "content", "name"]), json_values | st.sampled_from(["user", "system"])
        ),
        max_size=3,
    ) | st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(json_values, max_size=3)}))
    values = json_values | messages | st.sampled_from(["remote", "broken", "missing", "tiny"])
    one_or_two = st.dictionaries(fields, values, max_size=2).map(lambda c: _request_with_fields(base, c))
    bodies = (
        one_or_two.map(lambda r: json.dumps(r).encode())
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.binary(max_size=100)
        | st.integers(1, 3000).map(lambda n: b"[" * n)
    )

    @settings(FUZZ, max_examples=150)
    @given(body=bodies)
    def run(body: bytes) -> None:
        _check(fetch("v1/chat/completions", "POST", body), outcomes, server_paths)

    run()
    print(f"\nfuzz POST chat/completions: {sum(outcomes.values())} cases, {dict(outcomes)}")
    assert outcomes["400"] and outcomes["200"]


def test_fuzz_run_and_alias_routes(fetch: Any, server_paths: list[str]) -> None:
    outcomes: Counter[str] = Counter()
    ids = st.sampled_from(["tickets", "live", "nope", "tickets\n", "..", "%"]) | nasty_text

    @settings(FUZZ, max_examples=80)
    @given(
        run_id=ids,
        after=st.none() | st.text(max_size=8) | st.integers().map(str),
        route=st.sampled_from(["run", "metrics", "delete"]),
    )
    def run(run_id: str, after: str | None, route: str) -> None:
        segment = quote(run_id, safe="") or "x"
        if route == "run":
            response = fetch(f"runs/{segment}")
        elif route == "metrics":
            query = f"?after={quote(after, safe='')}" if after is not None else ""
            response = fetch(f"runs/{segment}/metrics{query}")
        else:
            if run_id in PROTECTED:
                return
            response = fetch(f"aliases/{segment}", "DELETE")
        _check(response, outcomes, server_paths)

    run()
    print(f"\nfuzz GET runs / DELETE aliases: {sum(outcomes.values())} cases, {dict(outcomes)}")
    assert outcomes["400"] and outcomes["200"]
    assert set(registry.list_aliases()) >= {"remote", "broken"}
