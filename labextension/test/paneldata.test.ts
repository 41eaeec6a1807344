import {
  TINY_SAMPLE,
  aliasStamps,
  auditBadge,
  historyLine,
  parseAliasDetail,
  parseNotebooks,
  parseRunCounts,
  parseWorkdirState,
  runCellSource,
  sampleSizes,
  staleAliases,
  targetLabel,
  teacherLines,
  workdirTitle
} from '../src/paneldata';

/** What GET aliases/{name} answers (tests/test_server_panel.py checks the server side). */
const detailReply = {
  name: 'bot',
  current: {
    backend: 'gguf',
    model_path: '/home/u/.distill/runs/aud/export/model.q8_0.gguf',
    run: 'aud',
    workdir: '/home/u/.distill',
    created_at: 1,
    updated_at: 3
  },
  version: 3,
  history: [
    { version: 3, action: 'rollback', at: 970, entry: { backend: 'gguf', model_path: '/x/a.gguf', run: 'aud' }, previous: null, restores: 1 },
    { version: 2, action: 'set', at: 500, entry: { backend: 'gguf', model_path: '/x/other.gguf' }, previous: 1 },
    { version: 1, action: 'set', at: 100, entry: { backend: 'gguf', model_path: '/x/a.gguf', run: 'aud' }, previous: null },
    { action: 'broken row without a version' },
    'not a row'
  ],
  audit: {
    status: 'changed',
    message: 'local:smollm2-135m: allowed under 2026-11-01 -> prohibited under 2027-01-01 (6 samples, 3 trained on)',
    terms_version: '2027-01-01',
    generated_at: '2026-12-05T09:00:00Z',
    teachers: [
      { teacher: 'local:smollm2-135m', verdict: 'allowed', terms_version: '2026-11-01', sampled: 6, trained_on: 3 }
    ],
    changes: [{ teacher: 'local:smollm2-135m', samples: 6, trained_on: 3 }]
  }
};

describe('alias detail', () => {
  it('parses the target, the versions newest first and the audit verdict', () => {
    const detail = parseAliasDetail(detailReply)!;
    expect(detail.name).toBe('bot');
    expect(detail.version).toBe(3);
    expect(detail.current?.run).toBe('aud');
    expect(detail.history.map(v => v.version)).toEqual([3, 2, 1]); // malformed rows dropped
    expect(detail.history[0].restores).toBe(1);
    expect(detail.history[1].restores).toBeNull();
    expect(detail.audit?.status).toBe('changed');
    expect(detail.audit?.teachers[0].trained_on).toBe(3);
  });

  it('rejects replies without a name and tolerates an older server', () => {
    expect(parseAliasDetail({ history: [] })).toBeNull();
    expect(parseAliasDetail(null)).toBeNull();
    const bare = parseAliasDetail({ name: 'x' })!;
    expect(bare.current).toBeNull();
    expect(bare.history).toEqual([]);
    expect(bare.audit).toBeNull();
    expect(parseAliasDetail({ name: 'x', audit: { message: 'no status' } })!.audit).toBeNull();
  });

  it('says what a target serves in a few words, never a whole path', () => {
    const detail = parseAliasDetail(detailReply)!;
    expect(targetLabel(detail.current)).toBe('gguf model.q8_0.gguf (run aud)');
    expect(targetLabel(null)).toBe('unset');
    expect(
      targetLabel({ backend: 'openai-compatible', model: 'gpt-4o-mini', base_url: 'http://127.0.0.1:8000/v1', model_path: null, base_model: null, run: null })
    ).toBe('gpt-4o-mini @ http://127.0.0.1:8000/v1');
    expect(
      targetLabel({ backend: 'peft', model_path: null, base_model: 'C:\\models\\smollm2', base_url: null, model: null, run: null })
    ).toBe('peft smollm2');
  });

  it('writes one line per version, naming what a rollback restored', () => {
    const detail = parseAliasDetail(detailReply)!;
    const ago = (at: number | null): string => `${1000 - (at ?? 0)}s ago`;
    expect(historyLine(detail.history[0], ago)).toBe('v3 rollback to v1: gguf a.gguf (run aud), 30s ago');
    expect(historyLine(detail.history[1], ago)).toBe('v2 set: gguf other.gguf, 500s ago');
    const unset = parseAliasDetail({ name: 'x', history: [{ version: 4, action: 'unset', entry: null }] })!;
    expect(historyLine(unset.history[0], ago)).toBe('v4 unset: unset');
  });

  it('adds what a promotion measured, marking a tiny held-out set', () => {
    const promoted = parseAliasDetail({
      name: 'x',
      history: [
        {
          version: 2,
          action: 'promote',
          entry: { backend: 'gguf', model_path: '/m/new.gguf', run: 'r2' },
          report: { candidate: { n: 8, pass_rate: 0.75, p95_ms: 40 }, current: { n: 8, pass_rate: 0.5 } }
        },
        { version: 1, action: 'promote', entry: { backend: 'gguf', model_path: '/m/old.gguf' }, report: { candidate: { n: 40, pass_rate: 0.5 } } },
        { version: 0, action: 'set', entry: null, report: { candidate: { n: 3 } } }
      ]
    })!;
    const ago = (): string => 'now';
    expect(historyLine(promoted.history[0], ago)).toBe('v2 promote: gguf new.gguf (run r2); pass 75% vs 50% on n=8 held-out ⚠');
    expect(historyLine(promoted.history[1], ago)).toBe('v1 promote: gguf old.gguf; pass 50% on n=40 held-out');
    expect(promoted.history[2].report).toBeNull(); // no pass rate: nothing to show
  });

  it('turns the audit verdict into a badge and per-teacher lines', () => {
    const changed = parseAliasDetail(detailReply)!.audit;
    expect(auditBadge(changed)).toEqual({
      label: 'terms changed',
      className: 'jp-Distill-audit-changed',
      title: `${detailReply.audit.message} (audited 2026-12-05T09:00:00Z)`
    });
    expect(auditBadge({ ...changed!, status: 'ok' }).className).toBe('jp-Distill-audit-ok');
    expect(auditBadge({ ...changed!, status: 'unavailable', generated_at: null }).label).toBe('no audit');
    expect(auditBadge(null).className).toBe('jp-Distill-audit-unknown');
    expect(teacherLines(changed)).toEqual(['local:smollm2-135m: 3/6 trained on, allowed under 2026-11-01']);
    expect(teacherLines(null)).toEqual([]);
  });

  it('refetches new, changed and aging aliases only', () => {
    const stamps = aliasStamps({ aliases: [{ name: 'a', updated_at: 5 }, { name: 'b', updated_at: 7 }, { name: 'c' }, { nope: 1 }] });
    expect(stamps).toEqual({ a: 5, b: 7, c: null });
    const cached = new Map([
      ['a', { fetchedAtMs: 10_000, updatedAt: 5 }],
      ['b', { fetchedAtMs: 10_000, updatedAt: 6 }], // changed since
      ['c', { fetchedAtMs: 0, updatedAt: null }] // a minute old
    ]);
    expect(staleAliases(stamps, cached, 60_000)).toEqual(['b', 'c']);
    expect(staleAliases(stamps, new Map(), 0)).toEqual(['a', 'b', 'c']);
    expect(aliasStamps('nothing')).toEqual({});
  });
});

describe('sample sizes', () => {
  const done = {
    status: 'done',
    phase: 'done',
    pass_rates: {
      student_before: { n: 8, pass_rate: 0.25 },
      student_after: { n: 8, pass_rate: 0.875 }
    }
  };

  it('states the held-out n and the training pairs, and warns when either is tiny', () => {
    const sizes = sampleSizes(done, { train: 16, heldout: 8, pairs: 5 })!;
    expect(sizes.text).toBe('n=8 held-out · 5 training pairs');
    expect(sizes.warnings).toEqual([
      'only 8 held-out prompts (one prompt moves the pass rate by 13%)',
      'only 5 training pairs'
    ]);
  });

  it('does not warn at or above the threshold', () => {
    const big = { ...done, pass_rates: { student_after: { n: TINY_SAMPLE, pass_rate: 0.5 } } };
    const sizes = sampleSizes(big, { train: 80, heldout: TINY_SAMPLE, pairs: 120 })!;
    expect(sizes.text).toBe(`n=${TINY_SAMPLE} held-out · 120 training pairs`);
    expect(sizes.warnings).toEqual([]);
  });

  it('uses the measured n over the split, and the split before any eval', () => {
    expect(sampleSizes(done, { train: 16, heldout: 30, pairs: 40 })!.text).toBe('n=8 held-out · 40 training pairs');
    const sampling = { status: 'running', phase: 'sampling', pass_rates: {} };
    const early = sampleSizes(sampling, { train: 16, heldout: 4, pairs: 0 })!;
    expect(early.text).toBe('n=4 held-out · 0 training pairs');
    expect(early.warnings).toEqual([]); // nothing measured and pairs not made yet: no warning
    const training = { status: 'running', phase: 'training', pass_rates: {} };
    expect(sampleSizes(training, { train: 16, heldout: 4, pairs: 1 })!.warnings).toEqual(['only 1 training pair']);
  });

  it('says nothing when nothing is known, and reads the counts an older server leaves out', () => {
    expect(sampleSizes({ status: 'created', phase: null, pass_rates: {} }, undefined)).toBeNull();
    expect(sampleSizes(done, null)!.text).toBe('n=8 held-out');
    expect(parseRunCounts({ counts: { r: { train: 3, heldout: 1, pairs: 2 }, bad: 'x' } })).toEqual({
      r: { train: 3, heldout: 1, pairs: 2 }
    });
    expect(parseRunCounts({ runs: [] })).toEqual({});
    expect(parseRunCounts({ counts: { r: { train: -1, heldout: 1.7 } } })).toEqual({ r: { train: 0, heldout: 1, pairs: 0 } });
  });
});

describe('run folder', () => {
  it('parses the state and explains it', () => {
    const state = parseWorkdirState({ workdir: '/r/.demo/distill', configured: '/r/.distill', switched: true });
    expect(state.switched).toBe(true);
    expect(workdirTitle(state)).toContain('switched in this session (configured: /r/.distill)');
    expect(workdirTitle(state)).toContain('running kernels keep their folder');
    const old = parseWorkdirState({ workdir: '/r/.distill', runs: [] }); // an older server's run list
    expect(old).toEqual({ workdir: '/r/.distill', configured: '/r/.distill', switched: false });
    expect(workdirTitle(old)).toContain('JUPYTER_DISTILL_WORKDIR');
    expect(parseWorkdirState(null)).toEqual({ workdir: '', configured: '', switched: false });
  });
});

describe('run commands', () => {
  it('loads the magics in the cell only when no cell of the notebook does', () => {
    expect(runCellSource('review', 'tickets', ['import x'])).toBe('%load_ext jupyter_distill\n%distill review tickets');
    expect(runCellSource('status', 'tickets', ['%load_ext jupyter_distill'])).toBe('%distill status tickets');
  });

  it('parses the notebooks that start a run', () => {
    expect(parseNotebooks({ notebooks: ['a.ipynb', 3, '', 'b/c.ipynb'], complete: false })).toEqual({
      notebooks: ['a.ipynb', 'b/c.ipynb'],
      complete: false
    });
    expect(parseNotebooks(undefined)).toEqual({ notebooks: [], complete: true });
  });
});
