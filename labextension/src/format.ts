/**
 * Pure logic of the Distill panel and run card: parsing what the server (or a saved notebook
 * output) sends, number formatting and the loss sparkline geometry.
 *
 * Kept free of JupyterLab imports so jest can test it in plain node, and so a malformed MIME
 * bundle in an old notebook degrades to a readable message instead of a broken widget.
 */

/** The MIME type run summaries are published under (see jupyter_distill/server/summary.py). */
export const RUN_MIME_TYPE = 'application/vnd.jupyter.distill.run+json';

/**
 * Rank of the run card renderer. JupyterLab renders the MIME type of an output whose renderer
 * has the lowest rank; on a tie the renderer registered first wins, and JupyterLab registers its
 * own (text/html at 50) before any extension's. So the card must rank strictly below HTML, or the
 * HTML fallback of the same bundle is what users see. Like JupyterLab's JSON viewer, it takes 0.
 */
export const RUN_RENDERER_RANK = 0;

/** Pipeline phases in order; mirrors jupyter_distill.core.events.PHASES. */
export const PHASES = [
  'sampling',
  'judging',
  'review',
  'training',
  'eval',
  'export',
  'alias'
] as const;

export interface IProgress {
  phase: string | null;
  /** Fraction of the current phase, 0..1. */
  fraction: number;
  /** Fraction of the whole run, 0..1. */
  overall: number;
  current: number | null;
  total: number | null;
}

export interface IPassRate {
  n: number;
  pass_rate: number | null;
  mean_score: number | null;
}

/**
 * The on-policy signal of a `jbond`/`onpolicy` run (`ON_POLICY_SIGNALS` in
 * jupyter_distill/core/runcard.py): the metric's name and its [step, value] points.
 */
export interface IRunSignal {
  name: string;
  points: Array<[number, number]>;
}

/**
 * The run card as sent: `application/vnd.jupyter.distill.run+json` outputs and the server's run
 * list carry exactly these fields. The one definition is `RUN_CARD_SCHEMA` in
 * jupyter_distill/core/runcard.py; a Python test checks that this interface declares its fields.
 */
export interface IRunCard {
  version: number;
  id: string;
  status: string;
  phase: string | null;
  created_at: number | null;
  updated_at: number | null;
  live: boolean;
  progress: IProgress;
  cost: number;
  /** [step, value] pairs of the training loss. */
  loss: Array<[number, number]>;
  pass_rates: Record<string, IPassRate>;
  alias: string | null;
  error: string | null;
  /** Python to call the student (the kernel sends one for finished runs; the server sends null). */
  snippet: string | null;
  /** Only on-policy runs carry one; cards of `sft`/`bond` runs and cards saved before it lack it. */
  signal?: IRunSignal;
}

/** A parsed run card plus what the views derive from it. */
export interface IRunSummary extends IRunCard {
  /** The last logged loss, or null before training logged one. */
  last_loss: number | null;
}

export interface IRunList {
  workdir: string;
  poll_interval: number;
  runs: IRunSummary[];
}

export interface IAlias {
  name: string;
  backend: string | null;
  model_path: string | null;
  base_model: string | null;
}

/** Statuses during which a run is still changing and the panel keeps polling. */
const LIVE_STATUSES = new Set(['created', 'running', 'waiting-review']);

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function num(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

function str(value: unknown): string | null {
  return typeof value === 'string' && value.length > 0 ? value : null;
}

function clamp01(value: number): number {
  return Math.min(1, Math.max(0, value));
}

/** Loss points from `[[step, value], ...]` or a bare `[value, ...]` list; bad entries dropped. */
export function parseSeries(value: unknown): Array<[number, number]> {
  if (!Array.isArray(value)) {
    return [];
  }
  const out: Array<[number, number]> = [];
  value.forEach((entry, index) => {
    if (Array.isArray(entry) && entry.length >= 2) {
      const step = num(entry[0]);
      const y = num(entry[1]);
      if (step !== null && y !== null) {
        out.push([step, y]);
      }
    } else {
      const y = num(entry);
      if (y !== null) {
        out.push([index, y]);
      }
    }
  });
  return out;
}

/** A card's `signal`: undefined unless it has a name and at least one usable point. */
export function parseSignal(value: unknown): IRunSignal | undefined {
  if (!isRecord(value)) {
    return undefined;
  }
  const name = str(value.name);
  const points = parseSeries(value.points);
  return name !== null && points.length > 0 ? { name, points } : undefined;
}

function parsePassRates(value: unknown): Record<string, IPassRate> {
  const out: Record<string, IPassRate> = {};
  if (!isRecord(value)) {
    return out;
  }
  for (const [label, entry] of Object.entries(value)) {
    if (isRecord(entry)) {
      out[label] = {
        n: num(entry.n) ?? 0,
        pass_rate: num(entry.pass_rate),
        mean_score: num(entry.mean_score)
      };
    }
  }
  return out;
}

function parseProgress(value: unknown, phase: string | null, status: string): IProgress {
  const done = status === 'done' || phase === 'done';
  if (!isRecord(value)) {
    const index = phase ? PHASES.indexOf(phase as (typeof PHASES)[number]) : -1;
    return {
      phase,
      fraction: done ? 1 : 0,
      overall: done ? 1 : index >= 0 ? index / PHASES.length : 0,
      current: null,
      total: null
    };
  }
  return {
    phase: str(value.phase) ?? phase,
    fraction: clamp01(num(value.fraction) ?? (done ? 1 : 0)),
    overall: clamp01(num(value.overall) ?? (done ? 1 : 0)),
    current: num(value.current),
    total: num(value.total)
  };
}

/**
 * A run card (see `IRunCard`) from untrusted JSON, saved in notebooks and read back years later.
 * Returns null when there is no usable run id; every other field falls back to a default.
 */
export function parseRunSummary(value: unknown): IRunSummary | null {
  if (!isRecord(value)) {
    return null;
  }
  const id = str(value.id);
  if (id === null) {
    return null;
  }
  const status = str(value.status) ?? 'unknown';
  const phase = str(value.phase);
  const loss = parseSeries(value.loss);
  const signal = parseSignal(value.signal);
  return {
    version: num(value.version) ?? 1,
    id,
    status,
    phase,
    created_at: num(value.created_at),
    updated_at: num(value.updated_at),
    live: typeof value.live === 'boolean' ? value.live : LIVE_STATUSES.has(status),
    progress: parseProgress(value.progress, phase, status),
    cost: num(value.cost) ?? 0,
    loss,
    pass_rates: parsePassRates(value.pass_rates),
    alias: str(value.alias),
    error: str(value.error),
    snippet: str(value.snippet),
    ...(signal !== undefined ? { signal } : {}),
    last_loss: loss.length > 0 ? loss[loss.length - 1][1] : null
  };
}

/** The run list endpoint's reply; runs that cannot be parsed are skipped, not fatal. */
export function parseRunList(value: unknown): IRunList {
  const record = isRecord(value) ? value : {};
  const runs = Array.isArray(record.runs) ? record.runs : [];
  return {
    workdir: str(record.workdir) ?? '',
    poll_interval: num(record.poll_interval) ?? 2,
    runs: runs
      .map(parseRunSummary)
      .filter((run): run is IRunSummary => run !== null)
  };
}

/** How to continue a stopped or failed run, in the magic's own syntax; null for other states. */
export function resumeHint(run: IRunSummary): string | null {
  if (run.status === 'stopped') {
    return `%distill resume ${run.id}`;
  }
  if (run.status === 'failed') {
    return `fix the error, then %distill resume ${run.id}`;
  }
  return null;
}

/** What the panel says when its run folder holds no run yet: which folder, and how runs get there. */
export function emptyRunsMessage(workdir: string): string {
  const where = workdir ? ` in ${workdir}` : '';
  return (
    `No runs yet${where}. Runs of %%distill cells in this server's notebooks land here: ` +
    'insert one from the toolbar. Another folder: set JUPYTER_DISTILL_WORKDIR before starting JupyterLab.'
  );
}

/** The aliases endpoint's reply. */
export function parseAliases(value: unknown): IAlias[] {
  const record = isRecord(value) ? value : {};
  const rows = Array.isArray(record.aliases) ? record.aliases : [];
  const out: IAlias[] = [];
  for (const row of rows) {
    if (isRecord(row) && str(row.name) !== null) {
      out.push({
        name: row.name as string,
        backend: str(row.backend),
        model_path: str(row.model_path) ?? str(row.path),
        base_model: str(row.base_model)
      });
    }
  }
  return out;
}

/** US dollars: cents for ordinary amounts, more digits for the tiny amounts of cheap teachers. */
export function formatCost(usd: number): string {
  if (!Number.isFinite(usd) || usd <= 0) {
    return '$0';
  }
  if (usd < 0.01) {
    return `$${usd.toPrecision(2)}`;
  }
  return `$${usd.toFixed(2)}`;
}

/** A 0..1 rate as a whole percentage, or an em dash when unknown. */
export function formatPercent(rate: number | null | undefined): string {
  if (rate === null || rate === undefined || !Number.isFinite(rate)) {
    return '—';
  }
  return `${Math.round(rate * 100)}%`;
}

/** "before → after" pass rates, with the teacher's best-of-N when it was measured. */
export function passRateLine(rates: Record<string, IPassRate>): string {
  const before = rates.student_before?.pass_rate ?? null;
  const after = rates.student_after?.pass_rate ?? null;
  const teacher = rates.teacher_best_of_n?.pass_rate ?? null;
  if (before === null && after === null && teacher === null) {
    return 'no eval yet';
  }
  let line = `pass ${formatPercent(before)} → ${formatPercent(after)}`;
  if (teacher !== null) {
    line += ` (best-of-N ${formatPercent(teacher)})`;
  }
  return line;
}

/** "training 40/100" while a phase is countable, else the phase or the status. */
export function progressLabel(run: IRunSummary): string {
  if (run.status === 'done') {
    return 'done';
  }
  if (run.status === 'failed' || run.status === 'stopped') {
    return run.phase ? `${run.status} in ${run.phase}` : run.status;
  }
  if (run.status === 'waiting-review') {
    return 'waiting for review';
  }
  const { phase, current, total } = run.progress;
  if (phase && current !== null && total) {
    return `${phase} ${Math.round(current)}/${Math.round(total)}`;
  }
  return phase ?? run.status;
}

/** How long ago a unix time (seconds) was, coarse: "12s ago", "5m ago", "3h ago", "2d ago". */
export function timeAgo(unixSeconds: number | null, nowMs: number = Date.now()): string {
  if (unixSeconds === null) {
    return '';
  }
  const seconds = Math.max(0, Math.round(nowMs / 1000 - unixSeconds));
  if (seconds < 60) {
    return `${seconds}s ago`;
  }
  if (seconds < 3600) {
    return `${Math.floor(seconds / 60)}m ago`;
  }
  if (seconds < 86400) {
    return `${Math.floor(seconds / 3600)}h ago`;
  }
  return `${Math.floor(seconds / 86400)}d ago`;
}

/**
 * The SVG path ("M x y L x y ...") of a sparkline of `points` in a `width` x `height` box,
 * with `pad` pixels kept free at the top and bottom so the stroke is never clipped.
 * Steps map linearly to x, values to y with larger values higher. Empty input: empty path;
 * a single point or a flat series: a horizontal line through the middle.
 */
export function sparklinePath(
  points: Array<[number, number]>,
  width: number,
  height: number,
  pad = 1
): string {
  const finite = points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (finite.length === 0 || width <= 0 || height <= 0) {
    return '';
  }
  const round = (v: number): number => Math.round(v * 100) / 100;
  const xs = finite.map(p => p[0]);
  const ys = finite.map(p => p[1]);
  const xMin = Math.min(...xs);
  const xMax = Math.max(...xs);
  const yMin = Math.min(...ys);
  const yMax = Math.max(...ys);
  const inner = Math.max(0, height - 2 * pad);
  if (finite.length === 1) {
    const mid = round(height / 2);
    return `M0 ${mid} L${round(width)} ${mid}`;
  }
  const x = (v: number): number => (xMax === xMin ? 0 : ((v - xMin) / (xMax - xMin)) * width);
  const y = (v: number): number =>
    yMax === yMin ? height / 2 : pad + (1 - (v - yMin) / (yMax - yMin)) * inner;
  return finite
    .map(([px, py], i) => `${i === 0 ? 'M' : 'L'}${round(x(px))} ${round(y(py))}`)
    .join(' ');
}

/**
 * The cells the "Insert %%distill cell" command adds: a setup cell that builds a small dataset
 * and its verifier in the kernel, then a `%%distill` cell that reads them through `$name`.
 * Together they are a run that works as inserted: offline (no API key, no GPU), a dataset that
 * ships inside the Python package (so it does not depend on the notebook's folder), a judge,
 * and small settings. tests/test_magics.py runs both cells in a kernel, so they cannot rot.
 * Neither may contain a backtick or a dollar sign followed by a brace (template literals).
 */
export const DISTILL_SETUP_TEMPLATE = `# Data and judge for the %%distill cell below. This small task ships with jupyter-distill:
# sentences from which to extract a person's name, age and city as JSON, and a verifier
# that scores an answer from 0 to 1. Use your own instead: a list of dicts with a "prompt"
# (or a file path such as data.jsonl in the cell below) and any function (row, answer) -> score.
from jupyter_distill.core.examples import make_extraction_rows, verify_extraction

rows = make_extraction_rows(24)  # [{"prompt": ..., "expected": {...}}, ...]
verify = verify_extraction`;

export const DISTILL_TEMPLATE = `%%distill my-first-run
# One small run: no API key, no GPU. Flags on the first line (--steps 40) override these keys,
# and key: $name reads a variable of the kernel (defined in the cell above).
dataset: $rows               # the prompts (here: from the cell above)
judge: $verify               # scores each teacher answer; the best ones are trained on
teacher: local:smollm2-135m  # answers every prompt n_samples times (llama.cpp, on the CPU)
student: smollm2-135m        # the model that learns to answer like the teacher's best
n_samples: 4                 # teacher answers per prompt
top_k: 2                     # best answers kept per prompt
steps: 20                    # training steps
max_tokens: 64               # answer length
heldout_fraction: 0.4        # prompts kept aside to measure pass@1 before and after
quantize: q4_k_m             # export a GGUF for llama.cpp; none skips the export
# alias: my-student          # uncomment to serve it as jd.completion(model="my-student")`;

/** The magics must be loaded once per kernel before a %%distill cell runs. */
export const LOAD_EXT_LINE = '%load_ext jupyter_distill';

/** Whether any of the notebook's code cells already loads the extension. */
export function needsLoadExt(cellSources: string[]): boolean {
  return !cellSources.some(source =>
    source.split('\n').some(line => line.trim() === LOAD_EXT_LINE)
  );
}

/** The sources of the cells to insert, given the notebook's code cells: load_ext when needed. */
export function templateCells(cellSources: string[]): string[] {
  const cells = [DISTILL_SETUP_TEMPLATE, DISTILL_TEMPLATE];
  return needsLoadExt(cellSources) ? [LOAD_EXT_LINE, ...cells] : cells;
}
