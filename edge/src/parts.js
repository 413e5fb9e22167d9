// The session document's parts (libkiki.sync.parts): top-level shared types that only some
// roles may write. Roots no part names are open to every writer; observers write nothing.
// Some writers of a part may only add to it (ADDERS): a controller adds new intents, each a
// JSON object whose `by` is its token's `sub`, and never changes or deletes one.
import * as Y from "yjs";

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

/** @type {Readonly<Record<string, ReadonlySet<string>>>} root -> the roles that may only add */
export const ADDERS = Object.freeze({
  intents: new Set(["controller"]),
});

/**
 * The roots `role` may only add new entries to.
 * @param {string} role
 * @returns {string[]}
 */
export function addOnlyRoots(role) {
  return Object.entries(ADDERS)
    .filter(([, adders]) => adders.has(role))
    .map(([root]) => root);
}

/**
 * Why an add-only writer with token `sub` may not make the changes these deep events of part
 * `root` describe, or null when it may (the device relay's libkiki.sync.parts words the same
 * reasons).
 * @param {string} root
 * @param {Y.YEvent<any>[]} events
 * @param {string} sub
 * @returns {string | null}
 */
export function addedEntriesProblem(root, events, sub) {
  for (const event of events) {
    if (event.path.length > 0) return `a nested change in the session's ${root}`;
    const keys = event.changes.keys;
    // A change with no key changed went into the map's list half: the part written as a text
    // or an array.
    if (keys.size === 0) return `the session's ${root} written as another type`;
    for (const [key, { action }] of keys) {
      const problem = addedEntryProblem(root, key, action, event.target.get(key), sub);
      if (problem !== null) return problem;
    }
  }
  return null;
}

/**
 * @param {string} root
 * @param {string} key
 * @param {string} action "add", "update" or "delete", as a Yjs map event names it
 * @param {unknown} value
 * @param {string} sub
 * @returns {string | null}
 */
export function addedEntryProblem(root, key, action, value, sub) {
  const noun = root.replace(/s$/, "");
  const shortKey = key.slice(0, 64);
  if (action !== "add") return `a ${noun} may only be added, not changed or deleted (${shortKey})`;
  if (!isJsonObject(value)) return `${noun} ${shortKey} is not a JSON object`;
  const by = /** @type {Record<string, unknown>} */ (value).by;
  if (by !== sub) {
    // As the device words it (Python's repr of a missing or non-string `by`).
    let shown = "None";
    if (typeof by === "string") shown = by;
    else if (by !== undefined && by !== null) shown = JSON.stringify(by);
    return `${noun} by ${shown.slice(0, 64)} from a connection of ${sub.slice(0, 64)}`;
  }
  return null;
}

/**
 * A plain JSON object (Yjs "any" content), not a shared type, an array or binary.
 * @param {unknown} value
 */
function isJsonObject(value) {
  return (
    typeof value === "object" &&
    value !== null &&
    !Array.isArray(value) &&
    !(value instanceof Y.AbstractType) &&
    !(value instanceof Uint8Array)
  );
}
