// Yjs client ids belong to their first writer, as awareness client ids do: the first peer to
// write structs under an id owns it, by its token's role and sub (a stock client reconnecting
// with its document writes on under its id). An update whose structs advance an id someone
// else owns is refused: written under the device link's id at a clock the link has not used
// yet, it would make the link's own next write a duplicate every replica drops. A delete set
// names the ids it deletes, not its writer's: left to the part rules. The owners are kept in
// the object's SQLite storage, so they outlive hibernation and restarts.
//
// The device role is never refused on ownership: it may write every part, and each end decides
// ownership apart, so refusing it could refuse the relay's link on every reconnect. Its writes
// still claim ids nobody owns. Only ids whose state in the live document grew are claimed (an
// update of Skip structs names ids it changes nothing under), and any other writer owns at most
// MAX_YJS_IDS of them (more: LimitExceeded, 1013).
import * as Y from "yjs";

/** Yjs client ids one writer (not the device) may own; a stock client uses one per document. */
export const MAX_YJS_IDS = 64;

const SCHEMA = `CREATE TABLE IF NOT EXISTS yjs_writers (client INTEGER PRIMARY KEY, writer TEXT NOT NULL)`;

/**
 * Who owns the ids a peer writes under: its role and token sub.
 * @param {{role?: string, sub?: string}} peer
 */
export const writerOf = (peer) => `${peer.role ?? ""}\n${peer.sub ?? ""}`;

/**
 * Every client's clock in `doc`.
 * @param {Y.Doc} doc
 * @returns {Map<number, number>}
 */
export function clocksOf(doc) {
  /** @type {Map<number, number>} */
  const clocks = new Map();
  for (const client of doc.store.clients.keys()) clocks.set(client, Y.getState(doc.store, client));
  return clocks;
}

/**
 * The client ids whose clock in `doc` grew past `before`: what an applied update wrote.
 * @param {Y.Doc} doc
 * @param {Map<number, number>} before
 * @returns {number[]}
 */
export function grownClients(doc, before) {
  /** @type {number[]} */
  const grown = [];
  for (const client of doc.store.clients.keys()) {
    if (Y.getState(doc.store, client) > (before.get(client) ?? 0)) grown.push(client);
  }
  return grown;
}

/**
 * The client ids whose structs in `update` reach past what `doc` holds (Yjs' own decoder).
 * @param {Y.Doc} doc
 * @param {Uint8Array} update
 * @returns {number[]}
 */
export function advancedClients(doc, update) {
  const { to } = Y.parseUpdateMeta(update);
  /** @type {number[]} */
  const advanced = [];
  for (const [client, clock] of to) {
    if (clock > Y.getState(doc.store, client)) advanced.push(client);
  }
  return advanced;
}

export class YjsWriters {
  /** @param {SqlStorage} sql */
  constructor(sql) {
    this.sql = sql;
    this.sql.exec(SCHEMA);
    /** @type {Map<number, string>} */
    this.owners = new Map();
    /** @type {Map<string, number>} how many ids each writer owns */
    this.counts = new Map();
    for (const row of this.sql.exec(`SELECT client, writer FROM yjs_writers`)) {
      this.owners.set(Number(row.client), String(row.writer));
      this.counts.set(String(row.writer), (this.counts.get(String(row.writer)) ?? 0) + 1);
    }
  }

  /**
   * @param {number} client
   * @param {string} writer
   * @param {boolean} device the device role, never refused on ownership
   */
  may(client, writer, device) {
    const owner = this.owners.get(client);
    return device || owner === undefined || owner === writer;
  }

  /**
   * Would `writer` own more than MAX_YJS_IDS ids after claiming `clients`?
   * @param {number[]} clients
   * @param {string} writer
   * @param {boolean} device the device role, not bounded
   */
  over(clients, writer, device) {
    if (device) return false;
    const fresh = clients.filter((client) => !this.owners.has(client)).length;
    return (this.counts.get(writer) ?? 0) + fresh > MAX_YJS_IDS;
  }

  /**
   * @param {number[]} clients
   * @param {string} writer
   */
  claim(clients, writer) {
    for (const client of clients) {
      if (this.owners.has(client)) continue;
      this.owners.set(client, writer);
      this.counts.set(writer, (this.counts.get(writer) ?? 0) + 1);
      this.sql.exec(`INSERT OR IGNORE INTO yjs_writers (client, writer) VALUES (?, ?)`, client, writer);
    }
  }
}
