"""Review decisions: actions, undo, validation, ordering, and persistence across processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from jupyter_distill.core.errors import ReviewError
from jupyter_distill.core.store import JudgmentRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.judging.review import Decision, Rationale, ReviewSession, judge_label, replay


def build(store, scores_by_prompt, run="r", rows=None):
    store.create_run(run, {"teacher": "t"})
    prompts = [
        PromptRecord(
            hash=f"p{i}", messages=[{"role": "user", "content": f"q{i}"}], row=(rows or {}).get(i, {}), position=i
        )
        for i in range(len(scores_by_prompt))
    ]
    store.put_prompts(run, prompts)
    samples, judgments = [], []
    for p, scores in zip(prompts, scores_by_prompt, strict=True):
        for j, score in enumerate(scores):
            samples.append(
                SampleRecord(
                    key=f"{p.hash}-s{j}", prompt_hash=p.hash, teacher="t", params={}, sample_index=j, text=f"a{j}"
                )
            )
            judgments.append(
                JudgmentRecord(
                    key=f"j-{p.hash}-{j}",
                    sample_key=f"{p.hash}-s{j}",
                    judge="v",
                    score=score,
                    status="ok" if score is not None else "failed",
                    rationale=f"because {j}",
                )
            )
    store.put_samples(samples)
    store.put_judgments(judgments)
    return prompts


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path)


def test_actions_build_decisions_and_are_written_at_once(store, tmp_path):
    build(store, [[0.1, 0.9, 0.5], [0.5, 0.5]])
    session = ReviewSession(store, "r")
    assert session.progress() == (0, 2)
    d = session.choose_best("p0", "p0-s0")
    assert d.best == "p0-s0" and d.reviewed
    session.accept("p0", "p0-s2")
    session.reject("p0", "p0-s1")
    session.edit("p0", "p0-s2", "fixed text")
    # a second store on the same file (another thread, the lab panel) sees every decision already
    other = RunStore(tmp_path)
    rows = other.get_reviews("r")
    assert [(r["action"], r["sample_key"]) for r in rows] == [
        ("choose", "p0-s0"),
        ("accept", "p0-s2"),
        ("reject", "p0-s1"),
        ("edit", "p0-s2"),
    ]
    d = ReviewSession(other, "r").decisions()["p0"]
    assert (d.best, d.accepted, d.rejected, d.edits) == ("p0-s0", ["p0-s2"], ["p0-s1"], {"p0-s2": "fixed text"})
    assert d.chosen == ["p0-s0", "p0-s2"]
    assert session.progress() == (1, 2)


def test_latest_statement_about_a_candidate_wins():
    rows = [
        {"prompt_hash": "p", "action": "choose", "sample_key": "a"},
        {"prompt_hash": "p", "action": "reject", "sample_key": "a"},
        {"prompt_hash": "p", "action": "accept", "sample_key": "b"},
        {"prompt_hash": "p", "action": "reject", "sample_key": None},
        {"prompt_hash": "p", "action": "accept", "sample_key": "a"},
    ]
    d = replay(rows)["p"]
    assert d.best is None  # rejecting the best cleared it
    assert d.accepted == ["b", "a"] and d.rejected == []  # accepting a rejected one un-rejects it
    assert d.rejected_prompt is False  # a decision about a candidate brings the prompt back
    assert replay(rows[:4])["p"].rejected_prompt is True
    assert Decision("x").summary() == "not reviewed" and replay(rows[:4])["p"].summary() == "prompt rejected"


def test_undo_takes_back_the_latest_decision_of_that_prompt_only(store):
    build(store, [[0.1, 0.9], [0.3, 0.4]])
    session = ReviewSession(store, "r")
    session.choose_best("p0", "p0-s0")
    session.choose_best("p1", "p1-s1")
    session.choose_best("p0", "p0-s1")
    assert session.undo("p0").best == "p0-s0"
    assert session.decision("p1").best == "p1-s1"
    assert session.undo("p0").reviewed is False
    assert session.undo("p0") is None  # nothing left: no write, no error
    assert len(store.get_reviews("r", live_only=False)) == 5  # 3 decisions + 2 undos
    assert session.progress() == (1, 2)


def test_reject_whole_prompt_and_progress(store):
    build(store, [[0.5], [0.5], [0.5]])
    session = ReviewSession(store, "r")
    assert session.reject("p1").rejected_prompt
    assert session.progress() == (1, 3)
    assert set(session.decisions()) == {"p1"}


def test_invalid_keys_raise_review_errors_naming_value_and_fix(store):
    build(store, [[0.5, 0.6]])
    session = ReviewSession(store, "r")
    with pytest.raises(ReviewError) as info:
        session.accept("nope", "p0-s0")
    assert "'nope'" in str(info.value) and "Fix:" in str(info.value) and info.value.field == "prompt_hash"
    with pytest.raises(ReviewError) as info:
        session.choose_best("p0", "p9-s9")
    assert "'p9-s9'" in str(info.value) and "p0-s0, p0-s1" in str(info.value) and info.value.field == "sample_key"
    with pytest.raises(ReviewError, match="empty"):
        session.edit("p0", "p0-s0", "   ")
    with pytest.raises(ReviewError, match="order="):
        session.items(order="random")
    with pytest.raises(ReviewError, match="no run named 'missing'"):
        ReviewSession(store, "missing")
    assert store.get_reviews("r") == []  # nothing invalid was written


def test_items_carry_candidates_scores_rationales_and_order(store):
    build(store, [[1.0, 0.0], [0.5, 0.5], [None, 0.2]])
    session = ReviewSession(store, "r")
    session.choose_best("p1", "p1-s1")
    session.reject("p1", "p1-s0")
    items = session.items()
    assert [it.prompt_hash for it in items] == ["p0", "p1", "p2"]
    p1 = items[1]
    assert [(c.index, c.text, c.score, c.rationale, c.mark) for c in p1.candidates] == [
        (0, "a0", 0.5, "check v · 0.50 · because 0", "rejected"),
        (1, "a1", 0.5, "check v · 0.50 · because 1", "best"),
    ]
    assert items[2].candidates[0].status == "failed" and items[2].candidates[0].score is None
    assert items[0].judge_best == "p0-s0"
    ordered = [it.prompt_hash for it in session.items(order="least_certain")]
    assert ordered == ["p2", "p1", "p0"]  # failed + low scores, then indistinguishable, then certain
    assert session.item("p1").decision.best == "p1-s1"


def test_candidates_filtered_by_the_run_teacher_and_judge(store):
    build(store, [[0.5]])
    store.put_samples(
        [SampleRecord(key="other", prompt_hash="p0", teacher="other-teacher", params={}, sample_index=0, text="x")]
    )
    store.put_judgments([JudgmentRecord(key="j2", sample_key="p0-s0", judge="llm", score=0.9)])
    assert [s.key for s in ReviewSession(store, "r").candidates("p0")] == ["p0-s0"]
    assert len(ReviewSession(store, "r", teacher="other-teacher").candidates("p0")) == 1
    both = ReviewSession(store, "r").item("p0").candidates[0]
    assert {j.judge for j in both.judgments} == {"v", "llm"} and both.score == pytest.approx(0.7)
    only_llm = ReviewSession(store, "r", judge="llm").item("p0").candidates[0]
    assert only_llm.score == pytest.approx(0.9)
    with pytest.raises(ReviewError):
        ReviewSession(store, "r").accept("p0", "other")  # not a candidate of this run's teacher


def test_heldout_prompts_are_not_reviewed(store):
    build(store, [[0.5], [0.5]])
    prompts = store.get_prompts("r")
    prompts[1].split = "heldout"
    store.put_prompts("r", prompts)
    session = ReviewSession(store, "r")
    assert session.progress() == (0, 1)
    with pytest.raises(ReviewError, match="not a training prompt"):
        session.reject("p1")


def test_decisions_survive_a_process_restart(store, tmp_path):
    """Decisions made in one Python process are there, undo included, in a fresh one."""
    build(store, [[0.1, 0.9], [0.4, 0.6]])
    store.close()
    script = textwrap.dedent(
        f"""
        from jupyter_distill.core.store import RunStore
        from jupyter_distill.judging.review import ReviewSession
        s = ReviewSession(RunStore({str(tmp_path)!r}), "r")
        s.choose_best("p0", "p0-s1")
        s.edit("p0", "p0-s0", "better")
        s.reject("p1")
        s.accept("p1", "p1-s0")
        s.undo("p1")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    fresh = ReviewSession(RunStore(tmp_path), "r")
    decisions = fresh.decisions()
    assert decisions["p0"].best == "p0-s1" and decisions["p0"].edits == {"p0-s0": "better"}
    assert decisions["p1"].rejected_prompt and decisions["p1"].accepted == []
    assert fresh.progress() == (2, 2)


def test_judge_labels_are_readable_and_keep_rubrics_apart():
    assert judge_label("llm:openai:gpt-4o-mini#3fa2b9c01d2e") == "LLM judge openai:gpt-4o-mini (rubric 3fa2b9)"
    assert judge_label("llm:http://127.0.0.1:9/v1:m#ab") == "LLM judge http://127.0.0.1:9/v1:m (rubric ab)"
    assert judge_label("mymodule.check_json#a1b2c3d4") == "check check_json"  # a plain function's verifier
    assert judge_label("exact_match(field='expected')") == "check exact_match(field='expected')"
    assert judge_label("combine(1*a#x, 1*b#y)") == "check combine(1*a#x, 1*b#y)"


def test_rationales_name_the_judge_and_keep_its_own_text():
    llm = JudgmentRecord("k1", "s", "llm:openai:m#0123456789ab", 0.8, rationale="Correct and concise.")
    verifier = JudgmentRecord("k2", "s", "exact_match(field='expected')", 1.0, "exact_match(field='expected') -> 1")
    failed = JudgmentRecord("k3", "s", "mod.fn#abcd", None, status="failed")
    assert Rationale.from_judgment(llm).line() == "LLM judge openai:m (rubric 012345) · 0.80 · Correct and concise."
    # a verifier restating its own id keeps only what it returned
    assert Rationale.from_judgment(verifier).text == "returned 1"
    assert Rationale.from_judgment(failed).line() == "check fn · failed · the judge failed on this candidate"


def test_items_carry_the_reference_answer_and_a_status_per_prompt(store):
    build(store, [[0.5, 0.4], [0.5], [0.5], [0.5, 0.2]], rows={0: {"q": "q0", "expected": "42", "answer": "", "x": 1}})
    session = ReviewSession(store, "r")
    items = session.items()
    assert items[0].reference == {"expected": "42"}  # empty fields and non-reference columns are left out
    assert items[1].reference == {}
    session.choose_best("p0", "p0-s1")
    session.reject("p1")
    session.reject("p3", "p3-s1")
    states = {h: d.state for h, d in session.decisions().items()}
    assert states == {"p0": "chosen", "p1": "rejected", "p3": "reviewed"}
    assert Decision("p2").state == "open"
    session.edit("p3", "p3-s0", "fixed")
    assert session.decision("p3").state == "chosen"
