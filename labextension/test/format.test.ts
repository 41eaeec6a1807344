import * as fs from 'fs';
import * as path from 'path';

import {
  DISTILL_SETUP_TEMPLATE,
  DISTILL_TEMPLATE,
  formatCost,
  formatPercent,
  needsLoadExt,
  parseAliases,
  parseRunList,
  parseRunSummary,
  parseSeries,
  RUN_RENDERER_RANK,
  emptyRunsMessage,
  passRateLine,
  progressLabel,
  resumeHint,
  sparklinePath,
  templateCells,
  timeAgo
} from '../src/format';

const liveRun = {
  id: 'tickets',
  status: 'running',
  phase: 'training',
  created_at: 1000,
  updated_at: 1990,
  live: true,
  progress: { phase: 'training', fraction: 0.4, overall: 0.49, current: 40, total: 100 },
  cost: 0.0123,
  loss: [
    [1, 2.5],
    [2, 2.0],
    [3, 1.5]
  ],
  pass_rates: { student_before: { n: 10, pass_rate: 0.2, mean_score: 0.3 } },
  alias: null,
  error: null
};

describe('parseRunSummary', () => {
  it('keeps every field of a server summary', () => {
    const run = parseRunSummary(liveRun)!;
    expect(run.id).toBe('tickets');
    expect(run.live).toBe(true);
    expect(run.progress).toEqual(liveRun.progress);
    expect(run.loss).toEqual([
      [1, 2.5],
      [2, 2.0],
      [3, 1.5]
    ]);
    expect(run.pass_rates.student_before.pass_rate).toBe(0.2);
    expect(run.last_loss).toBe(1.5);
    expect(run.snippet).toBeNull();
  });

  it('rejects data without a run id', () => {
    expect(parseRunSummary({ status: 'done' })).toBeNull();
    expect(parseRunSummary('tickets')).toBeNull();
    expect(parseRunSummary(null)).toBeNull();
    expect(parseRunSummary([liveRun])).toBeNull();
  });

  it('fills defaults for the fields a minimal finished card leaves out', () => {
    const run = parseRunSummary({
      id: 'old',
      status: 'done',
      phase: 'done',
      cost: 1.5,
      alias: 'ticket-classifier',
      pass_rates: {
        student_before: { n: 8, pass_rate: 0.25, mean_score: 0.3 },
        student_after: { n: 8, pass_rate: 0.875, mean_score: 0.9 }
      }
    })!;
    expect(run.id).toBe('old');
    expect(run.live).toBe(false);
    expect(run.cost).toBe(1.5);
    expect(run.alias).toBe('ticket-classifier');
    expect(run.progress.overall).toBe(1);
    expect(run.pass_rates.student_after.pass_rate).toBe(0.875);
    expect(run.loss).toEqual([]);
  });

  it('reads the kernel card (version, snippet, pass rates as objects)', () => {
    const run = parseRunSummary({
      version: 1,
      id: 'tickets',
      status: 'done',
      phase: 'done',
      created_at: 1,
      updated_at: 2,
      live: false,
      progress: { phase: 'done', fraction: 1, overall: 1, current: null, total: null },
      cost: 0.25,
      loss: [
        [1, 2.1],
        [60, 0.4321]
      ],
      pass_rates: {
        student_before: { n: 20, pass_rate: 0.2, mean_score: null },
        teacher_best_of_n: { n: 20, pass_rate: 0.35, mean_score: null }
      },
      alias: 'ticket-classifier',
      error: null,
      snippet: 'jd.completion(model="ticket-classifier", messages=[...])'
    })!;
    expect(run.id).toBe('tickets');
    expect(run.status).toBe('done');
    expect(run.updated_at).toBe(2);
    expect(run.cost).toBe(0.25);
    expect(run.loss).toEqual([
      [1, 2.1],
      [60, 0.4321]
    ]);
    expect(run.last_loss).toBe(0.4321);
    expect(run.pass_rates.student_before.pass_rate).toBe(0.2);
    expect(run.pass_rates.teacher_best_of_n.pass_rate).toBe(0.35);
    expect(run.pass_rates.student_after).toBeUndefined();
    expect(run.alias).toBe('ticket-classifier');
    expect(run.snippet).toContain('jd.completion');
  });

  it('does not guess at other shapes: a payload without a top-level id is not a card', () => {
    expect(parseRunSummary({ version: 1, run: { id: 'tickets', status: 'done' } })).toBeNull();
    const bare = parseRunSummary({ id: 'x', pass_rates: { student_before: 0.2 } })!;
    expect(bare.pass_rates).toEqual({});
  });

  it('treats non-finite and mistyped numbers as missing and clamps progress', () => {
    const run = parseRunSummary({
      id: 'x',
      status: 'running',
      cost: 'a lot',
      progress: { phase: 'sampling', fraction: 7, overall: -1, current: 'n', total: Infinity }
    })!;
    expect(run.cost).toBe(0);
    expect(run.progress.fraction).toBe(1);
    expect(run.progress.overall).toBe(0);
    expect(run.progress.current).toBeNull();
    expect(run.progress.total).toBeNull();
    expect(run.live).toBe(true);
  });
});

describe('parseSeries', () => {
  it('accepts pairs and bare values and drops junk', () => {
    expect(parseSeries([[0, 1], [1, 'x'], [2, 3]])).toEqual([
      [0, 1],
      [2, 3]
    ]);
    expect(parseSeries([3, 2, null, 1])).toEqual([
      [0, 3],
      [1, 2],
      [3, 1]
    ]);
    expect(parseSeries('nope')).toEqual([]);
  });
});

describe('parseRunList / parseAliases', () => {
  it('skips runs it cannot read and keeps the poll interval', () => {
    const list = parseRunList({ workdir: '/w', poll_interval: 1.5, runs: [liveRun, { status: 'x' }] });
    expect(list.workdir).toBe('/w');
    expect(list.poll_interval).toBe(1.5);
    expect(list.runs.map(r => r.id)).toEqual(['tickets']);
    expect(parseRunList(undefined)).toEqual({ workdir: '', poll_interval: 2, runs: [] });
  });

  it('reads alias rows by name', () => {
    const aliases = parseAliases({
      aliases: [{ name: 'a', backend: 'gguf', model_path: '/m.gguf' }, { backend: 'peft' }, 'b']
    });
    expect(aliases).toEqual([{ name: 'a', backend: 'gguf', model_path: '/m.gguf', base_model: null }]);
  });
});

describe('formatting', () => {
  it('formats costs for cheap and ordinary runs', () => {
    expect(formatCost(0)).toBe('$0');
    expect(formatCost(-1)).toBe('$0');
    expect(formatCost(NaN)).toBe('$0');
    expect(formatCost(0.000123)).toBe('$0.00012');
    expect(formatCost(1.234)).toBe('$1.23');
  });

  it('formats rates', () => {
    expect(formatPercent(0.875)).toBe('88%');
    expect(formatPercent(null)).toBe('—');
    expect(formatPercent(undefined)).toBe('—');
  });

  it('writes pass rates before -> after with the teacher', () => {
    expect(passRateLine({})).toBe('no eval yet');
    expect(
      passRateLine({
        student_before: { n: 10, pass_rate: 0.2, mean_score: null },
        student_after: { n: 10, pass_rate: 0.9, mean_score: null },
        teacher_best_of_n: { n: 10, pass_rate: 0.35, mean_score: null }
      })
    ).toBe('pass 20% → 90% (best-of-N 35%)');
    expect(passRateLine({ student_before: { n: 10, pass_rate: 0.2, mean_score: null } })).toBe(
      'pass 20% → —'
    );
  });

  it('labels progress by status and phase', () => {
    const run = parseRunSummary(liveRun)!;
    expect(progressLabel(run)).toBe('training 40/100');
    expect(progressLabel({ ...run, status: 'done' })).toBe('done');
    expect(progressLabel({ ...run, status: 'failed' })).toBe('failed in training');
    expect(progressLabel({ ...run, status: 'waiting-review' })).toBe('waiting for review');
    expect(progressLabel({ ...run, progress: { ...run.progress, current: null } })).toBe('training');
  });

  it('says how long ago', () => {
    expect(timeAgo(null)).toBe('');
    expect(timeAgo(100, 130_000)).toBe('30s ago');
    expect(timeAgo(0, 7_200_000)).toBe('2h ago');
    expect(timeAgo(0, 3 * 86_400_000)).toBe('3d ago');
    expect(timeAgo(200, 100_000)).toBe('0s ago');
  });
});

describe('sparklinePath', () => {
  it('maps the first step to x=0, the last to the width, the max value to the top', () => {
    const d = sparklinePath(
      [
        [0, 3],
        [1, 1],
        [2, 2]
      ],
      100,
      20,
      0
    );
    expect(d).toBe('M0 0 L50 20 L100 10');
  });

  it('keeps the padding free', () => {
    const d = sparklinePath(
      [
        [0, 1],
        [10, 0]
      ],
      10,
      10,
      2
    );
    expect(d).toBe('M0 2 L10 8');
  });

  it('draws flat and single-point series through the middle and nothing for no points', () => {
    expect(sparklinePath([[5, 1]], 40, 10)).toBe('M0 5 L40 5');
    expect(
      sparklinePath(
        [
          [0, 1],
          [1, 1]
        ],
        40,
        10
      )
    ).toBe('M0 5 L40 5');
    expect(sparklinePath([], 40, 10)).toBe('');
    expect(sparklinePath([[0, NaN]], 40, 10)).toBe('');
    expect(sparklinePath([[0, 1]], 0, 10)).toBe('');
  });
});

describe('template', () => {
  it('is a %%distill cell naming every required key', () => {
    const lines = DISTILL_TEMPLATE.split('\n');
    expect(lines[0]).toMatch(/^%%distill \S+$/);
    for (const key of ['dataset', 'teacher', 'student']) {
      expect(lines.some(line => line.startsWith(`${key}:`))).toBe(true);
    }
  });

  it('is a runnable example: data and judge from the setup cell, small settings', () => {
    const lines = DISTILL_TEMPLATE.split('\n');
    const value = (key: string): string | undefined =>
      lines
        .find(line => line.startsWith(`${key}:`))
        ?.slice(key.length + 1)
        .split('#')[0]
        .trim();
    expect(value('dataset')).toBe('$rows');
    expect(value('judge')).toBe('$verify');
    expect(Number(value('steps'))).toBeLessThanOrEqual(30);
    expect(DISTILL_SETUP_TEMPLATE).toMatch(/^rows = /m);
    expect(DISTILL_SETUP_TEMPLATE).toMatch(/^verify = /m);
    expect(DISTILL_TEMPLATE).not.toMatch(/prompts\.jsonl/);
  });

  it('inserts load_ext, the setup cell and the %%distill cell in that order', () => {
    expect(templateCells([])).toEqual(['%load_ext jupyter_distill', DISTILL_SETUP_TEMPLATE, DISTILL_TEMPLATE]);
    expect(templateCells(['%load_ext jupyter_distill'])).toEqual([DISTILL_SETUP_TEMPLATE, DISTILL_TEMPLATE]);
  });

  it('asks for %load_ext only when no cell loads it', () => {
    expect(needsLoadExt([])).toBe(true);
    expect(needsLoadExt(['import os', '%load_ext  other'])).toBe(true);
    expect(needsLoadExt(['x = 1\n%load_ext jupyter_distill\n'])).toBe(false);
  });
});

describe('resume hint', () => {
  it('uses the magic for stopped and failed runs only', () => {
    const run = parseRunSummary({ ...liveRun, status: 'stopped' })!;
    expect(resumeHint(run)).toBe('%distill resume tickets');
    expect(resumeHint({ ...run, status: 'failed' })).toBe('fix the error, then %distill resume tickets');
    expect(resumeHint({ ...run, status: 'done' })).toBeNull();
    expect(resumeHint({ ...run, status: 'running' })).toBeNull();
  });
});

describe('empty run list', () => {
  it('names the folder the panel reads and the setting that moves it', () => {
    const text = emptyRunsMessage('/home/me/project/.distill');
    expect(text).toContain('No runs yet in /home/me/project/.distill.');
    expect(text).toContain('JUPYTER_DISTILL_WORKDIR');
    expect(emptyRunsMessage('')).toMatch(/^No runs yet\. /);
  });
});

describe('run card renderer rank', () => {
  /** The default ranks of JupyterLab's own renderers, read from the installed @jupyterlab/rendermime. */
  function builtInRanks(): Map<string, number> {
    const file = path.join(
      __dirname,
      '..',
      'node_modules',
      '@jupyterlab',
      'rendermime',
      'lib',
      'factories.js'
    );
    const source = fs.readFileSync(file, 'utf8');
    const ranks = new Map<string, number>();
    const factory = /mimeTypes:\s*\[([^\]]*)\][\s\S]*?defaultRank:\s*(\d+)/g;
    for (const match of source.matchAll(factory)) {
      for (const mime of match[1].matchAll(/'([^']+)'/g)) {
        ranks.set(mime[1], Number(match[2]));
      }
    }
    return ranks;
  }

  it('ranks below every built-in renderer, so the card wins over the HTML fallback', () => {
    const ranks = builtInRanks();
    expect(ranks.get('text/html')).toBeDefined();
    expect(ranks.get('text/plain')).toBeDefined();
    for (const [mime, rank] of ranks) {
      expect([mime, RUN_RENDERER_RANK < rank]).toEqual([mime, true]);
    }
  });
});

describe('the shared run-card example (tests/fixtures/run_card.json)', () => {
  const example = JSON.parse(
    fs.readFileSync(path.join(__dirname, '..', '..', 'tests', 'fixtures', 'run_card.json'), 'utf-8')
  );

  it('parses with every field the Python schema defines kept as sent', () => {
    const run = parseRunSummary(example);
    expect(run).not.toBeNull();
    for (const key of Object.keys(example)) {
      expect(run).toHaveProperty(key);
      expect((run as unknown as Record<string, unknown>)[key]).toEqual(example[key]);
    }
  });
});
