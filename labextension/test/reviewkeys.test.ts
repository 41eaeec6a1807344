import {
  ElementLike,
  installReviewKeys,
  keepsKeyInReview,
  keyBoxForClick,
  onClick,
  onKeydown,
  reviewRoot
} from '../src/reviewkeys';

/**
 * A small element tree with the two DOM calls the listeners make (`closest`, `querySelector`)
 * for the selector shapes they use: tag, `.class`, `[attr="value"]`, comma lists, and one
 * descendant combinator. Jest runs in node here (no DOM), and the browser test drives the real one.
 */
class Node implements ElementLike {
  parent: Node | null = null;
  children: Node[] = [];
  focused = 0;
  constructor(
    readonly tag: string,
    readonly classes: string[] = [],
    readonly attrs: Record<string, string> = {}
  ) {}

  add(...children: Node[]): Node {
    for (const child of children) {
      child.parent = this;
      this.children.push(child);
    }
    return this;
  }

  matchesSimple(selector: string): boolean {
    const attr = /^\[([\w-]+)="([^"]*)"\]$/.exec(selector);
    if (attr) {
      return this.attrs[attr[1]] === attr[2];
    }
    if (selector.startsWith('.')) {
      return this.classes.includes(selector.slice(1));
    }
    return this.tag === selector;
  }

  matches(selector: string): boolean {
    return selector.split(',').some(part => {
      const steps = part.trim().split(/\s+/);
      if (!this.matchesSimple(steps[steps.length - 1])) {
        return false;
      }
      if (steps.length === 1) {
        return true;
      }
      for (let up = this.parent; up !== null; up = up.parent) {
        if (up.matchesSimple(steps[0])) {
          return true;
        }
      }
      return false;
    });
  }

  closest(selector: string): Node | null {
    for (let node: Node | null = this; node !== null; node = node.parent) {
      if (node.matches(selector)) {
        return node;
      }
    }
    return null;
  }

  querySelector(selector: string): Node | null {
    for (const child of this.children) {
      if (child.matches(selector)) {
        return child;
      }
      const found = child.querySelector(selector);
      if (found !== null) {
        return found;
      }
    }
    return null;
  }

  focus(): void {
    this.focused += 1;
  }
}

/** A notebook cell whose output holds a review widget, laid out as ipywidgets renders it. */
function page() {
  const header = new Node('div', ['widget-html']);
  const button = new Node('button', ['widget-button']);
  const keyInput = new Node('input');
  const keyBox = new Node('div', ['widget-text', 'jd-review-keys']).add(keyInput);
  const editor = new Node('textarea');
  const editable = new Node('div', [], { contenteditable: 'true' });
  const review = new Node('div', ['jd-review']).add(header, button, keyBox, new Node('div').add(editor), editable);
  const cell = new Node('div', ['jp-Cell']).add(new Node('div', ['jp-OutputArea']).add(review));
  const other = new Node('div', ['jp-Cell']);
  new Node('div', ['jp-Notebook']).add(cell, other);
  return { header, button, keyInput, keyBox, editor, editable, review, cell, other };
}

function keydown(target: unknown, modifiers: { ctrlKey?: boolean; metaKey?: boolean } = {}) {
  return { target, ...modifiers, stopped: 0, stopPropagation() { this.stopped += 1; } };
}

describe('review widget keys', () => {
  it('finds the review widget around a target, and nothing outside it', () => {
    const p = page();
    expect(reviewRoot(p.header)).toBe(p.review);
    expect(reviewRoot(p.keyInput)).toBe(p.review);
    expect(reviewRoot(p.cell)).toBeNull();
    expect(reviewRoot(null)).toBeNull();
    expect(reviewRoot('not an element')).toBeNull();
  });

  it('stops plain keys typed inside the widget before the notebook sees them', () => {
    const p = page();
    for (const target of [p.keyInput, p.header, p.editor]) {
      const event = keydown(target);
      onKeydown(event);
      expect(event.stopped).toBe(1);
    }
    const outside = keydown(p.other);
    onKeydown(outside);
    expect(outside.stopped).toBe(0); // `x` on another cell still cuts that cell
  });

  it('lets Ctrl and Cmd combinations through (save, undo)', () => {
    const p = page();
    expect(keepsKeyInReview(keydown(p.keyInput, { ctrlKey: true }))).toBe(false);
    expect(keepsKeyInReview(keydown(p.keyInput, { metaKey: true }))).toBe(false);
    expect(keepsKeyInReview(keydown(p.keyInput))).toBe(true);
  });

  it('moves the focus to the key box on a click in the widget, but not into typing controls', () => {
    const p = page();
    expect(keyBoxForClick(p.header, false)).toBe(p.keyInput);
    expect(keyBoxForClick(p.button, false)).toBe(p.keyInput);
    expect(keyBoxForClick(p.review, false)).toBe(p.keyInput);
    expect(keyBoxForClick(p.editor, false)).toBeNull(); // the edit box keeps its focus
    expect(keyBoxForClick(p.editable, false)).toBeNull();
    expect(keyBoxForClick(p.keyInput, false)).toBeNull(); // already there
    expect(keyBoxForClick(p.header, true)).toBeNull(); // the user is selecting text to copy
    expect(keyBoxForClick(p.other, false)).toBeNull();
  });

  it('focuses only after the click has been handled', () => {
    const p = page();
    const queued: Array<() => void> = [];
    onClick(keydown(p.header), false, run => queued.push(run));
    expect(p.keyInput.focused).toBe(0);
    queued.forEach(run => run());
    expect(p.keyInput.focused).toBe(1);
    onClick(keydown(p.other), false, run => queued.push(run));
    expect(queued.length).toBe(1);
  });

  it('installs both listeners in the capture phase and removes them again', () => {
    const added: Array<[string, boolean]> = [];
    const removed: Array<[string, boolean]> = [];
    const win = {
      addEventListener: (type: string, _l: unknown, capture: boolean) => added.push([type, capture]),
      removeEventListener: (type: string, _l: unknown, capture: boolean) => removed.push([type, capture]),
      getSelection: () => ({ isCollapsed: true })
    };
    const uninstall = installReviewKeys(win);
    expect(added).toEqual([
      ['keydown', true],
      ['click', true]
    ]);
    uninstall();
    expect(removed).toEqual(added);
  });
});
