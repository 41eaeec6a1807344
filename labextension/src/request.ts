/**
 * Calls to the jupyter_distill server extension through Jupyter's own connection settings,
 * so the token, XSRF cookie and base URL are whatever the running JupyterLab uses.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** Where the server extension's routes live, below the server's base URL. */
export const API_NAMESPACE = 'jupyter-distill';

/**
 * Fetch `endPoint` (e.g. "runs", "aliases/name") and return the parsed JSON body, or null
 * for an empty reply (DELETE answers 204). Errors carry the server's JSON message.
 */
export async function requestAPI<T = unknown>(
  endPoint = '',
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T | null> {
  const url = URLExt.join(settings.baseUrl, API_NAMESPACE, endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: unknown = null;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const message =
      typeof data === 'object' && data !== null && 'message' in data
        ? String((data as { message: unknown }).message)
        : `${response.status} ${response.statusText}`;
    throw new ServerConnection.ResponseError(response, message);
  }
  return data as T | null;
}
