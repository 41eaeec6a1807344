/**
 * Keys typed in the review widget belong to the review widget.
 *
 * The widget (Python: `jupyter_distill.notebook.review_widget`, root CSS class `jd-review`)
 * reads keys through a text box (`.jd-review-keys input`). JupyterLab's notebook shortcuts run
 * from a capture-phase `keydown` listener on the document, so a click on the widget's header
 * followed by `x` would cut the whole cell, and `j`/`k` would move the notebook's selection.
 * Two listeners on `window` (whose capture phase runs before the document's) prevent that:
 *
 * - a click anywhere inside the widget, outside a control that takes typing, puts the focus in
 *   the key box (after the click's own handlers ran, so buttons still work);
 * - a `keydown` inside the widget without Ctrl or Cmd stops there: no notebook command sees it,
 *   while the browser still types the character into the focused box (its default action).
 *   Ctrl/Cmd combinations (save, undo in a text area) pass through as everywhere else.
 *
 * The "keys active" marker beside the key box follows the box's focus (style/reviewkeys.css).
 */
import type { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';

export const REVIEW_SELECTOR = '.jd-review';
export const KEY_BOX_SELECTOR = '.jd-review-keys input';
/** Controls that take typing or a choice themselves: a click there keeps its focus. */
export const TYPING_SELECTOR = 'input, textarea, select, [contenteditable=""], [contenteditable="true"]';

/** The part of a DOM element these listeners use (a real Element satisfies it). */
export interface ElementLike {
  closest(selector: string): ElementLike | null;
  querySelector(selector: string): ElementLike | null;
  focus?(options?: FocusOptions): void;
}

/** The part of a keyboard or mouse event these listeners use. */
export interface EventLike {
  target: unknown;
  ctrlKey?: boolean;
  metaKey?: boolean;
  stopPropagation(): void;
}

function asElement(target: unknown): ElementLike | null {
  const candidate = target as ElementLike | null;
  return candidate !== null && typeof candidate === 'object' && typeof candidate.closest === 'function'
    ? candidate
    : null;
}

/** The review widget that contains `target`, or null when the target is elsewhere. */
export function reviewRoot(target: unknown): ElementLike | null {
  return asElement(target)?.closest(REVIEW_SELECTOR) ?? null;
}

/** Whether a keydown must stay inside the review widget (inside it, and no Ctrl/Cmd). */
export function keepsKeyInReview(event: EventLike): boolean {
  if (event.ctrlKey || event.metaKey) {
    return false;
  }
  return reviewRoot(event.target) !== null;
}

/**
 * The key box a click on `target` should focus: the widget's own, unless the click landed in a
 * control that takes typing (the edit box, the rubric) or text is being selected for copying.
 */
export function keyBoxForClick(target: unknown, selectingText: boolean): ElementLike | null {
  const root = reviewRoot(target);
  if (root === null || selectingText) {
    return null;
  }
  const box = root.querySelector(KEY_BOX_SELECTOR);
  if (box === null || box === target) {
    return null;
  }
  if (asElement(target)?.closest(TYPING_SELECTOR)) {
    return null;
  }
  return box;
}

/** The keydown listener: stop the event before any notebook shortcut sees it. */
export function onKeydown(event: EventLike): void {
  if (keepsKeyInReview(event)) {
    event.stopPropagation();
  }
}

/** The click listener: focus the key box once the click's own handlers have run. */
export function onClick(
  event: EventLike,
  selectingText: boolean,
  later: (run: () => void) => void = run => setTimeout(run, 0)
): void {
  const box = keyBoxForClick(event.target, selectingText);
  if (box !== null) {
    later(() => box.focus?.({ preventScroll: true }));
  }
}

/** The part of `window` the listeners are installed on. */
export interface WindowLike {
  addEventListener(type: string, listener: (event: any) => void, capture: boolean): void;
  removeEventListener(type: string, listener: (event: any) => void, capture: boolean): void;
  getSelection?(): { isCollapsed: boolean } | null;
}

/** Install both listeners in the capture phase of `win`; returns the function that removes them. */
export function installReviewKeys(win: WindowLike): () => void {
  const keydown = (event: KeyboardEvent): void => onKeydown(event);
  const click = (event: MouseEvent): void => {
    const selection = win.getSelection?.() ?? null;
    onClick(event, selection !== null && !selection.isCollapsed);
  };
  win.addEventListener('keydown', keydown, true);
  win.addEventListener('click', click, true);
  return () => {
    win.removeEventListener('keydown', keydown, true);
    win.removeEventListener('click', click, true);
  };
}

export const reviewKeysPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-distill:review-keys',
  description: 'Keys typed in the review widget go to the widget, never to the notebook shortcuts.',
  autoStart: true,
  activate: (_app: JupyterFrontEnd) => {
    installReviewKeys(window);
  }
};
