// The object's SQLite storage (ctx.storage.sql): the session document as a snapshot plus an
// append-only log of the updates received since, and the revoked token ids.
//
// Every write here is synchronous; the runtime's output gate holds back any message the
// object sends after a write until that write is durable, which is what makes "durable before
// relayed" hold without waiting explicitly.
import * as Y from "yjs";

const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS snapshot (id INTEGER PRIMARY KEY CHECK (id = 0), doc BLOB NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS updates (seq INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL)`,
  // exp: seconds, the revoked token's expiry; the row is pruned once the token would be
  // refused anyway (exp plus the clocks' leeway).
  `CREATE TABLE IF NOT EXISTS revocations (jti TEXT PRIMARY KEY, exp INTEGER NOT NULL)`,
];

// How long a revocation whose token's expiry is unknown is kept: the longest a token is issued
// for (libkiki.sync.tokens.MAX_TTL).
export const MAX_TTL_SECONDS = 366 * 86400;

/** @param {ArrayBuffer | Uint8Array} blob */
const bytes = (blob) => (blob instanceof Uint8Array ? blob : new Uint8Array(blob));

export class SessionStore {
  /** @param {DurableObjectStorage} storage */
  constructor(storage) {
    this.storage = storage;
    this.sql = storage.sql;
    for (const statement of SCHEMA) this.sql.exec(statement);
    this.migrateRevoked();
    this.logRows = 0;
    this.logBytes = 0;
    this.snapshotBytes = 0;
  }

  /**
   * Counts one more start of the object (a wake-up from hibernation, a restart) and returns
   * the count: the tests tell from it that the object really was evicted.
   */
  countBoot() {
    const row = this.sql
      .exec(
        `INSERT INTO meta (key, value) VALUES ('boots', '1')
         ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1
         RETURNING value`,
      )
      .one();
    return Number(row.value);
  }

  /**
   * A document holding everything stored: the snapshot, then the log in order.
   * @returns {Y.Doc}
   */
  loadDoc() {
    const doc = new Y.Doc({ gc: true });
    this.logRows = 0;
    this.logBytes = 0;
    this.snapshotBytes = 0;
    doc.transact(() => {
      for (const row of this.sql.exec(`SELECT doc FROM snapshot WHERE id = 0`)) {
        const data = bytes(/** @type {ArrayBuffer} */ (row.doc));
        this.snapshotBytes = data.length;
        Y.applyUpdate(doc, data);
      }
      for (const row of this.sql.exec(`SELECT data FROM updates ORDER BY seq`)) {
        const data = bytes(/** @type {ArrayBuffer} */ (row.data));
        this.logRows += 1;
        this.logBytes += data.length;
        Y.applyUpdate(doc, data);
      }
    });
    return doc;
  }

  /** @param {Uint8Array} update */
  append(update) {
    this.sql.exec(`INSERT INTO updates (data) VALUES (?)`, update);
    this.logRows += 1;
    this.logBytes += update.length;
  }

  /**
   * Replaces the snapshot and the log with one snapshot of `doc` (which holds the whole log).
   * @param {Y.Doc} doc
   */
  compact(doc) {
    const snapshot = Y.encodeStateAsUpdate(doc);
    this.storage.transactionSync(() => {
      this.sql.exec(`INSERT OR REPLACE INTO snapshot (id, doc) VALUES (0, ?)`, snapshot);
      this.sql.exec(`DELETE FROM updates`);
    });
    this.snapshotBytes = snapshot.length;
    this.logRows = 0;
    this.logBytes = 0;
  }

  /** The first schema kept when each jti was revoked, not until when: kept for MAX_TTL. */
  migrateRevoked() {
    const old = this.sql
      .exec(`SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'revoked'`)
      .toArray();
    if (old.length === 0) return;
    this.storage.transactionSync(() => {
      this.sql.exec(
        `INSERT OR IGNORE INTO revocations (jti, exp) SELECT jti, at / 1000 + ? FROM revoked`,
        MAX_TTL_SECONDS,
      );
      this.sql.exec(`DROP TABLE revoked`);
    });
  }

  /**
   * @param {string} jti
   * @param {number} exp seconds: the token's expiry (the latest one wins)
   */
  revoke(jti, exp) {
    this.sql.exec(
      `INSERT INTO revocations (jti, exp) VALUES (?, ?)
       ON CONFLICT (jti) DO UPDATE SET exp = MAX(exp, excluded.exp)`,
      jti,
      Math.floor(exp),
    );
  }

  /** @param {string} jti */
  isRevoked(jti) {
    return this.sql.exec(`SELECT 1 FROM revocations WHERE jti = ?`, jti).toArray().length > 0;
  }

  /**
   * Drops the revocations whose tokens are refused anyway by now (`expired`: seconds, the
   * latest expiry that is past with the leeway).
   * @param {number} expired
   */
  pruneRevoked(expired) {
    this.sql.exec(`DELETE FROM revocations WHERE exp < ?`, expired);
  }

  /** @returns {number | null} seconds: the earliest expiry among the revocations */
  firstRevokedExpiry() {
    const row = this.sql.exec(`SELECT MIN(exp) AS exp FROM revocations`).one();
    return row.exp === null ? null : Number(row.exp);
  }

  revokedCount() {
    return Number(this.sql.exec(`SELECT COUNT(*) AS n FROM revocations`).one().n);
  }
}
