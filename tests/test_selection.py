"""Selection: survivors, pairs, ties, failed judgments, uncertainty, human overrides."""

from __future__ import annotations

import pytest

from jupyter_distill.core.errors import ConfigError
from jupyter_distill.core.store import JudgmentRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.judging.review import ReviewSession
from jupyter_distill.judging.selection import candidate_scores, group_judgments, prompt_uncertainty, select


def make_prompt(i):
    return PromptRecord(hash=f"p{i}", messages=[{"role": "user", "content": f"q{i}"}], row={}, position=i)


def make_samples(prompt_hash, n):
    return [
        SampleRecord(
            key=f"{prompt_hash}-s{j}",
            prompt_hash=prompt_hash,
            teacher="t",
            params={},
            sample_index=j,
            text=f"{prompt_hash} answer {j}",
        )
        for j in range(n)
    ]


def make_judgments(prompt_hash, scores, judge="v"):
    """``scores`` per sample index; None = a failed judgment; missing trailing = unjudged."""
    return {
        f"{prompt_hash}-s{j}": JudgmentRecord(
            key=f"{judge}-{prompt_hash}-{j}",
            sample_key=f"{prompt_hash}-s{j}",
            judge=judge,
            score=score,
            status="ok" if score is not None else "failed",
            rationale="" if score is not None else "unparsable",
        )
        for j, score in enumerate(scores)
    }


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path)
    s.create_run("r", {})
    return s


def setup(store, scores_by_prompt, n=None):
    prompts = [make_prompt(i) for i in range(len(scores_by_prompt))]
    store.put_prompts("r", prompts)
    samples, judgments = {}, {}
    for p, scores in zip(prompts, scores_by_prompt, strict=True):
        samples[p.hash] = make_samples(p.hash, n or len(scores))
        judgments.update(make_judgments(p.hash, scores))
    store.put_samples([s for group in samples.values() for s in group])
    return prompts, samples, judgments


def test_top_k_survivors_and_best_vs_worst_pairs(store):
    prompts, samples, judgments = setup(store, [[0.2, 0.9, 0.5, 0.7]])
    sel = select(store, "r", prompts, samples, judgments, top_k=2)
    assert sel.survivors == {"p0": ["p0-s1", "p0-s3"]}
    assert [(p.rank, p.chosen_key, p.rejected_key, p.source) for p in sel.pairs] == [
        (0, "p0-s1", "p0-s0", "judge"),
        (1, "p0-s3", "p0-s0", "judge"),
    ]
    assert sel.pairs[0].chosen_text == "p0 answer 1" and sel.pairs[0].rejected_text == "p0 answer 0"
    assert [(p.chosen_key, p.rejected_key) for p in store.get_pairs("r")] == [("p0-s1", "p0-s0"), ("p0-s3", "p0-s0")]


def test_rejected_only_when_strictly_worse(store):
    prompts, samples, judgments = setup(store, [[0.5, 0.5, 0.5], [0.8, 0.3]])
    sel = select(store, "r", prompts, samples, judgments, top_k=2)
    by = {(p.prompt_hash, p.rank): p for p in sel.pairs}
    assert by[("p0", 0)].rejected_key is None and by[("p0", 1)].rejected_key is None  # all equal
    assert by[("p1", 0)].rejected_key == "p1-s1"
    assert by[("p1", 1)].chosen_key == "p1-s1" and by[("p1", 1)].rejected_key is None  # worst is itself


def test_ties_break_by_sample_index_then_key_deterministically(store):
    prompts, samples, judgments = setup(store, [[0.6, 0.9, 0.9, 0.1, 0.1]])
    reversed_samples = {h: list(reversed(group)) for h, group in samples.items()}
    first = select(store, "r", prompts, samples, judgments, top_k=3)
    second = select(store, "r", prompts, reversed_samples, dict(reversed(list(judgments.items()))), top_k=3)
    assert first.survivors == second.survivors == {"p0": ["p0-s1", "p0-s2", "p0-s0"]}
    # among equally worst candidates the one ranked last (highest sample index) is the rejected side
    assert {p.rejected_key for p in first.pairs} == {"p0-s4"}
    assert [p.chosen_key for p in first.pairs] == [p.chosen_key for p in second.pairs]


def test_failed_judgments_rank_last_and_are_never_chosen_or_rejected(store):
    prompts, samples, judgments = setup(store, [[None, 0.4, None, 0.1], [None, None]])
    sel = select(store, "r", prompts, samples, judgments, top_k=3)
    assert sel.survivors["p0"] == ["p0-s1", "p0-s3"]  # only two scored candidates
    assert all(p.rejected_key not in ("p0-s0", "p0-s2") for p in sel.pairs)
    assert sel.survivors["p1"] == [] and sel.dropped == ["p1"]
    assert sel.uncertainty["p1"] == 1.0
    assert not [p for p in sel.pairs if p.prompt_hash == "p1"]


def test_unjudged_candidates_are_treated_like_failed(store):
    prompts, samples, judgments = setup(store, [[0.3]], n=3)  # s1, s2 have no judgment at all
    assert candidate_scores(samples["p0"], judgments) == {
        "p0-s0": (0.3, "ok"),
        "p0-s1": (None, "unjudged"),
        "p0-s2": (None, "unjudged"),
    }
    sel = select(store, "r", prompts, samples, judgments, top_k=2)
    assert sel.survivors["p0"] == ["p0-s0"]


def test_min_score_keeps_failing_answers_out_of_chosen(store):
    prompts, samples, judgments = setup(store, [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    sel = select(store, "r", prompts, samples, judgments, top_k=2, min_score=0.5)
    assert sel.survivors == {"p0": [], "p1": ["p1-s0"]}
    assert [(p.chosen_key, p.rejected_key) for p in sel.pairs] == [("p1-s0", "p1-s2")]
    with pytest.raises(ConfigError, match="min_score"):
        select(store, "r", prompts, samples, judgments, top_k=2, min_score=5)
    with pytest.raises(ConfigError, match="top_k"):
        select(store, "r", prompts, samples, judgments, top_k=0)


def test_identical_texts_make_no_preference_pair(store):
    prompts, samples, judgments = setup(store, [[0.9, 0.1]])
    samples["p0"][1].text = samples["p0"][0].text
    sel = select(store, "r", prompts, samples, judgments, top_k=1)
    assert sel.pairs[0].rejected_text is None and sel.pairs[0].rejected_key is None


def test_uncertainty_ordering_and_bounds():
    s = make_samples("p", 4)
    perfect = prompt_uncertainty(s, make_judgments("p", [1.0, 0.2, 0.0, 0.3]))
    all_good = prompt_uncertainty(s, make_judgments("p", [1.0, 1.0, 1.0, 1.0]))
    mediocre_close = prompt_uncertainty(s, make_judgments("p", [0.6, 0.55, 0.5, 0.5]))
    mediocre_spread = prompt_uncertainty(s, make_judgments("p", [0.6, 0.0, 0.0, 0.0]))
    all_bad = prompt_uncertainty(s, make_judgments("p", [0.0, 0.0, 0.0, 0.0]))
    some_failed = prompt_uncertainty(s, make_judgments("p", [1.0, None, None, 0.0]))
    assert perfect == all_good == 0.0
    assert all_bad == 1.0 and prompt_uncertainty(s, make_judgments("p", [None] * 4)) == 1.0
    assert 0.0 < mediocre_spread < mediocre_close < 1.0
    assert some_failed == pytest.approx(0.5)
    assert prompt_uncertainty([], {}) == 1.0


def test_uncertainty_rises_when_judges_disagree():
    s = make_samples("p", 2)
    verifier = make_judgments("p", [1.0, 0.0], judge="verifier")
    agreeing = make_judgments("p", [1.0, 0.1], judge="llm")
    disagreeing = make_judgments("p", [0.2, 0.9], judge="llm")
    calm = prompt_uncertainty(s, [verifier, agreeing])
    torn = prompt_uncertainty(s, [verifier, disagreeing])
    assert calm < 0.2 and torn >= 0.8
    grouped = group_judgments([verifier, disagreeing])
    assert [j.judge for j in grouped["p-s0"]] == ["verifier", "llm"]
    assert candidate_scores(s, grouped)["p-s0"] == (pytest.approx(0.6), "ok")


def test_human_decisions_override_the_judge(store):
    prompts, samples, judgments = setup(store, [[0.9, 0.8, 0.1, 0.5], [0.9, 0.2], [0.7, 0.3]])
    review = ReviewSession(store, "r")
    review.choose_best("p0", "p0-s2")  # the judge's worst
    review.reject("p0", "p0-s0")  # the judge's best
    review.edit("p1", "p1-s1", "a corrected answer")
    review.reject("p2")  # drop the prompt
    sel = select(store, "r", prompts, samples, judgments, top_k=2)
    by = {(p.prompt_hash, p.rank): p for p in sel.pairs}
    # p0: human best first, then the judge's best remaining; the human-rejected one is the rejected side
    assert sel.survivors["p0"] == ["p0-s2", "p0-s1"]
    assert by[("p0", 0)].source == "human" and by[("p0", 0)].rejected_key == "p0-s0"
    assert by[("p0", 1)].source == "judge" and by[("p0", 1)].rejected_key == "p0-s0"
    # p1: the edited text is the chosen text, from a human; the other candidate is then worse
    assert by[("p1", 0)].chosen_key == "p1-s1" and by[("p1", 0)].chosen_text == "a corrected answer"
    assert by[("p1", 0)].source == "human" and by[("p1", 0)].rejected_key == "p1-s0"
    assert by[("p1", 1)].chosen_key == "p1-s0" and by[("p1", 1)].rejected_key is None
    # p2 dropped entirely
    assert sel.survivors["p2"] == [] and "p2" in sel.dropped and ("p2", 0) not in by
    assert next(p.chosen_text for p in store.get_pairs("r") if p.prompt_hash == "p1") == "a corrected answer"


def test_human_accepted_candidates_survive_beyond_top_k(store):
    prompts, samples, judgments = setup(store, [[0.9, 0.1, 0.2, 0.3]])
    review = ReviewSession(store, "r")
    review.accept("p0", "p0-s1")
    review.accept("p0", "p0-s2")
    sel = select(store, "r", prompts, samples, judgments, top_k=1)
    assert sel.survivors["p0"] == ["p0-s1", "p0-s2"]
    # human picks rank above every judged candidate; the worst judged one (s3, 0.3) is the rejected side
    assert {p.rejected_key for p in sel.pairs} == {"p0-s3"}
    assert all(p.source == "human" for p in sel.pairs)


def test_human_rejecting_everything_but_one_and_undo(store):
    prompts, samples, judgments = setup(store, [[0.9, 0.1]])
    review = ReviewSession(store, "r")
    review.reject("p0", "p0-s0")
    sel = select(store, "r", prompts, samples, judgments, top_k=2)
    assert sel.survivors["p0"] == ["p0-s1"]
    assert sel.pairs[0].rejected_key == "p0-s0"  # human-rejected is the rejected side even if scored higher
    review.undo("p0")
    sel = select(store, "r", prompts, samples, judgments, top_k=2)
    assert sel.survivors["p0"] == ["p0-s0", "p0-s1"]
