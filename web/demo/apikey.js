/* The API key the browser pages (the demo, the dashboard) send as a Bearer token:
   kept in the tab's session storage only, so it is gone when the tab closes. */

const KEY_STORE = 'herald.apiKey';

// The key of this page load, for when session storage is disabled.
let inMemory = '';

/** The stored key, or '' (none). */
export function apiKey() {
  try { return window.sessionStorage.getItem(KEY_STORE) || inMemory; } catch (_) { return inMemory; }
}

/** Stores `key` (an empty one removes it). */
export function storeApiKey(key) {
  inMemory = key || '';
  try {
    if (key) window.sessionStorage.setItem(KEY_STORE, key);
    else window.sessionStorage.removeItem(KEY_STORE);
  } catch (_) { /* storage disabled: the key lives until the page reloads */ }
}
