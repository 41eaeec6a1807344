/**
 * Pure logic of the Distill panel's newer parts: the run folder field, per-run sample sizes,
 * per-alias target, versions and audit verdict, and the cells the run commands insert.
 *
 * Free of JupyterLab and DOM imports so jest tests it in plain node; every reply is parsed as
 * untrusted JSON (an older server sends fewer fields) and degrades to defaults.
 */
import { PHASES, formatPercent, needsLoadExt, LOAD_EXT_LINE } from './format';

/** Fewer held-out prompts or training pairs than this get a warning mark next to the pass rate. */
export const TINY_SAMPLE = 20;

/** Seconds an alias's detail (versions, audit verdict) is reused before the panel asks again. */
export const ALIAS_DETAIL_MAX_AGE_S = 60;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function num(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

function str(value: unknown): string | null {
  return typeof value === 'string' && value.length > 0 ? value : null;
}

function count(value: unknown): number {
  const n = num(value);
  return n === null || n < 0 ? 0 : Math.floor(n);
}

// ------------------------------------------------------------------------------ run folder

/** The run folder the panel shows (GET/PUT/DELETE workdir, and the run list's header fields). */
export interface IWorkdirState {
  workdir: string;
  /** The folder the server was started with. */
  configured: string;
  /** Whether the panel switched away from the configured folder. */
  switched: boolean;
}

export function parseWorkdirState(value: unknown): IWorkdirState {
  const record = isRecord(value) ? value : {};
  const workdir = str(record.workdir) ?? '';
  const configured = str(record.configured) ?? workdir;
  return { workdir, configured, switched: record.switched === true };
}

/** The tooltip of the folder field: where the folder comes from and what a switch does. */
export function workdirTitle(state: IWorkdirState): string {
  if (state.switched) {
    return (
      `Run folder: ${state.workdir}, switched in this session (configured: ${state.configured}). ` +
      'Kernels started from now on write here; running kernels keep their folder until restarted.'
    );
  }
  return (
    `Run folder: ${state.workdir} (set by JUPYTER_DISTILL_WORKDIR or c.DistillServer.workdir). ` +
    'Type another folder under the server root and press Enter to show its runs.'
  );
}

// ------------------------------------------------------------------------------ sample sizes

/** Prompts and pairs of one run, as the run list's `counts` sends them. */
export interface IRunCounts {
  train: number;
  heldout: number;
  pairs: number;
}

/** The run list's `counts` (absent from older servers: an empty map). */
export function parseRunCounts(value: unknown): Record<string, IRunCounts> {
  const out: Record<string, IRunCounts> = {};
  const record = isRecord(value) && isRecord(value.counts) ? value.counts : {};
  for (const [run, entry] of Object.entries(record)) {
    if (isRecord(entry)) {
      out[run] = { train: count(entry.train), heldout: count(entry.heldout), pairs: count(entry.pairs) };
    }
  }
  return out;
}

/** What the sample-size line needs of a run (a subset of the run card). */
export interface ISizedRun {
  status: string;
  phase: string | null;
  pass_rates: Record<string, { n: number; pass_rate: number | null }>;
}

export interface ISampleSizes {
  /** e.g. "n=8 held-out · 30 training pairs" */
  text: string;
  /** One sentence per size too small to trust the pass rate; empty when none is. */
  warnings: string[];
}

/** Whether the run got past judging, so its pairs are final (0 before that is not a warning). */
function pairsFinal(run: ISizedRun): boolean {
  if (run.status === 'done' || run.phase === 'done') {
    return true;
  }
  const index = run.phase ? PHASES.indexOf(run.phase as (typeof PHASES)[number]) : -1;
  return index > PHASES.indexOf('review');
}

/**
 * The sizes behind a run's pass rates: how many held-out prompts they were measured on (the
 * student's pass-rate n, else the held-out split) and how many pairs it trained on, with a
 * warning for each that is below `TINY_SAMPLE`. Null when nothing is known yet.
 */
export function sampleSizes(run: ISizedRun, counts?: IRunCounts | null): ISampleSizes | null {
  const measured = ['student_after', 'student_before']
    .map(label => run.pass_rates[label])
    .filter(rate => rate !== undefined && rate.pass_rate !== null)
    .map(rate => rate.n);
  const heldout = measured.length > 0 ? Math.max(...measured) : counts ? counts.heldout : null;
  const pairs = counts ? counts.pairs : null;
  if (heldout === null && pairs === null) {
    return null;
  }
  const parts: string[] = [];
  const warnings: string[] = [];
  if (heldout !== null) {
    parts.push(`n=${heldout} held-out`);
    if (measured.length > 0 && heldout < TINY_SAMPLE) {
      const step = heldout > 0 ? ` (one prompt moves the pass rate by ${formatPercent(1 / heldout)})` : '';
      warnings.push(`only ${heldout} held-out prompt${heldout === 1 ? '' : 's'}${step}`);
    }
  }
  if (pairs !== null) {
    parts.push(`${pairs} training pair${pairs === 1 ? '' : 's'}`);
    if (pairsFinal(run) && pairs < TINY_SAMPLE) {
      warnings.push(`only ${pairs} training pair${pairs === 1 ? '' : 's'}`);
    }
  }
  return { text: parts.join(' · '), warnings };
}

// ------------------------------------------------------------------------------ aliases

/** What an alias points at (an `aliases.json` entry). */
export interface IAliasTarget {
  backend: string | null;
  model_path: string | null;
  base_model: string | null;
  base_url: string | null;
  model: string | null;
  /** The run that made the target, when a promotion or deploy recorded it. */
  run: string | null;
}

/** One recorded version of an alias. */
export interface IAliasVersion {
  version: number;
  action: string;
  /** Unix seconds. */
  at: number | null;
  /** Null when the alias was unset by this version. */
  entry: IAliasTarget | null;
  /** The version a rollback restored. */
  restores: number | null;
  /** What a promotion measured on the held-out prompts: the new model, and the one it replaced. */
  report: { candidate: IMeasured | null; current: IMeasured | null } | null;
}

/** One side of a promotion's comparison. */
export interface IMeasured {
  n: number;
  pass_rate: number;
}

function parseMeasured(value: unknown): IMeasured | null {
  if (!isRecord(value) || num(value.pass_rate) === null) {
    return null;
  }
  return { n: count(value.n), pass_rate: value.pass_rate as number };
}

function parseReport(value: unknown): IAliasVersion['report'] {
  if (!isRecord(value)) {
    return null;
  }
  const candidate = parseMeasured(value.candidate);
  return candidate === null ? null : { candidate, current: parseMeasured(value.current) };
}

export interface ITeacherTerms {
  teacher: string;
  verdict: string | null;
  terms_version: string | null;
  sampled: number;
  trained_on: number;
}

/** The audit verdict of the run behind an alias. */
export interface IAuditVerdict {
  /** "ok", "changed" (a newer terms table changes a verdict) or "unavailable" (with the reason). */
  status: string;
  message: string;
  terms_version: string | null;
  generated_at: string | null;
  teachers: ITeacherTerms[];
}

export interface IAliasDetail {
  name: string;
  current: IAliasTarget | null;
  version: number | null;
  /** Newest first. */
  history: IAliasVersion[];
  audit: IAuditVerdict | null;
}

export function parseAliasTarget(value: unknown): IAliasTarget | null {
  if (!isRecord(value)) {
    return null;
  }
  return {
    backend: str(value.backend),
    model_path: str(value.model_path) ?? str(value.path),
    base_model: str(value.base_model),
    base_url: str(value.base_url),
    model: str(value.model),
    run: str(value.run) ?? str(value.student)
  };
}

function parseAudit(value: unknown): IAuditVerdict | null {
  if (!isRecord(value) || str(value.status) === null) {
    return null;
  }
  const teachers = Array.isArray(value.teachers) ? value.teachers : [];
  return {
    status: value.status as string,
    message: str(value.message) ?? '',
    terms_version: str(value.terms_version),
    generated_at: str(value.generated_at),
    teachers: teachers.filter(isRecord).map(row => ({
      teacher: str(row.teacher) ?? 'unknown',
      verdict: str(row.verdict),
      terms_version: str(row.terms_version),
      sampled: count(row.sampled),
      trained_on: count(row.trained_on)
    }))
  };
}

/** The `aliases/{name}` reply; null without a name. */
export function parseAliasDetail(value: unknown): IAliasDetail | null {
  if (!isRecord(value) || str(value.name) === null) {
    return null;
  }
  const history = Array.isArray(value.history) ? value.history : [];
  return {
    name: value.name as string,
    current: parseAliasTarget(value.current),
    version: num(value.version),
    history: history
      .filter(isRecord)
      .filter(row => num(row.version) !== null)
      .map(row => ({
        version: row.version as number,
        action: str(row.action) ?? 'set',
        at: num(row.at),
        entry: parseAliasTarget(row.entry),
        restores: num(row.restores),
        report: parseReport(row.report)
      })),
    audit: parseAudit(value.audit)
  };
}

function baseName(path: string): string {
  const parts = path.split(/[\\/]/).filter(part => part.length > 0);
  return parts.length > 0 ? parts[parts.length - 1] : path;
}

/** What an alias serves, in a few words: "gguf model.q4_k_m.gguf (run tickets)", "gpt-4o-mini @ https://...". */
export function targetLabel(target: IAliasTarget | null): string {
  if (target === null) {
    return 'unset';
  }
  let what: string;
  if (target.backend === 'openai-compatible') {
    what = `${target.model ?? 'model'} @ ${target.base_url ?? 'URL'}`;
  } else {
    const file = target.model_path ?? target.base_model;
    what = [target.backend, file ? baseName(file) : null].filter(Boolean).join(' ');
  }
  return target.run ? `${what} (run ${target.run})` : what;
}

/**
 * One line of an alias's history: "v3 rollback to v1: gguf a.gguf (run r1), 5m ago"; a promotion
 * adds what it measured: "; pass 80% vs 60% on n=10 held-out".
 */
export function historyLine(version: IAliasVersion, ago: (unixSeconds: number | null) => string): string {
  const action = version.restores !== null ? `${version.action} to v${version.restores}` : version.action;
  const when = version.at !== null ? `, ${ago(version.at)}` : '';
  let measured = '';
  const candidate = version.report?.candidate ?? null;
  if (candidate !== null) {
    const current = version.report?.current ?? null;
    const versus = current !== null ? ` vs ${formatPercent(current.pass_rate)}` : '';
    const tiny = candidate.n < TINY_SAMPLE ? ' ⚠' : '';
    measured = `; pass ${formatPercent(candidate.pass_rate)}${versus} on n=${candidate.n} held-out${tiny}`;
  }
  return `v${version.version} ${action}: ${targetLabel(version.entry)}${when}${measured}`;
}

export interface IBadge {
  label: string;
  /** `jp-Distill-audit-ok`, `-changed`, `-unavailable` or `-unknown`. */
  className: string;
  title: string;
}

/** The audit verdict as a badge: its label, a class for its colour, and the full sentence. */
export function auditBadge(audit: IAuditVerdict | null): IBadge {
  if (audit === null) {
    return { label: 'audit …', className: 'jp-Distill-audit-unknown', title: 'Not audited yet.' };
  }
  const when = audit.generated_at ? ` (audited ${audit.generated_at})` : '';
  const title = `${audit.message}${when}`;
  switch (audit.status) {
    case 'ok':
      return { label: 'terms ok', className: 'jp-Distill-audit-ok', title };
    case 'changed':
      return { label: 'terms changed', className: 'jp-Distill-audit-changed', title };
    default:
      return { label: 'no audit', className: 'jp-Distill-audit-unavailable', title };
  }
}

/** Per teacher: "local:smollm2-135m: 3/6 trained on, allowed under 2026-11-01". */
export function teacherLines(audit: IAuditVerdict | null): string[] {
  if (audit === null) {
    return [];
  }
  return audit.teachers.map(
    row =>
      `${row.teacher}: ${row.trained_on}/${row.sampled} trained on, ${row.verdict ?? 'no verdict'} under ` +
      `${row.terms_version ?? 'unrecorded terms'}`
  );
}

/** `updated_at` per alias in the aliases list, to notice a changed alias before its detail expires. */
export function aliasStamps(value: unknown): Record<string, number | null> {
  const out: Record<string, number | null> = {};
  const rows = isRecord(value) && Array.isArray(value.aliases) ? value.aliases : [];
  for (const row of rows) {
    if (isRecord(row) && str(row.name) !== null) {
      out[row.name as string] = num(row.updated_at);
    }
  }
  return out;
}

/** A cached alias detail: when it was fetched and the alias's `updated_at` then. */
export interface IDetailStamp {
  fetchedAtMs: number;
  updatedAt: number | null;
}

/** The aliases whose detail to (re)fetch: new ones, changed ones, and those older than `maxAgeS`. */
export function staleAliases(
  stamps: Record<string, number | null>,
  cached: Map<string, IDetailStamp>,
  nowMs: number,
  maxAgeS: number = ALIAS_DETAIL_MAX_AGE_S
): string[] {
  return Object.keys(stamps).filter(name => {
    const seen = cached.get(name);
    return seen === undefined || seen.updatedAt !== stamps[name] || nowMs - seen.fetchedAtMs >= maxAgeS * 1000;
  });
}

// ------------------------------------------------------------------------------ run commands

/** The `runs/{id}/notebooks` reply: notebooks that start the run, newest first. */
export function parseNotebooks(value: unknown): { notebooks: string[]; complete: boolean } {
  const record = isRecord(value) ? value : {};
  const list = Array.isArray(record.notebooks) ? record.notebooks : [];
  return {
    notebooks: list.filter((p): p is string => typeof p === 'string' && p.length > 0),
    complete: record.complete !== false
  };
}

/**
 * The source of the cell that opens a run's review widget (`review`) or draws its card
 * (`status`) in a notebook, loading the magics first when no cell of the notebook does.
 */
export function runCellSource(kind: 'review' | 'status', runId: string, cellSources: string[]): string {
  const line = `%distill ${kind} ${runId}`;
  return needsLoadExt(cellSources) ? `${LOAD_EXT_LINE}\n${line}` : line;
}
