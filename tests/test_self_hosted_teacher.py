"""The self-hosted teacher recipe in docs/self-hosted-teacher.md, run against a real local server."""

from __future__ import annotations

import re
from pathlib import Path

from jupyter_distill.core.data import load_dataset
from jupyter_distill.core.store import RunStore
from jupyter_distill.sampling.stage import sample

DOC = Path(__file__).resolve().parents[1] / "docs" / "self-hosted-teacher.md"


def recipe_teacher(base_url: str):
    """Run the doc's Python block with its BASE_URL pointed at ``base_url``; return its ``teacher``."""
    block = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert block is not None, "the recipe lost its python block"
    code = block.group(1).replace('"http://localhost:8000/v1"', repr(base_url))
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace["teacher"]


def test_the_recipe_sends_n_in_one_request_keeps_the_server_busy_and_records_the_licence(openai_server, tmp_path):
    openai_server.latency = 0.3  # a server that takes a while, so requests overlap
    teacher = recipe_teacher(openai_server.url)
    assert teacher.concurrency == 64 and teacher.supports_n is True
    data = load_dataset([{"prompt": f"q{i}"} for i in range(80)])
    store = RunStore(tmp_path / "wd")
    store.create_run("r1", {})
    result = sample(store, teacher, data, 4, run_id="r1")
    store.close()

    assert openai_server.requests_total == 80 and result.requests_sent == 80  # one request per prompt
    assert all(body.get("n") == 4 for body in openai_server.bodies)
    assert result.new == 320 and not result.failed
    # more than the default 16 requests in flight, never more than the setting
    assert 16 < openai_server.max_in_flight <= 64
    prov = result.samples[data[0].hash][0].provenance
    assert prov["provider"] == "openai-compatible" and prov["licence"] == "apache-2.0"
    assert prov["policy"]["verdict"] == "check-licence" and "self-hosted" in prov["policy"]["reason"]
    assert prov["teacher"] == f"openai-compatible:{openai_server.url}#Qwen/Qwen2.5-7B-Instruct"


def test_the_recipe_falls_back_to_one_request_per_candidate_when_the_server_ignores_n(openai_server, tmp_path):
    openai_server.support_n = False
    teacher = recipe_teacher(openai_server.url)
    store = RunStore(tmp_path / "wd")
    store.create_run("r1", {})
    result = sample(store, teacher, load_dataset([{"prompt": "q0"}, {"prompt": "q1"}]), 3, run_id="r1")
    store.close()
    assert result.new == 6 and not result.failed
    # per prompt: the n=3 request that came back with one choice, then one request per missing candidate
    assert result.requests_sent == 6
    for candidates in result.samples.values():
        assert len({c.text for c in candidates}) == 3  # distinct seeds, distinct candidates
