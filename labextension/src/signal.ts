/**
 * The on-policy signal of a `jbond`/`onpolicy` run, shown next to its loss: a sparkline on the
 * run card and the latest value on the panel's run row.
 *
 * Why show it: the on-policy losses mix terms, so a falling loss does not say the student's own
 * answers got better; the win rate against the teacher's judged candidates (`jbond`) or the
 * per-token reverse KL to the teacher (`onpolicy`) does. The notebook dashboard plots the same
 * metric in its own panel (jupyter_distill/notebook/plot_svg.py). Kept out of card.ts so the card
 * only places it; the text helpers are pure and tested in node.
 */
import { IRunSignal, formatPercent, sparklinePath } from './format';

const SVG_NS = 'http://www.w3.org/2000/svg';

interface ISignalInfo {
  /** What the card and the run row call it. */
  label: string;
  /** Which way is good, for the tooltip. */
  better: 'higher' | 'lower';
  /** A 0..1 share, shown as a percentage. */
  rate: boolean;
  /** What it measures, for the tooltip. */
  help: string;
}

/**
 * The signals, keyed by metric name. Mirrors `ON_POLICY_SIGNALS` in
 * jupyter_distill/core/runcard.py; test/signal.test.ts checks that the names agree.
 */
export const SIGNALS: ReadonlyMap<string, ISignalInfo> = new Map([
  [
    'win_rate',
    {
      label: 'win rate',
      better: 'higher',
      rate: true,
      help: "how often the judge ranks the student's own answer above the teacher's candidates"
    }
  ],
  [
    'reverse_kl',
    {
      label: 'reverse KL',
      better: 'lower',
      rate: false,
      help: "per-token KL from the teacher on the student's own tokens"
    }
  ],
  [
    'reward',
    {
      label: 'reward',
      better: 'higher',
      rate: false,
      help: "the quantile reward of the student's own answers among the teacher's candidates"
    }
  ]
]);

/** The name a signal is shown under; an unknown one (a newer kernel's) keeps its metric name. */
export function signalLabel(name: string): string {
  return SIGNALS.get(name)?.label ?? name.replace(/_/g, ' ');
}

/** A value of the signal: a percentage for rates, three decimals otherwise, a dash when unknown. */
export function formatSignal(name: string, value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) {
    return '—';
  }
  return SIGNALS.get(name)?.rate ? formatPercent(value) : value.toFixed(3);
}

/** The latest value of the signal, or null without one. */
export function lastSignal(signal: IRunSignal | undefined): number | null {
  if (signal === undefined || signal.points.length === 0) {
    return null;
  }
  return signal.points[signal.points.length - 1][1];
}

/** "win rate 42%" for the panel's run row; null for runs without a signal (sft, bond). */
export function signalLine(signal: IRunSignal | undefined): string | null {
  const last = lastSignal(signal);
  if (signal === undefined || last === null) {
    return null;
  }
  return `${signalLabel(signal.name)} ${formatSignal(signal.name, last)}`;
}

/** The tooltip: what the signal measures, which way is better, and the step of the latest value. */
export function signalTitle(signal: IRunSignal): string {
  const info = SIGNALS.get(signal.name);
  const step = signal.points.length > 0 ? signal.points[signal.points.length - 1][0] : null;
  const parts = info ? [`${info.label}: ${info.help}`, `${info.better} is better`] : [signalLabel(signal.name)];
  if (step !== null) {
    parts.push(`latest at step ${step}`);
  }
  return parts.join('; ');
}

/** An inline SVG sparkline of the signal, with the same geometry as the loss sparkline. */
export function signalSparkline(signal: IRunSignal, width = 160, height = 32): SVGSVGElement {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('class', 'jp-Distill-sparkline jp-Distill-signal-sparkline');
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(height));
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', signalLine(signal) ?? `no ${signalLabel(signal.name)} yet`);
  svg.dataset.signal = signal.name;
  const d = sparklinePath(signal.points, width, height, 2);
  if (d) {
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', d);
    path.setAttribute('fill', 'none');
    path.setAttribute('stroke-width', '1.5');
    svg.appendChild(path);
  }
  return svg;
}

/** The card's cell: the sparkline and the latest value, with what it means as the tooltip. */
export function signalCell(signal: IRunSignal): HTMLElement {
  const cell = document.createElement('span');
  cell.className = 'jp-Distill-card-signal';
  cell.title = signalTitle(signal);
  cell.appendChild(signalSparkline(signal));
  const value = document.createElement('span');
  value.textContent = ` ${formatSignal(signal.name, lastSignal(signal))}`;
  cell.appendChild(value);
  return cell;
}

/** The run row's latest value ("win rate 42%"), or null for runs without a signal. */
export function signalBadge(signal: IRunSignal | undefined): HTMLElement | null {
  const line = signalLine(signal);
  if (signal === undefined || line === null) {
    return null;
  }
  const badge = document.createElement('span');
  badge.className = 'jp-Distill-run-signal';
  badge.dataset.signal = signal.name;
  badge.title = signalTitle(signal);
  badge.textContent = line;
  return badge;
}
