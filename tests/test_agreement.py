"""Judge calibration: kappa against a hand-worked reference, agreement from a run store, re-judging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.store import JudgmentRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.judging.agreement import cohen_kappa, judge_agreement
from jupyter_distill.judging.review import Decision
from jupyter_distill.judging.stage import judgment_key
from jupyter_distill.pipeline.calibration import judge_agreement as store_agreement
from jupyter_distill.pipeline.run import Run
from jupyter_distill.serving.student import Student


def test_kappa_matches_a_hand_worked_table() -> None:
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.
    # p_o = 35/50 = 0.7; A says yes 25/50 = 0.5, B 30/50 = 0.6;
    # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    pairs = [(True, True)] * 20 + [(True, False)] * 5 + [(False, True)] * 10 + [(False, False)] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    # total disagreement on balanced labels: p_o = 0, p_e = 0.5, kappa = -1
    assert cohen_kappa([(True, False), (False, True)]) == pytest.approx(-1.0)
    assert cohen_kappa([]) is None
    assert cohen_kappa([(True, True), (True, True)]) == 1.0


def test_agreement_labels_items_and_ranks_disagreements() -> None:
    decisions = {
        "p0": Decision("p0", best="a1", rejected=["a0"]),  # judge prefers a0 (0.9) over the human's a1 (0.4)
        "p1": Decision("p1", best="b0", accepted=["b1"]),  # judge agrees: 0.8, 0.7
        "p2": Decision("p2", rejected_prompt=True),  # judge passed c0 (0.6): disagree; c1 0.1: agree
        "p3": Decision("p3"),  # no standing decision: ignored
    }
    candidates = {
        "p0": [("a0", 0.9), ("a1", 0.4)],
        "p1": [("b0", 0.8), ("b1", 0.7)],
        "p2": [("c0", 0.6), ("c1", 0.1)],
        "p3": [("d0", 1.0)],
    }
    result = judge_agreement(decisions, candidates, judge="j")
    # items (human, judge): a0 (F,T) a1 (T,F) b0 (T,T) b1 (T,T) c0 (F,T) c1 (F,F): 3 of 6 agree
    # human yes 3/6, judge yes 4/6: p_e = 0.5*2/3 + 0.5*1/3 = 0.5; kappa = (0.5 - 0.5) / 0.5 = 0
    assert result.reviewed_prompts == 3 and result.items == 6
    assert result.agreement == pytest.approx(0.5) and result.kappa == pytest.approx(0.0)
    assert result.top_pick_prompts == 2 and result.top_pick_agreement == pytest.approx(0.5)
    assert [d.prompt_hash for d in result.disagreements] == ["p0", "p2"]
    # p0: |0.9-0| + |0.4-1| + 1 (another top pick) = 2.5; p2: 0.6 + 0.1 = 0.7
    assert result.disagreements[0].distance == pytest.approx(2.5) and result.disagreements[0].judge_best == "a0"
    assert "kappa 0.00" in repr(result) and "<table>" in result._repr_html_()
    json.dumps(result.to_dict())


def _store_run(workdir: Path, name: str = "cal", judge: str = "judge-a", config: dict | None = None) -> RunStore:
    store = RunStore(workdir)
    store.create_run(name, config or {"teacher": "t"})
    store.update_run(name, summary={"teacher": "t", "judge": judge})
    prompts = [
        PromptRecord(hash=f"h{i}", messages=[{"role": "user", "content": f"question {i}"}], row={}, position=i)
        for i in range(3)
    ]
    store.put_prompts(name, prompts)
    texts = {"h0": ["good answer 0", "bad answer 0"], "h1": ["bad answer 1", "good answer 1"], "h2": ["x", "y"]}
    samples, judgments = [], []
    for h, pair in texts.items():
        for i, text in enumerate(pair):
            key = f"{h}-s{i}"
            samples.append(SampleRecord(key, h, "t", {}, i, text))
            score = 0.9 if "good" in text else 0.2
            if h == "h1":
                score = 1.0 - score  # the judge gets prompt h1 backwards
            judgments.append(JudgmentRecord(judgment_key(key, judge), key, judge, score))
    store.put_samples(samples)
    store.put_judgments(judgments)
    store.add_review(name, "h0", "choose", "h0-s0")
    store.add_review(name, "h0", "reject", "h0-s1")
    store.add_review(name, "h1", "choose", "h1-s1")
    store.add_review(name, "h1", "reject", "h1-s0")
    return store


def test_agreement_from_the_store_for_a_name_a_run_and_a_student(tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    _store_run(workdir)
    by_name = store_agreement("cal", workdir=workdir)
    assert by_name.judge == "judge-a" and by_name.reviewed_prompts == 2 and by_name.items == 4
    assert by_name.agreement == pytest.approx(0.5) and [d.prompt_hash for d in by_name.disagreements] == ["h1"]
    run = Run(DistillConfig.from_kwargs(dataset=[{"prompt": "q"}], name="cal", workdir=str(workdir)))
    assert run.judge_agreement() == by_name
    student = Student(adapter_dir=workdir / "runs" / "cal" / "train" / "adapter", name="cal")
    assert store_agreement(student) == by_name  # found through its path under <workdir>/runs/cal/
    student.metadata["run"] = {"name": "cal", "workdir": str(workdir)}
    student.adapter_dir = tmp_path / "elsewhere"
    assert store_agreement(student) == by_name


def test_rejudge_keeps_both_rubrics_and_reports_the_new_agreement(tmp_path: Path, openai_server) -> None:
    workdir = tmp_path / "wd"
    spec = openai_server.spec("judge-model")

    def grade(body: dict, index: int) -> str:
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        response = user.split("## Response to grade\n", 1)[1]
        if "prefer good" in system:
            return json.dumps({"score": 9 if "good" in response else 2, "rationale": "rubric B"})
        return json.dumps({"score": 5, "rationale": "rubric A"})

    openai_server.responder = grade
    store = _store_run(workdir, judge="stale-judge", config={"teacher": "t", "judge": spec})
    old = {j.sample_key for j in store.judgments_for_samples([f"h{i}-s{k}" for i in range(3) for k in range(2)])}
    result = Run(DistillConfig.from_kwargs(dataset=[{"prompt": "q"}], name="cal", workdir=str(workdir))).rejudge(
        "Be strict; prefer good answers."
    )
    assert result.judge != "stale-judge" and result.judge.startswith(f"llm:{spec}#")
    assert result.reviewed_prompts == 2 and result.agreement == 1.0 and result.kappa == 1.0
    assert openai_server.requests_total == 4  # the reviewed prompts' candidates only
    keys = [f"h{i}-s{k}" for i in range(2) for k in range(2)]
    judges = {j.judge for j in store.judgments_for_samples(keys)}
    assert judges == {"stale-judge", result.judge} and len(old) == 6
    recorded = store.get_run("cal")["summary"]["rejudged"][result.judge]
    assert recorded["agreement"] == 1.0 and "prefer good" in recorded["rubric"]
    # a second rubric adds a third judge id; the first two stay
    again = store_agreement("cal", workdir=workdir, judge=result.judge)
    assert again.agreement == 1.0


def test_rejudge_refuses_a_judge_that_reads_no_rubric(tmp_path: Path) -> None:
    from jupyter_distill.core.errors import JudgeError
    from jupyter_distill.pipeline.calibration import rejudge

    _store_run(tmp_path / "wd", config={"teacher": "t", "judge": "<callable tests.check>"})
    with pytest.raises(JudgeError) as info:
        rejudge("cal", "a rubric", workdir=tmp_path / "wd")
    assert info.value.field == "judge"
    with pytest.raises(JudgeError, match="does not read a rubric"):
        rejudge("cal", "a rubric", judge=lambda row, response: 1.0, workdir=tmp_path / "wd")
