/**
 * DOM for one alias in the Distill panel: name, what it serves now, its audit verdict, and its
 * recorded versions in a collapsible list. The wording comes from paneldata.ts (tested in node).
 */
import { IAlias, timeAgo } from './format';
import { IAliasDetail, auditBadge, historyLine, targetLabel, teacherLines } from './paneldata';

/** Versions listed under an alias (the registry keeps up to 100). */
const HISTORY_SHOWN = 10;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className: string, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/**
 * One alias row. `detail` is null until its versions and verdict arrived (or when they could not
 * be read: `error`). `open` keeps the history expanded across refreshes.
 */
export function aliasRow(
  alias: IAlias,
  detail: IAliasDetail | null,
  error: string | null,
  open: boolean,
  onUnset: () => void,
  onToggle: (open: boolean) => void
): HTMLElement {
  const li = el('li', 'jp-Distill-alias');
  li.dataset.alias = alias.name;
  const head = el('div', 'jp-Distill-alias-head');
  const name = el('span', 'jp-Distill-alias-name', alias.name);
  name.title = [alias.backend, alias.model_path ?? alias.base_model].filter(Boolean).join(': ');
  const backend = el('span', 'jp-Distill-alias-backend', alias.backend ?? '');
  const badge = auditBadge(detail?.audit ?? null);
  const audit = el('span', `jp-Distill-audit ${badge.className}`, error ? 'audit ?' : badge.label);
  audit.title = error ?? badge.title;
  const unset = el('button', 'jp-Distill-alias-unset jp-mod-styled', 'Unset');
  unset.title = `Remove the alias ${alias.name} (model files are kept)`;
  unset.addEventListener('click', onUnset);
  head.append(name, backend, audit, unset);
  li.appendChild(head);

  const target = detail?.current ?? null;
  const version = detail?.version !== null && detail?.version !== undefined ? `v${detail.version}: ` : '';
  const fallback = [alias.backend, alias.model_path ?? alias.base_model].filter(Boolean).join(' ');
  const now = el('div', 'jp-Distill-alias-target', `${version}${target ? targetLabel(target) : fallback}`);
  now.title = alias.model_path ?? alias.base_model ?? '';
  li.appendChild(now);

  if (detail !== null) {
    const more = el('details', 'jp-Distill-alias-details');
    more.open = open;
    more.addEventListener('toggle', () => onToggle(more.open));
    more.appendChild(el('summary', '', `history (${detail.history.length}) and audit`));
    if (detail.audit !== null) {
      more.appendChild(el('p', `jp-Distill-alias-audit ${badge.className}`, detail.audit.message));
      const teachers = teacherLines(detail.audit);
      if (teachers.length > 0) {
        const ul = el('ul', 'jp-Distill-alias-teachers');
        teachers.forEach(line => ul.appendChild(el('li', '', line)));
        more.appendChild(ul);
      }
    }
    const ol = el('ol', 'jp-Distill-alias-history');
    for (const v of detail.history.slice(0, HISTORY_SHOWN)) {
      ol.appendChild(el('li', `jp-Distill-alias-version jp-Distill-action-${v.action}`, historyLine(v, at => timeAgo(at))));
    }
    if (detail.history.length > HISTORY_SHOWN) {
      ol.appendChild(el('li', 'jp-Distill-empty', `${detail.history.length - HISTORY_SHOWN} older (jd.alias_history)`));
    }
    more.appendChild(ol);
    li.appendChild(more);
  }
  return li;
}
