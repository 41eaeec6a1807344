/**
 * DOM for one run: used by the panel's run list and by the MIME renderer, so a saved
 * notebook output and the live panel look the same. Plain DOM keeps the bundle small and
 * lets the renderer work with no kernel and no React.
 */
import {
  IRunSummary,
  formatCost,
  formatPercent,
  passRateLine,
  progressLabel,
  resumeHint,
  sparklinePath,
  timeAgo
} from './format';
import { signalBadge, signalCell, signalLabel } from './signal';

const SVG_NS = 'http://www.w3.org/2000/svg';

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** An inline SVG sparkline of the loss; an empty placeholder of the same size when no points. */
export function sparkline(points: Array<[number, number]>, width = 96, height = 24): SVGSVGElement {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('class', 'jp-Distill-sparkline');
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(height));
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  const last = points.length > 0 ? points[points.length - 1][1] : null;
  svg.setAttribute('aria-label', last === null ? 'no loss yet' : `loss ${last.toFixed(3)}`);
  const d = sparklinePath(points, width, height, 2);
  if (d) {
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', d);
    path.setAttribute('fill', 'none');
    path.setAttribute('stroke-width', '1.5');
    svg.appendChild(path);
  }
  return svg;
}

function progressBar(fraction: number, label: string): HTMLElement {
  const bar = el('div', 'jp-Distill-progress');
  bar.setAttribute('role', 'progressbar');
  bar.setAttribute('aria-valuemin', '0');
  bar.setAttribute('aria-valuemax', '100');
  bar.setAttribute('aria-valuenow', String(Math.round(fraction * 100)));
  bar.setAttribute('aria-label', label);
  const fill = el('div', 'jp-Distill-progress-fill');
  fill.style.width = `${Math.round(fraction * 100)}%`;
  bar.appendChild(fill);
  return bar;
}

/** A compact row for the panel: name, status/phase, progress, cost, loss sparkline, pass rates. */
export function runRow(run: IRunSummary): HTMLElement {
  const row = el('li', `jp-Distill-run jp-Distill-status-${run.status}`);
  row.dataset.runId = run.id;
  const head = el('div', 'jp-Distill-run-head');
  head.appendChild(el('span', 'jp-Distill-run-name', run.id));
  head.appendChild(el('span', 'jp-Distill-run-phase', progressLabel(run)));
  row.appendChild(head);
  row.appendChild(progressBar(run.progress.overall, `${run.id} progress`));
  const stats = el('div', 'jp-Distill-run-stats');
  stats.appendChild(el('span', 'jp-Distill-run-cost', formatCost(run.cost)));
  stats.appendChild(sparkline(run.loss));
  const signal = signalBadge(run.signal);
  if (signal !== null) {
    stats.appendChild(signal);
  }
  stats.appendChild(el('span', 'jp-Distill-run-pass', passRateLine(run.pass_rates)));
  row.appendChild(stats);
  if (run.error) {
    row.appendChild(el('div', 'jp-Distill-run-error', run.error));
  }
  return row;
}

/** The run summary card: what the MIME renderer shows for a run's output in a notebook. */
export function runCard(run: IRunSummary, nowMs: number = Date.now()): HTMLElement {
  const card = el('div', `jp-Distill-card jp-Distill-status-${run.status}`);
  card.dataset.runId = run.id;
  const head = el('div', 'jp-Distill-card-head');
  head.appendChild(el('span', 'jp-Distill-card-title', run.id));
  head.appendChild(el('span', 'jp-Distill-badge', run.status));
  card.appendChild(head);

  card.appendChild(progressBar(run.progress.overall, `${run.id} progress`));
  const table = el('dl', 'jp-Distill-card-facts');
  const fact = (name: string, value: string | Node): void => {
    table.appendChild(el('dt', '', name));
    const dd = el('dd', '');
    if (typeof value === 'string') {
      dd.textContent = value;
    } else {
      dd.appendChild(value);
    }
    table.appendChild(dd);
  };
  fact('phase', progressLabel(run));
  fact('teacher cost', formatCost(run.cost));
  const lastLoss = run.last_loss !== null ? run.last_loss.toFixed(4) : '—';
  const lossCell = el('span', 'jp-Distill-card-loss');
  lossCell.appendChild(sparkline(run.loss, 160, 32));
  lossCell.appendChild(el('span', '', ` ${lastLoss}`));
  fact('loss', lossCell);
  if (run.signal) {
    fact(signalLabel(run.signal.name), signalCell(run.signal));
  }
  fact('pass@1 before', formatPercent(run.pass_rates.student_before?.pass_rate));
  fact('pass@1 after', formatPercent(run.pass_rates.student_after?.pass_rate));
  if (run.pass_rates.teacher_best_of_n) {
    fact('teacher best-of-N', formatPercent(run.pass_rates.teacher_best_of_n.pass_rate));
  }
  if (run.alias) {
    fact('alias', run.alias);
  }
  if (run.updated_at !== null) {
    fact('updated', timeAgo(run.updated_at, nowMs));
  }
  const hint = resumeHint(run);
  if (hint !== null) {
    fact('resume', hint);
  }
  card.appendChild(table);
  if (run.error) {
    card.appendChild(el('div', 'jp-Distill-run-error', run.error));
  }
  if (run.snippet) {
    card.appendChild(el('pre', 'jp-Distill-card-snippet', run.snippet));
  }
  return card;
}
