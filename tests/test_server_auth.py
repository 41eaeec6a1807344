"""The server extension follows Jupyter's authorization model.

A jupyter_server ``Authorizer`` configured on the server sees every request with the resource
name of its area, so a deployment can let a user read runs and aliases but neither delete
aliases nor run models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from distill_server_fixtures import build_fixture_store
from jupyter_server.auth.authorizer import Authorizer
from tornado.httpclient import HTTPClientError

from jupyter_distill.serving import registry

pytest_plugins = ["pytest_jupyter.jupyter_server"]

CALLS: list[tuple[str, str]] = []


class ReadOnlyDistill(Authorizer):
    """Reads of jupyter-distill resources pass; writing and executing them do not; Jupyter's own pass."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        if not resource.startswith("jupyter_distill."):
            return True
        CALLS.append((action, resource))
        return action == "read"


@pytest.fixture
def jp_server_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "alias-home"))
    build_fixture_store(tmp_path / "workdir")
    gguf = tmp_path / "student.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    registry.set_alias("tiny", backend="gguf", model_path=gguf)
    CALLS.clear()
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_distill": True}, "authorizer_class": ReadOnlyDistill},
        "DistillServer": {"workdir": str(tmp_path / "workdir"), "model_workers": 0},
    }


async def _status(jp_fetch: Any, *parts: str, **kwargs: Any) -> tuple[int, str]:
    try:
        response = await jp_fetch("jupyter-distill", *parts, **kwargs)
    except HTTPClientError as exc:
        return exc.code, exc.response.body.decode() if exc.response is not None else ""
    return response.code, response.body.decode()


async def test_an_authorizer_can_allow_reading_but_not_deleting_or_running(jp_fetch: Any) -> None:
    assert (await _status(jp_fetch, "runs"))[0] == 200
    assert (await _status(jp_fetch, "runs", "tickets"))[0] == 200
    assert (await _status(jp_fetch, "runs", "tickets", "metrics"))[0] == 200
    assert (await _status(jp_fetch, "aliases"))[0] == 200
    assert (await _status(jp_fetch, "v1", "models"))[0] == 200

    code, body = await _status(jp_fetch, "aliases", "tiny", method="DELETE")
    assert code == 403 and "Traceback" not in body
    assert "tiny" in registry.list_aliases()  # refused before anything was touched

    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    code, _ = await _status(jp_fetch, "v1", "chat", "completions", method="POST", body=json.dumps(chat))
    assert code == 403

    assert CALLS == [
        ("read", "jupyter_distill.runs"),
        ("read", "jupyter_distill.runs"),
        ("read", "jupyter_distill.runs"),
        ("read", "jupyter_distill.aliases"),
        ("read", "jupyter_distill.models"),
        ("write", "jupyter_distill.aliases"),
        ("execute", "jupyter_distill.models"),
    ]


async def test_the_panel_routes_read_and_switching_the_folder_writes(jp_fetch: Any, tmp_path: Path) -> None:
    assert (await _status(jp_fetch, "aliases", "tiny"))[0] == 200
    assert (await _status(jp_fetch, "runs", "tickets", "notebooks"))[0] == 200
    assert (await _status(jp_fetch, "workdir"))[0] == 200
    code, body = await _status(jp_fetch, "workdir", method="PUT", body=json.dumps({"path": "."}))
    assert code == 403 and "Traceback" not in body
    assert (await _status(jp_fetch, "workdir", method="DELETE"))[0] == 403
    assert json.loads((await _status(jp_fetch, "workdir"))[1])["switched"] is False
    assert CALLS == [
        ("read", "jupyter_distill.aliases"),
        ("read", "jupyter_distill.runs"),
        ("read", "jupyter_distill.runs"),
        ("write", "jupyter_distill.runs"),
        ("write", "jupyter_distill.runs"),
        ("read", "jupyter_distill.runs"),
    ]
