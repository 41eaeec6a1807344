"""Held-out evaluation: records per prompt and summaries, batching, judges, best-of-N, HF responder."""

from __future__ import annotations

import threading

import pytest

from jupyter_distill.core.errors import TrainingError
from jupyter_distill.core.events import Event
from jupyter_distill.core.examples import make_extraction_rows, parse_json_object, verify_extraction
from jupyter_distill.core.store import PromptRecord, RunStore
from jupyter_distill.evaluation.heldout import HFResponder, evaluate, evaluate_best_of_n


def _prompts(n: int) -> list[PromptRecord]:
    return [
        PromptRecord(hash=f"h{i}", messages=[{"role": "user", "content": f"say {i}"}], row={"expected": str(i)})
        for i in range(n)
    ]


def _judge(prompt: PromptRecord, response: str) -> float | None:
    if response == "ERR":
        return None
    return 1.0 if response.strip() == prompt.row["expected"] else 0.2


@pytest.fixture
def store(tmp_path) -> RunStore:
    s = RunStore(tmp_path)
    s.create_run("r", {})
    return s


def test_evaluate_records_results_metrics_and_events(store: RunStore) -> None:
    prompts = _prompts(5)
    answers = {"say 0": "0", "say 1": "1", "say 2": "wrong", "say 3": "ERR", "say 4": "4"}
    events: list[Event] = []
    summary = evaluate(
        store, "r", prompts, lambda m: answers[m[-1]["content"]], _judge, "student_after", events.append, step=7
    )
    assert summary.n == 5 and summary.n_unscored == 1
    assert summary.pass_rate == pytest.approx(3 / 5)
    assert summary.mean_score == pytest.approx((1 + 1 + 0.2 + 1) / 4)
    rows = {r["prompt_hash"]: r for r in store.get_eval_results("r", "student_after")}
    assert rows["h2"]["passed"] == 0 and rows["h2"]["score"] == pytest.approx(0.2)
    assert rows["h3"]["score"] is None and rows["h3"]["passed"] == 0
    assert rows["h0"]["response"] == "0"
    metrics = {(m["name"], m["step"]): m["value"] for m in store.get_metrics("r")}
    assert metrics[("eval/student_after/pass_rate", 7)] == pytest.approx(0.6)
    assert metrics[("eval/student_after/n", 7)] == 5
    final = [e for e in events if e.kind == "metric"]
    assert len(final) == 1 and final[0].phase == "eval" and final[0].data["label"] == "student_after"
    assert final[0].data["pass_rate"] == pytest.approx(0.6) and final[0].step == 7
    assert [e.current for e in events if e.kind == "progress"][-1] == 5


def test_batch_responder_is_used_in_batches(store: RunStore) -> None:
    calls: list[int] = []

    class Batched:
        batch_size = 3

        def __call__(self, messages):  # pragma: no cover - must not be used
            raise AssertionError("single calls when batch() exists")

        def batch(self, batch):
            calls.append(len(batch))
            return [m[-1]["content"].split()[-1] for m in batch]

    summary = evaluate(store, "r", _prompts(7), Batched(), _judge, "b")
    assert calls == [3, 3, 1]
    assert summary.pass_rate == 1.0


def test_stop_ends_early(store: RunStore) -> None:
    stop = threading.Event()

    def respond(messages):
        stop.set()
        return "0"

    summary = evaluate(store, "r", _prompts(4), respond, _judge, "s", stop=stop)
    assert summary.n == 1


def test_bad_judge_score_and_label(store: RunStore) -> None:
    with pytest.raises(TrainingError) as info:
        evaluate(store, "r", _prompts(1), lambda m: "0", lambda p, r: 7.0, "x")
    assert info.value.field == "judge"
    with pytest.raises(TrainingError):
        evaluate(store, "r", _prompts(1), lambda m: "0", _judge, "a/b")


def test_bool_verifier_and_no_store() -> None:
    summary = evaluate(None, "r", _prompts(2), lambda m: "1", lambda p, r: r == p.row["expected"], "bools")
    assert summary.pass_rate == 0.5 and summary.mean_score == 0.5


def test_best_of_n(store: RunStore) -> None:
    prompts = _prompts(3)
    candidates = {"h0": ["x", "0", "y"], "h1": ["a", "b"]}  # h2 has none
    summary = evaluate_best_of_n(store, "r", prompts, candidates, _judge)
    assert summary.label == "teacher_best_of_n"
    assert summary.pass_rate == pytest.approx(1 / 3)
    assert summary.n_unscored == 1
    rows = {r["prompt_hash"]: r for r in store.get_eval_results("r", "teacher_best_of_n")}
    assert rows["h0"]["response"] == "0" and rows["h0"]["passed"] == 1


def test_extraction_task_and_verifier() -> None:
    rows = make_extraction_rows(50, seed=3)
    assert len({r["prompt"] for r in rows}) == 50
    assert rows == make_extraction_rows(50, seed=3)
    row = rows[0]
    e = row["expected"]
    assert e["name"] in row["prompt"] and str(e["age"]) in row["prompt"] and e["city"] in row["prompt"]
    good = f'{{"name": "{e["name"]}", "age": {e["age"]}, "city": "{e["city"]}"}}'
    assert verify_extraction(row, good) == 1.0
    assert verify_extraction(row, good.upper()) < 0.5
    assert verify_extraction(row, f"```json\n{good}\n```") == 1.0
    assert 0.2 < verify_extraction(row, f"Sure! Here it is:\n```json\n{good}\n```") < 0.5  # only JSON asked
    assert verify_extraction(row, f"JSON: [{good}]") < 0.5
    assert verify_extraction(row, good.replace(f'"age": {e["age"]}', f'"age": "{e["age"]}"')) < 0.5
    two_right = f'{{"name": "{e["name"]}", "age": {e["age"] + 1}, "city": "{e["city"]}"}}'
    assert 0.3 < verify_extraction(row, two_right) < 0.5
    assert verify_extraction(row, "no json here") == 0.0
    assert verify_extraction(row, good[:-1]) == 0.0
    assert parse_json_object('x {"a": {"b": 1}} y') == {"a": {"b": 1}}


def test_hf_responder_greedy_matches_manual_generation() -> None:
    torch = pytest.importorskip("torch")
    from tests.test_trainer import tiny_student

    student = tiny_student(seed=0)  # the trainer tests' random-init Llama with the real SmolLM2 tokenizer
    model, tok = student.model.eval(), student.tokenizer
    responder = HFResponder(model, tok, max_new_tokens=6, batch_size=4, stop_token_ids=[2])
    msgs = [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "a much longer question here"}]]
    batched = responder.batch(msgs)
    for m, answer in zip(msgs, batched, strict=True):
        ids = tok(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
        x = torch.tensor([ids["input_ids"]])
        out = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(input_ids=x).logits[0, -1].argmax())
                if nxt == 2:
                    break
                out.append(nxt)
                x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
        assert answer == tok.decode(out, skip_special_tokens=True)
