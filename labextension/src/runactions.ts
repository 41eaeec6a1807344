/**
 * Commands that open a run from the Distill panel: its card (in the main area, or as a cell of
 * the notebook), its review widget, and the notebook that started it.
 *
 * The card and the notebook come from the server (the run store and the notebooks under the
 * root); the review widget lives in a kernel, so it is opened by running `%distill review NAME`
 * in the active notebook, or in the run's own notebook when none is active.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { MainAreaWidget, showErrorMessage } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { runCard } from './card';
import { parseRunSummary } from './format';
import { parseNotebooks, parseRunCounts, runCellSource, sampleSizes } from './paneldata';
import { requestAPI } from './request';

export namespace RunCommandIDs {
  export const openCard = 'jupyter-distill:open-run-card';
  export const insertCard = 'jupyter-distill:insert-run-card';
  export const review = 'jupyter-distill:review-run';
  export const openNotebook = 'jupyter-distill:open-run-notebook';
}

function runArg(args: unknown): string {
  const run = (args as { run?: unknown } | undefined)?.run;
  if (typeof run !== 'string' || run.length === 0) {
    throw new Error('the command needs a run name: {"run": "NAME"}');
  }
  return run;
}

/** The notebooks under the server root whose cells start `run`, newest first. */
async function runNotebooks(run: string): Promise<string[]> {
  const reply = await requestAPI<unknown>(`runs/${encodeURIComponent(run)}/notebooks`);
  return parseNotebooks(reply).notebooks;
}

async function openRunNotebook(app: JupyterFrontEnd, run: string): Promise<NotebookPanel | null> {
  const found = await runNotebooks(run);
  if (found.length === 0) {
    await showErrorMessage(
      'No notebook found',
      `No notebook under the server's root starts run ${run} (a "%%distill ${run}" cell or ` +
        `distill(..., name="${run}")). It may have been made by a script or by make demo.`
    );
    return null;
  }
  const widget = (await app.commands.execute('docmanager:open', { path: found[0] })) as Widget | undefined;
  return widget instanceof NotebookPanel ? widget : null;
}

/** Add `source` as a code cell below the active cell of `panel` and run it in the notebook's kernel. */
async function insertAndRun(panel: NotebookPanel, source: string): Promise<void> {
  await panel.context.ready;
  const notebook = panel.content;
  const model = notebook.model;
  if (model === null) {
    return;
  }
  const at = Math.min(notebook.activeCellIndex + 1, model.cells.length);
  model.sharedModel.insertCell(at, { cell_type: 'code', source, metadata: {} });
  notebook.activeCellIndex = at;
  notebook.deselectAll();
  await panel.sessionContext.ready;
  await NotebookActions.run(notebook, panel.sessionContext);
}

function codeSources(panel: NotebookPanel): string[] {
  const model = panel.content.model;
  if (model === null) {
    return [];
  }
  return Array.from(model.cells)
    .filter(cell => cell.type === 'code')
    .map(cell => cell.sharedModel.getSource());
}

/** The notebook to run a `%distill` line in: the active one, else the run's own. */
async function targetNotebook(
  app: JupyterFrontEnd,
  tracker: INotebookTracker | null,
  run: string
): Promise<NotebookPanel | null> {
  return tracker?.currentWidget ?? (await openRunNotebook(app, run));
}

async function cardWidget(run: string): Promise<Widget> {
  const [detail, list] = await Promise.all([
    requestAPI<unknown>(`runs/${encodeURIComponent(run)}`),
    requestAPI<unknown>('runs').catch(() => null)
  ]);
  const summary = parseRunSummary(detail);
  const content = new Widget();
  content.addClass('jp-Distill-card-view');
  if (summary === null) {
    content.node.textContent = `The server sent no card for run ${run}.`;
    return content;
  }
  content.node.appendChild(runCard(summary));
  const sizes = sampleSizes(summary, parseRunCounts(list)[run]);
  if (sizes !== null) {
    const line = document.createElement('p');
    line.className = 'jp-Distill-run-sizes';
    line.textContent = sizes.warnings.length > 0 ? `${sizes.text} ⚠ ${sizes.warnings.join('; ')}` : sizes.text;
    content.node.appendChild(line);
  }
  return content;
}

/** Register the run commands; the panel's rows call them with `{run: NAME}`. */
export function addRunCommands(app: JupyterFrontEnd, tracker: INotebookTracker | null): void {
  const fail = (title: string) => (error: unknown) => showErrorMessage(title, error as Error);

  app.commands.addCommand(RunCommandIDs.openCard, {
    label: 'Show Run Card',
    caption: "Open the run's card (status, cost, loss, pass rates) in the main area",
    execute: async args => {
      const run = runArg(args);
      try {
        const id = `jupyter-distill-card-${run}`;
        const content = await cardWidget(run);
        const open = Array.from(app.shell.widgets('main')).find(w => w.id === id);
        open?.dispose(); // a fresh card: the run may have moved on since it was opened
        const widget = new MainAreaWidget({ content });
        widget.id = id;
        widget.title.label = `Run ${run}`;
        widget.title.closable = true;
        app.shell.add(widget, 'main');
        app.shell.activateById(id);
      } catch (error) {
        await fail(`Cannot show run ${run}`)(error);
      }
    }
  });

  app.commands.addCommand(RunCommandIDs.insertCard, {
    label: 'Insert Run Card Cell',
    caption: 'Insert and run "%distill status NAME" in the active notebook (the card as an output)',
    execute: async args => {
      const run = runArg(args);
      try {
        const panel = await targetNotebook(app, tracker, run);
        if (panel !== null) {
          await insertAndRun(panel, runCellSource('status', run, codeSources(panel)));
        }
      } catch (error) {
        await fail(`Cannot insert the card of ${run}`)(error);
      }
    }
  });

  app.commands.addCommand(RunCommandIDs.review, {
    label: 'Review Run',
    caption: 'Open the review widget of the run: runs "%distill review NAME" in the active notebook',
    execute: async args => {
      const run = runArg(args);
      try {
        const panel = await targetNotebook(app, tracker, run);
        if (panel !== null) {
          await insertAndRun(panel, runCellSource('review', run, codeSources(panel)));
        }
      } catch (error) {
        await fail(`Cannot open the review of ${run}`)(error);
      }
    }
  });

  app.commands.addCommand(RunCommandIDs.openNotebook, {
    label: 'Open Run Notebook',
    caption: 'Open the notebook whose %%distill cell started the run',
    execute: async args => {
      const run = runArg(args);
      try {
        await openRunNotebook(app, run);
      } catch (error) {
        await fail(`Cannot open the notebook of ${run}`)(error);
      }
    }
  });
}
