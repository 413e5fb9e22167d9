// The session document's parts (libkiki.sync.parts): top-level shared types that only some
// roles may write. Roots no part names are open to every writer; observers write nothing.

/** @type {Readonly<Record<string, ReadonlySet<string>>>} root -> the roles that may write it */
export const PARTS = Object.freeze({
  device: new Set(["device"]),
  intents: new Set(["controller", "device"]),
  results: new Set(["device"]),
});

/**
 * The roots `role` may not write.
 * @param {string} role
 * @returns {string[]}
 */
export function forbiddenRoots(role) {
  return Object.entries(PARTS)
    .filter(([, writers]) => !writers.has(role))
    .map(([root]) => root);
}
