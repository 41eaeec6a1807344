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


def test_train_button_releases_a_run_waiting_for_this_review(store):
    store.update_run("r", status="waiting-review")
    calls = []
    w = ReviewWidget(store, "r", on_continue=lambda widget: calls.append(("first", widget)))
    w.on_continue.append(lambda widget: calls.append(("second", widget.session.progress())))
    w.handle_key({"key": "1"})
    w.continue_button.click()
    assert calls == [("first", w), ("second", (1, 3))]
    assert w.continue_button.disabled and "1 of 3" in w.status.value
    assert w.choice_box.layout.display == "none"


def test_train_button_shows_callback_errors(store):
    store.update_run("r", status="waiting-review")

    def broken(widget):
        raise RuntimeError("the run's thread is gone")

    w = ReviewWidget(store, "r", on_continue=broken)
    w.continue_button.click()
    assert "the run&#x27;s thread is gone" in w.status.value and not w.continue_button.disabled


@pytest.mark.parametrize("callbacks", [0, 1])
def test_train_button_on_a_finished_run_offers_a_resume_and_starts_nothing(store, callbacks):
    store.update_run("r", status="done")
    released, retrained = [], []
    w = ReviewWidget(store, "r", on_retrain=retrained.append)
    if callbacks:
        w.on_continue.append(released.append)  # a finished run's release does nothing: it is not called
    w.handle_key({"key": "2"})
    w.continue_button.click()
    assert released == [] and retrained == []
    assert w.choice_box.layout.display == "flex" and "has ended (status: done)" in w.choice_text.value
    assert "nothing was started" in w.choice_text.value and "1 of 3 prompts" in w.choice_text.value
    assert not w.continue_button.disabled and w.continue_button.description == "Train on what is reviewed"
    w.not_now_button.click()
    assert w.choice_box.layout.display == "none" and retrained == []
    w.continue_button.click()
    w.resume_button.click()
    assert retrained == [w] and w.continue_button.description == "Resumed with this review"
    assert "Run r resumes in the background with review off" in w.status.value
    assert "(1 of 3 prompts;" in w.status.value and "`%distill status r`" in w.status.value  # no dashboard here


def test_resume_of_a_run_made_from_python_objects_says_how_instead(store):
    store.update_run("r", status="done")
    store.create_run("objs", {"dataset": "<list of 3 rows>", "teacher": "t"})  # what to_public_dict stores
    store.put_prompts("objs", store.get_prompts("r"))
    store.update_run("objs", status="failed")
    w = ReviewWidget(store, "objs")
    w.continue_button.click()
    assert "status: failed" in w.choice_text.value
    w.resume_button.click()
    assert "could not resume run objs" in w.status.value and "re-run its %%distill cell" in w.status.value
    assert w.resumed is None and not w.resume_button.disabled


def test_a_stored_wait_whose_run_has_ended_is_not_released(store):
    """A run that died while waiting leaves `waiting-review` in the store: releasing it would claim a start."""

    class Ended:
        running = False

    store.update_run("r", status="waiting-review")
    released = []
    w = ReviewWidget(store, "r", on_continue=released.append, run=Ended())
    w.continue_button.click()
    assert released == [] and w.choice_box.layout.display == "flex"
    assert "its run in this kernel has ended" in w.choice_text.value and "nothing was started" in w.choice_text.value
    assert w.continue_button.description == "Train on what is reviewed"


def test_resume_refuses_while_another_process_holds_the_run(store):
    """Waiting for review in another kernel: the resume would fail on its thread after saying it resumes."""
    from jupyter_distill.core.store import RunLock

    store.update_run("r", status="waiting-review")
    retrained = []
    w = ReviewWidget(store, "r", on_retrain=retrained.append)
    w.continue_button.click()
    assert "waits for a review in another kernel" in w.choice_text.value
    with RunLock(store.workdir, "r"):
        w.resume_button.click()
    assert retrained == [] and "could not resume run r" in w.status.value and "already running in" in w.status.value
    assert not w.resume_button.disabled and w.continue_button.description == "Train on what is reviewed"
    w.resume_button.click()  # the other kernel let go: now it resumes
    assert retrained == [w]


def test_a_running_run_is_not_released_or_resumed(store):
    store.update_run("r", status="running")
    calls = []
    w = ReviewWidget(store, "r", on_continue=calls.append, on_retrain=calls.append)
    w.continue_button.click()
    assert calls == [] and "still running" in w.status.value and w.choice_box.layout.display == "none"


def test_config_for_retrain_turns_review_off_and_keeps_the_run(tmp_path):
    from jupyter_distill.core.config import DistillConfig
    from jupyter_distill.notebook.review_retrain import config_for_retrain

    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "q"}\n')
    s = RunStore(tmp_path / "wd")
    s.create_run("done-run", {"dataset": str(data), "teacher": "t", "student": "smollm2-135m", "review": True})
    config = config_for_retrain(s, "done-run")
    assert config.review is False and config.name == "done-run" and config.dataset == str(data)
    assert config.workdir == str(s.workdir)
    from jupyter_distill.pipeline.run import Run

    live = DistillConfig.from_kwargs(dataset=[{"prompt": "q"}], name="live", review=True, workdir=str(s.workdir))
    kept = config_for_retrain(s, "live", Run(live))  # the Run's in-memory config: rows a store cannot hold
    assert kept.review is False and kept.dataset == [{"prompt": "q"}] and live.review is True


def test_dollar_signs_in_prompts_candidates_and_rationales_stay_literal(tmp_path):
    """JupyterLab typesets `$...$` in HTML widgets: every text the widget shows is escaped and fenced."""
    s = RunStore(tmp_path)
    s.create_run("cash", {})
    row = {"expected": "$3.40"}
    s.put_prompts("cash", [PromptRecord(hash="p", messages=[{"role": "user", "content": "$0.12 or $3.40?"}], row=row)])
    s.put_samples([SampleRecord(key="s", prompt_hash="p", teacher="t", params={}, sample_index=0, text="$3.40 $")])
    s.put_judgments([JudgmentRecord(key="j", sample_key="s", judge="v", score=1.0, status="ok", rationale="$1 < $2")])
    w = ReviewWidget(s, "cash")
    card = w.cards[0]
    for html_widget in (w.prompt_view, w.reference_view, card.text, card.rationale, w.title):
        assert "tex2jax_ignore" in html_widget.value, html_widget.value
    shown = w.prompt_view.value + w.reference_view.value + card.text.value + card.rationale.value
    assert "$" not in shown and "&#36;0.12 or &#36;3.40?" in shown and "&#36;1 &lt; &#36;2" in shown
    assert "$" not in w.html_summary() and "tex2jax_ignore" in w.html_summary()


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


def test_feedback_names_the_prompt_it_acted_on(store):
    w = ReviewWidget(store, "r")
    w.handle_key({"key": "2"})
    assert "Prompt 1 (“question &lt;0&gt;”): candidate 2 chosen as best." in w.status.value
    assert "Now showing prompt 2" in w.status.value and "Prompt 2 of 3" in w.title.value
    w.handle_key({"key": "x"})
    assert "Prompt 2 (“question &lt;1&gt;”): rejected" in w.status.value
    w.handle_key({"key": "x"})  # the last prompt: nothing to move on to, and no claim that it moved
    assert "Prompt 3 (“question &lt;2&gt;”): rejected" in w.status.value and "Now showing" not in w.status.value
    w.handle_key({"key": "u"})
    assert "Prompt 3 (“question &lt;2&gt;”): last decision undone" in w.status.value
    w.cards[0].reject_button.click()
    assert "Prompt 3 (“question &lt;2&gt;”): candidate 1 rejected." in w.status.value


def test_cards_show_readable_rationales_and_the_reference_beside_them(tmp_path):
    s = RunStore(tmp_path)
    s.create_run("r", {})
    prompt = PromptRecord(hash="p", messages=[{"role": "user", "content": "6*7?"}], row={"expected": "42"}, position=0)
    bare = PromptRecord(hash="q", messages=[{"role": "user", "content": "hi"}], row={}, position=1)
    s.put_prompts("r", [prompt, bare])
    s.put_samples([SampleRecord("p-s0", "p", "t", {}, 0, "42"), SampleRecord("q-s0", "q", "t", {}, 0, "hello")])
    s.put_judgments(
        [
            JudgmentRecord("j1", "p-s0", "llm:openai:judge-m#0a1b2c3d4e5f", 0.9, rationale="Matches <the> answer."),
            JudgmentRecord("j2", "p-s0", "exact_match(field='expected')", 1.0, "exact_match(field='expected') -> 1"),
            JudgmentRecord("j3", "q-s0", "exact_match(field='expected')", 0.0, "exact_match(field='expected') -> 0"),
        ]
    )
    w = ReviewWidget(s, "r")
    rationale = w.cards[0].rationale.value
    assert "<b>LLM judge openai:judge-m (rubric 0a1b2c)</b> · 0.90: Matches &lt;the&gt; answer." in rationale
    assert "<b>check exact_match(field=&#x27;expected&#x27;)</b> · 1.00: returned 1" in rationale
    assert rationale.count("exact_match") == 1  # the id is not repeated as the "rationale"
    assert w.reference_view.layout.display == "flex" and "Reference answer" in w.reference_view.value
    assert "expected" in w.reference_view.value and "42" in w.reference_view.value
    w.handle_key({"key": "j"})
    assert w.reference_view.layout.display == "none"  # a row without a reference shows none


def test_status_strip_shows_reviewed_chosen_and_rejected_per_prompt(store):
    w = ReviewWidget(store, "r")
    assert w.strip.value.count("jd-strip-open") == 3 and "3 open" in w.strip.value
    w.handle_key({"key": "1"})  # p0 chosen
    w.handle_key({"key": "x"})  # p1 rejected
    w.cards[1].reject_button.click()  # p2: one candidate rejected, no pick
    strip = w.strip.value
    assert [c in strip for c in ("jd-strip-chosen", "jd-strip-rejected", "jd-strip-reviewed")] == [True] * 3
    assert "1 chosen" in strip and "1 rejected" in strip and "1 reviewed" in strip and "0 open" in strip
    assert strip.index("jd-strip-current") > strip.index("jd-strip-rejected")  # the current prompt is p2
    assert "title='prompt 1: chosen'" in strip


def test_key_marker_sits_beside_the_key_box_and_says_when_keys_are_active(store):
    w = ReviewWidget(store, "r")
    row = next(c for c in w.children if w.key_box in getattr(c, "children", ()))
    assert list(row.children) == [w.key_box, w.key_marker]  # the CSS uses the key box's next sibling
    assert "jd-review-keymark" in w.key_marker._dom_classes and "jd-review" in w._dom_classes
    # "keys active" is hidden unless the extension's stylesheet sees the key box focused
    on = "<span class='jd-keys-on' style='display:none;white-space:nowrap'>&#9679; keys active</span>"
    assert on in w.key_marker.value and "click in the review to use its keys" in w.key_marker.value
    assert w.key_marker.layout.width == w.key_marker.layout.min_width  # one box for both texts: nothing moves


def test_r_opens_the_rubric_and_keys_go_to_it_until_escape(store):
    from jupyter_distill.judging.llm_judge import DEFAULT_RUBRIC

    w = ReviewWidget(store, "r")
    assert w.handle_key({"key": "r"}) and w.rubric.is_open
    assert w.rubric.editor.value == DEFAULT_RUBRIC  # the run has no rubric of its own
    assert "no prompt is reviewed yet" in w.rubric.result.value
    assert w.handle_key({"key": "j"}) is False and w.index == 0  # typing belongs to the rubric
    assert "rubric editor is open" in w.status.value
    w.rubric.start()
    assert w.rubric.thread is None and "no prompt is reviewed yet" in w.rubric.result.value
    assert w.handle_key({"key": "Escape"}) and not w.rubric.is_open
    assert w.handle_key({"key": "j"}) and w.index == 1
    store.create_run("ruled", {"rubric": "Only exact numbers count."})
    assert ReviewWidget(store, "ruled").rubric.current_rubric() == "Only exact numbers count."


def test_r_rejudges_with_the_edited_rubric_and_shows_the_new_agreement(tmp_path, openai_server):
    import json

    spec = openai_server.spec("judge-model")

    def grade(body, index):
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        response = user.split("## Response to grade\n", 1)[1]
        if "prefer good" in system:
            return json.dumps({"score": 9 if "good" in response else 2, "rationale": "edited rubric"})
        return json.dumps({"score": 5, "rationale": "old rubric"})

    openai_server.responder = grade
    s = RunStore(tmp_path)
    s.create_run("cal", {"teacher": "t", "judge": spec})
    s.update_run("cal", summary={"teacher": "t", "judge": "old-judge"})
    s.put_prompts("cal", [PromptRecord(f"h{i}", [{"role": "user", "content": f"q{i}"}], {}, i) for i in range(2)])
    texts = {"h0": ["good 0", "bad 0"], "h1": ["bad 1", "good 1"]}
    s.put_samples(
        [SampleRecord(f"{h}-s{i}", h, "t", {}, i, t) for h, pair in texts.items() for i, t in enumerate(pair)]
    )
    # the old judge gets h1 backwards
    s.put_judgments(
        [JudgmentRecord(f"j{h}{i}", f"{h}-s{i}", "old-judge", 0.9 if i == 0 else 0.2) for h in texts for i in range(2)]
    )
    w = ReviewWidget(s, "cal")
    w.handle_key({"key": "1"})  # h0: good 0 is best
    w.handle_key({"key": "2"})  # h1: good 1 is best
    w.handle_key({"key": "r"})
    # labelled items are the two chosen candidates: the old judge passes h0-s0 (0.9), fails h1-s1 (0.2)
    assert "run&#x27;s judge now: 50% agreement" in w.rubric.result.value
    w.rubric.editor.value = "Be strict; prefer good answers."
    thread = w.rubric.start()
    thread.join(60)
    assert not thread.is_alive()
    result = w.rubric.result.value
    assert "run&#x27;s judge 50%" in result and "edited rubric 100%" in result, result
    assert w.rubric.after is not None and w.rubric.after.judge.startswith(f"llm:{spec}#")
    judges = {j.judge for j in s.judgments_for_samples([f"h{i}-s{k}" for i in range(2) for k in range(2)])}
    assert judges == {"old-judge", w.rubric.after.judge}  # both rubrics' judgments stay in the store
    assert "re-judged with the edited rubric" in w.status.value and not w.rubric.judge_button.disabled


def test_rejudge_started_from_many_threads_at_once_runs_once(tmp_path, openai_server):
    import json
    import threading
    import time

    spec = openai_server.spec("judge-model")

    def slow_grade(body, index):
        time.sleep(0.2)  # keeps the first re-judge running while the other starts arrive
        return json.dumps({"score": 7, "rationale": "ok"})

    openai_server.responder = slow_grade
    s = RunStore(tmp_path)
    s.create_run("cal", {"teacher": "t", "judge": spec})
    s.put_prompts("cal", [PromptRecord("h0", [{"role": "user", "content": "q"}], {}, 0)])
    s.put_samples([SampleRecord(f"h0-s{i}", "h0", "t", {}, i, f"answer {i}") for i in range(2)])
    s.put_judgments([JudgmentRecord(f"j{i}", f"h0-s{i}", "old-judge", 0.5) for i in range(2)])
    w = ReviewWidget(s, "cal")
    w.handle_key({"key": "1"})
    w.handle_key({"key": "r"})
    w.rubric.editor.value = "A new rubric."
    barrier = threading.Barrier(8)
    started = []

    def click():
        barrier.wait()
        started.append(w.rubric.start())

    clickers = [threading.Thread(target=click) for _ in range(8)]
    for t in clickers:
        t.start()
    for t in clickers:
        t.join(30)
    assert len({id(t) for t in started}) == 1 and started[0] is not None
    started[0].join(60)
    assert openai_server.requests_total == 2  # the reviewed prompt's two candidates, judged once
    assert w.rubric.after is not None and w.rubric.after.reviewed_prompts == 1


def test_resume_with_review_starts_the_run_again_with_review_off(store, tmp_path, monkeypatch):
    """The default resume: a real Run from the stored config, review off, its dashboard in the widget.

    Only the run's stages are the stand-in of the notebook tests (``distill_fakes.fake_run``): no
    teacher, no model; the control flow, store writes and events are the real ones.
    """
    from distill_fakes import fake_run

    from jupyter_distill.pipeline import run as pipeline

    monkeypatch.setattr(pipeline.Run, "run", fake_run)
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "0")
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "q"}\n')
    store.create_run("again", {"dataset": str(data), "teacher": "t", "student": "smollm2-135m", "review": True})
    store.put_prompts("again", store.get_prompts("r"))
    store.update_run("again", status="done")
    w = ReviewWidget(store, "again")
    w.handle_key({"key": "1"})
    w.continue_button.click()
    w.resume_button.click()
    assert w.resumed is not None and w.resumed.config.review is False and w.resumed.name == "again"
    assert w.resumed.wait(60) == "fake-student"
    assert store.get_run("again")["status"] == "done"
    assert len(w.resumed_slot.children) == 1  # the resumed run's dashboard, inside the widget
    assert w.continue_button.disabled and w.choice_box.layout.display == "none"
    assert ReviewSession(store, "again").decisions()  # the review is still there for selection


def _half_right(body, index):
    """The teacher's candidates: index 0 repeats the number (right), index 1 hedges (wrong for the judge)."""
    number = body["messages"][-1]["content"].rsplit(" ", 1)[-1]
    return number if index % 2 == 0 else f"I think it is {number}?"


@pytest.fixture
def magic_shell(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    from jupyter_distill.notebook.magics import DistillMagics

    monkeypatch.setenv("JUPYTER_DISTILL_HOME", str(tmp_path / "home"))
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_distill")
    magics = next(c for c in shell.configurables if isinstance(c, DistillMagics))
    shell.run_line_magic("config", f"DistillMagics.workdir = {str(tmp_path / 'wd')!r}")
    shell.run_line_magic("config", "DistillMagics.refresh_interval = 0.05")
    try:
        yield shell, magics
    finally:
        shell.run_line_magic("unload_ext", "jupyter_distill")


def test_review_after_a_real_run_ended_resumes_it_on_the_human_decisions(
    magic_shell, tmp_path, openai_server, tiny_llama_student
):
    """`%distill review NAME` once a real (tiny) run has ended: the train button starts nothing and
    offers the resume; taking it resumes the run in this kernel (`%distill wait` follows it), and the
    resumed run trains on the pairs the human decided, with no new teacher request.
    """
    from jupyter_distill.judging.verifiers import exact_match

    shell, magics = magic_shell
    openai_server.responder = _half_right
    shell.user_ns.update(
        rows=[{"prompt": f"Repeat the number {i}", "expected": str(i)} for i in range(6)],
        check=exact_match("expected"),
    )
    cell = (
        f"dataset: $rows\nteacher: {openai_server.spec('m')}\nstudent: {tiny_llama_student}\njudge: $check\n"
        "n_samples: 2\ntop_k: 1\nsteps: 2\nbatch_size: 2\nmax_tokens: 8\nquantize: null\n"
    )
    shell.run_cell_magic("distill", "numbers", cell)
    assert shell.run_line_magic("distill", "wait numbers --timeout 600").status == "done"
    store = magics.store_for("numbers")
    sent = openai_server.requests_total
    judged = {p.prompt_hash: p for p in store.get_pairs("numbers")}
    assert sent > 0 and all(not p.chosen_text.startswith("I think") for p in judged.values())

    widget = shell.run_line_magic("distill", "review numbers")
    chosen_item, dropped_item = widget.items[0], widget.items[1]
    hedged = next(c for c in chosen_item.candidates if c.text.startswith("I think"))
    widget.handle_key({"key": str(hedged.index + 1)})  # the human prefers the hedged answer
    said = widget.status.value  # feedback names the prompt acted on, not the one now shown
    assert said.startswith("<span") and "Prompt 1 (" in said and f"candidate {hedged.index + 1} chosen" in said
    widget.handle_key({"key": "x"})  # and drops the second prompt
    assert "Prompt 2 (" in widget.status.value and "rejected" in widget.status.value

    widget.continue_button.click()  # the run has ended: nothing starts, the choice is offered
    assert widget.choice_box.layout.display == "flex" and "nothing was started" in widget.choice_text.value
    assert "has ended (status: done)" in widget.choice_text.value and "2 of 5 prompts" in widget.choice_text.value
    assert not magics.runs["numbers"].running and store.get_run("numbers")["status"] == "done"

    widget.resume_button.click()
    resumed = magics.runs["numbers"]  # the magics' own run now: status, stop and wait act on it
    assert widget.resumed is resumed and resumed.config.review is False
    assert widget.resumed_slot.children == (magics.dashboards["numbers"].widget,)
    said = widget.status.value
    assert "Run numbers resumes in the background with review off" in said and "2 of 5 prompts" in said
    assert "dashboard below this review" in said and "no teacher request" in said
    assert shell.run_line_magic("distill", "wait numbers --timeout 600").status == "done"

    assert openai_server.requests_total == sent  # samples and judgments came from the store
    pairs = {p.prompt_hash: p for p in store.get_pairs("numbers")}
    assert pairs[chosen_item.prompt_hash].chosen_key == hedged.key
    assert pairs[chosen_item.prompt_hash].chosen_text == hedged.text
    assert dropped_item.prompt_hash not in pairs
    assert {h: p.chosen_text for h, p in pairs.items() if h != chosen_item.prompt_hash} == {
        h: p.chosen_text for h, p in judged.items() if h not in (chosen_item.prompt_hash, dropped_item.prompt_hash)
    }
    events = store.get_events("numbers", limit=5000)
    trained = [e for e in events if e["kind"] == "phase_end" and e["phase"] == "training"]
    assert len(trained) == 2  # the resumed run trained again, on those pairs
    assert store.get_run("numbers")["summary"]["pairs"] == len(pairs) == 4
