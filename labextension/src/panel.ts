/**
 * The Distill sidebar: runs of the server's workdir and the alias registry.
 *
 * Polls the server instead of holding a socket: runs are written by kernels the server does
 * not own, and the store is the only place they meet. Polling is fast (the server's
 * poll_interval) while some run is live, slow otherwise, and stops while the panel is hidden.
 */
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';
import { Message } from '@lumino/messaging';

import { runRow } from './card';
import { IAlias, IRunList, emptyRunsMessage, parseAliases, parseRunList } from './format';
import { requestAPI } from './request';

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

export class DistillPanel extends Widget {
  constructor() {
    super();
    this.addClass('jp-Distill-panel');
    const header = document.createElement('div');
    header.className = 'jp-Distill-header';
    this._workdir = document.createElement('span');
    this._workdir.className = 'jp-Distill-workdir';
    const refresh = document.createElement('button');
    refresh.className = 'jp-Distill-refresh jp-mod-styled';
    refresh.textContent = 'Refresh';
    refresh.title = 'Reload runs and aliases now';
    refresh.addEventListener('click', () => void this.refresh());
    header.append(this._workdir, refresh);

    const runs = section('Runs', 'jp-Distill-runs');
    const aliases = section('Aliases', 'jp-Distill-aliases');
    this._runs = runs.body;
    this._aliases = aliases.body;
    this.node.append(header, runs.root, aliases.root);
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
      this._renderRuns(list);
      this._renderAliases(aliases instanceof Error ? aliases : parseAliases(aliases));
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

  private _renderRuns(list: IRunList): void {
    this._workdir.textContent = list.workdir;
    this._workdir.title =
      `run folder: ${list.workdir} ` + '(set by JUPYTER_DISTILL_WORKDIR or c.DistillServer.workdir)';
    if (list.runs.length === 0) {
      this._runs.replaceChildren(message(emptyRunsMessage(list.workdir)));
      return;
    }
    const ul = document.createElement('ul');
    ul.className = 'jp-Distill-run-list';
    for (const run of list.runs) {
      ul.appendChild(runRow(run));
    }
    this._runs.replaceChildren(ul);
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
      const li = document.createElement('li');
      li.className = 'jp-Distill-alias';
      li.dataset.alias = alias.name;
      const name = document.createElement('span');
      name.className = 'jp-Distill-alias-name';
      name.textContent = alias.name;
      name.title = [alias.backend, alias.model_path ?? alias.base_model].filter(Boolean).join(': ');
      const backend = document.createElement('span');
      backend.className = 'jp-Distill-alias-backend';
      backend.textContent = alias.backend ?? '';
      const unset = document.createElement('button');
      unset.className = 'jp-Distill-alias-unset jp-mod-styled';
      unset.textContent = 'Unset';
      unset.title = `Remove the alias ${alias.name} (model files are kept)`;
      unset.addEventListener('click', () => void this._unset(alias.name));
      li.append(name, backend, unset);
      ul.appendChild(li);
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
    await this.refresh();
  }

  private _runs: HTMLElement;
  private _aliases: HTMLElement;
  private _workdir: HTMLElement;
  private _timer = 0;
}
