/**
 * The Distill sidebar: runs of the server's workdir and the alias registry.
 *
 * Polls the server instead of holding a socket: runs are written by kernels the server does
 * not own, and the store is the only place they meet. Polling is fast (the server's
 * poll_interval) while some run is live, slow otherwise, and stops while the panel is hidden.
 *
 * The header shows the run folder and lets the user switch it for the server's session. Each
 * run row opens the run's card, review or notebook (commands in runactions.ts) and states the
 * sample sizes behind its pass rates; each alias shows its target, versions and audit verdict.
 * Alias details are fetched only when an alias changed or its detail is a minute old: they
 * carry an audit, which the server caches but a busy poll should not keep asking for.
 */
import type { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';
import { Message } from '@lumino/messaging';

import { aliasRow } from './aliasview';
import { runRow } from './card';
import { IAlias, IRunList, emptyRunsMessage, parseAliases, parseRunList } from './format';
import {
  IAliasDetail,
  IDetailStamp,
  IRunCounts,
  IWorkdirState,
  aliasStamps,
  parseAliasDetail,
  parseRunCounts,
  parseWorkdirState,
  sampleSizes,
  staleAliases,
  workdirTitle
} from './paneldata';
import { requestAPI } from './request';
import { RunCommandIDs } from './runactions';

/** Seconds between refreshes when no run is live: finished runs change only when a new one starts. */
const IDLE_POLL_SECONDS = 15;

function section(title: string, className: string): { root: HTMLElement; body: HTMLElement } {
  const root = document.createElement('section');
  root.className = `jp-Distill-section ${className}`;
  const header = document.createElement('h3');
  header.className = 'jp-Distill-section-title';
  header.textContent = title;
  const body = document.createElement('div');
  body.className = 'jp-Distill-section-body';
  root.append(header, body);
  return { root, body };
}

function message(text: string, className = 'jp-Distill-empty'): HTMLElement {
  const node = document.createElement('p');
  node.className = className;
  node.textContent = text;
  return node;
}

function button(text: string, className: string, title: string, onClick: () => void): HTMLButtonElement {
  const node = document.createElement('button');
  node.className = `${className} jp-mod-styled`;
  node.textContent = text;
  node.title = title;
  node.addEventListener('click', onClick);
  return node;
}

type CommandRegistry = JupyterFrontEnd['commands'];

export interface IDistillPanelOptions {
  /** Where the run commands are registered (runactions.ts); without it rows have no actions. */
  commands?: CommandRegistry;
}

export class DistillPanel extends Widget {
  constructor(options: IDistillPanelOptions = {}) {
    super();
    this._commands = options.commands ?? null;
    this.addClass('jp-Distill-panel');
    const header = document.createElement('div');
    header.className = 'jp-Distill-header';
    this._workdir = document.createElement('input');
    this._workdir.className = 'jp-Distill-workdir jp-mod-styled';
    this._workdir.type = 'text';
    this._workdir.spellcheck = false;
    this._workdir.setAttribute('aria-label', 'Run folder');
    this._workdir.addEventListener('keydown', event => {
      if (event.key === 'Enter') {
        event.preventDefault();
        void this._switchFolder(this._workdir.value);
      } else if (event.key === 'Escape') {
        this._workdir.value = this._folder.workdir;
        this._workdir.blur();
      }
    });
    const open = button('Show', 'jp-Distill-workdir-open', 'Show the runs of the folder typed here', () =>
      void this._switchFolder(this._workdir.value)
    );
    this._reset = button('Reset', 'jp-Distill-workdir-reset', 'Back to the configured run folder', () =>
      void this._switchFolder(null)
    );
    this._reset.hidden = true;
    const refresh = button('Refresh', 'jp-Distill-refresh', 'Reload runs and aliases now', () => void this.refresh());
    header.append(this._workdir, open, this._reset, refresh);
    this._folderError = message('', 'jp-Distill-error jp-Distill-workdir-error');
    this._folderError.hidden = true;

    const runs = section('Runs', 'jp-Distill-runs');
    const aliases = section('Aliases', 'jp-Distill-aliases');
    this._runs = runs.body;
    this._aliases = aliases.body;
    this.node.append(header, this._folderError, runs.root, aliases.root);
  }

  /** Reload both lists now and schedule the next poll. */
  async refresh(): Promise<void> {
    window.clearTimeout(this._timer);
    let delay = IDLE_POLL_SECONDS;
    try {
      const [runs, aliases] = await Promise.all([
        requestAPI<unknown>('runs'),
        requestAPI<unknown>('aliases').catch(error => error as Error)
      ]);
      const list = parseRunList(runs);
      this._showFolder(parseWorkdirState(runs));
      this._renderRuns(list, parseRunCounts(runs));
      if (aliases instanceof Error) {
        this._renderAliases(aliases);
      } else {
        await this._fetchAliasDetails(aliasStamps(aliases));
        this._renderAliases(parseAliases(aliases));
      }
      if (list.runs.some(run => run.live)) {
        delay = list.poll_interval;
      }
    } catch (error) {
      this._runs.replaceChildren(
        message(`Cannot reach the jupyter-distill server extension: ${(error as Error).message}`, 'jp-Distill-error')
      );
    }
    if (!this.isDisposed && this.isVisible) {
      this._timer = window.setTimeout(() => void this.refresh(), delay * 1000);
    }
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
  }

  protected onBeforeHide(msg: Message): void {
    window.clearTimeout(this._timer);
    super.onBeforeHide(msg);
  }

  dispose(): void {
    window.clearTimeout(this._timer);
    super.dispose();
  }

  /** The folder field shows the folder the server reads, unless the user is typing in it. */
  private _showFolder(state: IWorkdirState): void {
    this._folder = state;
    if (document.activeElement !== this._workdir) {
      this._workdir.value = state.workdir;
    }
    this._workdir.title = workdirTitle(state);
    this._reset.hidden = !state.switched;
  }

  /** Switch the run folder (null: back to the configured one); a refused folder shows the server's reason. */
  private async _switchFolder(folder: string | null): Promise<void> {
    try {
      const reply =
        folder === null
          ? await requestAPI<unknown>('workdir', { method: 'DELETE' })
          : await requestAPI<unknown>('workdir', { method: 'PUT', body: JSON.stringify({ path: folder }) });
      this._folderError.hidden = true;
      this._workdir.blur();
      this._showFolder(parseWorkdirState(reply));
    } catch (error) {
      this._folderError.textContent = `Cannot show that folder: ${(error as Error).message}`;
      this._folderError.hidden = false;
      return;
    }
    await this.refresh();
  }

  private _renderRuns(list: IRunList, counts: Record<string, IRunCounts>): void {
    if (list.runs.length === 0) {
      this._runs.replaceChildren(
        message(emptyRunsMessage(list.workdir)),
        message('Runs made in another folder: type it in the field above and press Enter.')
      );
      return;
    }
    const ul = document.createElement('ul');
    ul.className = 'jp-Distill-run-list';
    for (const run of list.runs) {
      const row = runRow(run);
      const sizes = sampleSizes(run, counts[run.id]);
      if (sizes !== null) {
        const line = document.createElement('div');
        line.className = 'jp-Distill-run-sizes';
        line.textContent = sizes.text;
        if (sizes.warnings.length > 0) {
          const warn = document.createElement('span');
          warn.className = 'jp-Distill-warn';
          warn.textContent = ' ⚠';
          warn.title = `Small sample: ${sizes.warnings.join('; ')}. Treat the pass rates as rough.`;
          line.appendChild(warn);
        }
        row.appendChild(line);
      }
      row.appendChild(this._runActions(run.id));
      ul.appendChild(row);
    }
    this._runs.replaceChildren(ul);
  }

  /** Card, Review and Notebook buttons of a run row (none without a command registry). */
  private _runActions(run: string): HTMLElement {
    const bar = document.createElement('div');
    bar.className = 'jp-Distill-run-actions';
    const commands = this._commands;
    if (commands === null) {
      return bar;
    }
    const action = (label: string, command: string, className: string): HTMLButtonElement =>
      button(label, className, commands.caption(command, { run }), () => void commands.execute(command, { run }));
    bar.append(
      action('Card', RunCommandIDs.openCard, 'jp-Distill-run-card'),
      action('Review', RunCommandIDs.review, 'jp-Distill-run-review'),
      action('Notebook', RunCommandIDs.openNotebook, 'jp-Distill-run-notebook')
    );
    return bar;
  }

  /** Fetch the details of new, changed and aging aliases; forget aliases that are gone. */
  private async _fetchAliasDetails(stamps: Record<string, number | null>): Promise<void> {
    for (const name of Array.from(this._details.keys())) {
      if (!(name in stamps)) {
        this._details.delete(name);
        this._stamps.delete(name);
      }
    }
    const now = Date.now();
    await Promise.all(
      staleAliases(stamps, this._stamps, now).map(async name => {
        try {
          const detail = parseAliasDetail(await requestAPI<unknown>(`aliases/${encodeURIComponent(name)}`));
          this._details.set(name, detail ?? new Error('the server sent no detail'));
        } catch (error) {
          this._details.set(name, error as Error);
        }
        this._stamps.set(name, { fetchedAtMs: now, updatedAt: stamps[name] });
      })
    );
  }

  private _renderAliases(aliases: IAlias[] | Error): void {
    if (aliases instanceof Error) {
      this._aliases.replaceChildren(message(`Cannot read aliases: ${aliases.message}`, 'jp-Distill-error'));
      return;
    }
    if (aliases.length === 0) {
      this._aliases.replaceChildren(message('No aliases. student.deploy(name) adds one.'));
      return;
    }
    const ul = document.createElement('ul');
    ul.className = 'jp-Distill-alias-list';
    for (const alias of aliases) {
      const detail = this._details.get(alias.name) ?? null;
      ul.appendChild(
        aliasRow(
          alias,
          detail instanceof Error ? null : detail,
          detail instanceof Error ? `Cannot read the history and audit: ${detail.message}` : null,
          this._open.has(alias.name),
          () => void this._unset(alias.name),
          open => (open ? this._open.add(alias.name) : this._open.delete(alias.name))
        )
      );
    }
    this._aliases.replaceChildren(ul);
  }

  private async _unset(name: string): Promise<void> {
    const answer = await showDialog({
      title: 'Unset alias',
      body: `Remove the alias "${name}"? Clients calling it will get "model not found"; the model files stay on disk.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Unset' })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await requestAPI(`aliases/${encodeURIComponent(name)}`, { method: 'DELETE' });
    } catch (error) {
      await showErrorMessage('Cannot unset alias', error as Error);
    }
    this._stamps.delete(name);
    await this.refresh();
  }

  private _commands: CommandRegistry | null;
  private _runs: HTMLElement;
  private _aliases: HTMLElement;
  private _workdir: HTMLInputElement;
  private _reset: HTMLButtonElement;
  private _folderError: HTMLElement;
  private _folder: IWorkdirState = { workdir: '', configured: '', switched: false };
  private _details = new Map<string, IAliasDetail | Error>();
  private _stamps = new Map<string, IDetailStamp>();
  private _open = new Set<string>();
  private _timer = 0;
}
