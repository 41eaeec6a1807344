import * as fs from 'fs';
import * as path from 'path';

import { parseRunSummary, parseSignal, sparklinePath } from '../src/format';
import { formatSignal, lastSignal, signalLabel, signalLine, signalTitle, SIGNALS } from '../src/signal';

const jbondCard = {
  id: 'tickets-jbond',
  status: 'running',
  phase: 'training',
  loss: [
    [1, 2.5],
    [2, 2.1]
  ],
  signal: {
    name: 'win_rate',
    points: [
      [1, 0.25],
      [2, 0.5],
      [3, 0.625]
    ]
  }
};

describe('parseSignal', () => {
  it('keeps the name and the points of an on-policy card', () => {
    const run = parseRunSummary(jbondCard)!;
    expect(run.signal).toEqual({
      name: 'win_rate',
      points: [
        [1, 0.25],
        [2, 0.5],
        [3, 0.625]
      ]
    });
  });

  it('leaves the field out for bond cards and cards saved before it existed', () => {
    const bond = parseRunSummary({ ...jbondCard, signal: undefined })!;
    expect('signal' in bond).toBe(false);
    const saved = JSON.parse(
      fs.readFileSync(path.join(__dirname, '..', '..', 'tests', 'fixtures', 'run_card.json'), 'utf8')
    );
    expect(parseRunSummary(saved)!.signal).toBeUndefined();
  });

  it('drops a signal with no name or no usable point, and bad points inside one', () => {
    expect(parseSignal({ points: [[1, 0.5]] })).toBeUndefined();
    expect(parseSignal({ name: 'win_rate', points: [] })).toBeUndefined();
    expect(parseSignal({ name: 'win_rate', points: [[1, null], ['x', 2]] })).toBeUndefined();
    expect(parseSignal('win_rate')).toBeUndefined();
    expect(parseSignal({ name: 'reverse_kl', points: [[1, null], [2, 0.9]] })).toEqual({
      name: 'reverse_kl',
      points: [[2, 0.9]]
    });
  });
});

describe('signal text', () => {
  it('shows a win rate as a percentage and a KL or reward with three decimals', () => {
    expect(formatSignal('win_rate', 0.625)).toBe('63%');
    expect(formatSignal('reverse_kl', 0.91234)).toBe('0.912');
    expect(formatSignal('reward', -0.4)).toBe('-0.400');
    expect(formatSignal('win_rate', null)).toBe('—');
    expect(formatSignal('reverse_kl', Number.NaN)).toBe('—');
  });

  it('says the latest value on the run row, and nothing without a signal', () => {
    const run = parseRunSummary(jbondCard)!;
    expect(lastSignal(run.signal)).toBe(0.625);
    expect(signalLine(run.signal)).toBe('win rate 63%');
    expect(signalLine({ name: 'reverse_kl', points: [[4, 1.5]] })).toBe('reverse KL 1.500');
    expect(signalLine(undefined)).toBeNull();
    expect(lastSignal({ name: 'reward', points: [] })).toBeNull();
    expect(signalLine({ name: 'reward', points: [] })).toBeNull();
  });

  it('names an unknown signal by its metric and never looks it up on the prototype', () => {
    expect(signalLabel('pass_at_k')).toBe('pass at k');
    expect(signalLabel('constructor')).toBe('constructor');
    expect(formatSignal('constructor', 0.5)).toBe('0.500');
  });

  it('explains what the signal measures and which way is better', () => {
    const title = signalTitle({ name: 'reverse_kl', points: [[7, 0.2]] });
    expect(title).toContain("student's own tokens");
    expect(title).toContain('lower is better');
    expect(title).toContain('step 7');
    expect(signalTitle({ name: 'win_rate', points: [[1, 0.1]] })).toContain('higher is better');
  });

  it('knows exactly the on-policy signals of core/runcard.py', () => {
    const source = fs.readFileSync(
      path.join(__dirname, '..', '..', 'jupyter_distill', 'core', 'runcard.py'),
      'utf8'
    );
    const match = /ON_POLICY_SIGNALS: tuple\[str, \.\.\.\] = \(([^)]*)\)/.exec(source);
    expect(match).not.toBeNull();
    const names = Array.from(match![1].matchAll(/"(\w+)"/g), m => m[1]);
    expect(Array.from(SIGNALS.keys())).toEqual(names);
  });
});

describe('signal sparkline geometry', () => {
  it('draws a rising win rate upwards through every point', () => {
    const run = parseRunSummary(jbondCard)!;
    const d = sparklinePath(run.signal!.points, 160, 32, 2);
    expect(d).toBe('M0 30 L80 11.33 L160 2');
  });
});
