"""Student samples judged by the run's judge, ranked against the teacher's stored candidates."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
import torch

from jupyter_distill.core.errors import BudgetExceeded
from jupyter_distill.core.store import JudgmentRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.judging.llm_judge import load_judge
from jupyter_distill.judging.stage import judgment_key
from jupyter_distill.judging.verifiers import JudgeResult
from jupyter_distill.train.jbond import quantile_reward
from jupyter_distill.train.rewards import OnPolicyRewards, teacher_scores

P1 = PromptRecord(hash="p1", messages=[{"role": "user", "content": "2+2?"}], row={"expected": "4"})
P2 = PromptRecord(hash="p2", messages=[{"role": "user", "content": "3+3?"}], row={"expected": "6"})


def counting_judge() -> tuple[object, list[str]]:
    calls: list[str] = []
    lock = threading.Lock()

    def check(row: dict, response: str) -> float:
        with lock:
            calls.append(response)
        if response == "boom":
            raise RuntimeError("verifier bug")
        return float(response.strip() == row["expected"])

    return load_judge(check), calls


def test_rewards_rank_against_the_teacher_and_cache_by_prompt_and_text() -> None:
    judge, calls = counting_judge()
    rewards = OnPolicyRewards(judge, {"p1": [0.0, 1.0, 1.0], "p2": [0.0, 0.0]})
    out = rewards.score([P1, P1, P1, P2, P2], ["4", "5", "4", "6", "boom"])
    assert sorted(calls) == ["4", "5", "6", "boom"]  # "4" for p1 judged once
    assert [r.score for r in out] == [1.0, 0.0, 1.0, 1.0, None]
    assert out[0].win == pytest.approx((1 + 0.5 * 2) / 3)
    assert out[0].reward == pytest.approx(math.log((2 + 0.5) / 4)) == quantile_reward(1.0, [0.0, 1.0, 1.0])
    assert out[1].win == pytest.approx(0.5 / 3)
    assert out[3].win == 1.0
    assert out[4].win == 0.0 and out[4].reward == pytest.approx(math.log(0.5 / 3))  # failed: ranks last
    assert [r.cached for r in out] == [False, False, True, False, False]
    assert (rewards.calls, rewards.hits) == (4, 1)
    again = rewards.score([P1, P2], ["5", "boom"])
    assert len(calls) == 4 and all(r.cached for r in again)  # a failure is cached too: resume sees the same
    assert rewards.hits == 3


def test_no_teacher_candidates_gives_the_neutral_reward() -> None:
    judge, _ = counting_judge()
    out = OnPolicyRewards(judge, {}).score([P1], ["4"])
    assert out[0].reward == pytest.approx(math.log(0.5)) and math.isnan(out[0].win)


def test_budget_exceeded_stops_scoring() -> None:
    class Paid:
        id = "paid-judge"

        async def score(self, prompt: PromptRecord, response: str) -> JudgeResult:
            raise BudgetExceeded("max_cost=0.01 USD would be exceeded", field="max_cost", value=0.01)

    with pytest.raises(BudgetExceeded):
        OnPolicyRewards(Paid(), {"p1": [0.5]}).score([P1], ["4"])


def test_cost_is_counted_and_the_state_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    class Priced:
        id = "priced"

        async def score(self, prompt: PromptRecord, response: str) -> JudgeResult:
            return JudgeResult(score=0.25 if response == "a" else 0.9, cost=0.002)

    rewards = OnPolicyRewards(Priced(), {"p1": [0.5]})
    first = rewards.score([P1, P1, P1], ["a", "b", "a"])
    assert rewards.calls == 2 and rewards.cost == pytest.approx(0.004)
    torch.save(rewards.state_dict(), tmp_path / "s.pt")
    restored = OnPolicyRewards(Priced(), {"p1": [0.5]})
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert (restored.calls, restored.hits, restored.cost) == (rewards.calls, rewards.hits, rewards.cost)
    second = restored.score([P1, P1], ["a", "b"])
    assert restored.calls == 2 and [r.reward for r in second] == [first[0].reward, first[1].reward]
    other = OnPolicyRewards(counting_judge()[0], {"p1": [0.5]})
    other.load_state_dict(rewards.state_dict())  # another judge's verdicts are not taken
    assert other.calls == 0


def test_eight_threads_never_pay_twice_for_one_key() -> None:
    judge, calls = counting_judge()
    rewards = OnPolicyRewards(judge, {"p1": [0.0, 1.0]})
    texts = [str(i % 13) for i in range(40)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for _ in range(5):
                rewards.score([P1] * 10, texts[offset : offset + 10])
        except BaseException as exc:  # kept for the assertion in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i * 3,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    distinct = {texts[i] for o in range(0, 24, 3) for i in range(o, o + 10)}
    assert sorted(calls) == sorted(distinct)
    assert rewards.calls == len(distinct)
    assert rewards.calls + rewards.hits == 8 * 5 * 10


def test_teacher_scores_read_the_judged_candidates(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.create_run("r", {})
    store.put_prompts("r", [P1, P2])
    samples = [
        SampleRecord(key=f"s{i}", prompt_hash="p1", teacher="t", params={}, sample_index=i, text=str(i))
        for i in range(3)
    ]
    store.put_samples(samples)
    store.put_judgments(
        [
            JudgmentRecord(key=judgment_key("s0", "j"), sample_key="s0", judge="j", score=0.9),
            JudgmentRecord(key=judgment_key("s1", "j"), sample_key="s1", judge="j", score=None, status="failed"),
            JudgmentRecord(key=judgment_key("s2", "j"), sample_key="s2", judge="j", score=0.1),
            JudgmentRecord(key=judgment_key("s2", "other"), sample_key="s2", judge="other", score=0.5),
        ]
    )
    assert teacher_scores(store, [P1, P2], "j") == {"p1": [0.1, 0.9], "p2": []}
    store.close()
