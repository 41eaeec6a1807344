"""The review widget, driven like a keyboard would drive it; asserts on widget traits and the store."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")

from jupyter_distill.core.store import JudgmentRecord, PromptRecord, RunStore, SampleRecord
from jupyter_distill.judging.review import ReviewSession
from jupyter_distill.judging.selection import select
from jupyter_distill.notebook.review_widget import ReviewWidget

# p0: certain (one perfect candidate); p1: all mediocre and equal; p2: judge failed on everything
SCORES = [[1.0, 0.2, 0.0], [0.5, 0.5, 0.5], [None, None, None]]


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path)
    s.create_run("r", {})
    prompts = [
        PromptRecord(hash=f"p{i}", messages=[{"role": "user", "content": f"question <{i}>"}], row={}, position=i)
        for i in range(len(SCORES))
    ]
    s.put_prompts("r", prompts)
    samples, judgments = [], []
    for p, scores in zip(prompts, SCORES, strict=True):
        for j, score in enumerate(scores):
            key = f"{p.hash}-s{j}"
            samples.append(
                SampleRecord(
                    key=key, prompt_hash=p.hash, teacher="t", params={}, sample_index=j, text=f"answer {p.hash}.{j}"
                )
            )
            judgments.append(
                JudgmentRecord(
                    key=f"j{key}",
                    sample_key=key,
                    judge="v",
                    score=score,
                    status="ok" if score is not None else "failed",
                    rationale=f"why {j}" if score is not None else "judge output unparsable",
                )
            )
    s.put_samples(samples)
    s.put_judgments(judgments)
    return s


def live(store):
    return ReviewSession(store, "r").decisions()


def test_initial_view_shows_prompt_candidates_and_counter(store):
    w = ReviewWidget(store, "r")
    assert w.counter.value == "0 of 3 reviewed"
    assert "Prompt 1 of 3" in w.title.value
    assert "question &lt;0&gt;" in w.prompt_view.value  # escaped
    shown = [c for c in w.cards if c.box.layout.display != "none"]
    assert len(shown) == 3
    assert "score 1.00" in shown[0].header.value and "judge's pick" in shown[0].header.value
    assert "why 1" in shown[1].rationale.value and "answer p0.1" in shown[1].text.value
    assert w.prev_button.disabled and not w.next_button.disabled


def test_j_k_move_and_stop_at_the_ends(store):
    w = ReviewWidget(store, "r")
    assert w.handle_key({"key": "k"}) and w.index == 0
    w.handle_key({"key": "j"})
    w.handle_key({"key": "j"})
    w.handle_key({"key": "j"})
    assert w.index == 2 and "Prompt 3 of 3" in w.title.value and w.next_button.disabled
    assert "judge failed" in w.cards[0].header.value
    w.handle_key({"key": "k"})
    assert w.current.prompt_hash == "p1"
    assert w.handle_key({"key": "q"}) is False


def test_digit_chooses_best_writes_the_store_and_advances(store):
    w = ReviewWidget(store, "r")
    w.handle_key({"key": "2"})
    assert live(store)["p0"].best == "p0-s1"
    assert w.current.prompt_hash == "p1"  # auto-advanced
    assert w.counter.value == "1 of 3 reviewed"
    w.handle_key({"key": "k"})
    assert "best" in w.cards[1].header.value and "#2e7d32" in w.cards[1].box.layout.border
    w.handle_key({"key": "9"})  # no 9th candidate
    assert "no candidate 9" in w.status.value and live(store)["p0"].best == "p0-s1"


def test_x_rejects_the_prompt_and_u_undoes_it(store):
    w = ReviewWidget(store, "r")
    w.handle_key({"key": "j"})
    w.handle_key({"key": "x"})
    assert live(store)["p1"].rejected_prompt and w.current.prompt_hash == "p2"
    w.handle_key({"key": "u"})
    assert "p1" not in live(store)
    assert w.current.prompt_hash == "p1"  # undo goes back to the prompt it changed
    assert w.counter.value == "0 of 3 reviewed"
    w.handle_key({"key": "u"})
    assert "nothing to undo" in w.status.value


def test_u_undoes_in_reverse_order_across_prompts(store):
    w = ReviewWidget(store, "r")
    w.handle_key({"key": "1"})  # p0
    w.handle_key({"key": "3"})  # p1
    w.handle_key({"key": "u"})
    assert set(live(store)) == {"p0"} and w.current.prompt_hash == "p1"
    w.handle_key({"key": "u"})
    assert live(store) == {} and w.current.prompt_hash == "p0"


def test_e_edits_the_best_candidate_save_and_escape(store):
    w = ReviewWidget(store, "r")
    w.handle_key({"key": "e"})
    assert w.edit_box.layout.display == "flex" and w.editor.value == "answer p0.0"  # the judge's pick
    assert w.handle_key({"key": "j"}) is False and w.index == 0  # keys do nothing while editing
    w.handle_key({"key": "Escape"})
    assert w.edit_box.layout.display == "none" and "p0" not in live(store)

    w.handle_key({"key": "e"})
    w.editor.value = "a better answer"
    w.save_button.click()
    assert live(store)["p0"].edits == {"p0-s0": "a better answer"}
    assert w.edit_box.layout.display == "none" and w.current.prompt_hash == "p1"
    w.handle_key({"key": "k"})
    assert "a better answer" in w.cards[0].text.value and "edited" in w.cards[0].header.value

    w.cards[2].edit_button.click()  # a card's own edit button targets that candidate
    w.editor.value = "   "
    w.save_button.click()
    assert "empty" in w.status.value and w.editing == "p0-s2"  # the error is shown, the editor stays open
    assert live(store)["p0"].edits == {"p0-s0": "a better answer"}


def test_edit_flows_into_training_pairs(store):
    w = ReviewWidget(store, "r")
    w.handle_key({"key": "e"})
    w.editor.value = "human answer"
    w.save_button.click()
    prompts = store.get_prompts("r")
    samples = {p.hash: store.samples_for_prompt(p.hash) for p in prompts}
    judgments = {j.sample_key: j for j in store.judgments_for_samples([s.key for g in samples.values() for s in g])}
    pairs = select(store, "r", prompts, samples, judgments, top_k=1).pairs
    p0 = next(p for p in pairs if p.prompt_hash == "p0")
    assert p0.chosen_text == "human answer" and p0.source == "human" and p0.rejected_key == "p0-s2"


def test_card_buttons_reject_a_single_candidate(store):
    w = ReviewWidget(store, "r")
    w.cards[1].reject_button.click()
    assert live(store)["p0"].rejected == ["p0-s1"]
    assert w.current.prompt_hash == "p0"  # rejecting one candidate does not move on
    assert "rejected" in w.cards[1].header.value


def test_least_certain_filter_orders_prompts_and_keeps_selection(store):
    w = ReviewWidget(store, "r")
    w.handle_key({"key": "j"})  # on p1
    w.handle_key({"key": "f"})
    assert w.filter_toggle.value is True
    assert [it.prompt_hash for it in w.items] == ["p2", "p1", "p0"]
    assert w.current.prompt_hash == "p1" and "Prompt 2 of 3" in w.title.value
    w.filter_toggle.value = False
    assert [it.prompt_hash for it in w.items] == ["p0", "p1", "p2"]
    assert ReviewWidget(store, "r", order="least_certain").current.prompt_hash == "p2"


def test_browser_keystrokes_arrive_through_the_key_box(store):
    w = ReviewWidget(store, "r")
    w.key_box.value = "j"  # what the browser's Text model sync does for one typed character
    assert w.index == 1 and w.key_box.value == ""
    w.key_box.value = "1"
    assert live(store)["p1"].best == "p1-s0"


def test_train_button_calls_on_continue_callbacks(store):
    calls = []
    w = ReviewWidget(store, "r", on_continue=lambda widget: calls.append(("first", widget)))
    w.on_continue.append(lambda widget: calls.append(("second", widget.session.progress())))
    w.handle_key({"key": "1"})
    w.continue_button.click()
    assert calls == [("first", w), ("second", (1, 3))]
    assert w.continue_button.disabled and "1 of 3" in w.status.value


def test_train_button_shows_callback_errors_and_no_callback(store):
    w = ReviewWidget(store, "r")
    w.continue_button.click()
    assert "nothing is waiting" in w.status.value and not w.continue_button.disabled

    def broken(widget):
        raise RuntimeError("run already finished")

    w.on_continue.append(broken)
    w.continue_button.click()
    assert "run already finished" in w.status.value and not w.continue_button.disabled


def test_mimebundle_has_text_and_html_fallbacks(store):
    w = ReviewWidget(ReviewSession(store, "r"))
    w.handle_key({"key": "x"})
    bundle = w._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "1 of 3 prompts reviewed" in bundle["text/plain"] and "prompt rejected" in bundle["text/plain"]
    assert "<table>" in bundle["text/html"] and "question &lt;0&gt;" in bundle["text/html"]


def test_empty_run_and_missing_run_id(store, tmp_path):
    empty = RunStore(tmp_path / "other")
    empty.create_run("e", {})
    w = ReviewWidget(empty, "e")
    assert "Nothing to review" in w.title.value and w.counter.value == "0 of 0 reviewed"
    assert w.handle_key({"key": "1"}) and w.handle_key({"key": "e"})  # harmless
    from jupyter_distill.core.errors import DistillError

    with pytest.raises(DistillError, match="needs the run name"):
        ReviewWidget(store)
