/* The API key the browser pages (the demo, the dashboard) send as a Bearer token:
   kept in the tab's session storage only, so it is gone when the tab closes. */

const KEY_STORE = 'herald.apiKey';

/** The stored key, or '' (none, or storage disabled). */
export function apiKey() {
  try { return window.sessionStorage.getItem(KEY_STORE) || ''; } catch (_) { return ''; }
}

/** Stores `key` (an empty one removes it). */
export function storeApiKey(key) {
  try {
    if (key) window.sessionStorage.setItem(KEY_STORE, key);
    else window.sessionStorage.removeItem(KEY_STORE);
  } catch (_) { /* storage disabled: the key lives until the page reloads */ }
}
