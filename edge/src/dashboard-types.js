// The content types of the dashboard's files by suffix (the device relay's table, in
// kiki_sync_relay/dashboard): shared by the build, which embeds only these, and the Worker.

/** @type {Readonly<Record<string, string>>} */
export const TYPES = Object.freeze({
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
});
