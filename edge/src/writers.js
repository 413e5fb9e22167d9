// Yjs client ids belong to their first writer, as awareness client ids do: the first peer to
// write structs under an id owns it, by its token's role and sub (a stock client reconnecting
// with its document writes on under its id). An update whose structs advance an id someone
// else owns is refused: written under the device link's id at a clock the link has not used
// yet, it would make the link's own next write a duplicate every replica drops. A delete set
// names the ids it deletes, not its writer's: left to the part rules. The owners are kept in
// the object's SQLite storage, so they outlive hibernation and restarts.
import * as Y from "yjs";

const SCHEMA = `CREATE TABLE IF NOT EXISTS yjs_writers (client INTEGER PRIMARY KEY, writer TEXT NOT NULL)`;

/**
 * Who owns the ids a peer writes under: its role and token sub.
 * @param {{role?: string, sub?: string}} peer
 */
export const writerOf = (peer) => `${peer.role ?? ""}\n${peer.sub ?? ""}`;

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
    for (const row of this.sql.exec(`SELECT client, writer FROM yjs_writers`)) {
      this.owners.set(Number(row.client), String(row.writer));
    }
  }

  /**
   * @param {number} client
   * @param {string} writer
   */
  may(client, writer) {
    const owner = this.owners.get(client);
    return owner === undefined || owner === writer;
  }

  /**
   * @param {number[]} clients
   * @param {string} writer
   */
  claim(clients, writer) {
    for (const client of clients) {
      if (this.owners.has(client)) continue;
      this.owners.set(client, writer);
      this.sql.exec(`INSERT OR IGNORE INTO yjs_writers (client, writer) VALUES (?, ?)`, client, writer);
    }
  }
}
