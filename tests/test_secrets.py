"""Secrets: a planted API key never reaches anything jupyter-distill writes or shows.

The key is planted in the environment, the test server requires it and, like a careless
provider, echoes the Authorization header it saw into its error messages. A full run (LLM
judge, a prompt that fails for good, held-out eval, f16 export with model card, alias), a run
with a wrong key, and the usual mistakes (a key in the base URL, a key handed to an alias) all
happen; then every byte written (the workdir including ``runs.db`` and its WAL, the alias
registry, the model card), every event, the notebook dashboard's saved outputs, every
exception's text, captured logs and the process's stdout/stderr are searched for the key.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from openai_server import OpenAIServer

import jupyter_distill as jd
from jupyter_distill.core.errors import AliasError, DistillError, TeacherError
from jupyter_distill.core.events import Event
from jupyter_distill.core.store import RunStore
from jupyter_distill.serving.registry import set_alias
from jupyter_distill.teachers import load_teacher

pytestmark = pytest.mark.slow

KEY = "sk-" + "PLANTED-jd-0123456789abcdef"  # fake keys, assembled so scanners do not flag the file
WRONG_KEY = "sk-" + "PLANTED-jd-WRONG-fedcba9876543210"
# The whole key, its prefix and its tail: a partial leak ("...89abcdef") is a leak too.
NEEDLES = (KEY, WRONG_KEY, "PLANTED", KEY[-12:], WRONG_KEY[-12:])
DOOMED = "Repeat the number 3"


def respond(body: dict[str, Any], index: int) -> str:
    """Teacher answers for sampling; a JSON verdict for the LLM judge's grading requests."""
    messages = body["messages"]
    if messages[0]["role"] == "system" and "grader" in messages[0]["content"]:
        return json.dumps({"score": 8 if index == 0 else 3, "rationale": "fine"})
    number = messages[-1]["content"].rsplit(" ", 1)[-1]
    return number if index % 2 == 0 else f"it is {number}"


def leaks(text: str | bytes) -> list[str]:
    """Which needles occur in ``text``."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    return [n for n in NEEDLES if n.encode() in data]


def scan_tree(root: Path) -> dict[str, list[str]]:
    """Every file under ``root`` (binary included) that contains a needle."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and (hits := leaks(path.read_bytes())):
            found[str(path)] = hits
    return found


def test_planted_key_never_leaks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    openai_server: OpenAIServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    tiny_llama_student: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    home, workdir = tmp_path / "home", tmp_path / "wd"
    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(home))
    monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", KEY)
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    openai_server.api_key = KEY
    openai_server.echo_auth = True
    openai_server.responder = respond
    openai_server.script = ["500", "500"]  # two echoed errors that are retried
    openai_server.prompt_scripts[DOOMED] = ["500"] * 1000  # and one prompt whose error is stored
    student = tiny_llama_student
    texts: list[str] = []  # every exception message and event the user could see
    events: list[Event] = []
    teacher = load_teacher(openai_server.spec("test-model"), backoff_base=0.01, backoff_max=0.02, max_retries=2)
    texts += [repr(teacher), teacher.spec, str(vars(teacher).get("endpoint"))]

    result = jd.distill(
        dataset=[{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(8)],
        teacher=teacher,
        student=str(student),
        judge=None,  # the teacher grades: judge requests carry the key too
        n_samples=2,
        top_k=1,
        steps=2,
        batch_size=2,
        max_tokens=8,
        heldout_fraction=0.25,
        quantize="f16",
        alias="secret-test",
        workdir=str(workdir),
        name="secrets",
        device="cpu",
        on_progress=events.append,
    )
    assert all(h == f"Bearer {KEY}" for h in openai_server.auth_headers)  # the key was really used
    store = RunStore(workdir)
    failures = store.get_failures("secrets")
    # the server's echo of the header reached the stored error text, with the key scrubbed out
    assert failures and "Authorization was 'Bearer ***'" in failures[0]["error"]
    texts += [repr(result), str(getattr(result, "metrics", ""))]
    texts += [f"{e.kind} {e.phase} {e.message} {e.data}" for e in events]
    texts += [json.dumps(e) for e in store.get_events("secrets")]
    texts.append(json.dumps(store.get_run("secrets"), default=str))
    card = Path(store.get_artifacts("secrets")["model_card"]["path"])
    assert card.is_file() and card.read_text()
    # What a notebook shows and saves: the dashboard fed the run's events, and the summary card.
    from jupyter_distill.notebook.dashboard import RunDashboard, RunSummary

    dashboard = RunDashboard("secrets", store=store, min_interval=0.05)
    for event in events:
        dashboard.sink(event)
    dashboard.flush()
    outputs = json.dumps(dashboard._repr_mimebundle_(), default=str) + RunSummary.from_store(store, "secrets").html()
    assert "secret-test" in outputs  # the card was really rendered (it shows the alias)
    texts.append(outputs)

    # A wrong key: the server echoes it in its 401; the error must not.
    monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", WRONG_KEY)
    with pytest.raises(TeacherError) as refused:
        jd.distill(
            dataset=[{"prompt": "Repeat the number 1"}],
            teacher=openai_server.spec("test-model"),
            student=str(student),
            judge=lambda row, response: 1.0,
            n_samples=1,
            top_k=1,
            steps=1,
            quantize=None,
            workdir=str(workdir),
            name="wrong-key",
        )  # no on_progress: the console renderer draws on stderr, captured below
    assert openai_server.auth_headers[-1] == f"Bearer {WRONG_KEY}"
    assert "OPENAI_COMPATIBLE_API_KEY" in str(refused.value)  # names the variable, never its value
    assert "got 'Bearer ***'" in str(refused.value)  # the echoed wrong key was scrubbed
    texts += [str(refused.value), repr(refused.value), str(refused.value.value)]

    # The usual mistakes: a key in the URL, a key (or a key as an env var name) handed to an alias.
    mistakes = [
        lambda: load_teacher(f"openai-compatible:{openai_server.url}?api_key={KEY}#test-model"),
        lambda: set_alias("k1", backend="openai-compatible", base_url=openai_server.url, model="m", api_key=KEY),
        lambda: set_alias("k2", backend="openai-compatible", base_url=openai_server.url, model="m", api_key_env=KEY),
    ]
    for mistake in mistakes:
        with pytest.raises(DistillError) as info:
            mistake()
        assert isinstance(info.value, TeacherError | AliasError)
        texts += [str(info.value), repr(info.value.value), str(info.value.fix)]

    out, err = capfd.readouterr()
    assert "wrong-key" in err or "sampling" in err  # the console renderer did draw
    sources = {"exceptions/events/reprs": "\n".join(texts), "logs": caplog.text, "stdout": out, "stderr": err}
    assert {name: leaks(text) for name, text in sources.items() if leaks(text)} == {}
    assert scan_tree(workdir) == {}
    assert scan_tree(home) == {}
    assert (home / "aliases.json").is_file() and re.search(r"secret-test", (home / "aliases.json").read_text())
