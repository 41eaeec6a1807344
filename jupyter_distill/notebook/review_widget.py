"""The review widget: one prompt at a time, its N candidates side by side, driven by the keyboard.

Keys (``handle_key({"key": ...})``; the same dict shape a browser ``keydown`` event has):

=========  ==================================================================
``j`` / ``k``  next / previous prompt
``1``-``9``    choose candidate 1-9 as the best answer (then go to the next prompt)
``x``          reject the whole prompt: it is dropped from training (then next)
``e``          edit the best candidate (the human's pick, else the judge's); ``Escape`` cancels
``u``          undo the last decision made here (goes back to that prompt)
``f``          toggle "least certain first"
``r``          re-judge the reviewed prompts with an edited rubric; shows the new agreement
=========  ==================================================================

Each card also has buttons (best / reject / edit) for what the keys do not cover, such as
rejecting a single candidate. Every decision goes through :class:`~jupyter_distill.judging.review.ReviewSession`,
so it is in the store the moment it is made.

**How keystrokes reach Python in the browser.** A small ``Text`` widget (CSS class
``jd-review-keys``) is the key catcher. With ``continuous_update`` every typed character syncs
its ``value`` to the kernel; an observer feeds each new character to :meth:`ReviewWidget.handle_key`
and clears the box. In JupyterLab the extension (``labextension/src/reviewkeys.ts``) moves the
focus to that box on any click inside the widget (root class ``jd-review``) and keeps every
key typed inside the widget without Ctrl/Cmd away from the notebook's shortcuts, so ``x``
never cuts the cell. A marker beside the box reads "keys active" while the box has the focus (the
extension's stylesheet, on the box's focus); without the extension it shows a neutral hint only.
Tests call :meth:`handle_key` directly, and the browser test clicks and types in JupyterLab.

**A finished run.** "Train on what is reviewed" releases a run that waits for this review; for a
run that has ended it says so and offers the real alternative: resume the run with the review
applied (:mod:`jupyter_distill.notebook.review_retrain`), shown in a dashboard inside the widget.

The widget changes only widget traits (no ``with output:``), so it is safe to build from the
run's worker thread, and its ``_repr_mimebundle_`` adds a text and HTML summary so a saved
notebook still says what was reviewed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as widgets

from jupyter_distill.core.errors import DistillError, ReviewError
from jupyter_distill.core.store import RunStore
from jupyter_distill.judging.review import Candidate, Decision, Order, ReviewItem, ReviewSession
from jupyter_distill.notebook.htmltext import no_math
from jupyter_distill.notebook.htmltext import text as esc
from jupyter_distill.notebook.rubric_panel import RubricPanel

MAX_CANDIDATES_SHOWN = 9  # digit keys 1-9
KEY_HELP = "j/k move · 1-9 best · x reject prompt · e edit · u undo · f least certain first · r re-judge"
_MARK_COLOURS = {"best": "#2e7d32", "accepted": "#1565c0", "rejected": "#c62828", None: "#9e9e9e"}
_STATE_COLOURS = {"chosen": "#2e7d32", "rejected": "#c62828", "reviewed": "#f9a825", "open": "#bdbdbd"}
_SNIPPET = 48  # characters of a prompt quoted in feedback lines

# The "keys active" marker beside the key box. In JupyterLab the extension's stylesheet shows the
# "active" text while the key box has the focus (CSS on the box's focus: always true to it); the
# text is hidden inline, so a front end without that stylesheet shows only the neutral hint.
# Both texts stay on one line in a box of one width: when the marker wrapped, a click on a button
# below it (resume, not now, the resumed run's Stop) took the key box's focus away, the marker
# changed height between mouse down and up, and the button moved from under the pointer: the
# first click did nothing.
_KEY_MARKER = (
    "<span class='jd-keys-on' style='display:none;white-space:nowrap'>&#9679; keys active</span>"
    "<span class='jd-keys-off' style='opacity:0.7;white-space:nowrap'>"
    "&#9675; click in the review to use its keys</span>"
)
_KEY_MARKER_LAYOUT = {"width": "20em", "min_width": "20em", "overflow": "hidden"}


class _Card:
    """The widgets of one candidate column; reused between prompts (traits change, widgets stay)."""

    def __init__(self, owner: ReviewWidget, slot: int):
        self.slot = slot
        self.header = widgets.HTML()
        self.rationale = widgets.HTML()
        self.text = widgets.HTML()
        self.best_button = widgets.Button(description=f"best ({slot + 1})", layout=widgets.Layout(width="auto"))
        self.reject_button = widgets.Button(description="reject", layout=widgets.Layout(width="auto"))
        self.edit_button = widgets.Button(description="edit", layout=widgets.Layout(width="auto"))
        self.best_button.on_click(lambda _b: owner.choose(slot))
        self.reject_button.on_click(lambda _b: owner.reject_candidate(slot))
        self.edit_button.on_click(lambda _b: owner.start_edit(slot))
        self.box = widgets.VBox(
            [
                self.header,
                self.rationale,
                self.text,
                widgets.HBox([self.best_button, self.reject_button, self.edit_button]),
            ],
            layout=widgets.Layout(
                flex="1 1 0", min_width="14em", padding="6px", margin="2px", border="2px solid #9e9e9e"
            ),
        )
        self.box.add_class("jd-review-candidate")

    def show(self, candidate: Candidate, judge_pick: bool) -> None:
        score = "judge failed" if candidate.status == "failed" else "not judged" if candidate.score is None else None
        score = score or f"score {candidate.score:.2f}"
        badges = [f"<b>{candidate.index + 1}</b>", esc(score)]
        if candidate.mark:
            badges.append(f"<b style='color:{_MARK_COLOURS[candidate.mark]}'>{candidate.mark}</b>")
        if judge_pick:
            badges.append("<i>judge's pick</i>")
        if candidate.edited_text is not None:
            badges.append("<i>edited</i>")
        self.header.value = no_math(" · ".join(badges))
        lines = []
        for r in candidate.rationales:
            score = "failed" if r.status != "ok" or r.score is None else f"{r.score:.2f}"
            text = f": {esc(r.text)}" if r.text else ""
            lines.append(f"<div><b>{esc(r.label)}</b> · {score}{text}</div>")
        self.rationale.value = no_math("".join(lines), style="opacity:0.8;font-size:90%") if lines else ""
        body = candidate.edited_text if candidate.edited_text is not None else candidate.text
        self.text.value = no_math(f"<pre style='white-space:pre-wrap;margin:0'>{esc(body)}</pre>")
        self.box.layout.border = f"2px solid {_MARK_COLOURS[candidate.mark]}"
        self.box.layout.display = "flex"

    def hide(self) -> None:
        self.box.layout.display = "none"


class ReviewWidget(widgets.VBox):
    """Review a run's candidates: ``ReviewWidget(store, run_id)`` or ``ReviewWidget(session)``.

    ``on_continue`` is a list of callables ``(widget) -> None`` run by the "Train on what is
    reviewed" button while the run waits for this review (the pipeline appends
    ``run.continue_after_review``). When nothing waits, the button offers to resume the run with
    the review applied: ``on_retrain(widget)`` does that when given (a front end that tracks its
    runs), else :func:`~jupyter_distill.notebook.review_retrain.resume_with_review`. ``run`` (the
    ``Run``, optional) supplies its in-memory config and judge to the resume and the rubric panel.
    """

    def __init__(
        self,
        store: RunStore | ReviewSession,
        run_id: str | None = None,
        *,
        on_continue: Callable[[ReviewWidget], Any] | list[Callable[[ReviewWidget], Any]] | None = None,
        on_retrain: Callable[[ReviewWidget], Any] | None = None,
        run: Any = None,
        order: str = "position",
        auto_advance: bool = True,
        **session_options: Any,
    ):
        if isinstance(store, ReviewSession):
            self.session = store
        else:
            if run_id is None:
                raise DistillError(
                    "ReviewWidget(store) needs the run name. Fix: ReviewWidget(store, 'my-run') or "
                    "ReviewWidget(ReviewSession(store, 'my-run')).",
                    field="run_id",
                    value=None,
                )
            self.session = ReviewSession(store, run_id, **session_options)
        if order not in ("position", "least_certain"):
            raise ReviewError(
                f"order={order!r} is not known. Fix: use 'position' or 'least_certain'.", field="order", value=order
            )
        if callable(on_continue):
            on_continue = [on_continue]
        self.on_continue: list[Callable[[ReviewWidget], Any]] = list(on_continue or [])
        self.on_retrain = on_retrain
        self.run = run
        self.resumed: Any = None  # the Run started by "resume with this review", once started
        self.auto_advance = auto_advance
        self.items: list[ReviewItem] = []
        self.index = 0
        self.editing: str | None = None  # sample key being edited
        self._history: list[str] = []  # prompts decided here, for "u"

        self.title = widgets.HTML()
        self.counter = widgets.Label()
        self.strip = widgets.HTML()
        self.strip.add_class("jd-review-strip")
        self.prompt_view = widgets.HTML()
        self.reference_view = widgets.HTML(
            layout=widgets.Layout(flex="0 1 16em", min_width="10em", padding="6px", margin="2px", display="none")
        )
        self.reference_view.add_class("jd-review-reference")
        self.cards = [_Card(self, slot) for slot in range(MAX_CANDIDATES_SHOWN)]
        self.more = widgets.HTML()
        self.prev_button = widgets.Button(description="◀ prev (k)", layout=widgets.Layout(width="auto"))
        self.next_button = widgets.Button(description="next (j) ▶", layout=widgets.Layout(width="auto"))
        self.reject_prompt_button = widgets.Button(description="reject prompt (x)", layout=widgets.Layout(width="auto"))
        self.undo_button = widgets.Button(description="undo (u)", layout=widgets.Layout(width="auto"))
        self.filter_toggle = widgets.ToggleButton(
            value=order == "least_certain", description="least certain first", tooltip="f", icon="sort-amount-desc"
        )
        self.key_box = widgets.Text(
            value="",
            placeholder=f"click here, then type: {KEY_HELP}",
            continuous_update=True,
            layout=widgets.Layout(width="100%"),
        )
        self.key_box.add_class("jd-review-keys")
        self.key_marker = widgets.HTML(_KEY_MARKER, layout=widgets.Layout(**_KEY_MARKER_LAYOUT))
        self.key_marker.add_class("jd-review-keymark")
        self.rubric = RubricPanel(
            self.session.store, self.session.run_id, run=run, on_done=[lambda _agreement: self._rejudged()]
        )
        self.editor = widgets.Textarea(layout=widgets.Layout(width="100%", height="10em"))
        self.save_button = widgets.Button(description="save edit", button_style="primary")
        self.cancel_button = widgets.Button(description="cancel")
        self.edit_title = widgets.HTML()
        self.edit_box = widgets.VBox(
            [self.edit_title, self.editor, widgets.HBox([self.save_button, self.cancel_button])],
            layout=widgets.Layout(display="none"),
        )
        self.status = widgets.HTML()
        self.continue_button = widgets.Button(
            description="Train on what is reviewed", button_style="success", layout=widgets.Layout(width="auto")
        )
        self.choice_text = widgets.HTML()
        self.resume_button = widgets.Button(
            description="Resume the run with this review", button_style="success", layout=widgets.Layout(width="auto")
        )
        self.not_now_button = widgets.Button(description="not now", layout=widgets.Layout(width="auto"))
        self.resume_button.on_click(lambda _b: self.resume_with_review())
        self.not_now_button.on_click(lambda _b: self._close_choice())
        self.choice_box = widgets.VBox(
            [self.choice_text, widgets.HBox([self.resume_button, self.not_now_button])],
            layout=widgets.Layout(display="none", border="1px solid #2e7d32", padding="6px", margin="4px 0"),
        )
        self.resumed_slot = widgets.VBox()

        self.prev_button.on_click(lambda _b: self.previous())
        self.next_button.on_click(lambda _b: self.next())
        self.reject_prompt_button.on_click(lambda _b: self.reject_prompt())
        self.undo_button.on_click(lambda _b: self.undo())
        self.filter_toggle.observe(lambda change: self.set_least_certain_first(change["new"]), names="value")
        self.key_box.observe(self._on_keys, names="value")
        self.save_button.on_click(lambda _b: self.save_edit())
        self.cancel_button.on_click(lambda _b: self.cancel_edit())
        self.continue_button.on_click(lambda _b: self.continue_training())

        super().__init__(
            [
                widgets.HBox([self.title, self.counter], layout=widgets.Layout(justify_content="space-between")),
                self.strip,
                self.prompt_view,
                widgets.HBox(
                    [self.reference_view, *[c.box for c in self.cards]],
                    layout=widgets.Layout(width="100%", align_items="stretch"),
                ),
                self.more,
                self.edit_box,
                self.rubric,
                widgets.HBox(
                    [
                        self.prev_button,
                        self.next_button,
                        self.reject_prompt_button,
                        self.undo_button,
                        self.filter_toggle,
                        self.continue_button,
                    ]
                ),
                widgets.HBox([self.key_box, self.key_marker], layout=widgets.Layout(width="100%")),
                self.status,
                self.choice_box,
                self.resumed_slot,
            ]
        )
        self.add_class("jd-review")
        self.reload()

    # ------------------------------------------------------------------ state
    @property
    def order(self) -> Order:
        return "least_certain" if self.filter_toggle.value else "position"

    @property
    def current(self) -> ReviewItem | None:
        return self.items[self.index] if self.items else None

    def reload(self) -> None:
        """Re-read every item from the store (keeps the current prompt selected when it can)."""
        keep = self.current.prompt_hash if self.current else None
        self.items = self.session.items(order=self.order)
        hashes = [it.prompt_hash for it in self.items]
        self.index = hashes.index(keep) if keep in hashes else 0
        self._render()

    def _refresh_current(self) -> None:
        if self.current is not None:
            self.items[self.index] = self.session.item(self.current.prompt_hash)
        self._render()

    def _go_to(self, prompt_hash: str) -> None:
        for i, it in enumerate(self.items):
            if it.prompt_hash == prompt_hash:
                self.index = i
                break

    # ------------------------------------------------------------------ actions
    def handle_key(self, event: Mapping[str, Any]) -> bool:
        """Act on one key event ``{"key": "j"}``; returns whether the key meant something."""
        key = str(event.get("key", ""))
        if self.editing is not None:  # typing goes to the editor; only Escape means something
            if key == "Escape":
                self.cancel_edit()
                return True
            return False
        if self.rubric.is_open:  # typing goes to the rubric; Escape (or its close button) closes it
            if key == "Escape":
                self.rubric.hide()
                return True
            self._say("the rubric editor is open: close it to use the review keys", error=True)
            return False
        if key in ("j", "ArrowDown"):
            self.next()
        elif key in ("k", "ArrowUp"):
            self.previous()
        elif len(key) == 1 and key in "123456789":
            self.choose(int(key) - 1)
        elif key == "x":
            self.reject_prompt()
        elif key == "e":
            self.start_edit()
        elif key == "u":
            self.undo()
        elif key == "f":
            self.filter_toggle.value = not self.filter_toggle.value
        elif key == "r":
            self.open_rubric()
        else:
            return False
        return True

    def _on_keys(self, change: dict[str, Any]) -> None:
        typed = change["new"]
        if not typed:
            return
        self.key_box.value = ""
        for char in typed:
            self.handle_key({"key": char})

    def next(self) -> None:
        if self.items and self.index < len(self.items) - 1:
            self.index += 1
            self._render()

    def previous(self) -> None:
        if self.items and self.index > 0:
            self.index -= 1
            self._render()

    def _candidate(self, slot: int) -> Candidate | None:
        item = self.current
        if item is None or not 0 <= slot < len(item.candidates):
            n = len(item.candidates) if item else 0
            self._say(f"there is no candidate {slot + 1} here (this prompt has {n})", error=True)
            return None
        return item.candidates[slot]

    def _decided(self, what: str, advance: bool) -> None:
        """Record the decision on the current prompt, say what happened to which prompt, maybe move on."""
        item = self.current
        assert item is not None
        acted_on = self._prompt_name(item, self.index)
        self._history.append(item.prompt_hash)
        self._refresh_current()
        moved = False
        if advance and self.auto_advance and self.index < len(self.items) - 1:
            self.next()
            moved = True
        tail = f" Now showing prompt {self.index + 1}." if moved else ""
        self._say(f"{acted_on}: {what}.{tail}")

    def _prompt_name(self, item: ReviewItem, index: int) -> str:
        snippet = _prompt_line(item)
        if len(snippet) > _SNIPPET:
            snippet = snippet[: _SNIPPET - 1] + "…"
        return f"Prompt {index + 1} (“{snippet}”)"

    def choose(self, slot: int) -> None:
        """Candidate ``slot`` (0-based) is the best answer for this prompt."""
        candidate, item = self._candidate(slot), self.current
        if candidate is None or item is None:
            return
        if not self._guard(lambda: self.session.choose_best(item.prompt_hash, candidate.key)):
            return
        self._decided(f"candidate {slot + 1} chosen as best", advance=True)

    def reject_candidate(self, slot: int) -> None:
        """Candidate ``slot`` must never be trained on (it becomes the preferred 'rejected' side)."""
        candidate, item = self._candidate(slot), self.current
        if candidate is None or item is None:
            return
        if not self._guard(lambda: self.session.reject(item.prompt_hash, candidate.key)):
            return
        self._decided(f"candidate {slot + 1} rejected", advance=False)

    def reject_prompt(self) -> None:
        """Drop this prompt from training."""
        item = self.current
        if item is None:
            return
        if not self._guard(lambda: self.session.reject(item.prompt_hash)):
            return
        self._decided("rejected, it will not be trained on", advance=True)

    def start_edit(self, slot: int | None = None) -> None:
        """Open the editor on candidate ``slot``, or on the best one (human pick, else judge pick)."""
        item = self.current
        if item is None:
            return
        if slot is None:
            key = item.decision.best or item.judge_best or (item.candidates[0].key if item.candidates else None)
            slot = next((c.index for c in item.candidates if c.key == key), None)
            if slot is None:
                self._say("this prompt has no candidates to edit", error=True)
                return
        candidate = self._candidate(slot)
        if candidate is None:
            return
        self.editing = candidate.key
        self.editor.value = candidate.edited_text if candidate.edited_text is not None else candidate.text
        self.edit_title.value = f"<b>Editing candidate {slot + 1}</b> (save trains on your text)"
        self.edit_box.layout.display = "flex"

    def save_edit(self) -> None:
        """Store the editor's text as the human-corrected answer."""
        item = self.current
        if self.editing is None or item is None:
            return
        key, text = self.editing, self.editor.value
        if not self._guard(lambda: self.session.edit(item.prompt_hash, key, text)):
            return
        slot = next((c.index for c in item.candidates if c.key == key), 0)
        self._close_editor()
        self._decided(f"edit of candidate {slot + 1} saved (trained on as your answer)", advance=True)

    def cancel_edit(self) -> None:
        self._close_editor()
        self._say("edit cancelled")

    def _close_editor(self) -> None:
        self.editing = None
        self.editor.value = ""
        self.edit_box.layout.display = "none"

    def undo(self) -> None:
        """Undo the last decision made in this widget; with none, the current prompt's latest."""
        target = self._history.pop() if self._history else (self.current.prompt_hash if self.current else None)
        if target is None:
            return
        undone = self.session.undo(target)
        self._go_to(target)
        self._refresh_current()
        if undone is None:
            self._say("nothing to undo", error=True)
        elif self.current is not None:
            self._say(f"{self._prompt_name(self.current, self.index)}: last decision undone (now {undone.summary()}).")

    def set_least_certain_first(self, on: bool) -> None:
        """Order prompts by the judge's uncertainty (most uncertain first), or by position."""
        if bool(self.filter_toggle.value) != bool(on):
            self.filter_toggle.value = bool(on)  # the observer calls back here
            return
        self.reload()

    def run_status(self) -> str:
        """The run's status as the store has it (``waiting-review`` while a run waits for this review)."""
        return str((self.session.store.get_run(self.session.run_id) or {}).get("status") or "unknown")

    def continue_training(self) -> None:
        """The "Train on what is reviewed" button.

        A run waiting for this review (``waiting-review`` with a callback to release it) continues.
        Otherwise nothing is started behind the user's back: the widget says what state the run is
        in and offers to resume it with the review applied.
        """
        status = self.run_status()
        reviewed, total = self.session.progress()
        if status == "waiting-review" and self.on_continue and self._run_alive():
            for callback in list(self.on_continue):
                try:
                    callback(self)
                except Exception as exc:  # show it where the user clicked; never kill the widget
                    self._say(f"could not continue: {exc}", error=True)
                    return
            self.continue_button.disabled = True
            self.continue_button.description = "Training continues"
            self._say(
                f"run {self.session.run_id} continues to training with {reviewed} of {total} prompts reviewed "
                "(the rest as the judge ranked)"
            )
            return
        if status == "running":
            self._say(
                f"run {self.session.run_id} is still running and does not wait for a review; your decisions "
                "apply when it is resumed after it ends",
                error=True,
            )
            return
        if status != "waiting-review":
            why = f"has ended (status: {status})"
        elif self.run is None:
            why = "waits for a review in another kernel (or a kernel that has ended)"
        else:
            why = "was waiting for a review, but its run in this kernel has ended"
        self.choice_text.value = no_math(
            f"<b>Run {esc(self.session.run_id)} {esc(why)}</b>: nothing waits for this review "
            "here, so nothing was started. To train on what is reviewed "
            f"({reviewed} of {total} prompts; the rest as the judge ranked), resume the run with the review "
            "applied: the samples and judgments in the store are re-used (no teacher request for them), and "
            "training, evaluation and export run again, from the initial student when the training pairs changed."
        )
        self.choice_box.layout.display = "flex"
        self.resume_button.disabled = False
        self._say("choose below: resume the run with this review, or not now")

    def _close_choice(self) -> None:
        self.choice_box.layout.display = "none"
        self._say("nothing started")

    def _run_alive(self) -> bool:
        """False when this widget's ``Run`` has ended (a stored ``waiting-review`` may outlive it)."""
        return self.run is None or bool(getattr(self.run, "running", True))

    def resume_with_review(self) -> None:
        """Start the resumed run: ``on_retrain(widget)`` (returns the ``Run``), else a background run here.

        Either way its dashboard is shown inside this widget (:meth:`show_resumed`), and the
        feedback line says what started and where to watch it; when starting fails it says why
        and nothing is claimed.
        """
        self.resume_button.disabled = True
        name = self.session.run_id
        try:
            from jupyter_distill.notebook.review_retrain import check_free, resume_with_review

            check_free(self.session.store, name)
            if self.on_retrain is not None:
                started = self.on_retrain(self)
            else:
                started, dashboard = resume_with_review(self.session.store, name, self.run)
                self.show_resumed(dashboard)
        except Exception as exc:  # a config that cannot resume from here says why, in place
            self.resume_button.disabled = False
            self._say(f"could not resume run {name}: {exc}", error=True)
            return
        if started is not None:
            self.resumed = started
        self.choice_box.layout.display = "none"
        self.continue_button.disabled = True
        self.continue_button.description = "Resumed with this review"
        reviewed, total = self.session.progress()
        where = (
            "Watch it in its dashboard below this review (its Stop button stops it)"
            if self.resumed_slot.children
            else f"Watch it with `%distill status {name}`"
        )
        self._say(
            f"Run {name} resumes in the background with review off, training on what is reviewed ({reviewed} of "
            f"{total} prompts; the rest as the judge ranked). Its samples and judgments are read from the store "
            f"(no teacher request for them). {where}."
        )

    def show_resumed(self, dashboard: Any) -> None:
        """Put the resumed run's dashboard inside the widget (a button callback has no cell to display into)."""
        self.resumed_slot.children = (getattr(dashboard, "widget", dashboard),)

    def open_rubric(self) -> None:
        """``r``: the rubric editor, to re-judge the reviewed prompts and compare the agreement."""
        self.rubric.show()

    def _rejudged(self) -> None:
        self._say("re-judged with the edited rubric: the agreement is shown above the keys")

    def _guard(self, action: Callable[[], Any]) -> bool:
        try:
            action()
        except DistillError as exc:
            self._say(str(exc), error=True)
            return False
        return True

    def _say(self, message: str, *, error: bool = False) -> None:
        colour = "#c62828" if error else "#555"
        self.status.value = no_math(esc(message), tag="span", style=f"color:{colour}")

    # ------------------------------------------------------------------ rendering (traits only)
    def _render(self) -> None:
        decisions = self.session.decisions()
        reviewed, total = len(decisions), len(self.session.prompts)
        self.counter.value = f"{reviewed} of {total} reviewed"
        self.strip.value = _status_strip(self.items, decisions, self.index)
        item = self.current
        self.prev_button.disabled = item is None or self.index == 0
        self.next_button.disabled = item is None or self.index >= len(self.items) - 1
        if item is None:
            self.title.value = "<b>Nothing to review</b>: this run has no training prompts yet."
            self.prompt_view.value = ""
            for card in self.cards:
                card.hide()
            self.more.value = ""
            self.reference_view.layout.display = "none"
            return
        self.title.value = no_math(
            f"<b>Prompt {self.index + 1} of {len(self.items)}</b> · uncertainty {item.uncertainty:.2f}"
            f" · {esc(item.decision.summary())}"
        )
        self.prompt_view.value = no_math(_render_prompt(item))
        self.reference_view.value = no_math(_render_reference(item.reference)) if item.reference else ""
        self.reference_view.layout.display = "flex" if item.reference else "none"
        judge_pick = item.judge_best
        for slot, card in enumerate(self.cards):
            if slot < len(item.candidates):
                card.show(item.candidates[slot], judge_pick == item.candidates[slot].key)
            else:
                card.hide()
        hidden = len(item.candidates) - len(self.cards)
        self.more.value = f"<i>{hidden} more candidates not shown (only 1-9 have keys)</i>" if hidden > 0 else ""

    # ------------------------------------------------------------------ saved-notebook fallbacks
    def text_summary(self) -> str:
        reviewed, total = self.session.progress()
        lines = [f"Review of run {self.session.run_id!r}: {reviewed} of {total} prompts reviewed"]
        decisions = self.session.decisions()
        for item in self.items:
            d = decisions.get(item.prompt_hash)
            lines.append(f"  {_prompt_line(item)[:70]!r}: {d.summary() if d else 'not reviewed'}")
        return "\n".join(lines)

    def html_summary(self) -> str:
        reviewed, total = self.session.progress()
        decisions = self.session.decisions()
        rows = []
        for item in self.items:
            decision = decisions.get(item.prompt_hash)
            verdict = decision.summary() if decision else "not reviewed"
            rows.append(
                f"<tr><td>{esc(_prompt_line(item)[:120])}</td><td>{item.uncertainty:.2f}</td>"
                f"<td>{esc(verdict)}</td></tr>"
            )
        return no_math(
            f"<b>Review of run {esc(self.session.run_id)}</b>: {reviewed} of {total} prompts reviewed"
            f"<table><tr><th>prompt</th><th>uncertainty</th><th>decision</th></tr>{''.join(rows)}</table>"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = super()._repr_mimebundle_(**kwargs) or {}
        data["text/plain"] = self.text_summary()
        data["text/html"] = self.html_summary()
        return data


def _prompt_line(item: ReviewItem) -> str:
    users = [m for m in item.prompt.messages if m.get("role") == "user"]
    content = (users[-1] if users else item.prompt.messages[-1]).get("content", "") if item.prompt.messages else ""
    return " ".join(str(content).split())


def _status_strip(items: list[ReviewItem], decisions: dict[str, Decision], index: int) -> str:
    """One coloured square per prompt in review order (current one outlined) and the counts."""
    counts = {"chosen": 0, "rejected": 0, "reviewed": 0, "open": 0}
    cells = []
    for i, item in enumerate(items):
        decision = decisions.get(item.prompt_hash)
        state = decision.state if decision is not None else "open"
        counts[state] += 1
        current = " jd-strip-current" if i == index else ""
        outline = f"outline:2px solid {_STATE_COLOURS[state]};outline-offset:1px;" if current else ""
        cells.append(
            f"<span class='jd-strip-cell jd-strip-{state}{current}' title='prompt {i + 1}: {state}' "
            f"style='display:inline-block;width:10px;height:10px;margin:2px;background:{_STATE_COLOURS[state]};"
            f"{outline}'></span>"
        )
    legend = " · ".join(
        f"<span style='color:{_STATE_COLOURS[s]}'>&#9632;</span> {counts[s]} {label}"
        for s, label in (("chosen", "chosen"), ("rejected", "rejected"), ("reviewed", "reviewed"), ("open", "open"))
    )
    return f"<div>{''.join(cells)}</div><div style='font-size:90%'>{legend}</div>" if items else ""


def _render_reference(reference: dict[str, Any]) -> str:
    if not reference:
        return ""
    blocks = "".join(
        f"<div><i>{esc(str(k))}</i><pre style='white-space:pre-wrap;margin:0'>{esc(str(v))}</pre></div>"
        for k, v in reference.items()
    )
    return f"<div style='border:2px dashed #9e9e9e;padding:6px;height:100%'><b>Reference answer</b>{blocks}</div>"


def _render_prompt(item: ReviewItem) -> str:
    blocks = []
    for message in item.prompt.messages:
        role = esc(str(message.get("role", "user")))
        content = esc(str(message.get("content", "")))
        blocks.append(f"<div><b>{role}</b><pre style='white-space:pre-wrap;margin:0 0 4px 0'>{content}</pre></div>")
    return "<div style='border-left:3px solid #9e9e9e;padding-left:8px'>" + "".join(blocks) + "</div>"


__all__ = ["KEY_HELP", "ReviewWidget"]
