/**
 * jupyter-distill for JupyterLab: the Distill sidebar (runs and aliases of the server's
 * workdir) and the "Insert %%distill cell" command in the palette and the notebook toolbar.
 * Keys typed in the review widget stay in it (src/reviewkeys.ts).
 * The run card MIME renderer is a separate mime extension (src/mime.ts) so it also loads
 * where only renderers are allowed.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, ToolbarButton, showErrorMessage } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import iconSvg from '../style/icon.svg';
import { templateCells } from './format';
import { DistillPanel } from './panel';
import { reviewKeysPlugin } from './reviewkeys';
import { addRunCommands } from './runactions';

export const PANEL_ID = 'jupyter-distill-panel';

export namespace CommandIDs {
  export const openPanel = 'jupyter-distill:open-panel';
  export const insertTemplate = 'jupyter-distill:insert-template';
}

export const distillIcon = new LabIcon({ name: 'jupyter-distill:icon', svgstr: iconSvg });

/**
 * Insert the `%%distill` example (a setup cell, then the `%%distill` cell) below the active
 * cell (or into the notebook's only empty cell), preceded by `%load_ext jupyter_distill` when
 * no cell loads it yet.
 */
export function insertTemplate(panel: NotebookPanel): void {
  const notebook = panel.content;
  const model = notebook.model;
  if (model === null) {
    return;
  }
  const cells = Array.from(model.cells);
  const codeSources = cells.filter(cell => cell.type === 'code').map(cell => cell.sharedModel.getSource());
  const sources = templateCells(codeSources);
  const onlyCellEmpty = cells.length === 1 && cells[0].sharedModel.getSource().trim() === '';
  const at = onlyCellEmpty ? 0 : notebook.activeCellIndex + 1;
  model.sharedModel.transact(() => {
    if (onlyCellEmpty) {
      model.sharedModel.deleteCell(0);
    }
    model.sharedModel.insertCells(
      at,
      sources.map(source => ({ cell_type: 'code', source, metadata: {} }))
    );
  });
  notebook.activeCellIndex = at + sources.length - 1;
  notebook.scrollToItem(notebook.activeCellIndex).catch(() => undefined);
}

const panelPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-distill:panel',
  description: 'The Distill sidebar: runs (live) and aliases of the server workdir.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette],
  activate: (app: JupyterFrontEnd, restorer: ILayoutRestorer | null, palette: ICommandPalette | null) => {
    const panel = new DistillPanel({ commands: app.commands });
    panel.id = PANEL_ID;
    panel.title.icon = distillIcon;
    panel.title.caption = 'Distill: runs and aliases';
    app.shell.add(panel, 'left', { rank: 650 });
    restorer?.add(panel, PANEL_ID);

    app.commands.addCommand(CommandIDs.openPanel, {
      label: 'Show Distill Runs and Aliases',
      caption: 'Open the Distill sidebar',
      icon: distillIcon,
      execute: () => app.shell.activateById(PANEL_ID)
    });
    palette?.addItem({ command: CommandIDs.openPanel, category: 'Distill' });
  }
};

const templatePlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-distill:template',
  description: 'Insert a %%distill template cell from the palette or the notebook toolbar.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, palette: ICommandPalette | null) => {
    app.commands.addCommand(CommandIDs.insertTemplate, {
      label: 'Insert %%distill Cell',
      caption: 'Insert a %%distill template cell into the active notebook',
      icon: distillIcon,
      isEnabled: () => tracker.currentWidget !== null,
      execute: async () => {
        const current = tracker.currentWidget;
        if (current === null) {
          await showErrorMessage('No notebook', 'Open a notebook to insert a %%distill cell into.');
          return;
        }
        insertTemplate(current);
      }
    });
    palette?.addItem({ command: CommandIDs.insertTemplate, category: 'Distill' });

    app.docRegistry.addWidgetExtension('Notebook', {
      createNew: (panel: NotebookPanel) => {
        const button = new ToolbarButton({
          icon: distillIcon,
          tooltip: 'Insert a %%distill template cell',
          className: 'jp-Distill-toolbar-button',
          onClick: () => insertTemplate(panel)
        });
        // Next to the cell type picker when the toolbar has one, else at the end.
        if (!panel.toolbar.insertAfter('cellType', 'distillTemplate', button)) {
          panel.toolbar.addItem('distillTemplate', button);
        }
        return button;
      }
    });
  }
};

const runCommandsPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-distill:run-commands',
  description: "Open a run's card, review widget or notebook (the Distill panel's row buttons).",
  autoStart: true,
  optional: [INotebookTracker],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker | null) => addRunCommands(app, tracker)
};

export default [panelPlugin, templatePlugin, reviewKeysPlugin, runCommandsPlugin];
