"""Re-judge a run with an edited rubric from the review widget, and compare the agreement.

A reviewer who sees the judge disagree with them wants to try a better rubric before training
on the judge's picks. This panel holds the rubric in a text area (the run's own rubric, or the
judge's default), re-judges the reviewed prompts with the edited text through
:func:`jupyter_distill.pipeline.calibration.rejudge`, and shows the agreement with the review
before and after. An LLM judge's id contains a hash of its rubric, so the new verdicts are
stored beside the old ones: nothing is overwritten, and a re-run with the new rubric re-uses them.

Re-judging sends requests to the judge model, so it runs on a background thread; the panel only
changes widget traits from there.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from jupyter_distill.core.errors import DistillError
from jupyter_distill.core.store import RunStore
from jupyter_distill.judging.agreement import Agreement
from jupyter_distill.judging.llm_judge import DEFAULT_RUBRIC


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _kappa(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def agreement_line(before: Agreement | None, after: Agreement) -> str:
    """One sentence comparing two judges' agreement with the same review (plain text)."""
    now = f"{_rate(after.agreement)} (kappa {_kappa(after.kappa)}, top pick {_rate(after.top_pick_agreement)})"
    if before is None:
        return f"edited rubric: {now} over {after.reviewed_prompts} reviewed prompts"
    was = f"{_rate(before.agreement)} (kappa {_kappa(before.kappa)}, top pick {_rate(before.top_pick_agreement)})"
    over = f"agreement with your review over {after.reviewed_prompts} reviewed prompts"
    return f"{over}: run's judge {was} -> edited rubric {now}"


class RubricPanel(widgets.VBox):
    """The rubric editor of the review widget: ``show()``, edit, ``start()``; ``hide()`` hides it.

    ``run`` is what :func:`~jupyter_distill.pipeline.calibration.rejudge` accepts (a ``Run`` or
    the run's name, looked up in ``store.workdir``). ``on_done`` callables get the new
    :class:`~jupyter_distill.judging.agreement.Agreement` after a successful re-judge.
    """

    def __init__(
        self, store: RunStore, run_id: str, *, run: Any = None, on_done: list[Callable[[Agreement], Any]] | None = None
    ):
        self.store = store
        self.run_id = run_id
        self.run = run
        self.on_done: list[Callable[[Agreement], Any]] = list(on_done or [])
        self.thread: threading.Thread | None = None
        self._start_lock = threading.Lock()  # two clicks (or callers) never start two re-judges
        self.before: Agreement | None = None
        self.after: Agreement | None = None
        self.title = widgets.HTML(
            "<b>Re-judge with an edited rubric</b> (the reviewed prompts are judged again; the old "
            "judgments stay in the store)"
        )
        self.editor = widgets.Textarea(layout=widgets.Layout(width="100%", height="9em"))
        self.editor.add_class("jd-review-rubric")
        self.judge_button = widgets.Button(
            description="re-judge reviewed prompts", button_style="primary", layout=widgets.Layout(width="auto")
        )
        self.close_button = widgets.Button(description="close", layout=widgets.Layout(width="auto"))
        self.result = widgets.HTML()
        self.judge_button.on_click(lambda _b: self.start())
        self.close_button.on_click(lambda _b: self.hide())
        super().__init__(
            [self.title, self.editor, widgets.HBox([self.judge_button, self.close_button]), self.result],
            layout=widgets.Layout(display="none", border="1px solid #9e9e9e", padding="6px", margin="4px 0"),
        )

    @property
    def is_open(self) -> bool:
        return self.layout.display != "none"

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _target(self) -> tuple[Any, Any]:
        """``(run, workdir)`` as the calibration functions take them."""
        if self.run is not None:
            return self.run, None
        return self.run_id, self.store.workdir

    def current_rubric(self) -> str:
        """The rubric the run was judged with: the loaded judge's, the stored config's, else the default."""
        loaded = getattr(self.run, "_loaded_judge", None)
        rubric = getattr(loaded, "rubric", None)
        if isinstance(rubric, str) and rubric.strip():
            return rubric
        stored = ((self.store.get_run(self.run_id) or {}).get("config") or {}).get("rubric")
        if isinstance(stored, str) and stored.strip():
            return stored
        return DEFAULT_RUBRIC

    def show(self) -> None:
        """Show the editor (with the current rubric the first time) and the agreement so far."""
        if not self.editor.value.strip():
            self.editor.value = self.current_rubric()
        self.layout.display = "flex"
        if self.busy:
            return
        from jupyter_distill.pipeline.calibration import judge_agreement

        run, workdir = self._target()
        try:
            self.before = judge_agreement(run, workdir=workdir)
        except DistillError as exc:
            self._show(f"the run's agreement cannot be computed: {exc}", error=True)
            return
        if not self.before.reviewed_prompts:
            self._show("no prompt is reviewed yet: review a few first, the agreement compares the judge with you")
        else:
            self._show(
                f"run's judge now: {_rate(self.before.agreement)} agreement (kappa {_kappa(self.before.kappa)}) "
                f"with your review over {self.before.reviewed_prompts} reviewed prompts"
            )

    def hide(self) -> None:
        self.layout.display = "none"

    def start(self, *, background: bool = True) -> threading.Thread | None:
        """Re-judge the reviewed prompts with the editor's rubric (on a thread unless ``background=False``).

        While one re-judge runs, another start is refused (and returns the running thread).
        """
        with self._start_lock:
            return self._start(background)

    def _start(self, background: bool) -> threading.Thread | None:
        if self.busy:
            self._show("a re-judge is already running", error=True)
            return self.thread
        rubric = self.editor.value
        if not rubric.strip():
            self._show("the rubric is empty: describe what a good answer is, then re-judge", error=True)
            return None
        if self.before is None or not self.before.reviewed_prompts:
            self.show()
            if self.before is None or not self.before.reviewed_prompts:
                return None
        self.judge_button.disabled = True
        self._show(f"re-judging the candidates of {self.before.reviewed_prompts} reviewed prompts ...")
        if not background:
            self._work(rubric)
            return None
        self.thread = threading.Thread(target=self._work, args=(rubric,), name=f"rejudge-{self.run_id}", daemon=True)
        self.thread.start()
        return self.thread

    def _work(self, rubric: str) -> None:
        from jupyter_distill.pipeline.calibration import rejudge

        run, workdir = self._target()
        try:
            after = rejudge(run, rubric, workdir=workdir)
        except Exception as exc:  # a judge model that fails must show here, not kill the thread silently
            self._show(f"re-judging failed: {exc}", error=True)
            return
        finally:
            self.judge_button.disabled = False
        self.after = after
        self._show(
            agreement_line(self.before, after)
            + f". Both rubrics' judgments are in the store (new judge {after.judge}); to train with the edited "
            "rubric, re-run the run with rubric: set to this text (its judgments are re-used)."
        )
        for callback in list(self.on_done):
            try:
                callback(after)
            except Exception as exc:  # show it; the result above stays
                self._show(f"{agreement_line(self.before, after)}; then: {exc}", error=True)

    def _show(self, message: str, *, error: bool = False) -> None:
        colour = "#c62828" if error else "inherit"
        self.result.value = f"<span style='color:{colour}'>{html.escape(message)}</span>"


__all__ = ["RubricPanel", "agreement_line"]
