/**
 * Renders `application/vnd.jupyter.distill.run+json` outputs as run cards.
 *
 * A MIME renderer rather than a widget view, so a saved notebook shows its runs with no
 * kernel, and nbconvert/GitHub fall back to the text/html parts of the same bundle.
 */
import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';

import { runCard } from './card';
import { RUN_MIME_TYPE, RUN_RENDERER_RANK, parseRunSummary } from './format';

export class RunCardRenderer extends Widget implements IRenderMime.IRenderer {
  constructor(options: IRenderMime.IRendererOptions) {
    super();
    this._mimeType = options.mimeType;
    this.addClass('jp-Distill-rendered');
  }

  renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const run = parseRunSummary(model.data[this._mimeType]);
    if (run === null) {
      const note = document.createElement('pre');
      note.className = 'jp-Distill-error';
      note.textContent = 'This jupyter-distill run summary has no run id and cannot be shown.';
      this.node.replaceChildren(note);
    } else {
      this.node.replaceChildren(runCard(run));
    }
    return Promise.resolve();
  }

  private _mimeType: string;
}

export const rendererFactory: IRenderMime.IRendererFactory = {
  safe: true,
  mimeTypes: [RUN_MIME_TYPE],
  createRenderer: options => new RunCardRenderer(options)
};

const extension: IRenderMime.IExtension = {
  id: 'jupyter-distill:run-renderer',
  description: 'Renders jupyter-distill run summaries as cards, with or without a kernel.',
  rendererFactory,
  rank: RUN_RENDERER_RANK,
  dataType: 'json'
};

export default extension;
