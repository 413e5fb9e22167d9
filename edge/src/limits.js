// The object's limits, from the Worker's bindings (wrangler.toml [vars], or the workerd
// config's text bindings), each with its default.

/**
 * @typedef {object} Limits
 * @property {number} maxMessage bytes of one WebSocket message (FrameTooLarge, 1009)
 * @property {number} maxClients sockets with a valid token in one session (LimitExceeded, 1013)
 * @property {number} maxPendingClients sockets still waiting to send their token, in one
 *   session (LimitExceeded, 1013)
 * @property {number} maxDocument bytes the stored document may reach (LimitExceeded, 1013)
 * @property {number} maxAwarenessClients awareness states one socket may own
 * @property {number} authTimeoutMs how long a socket without a token is kept (then 1008)
 * @property {number} compactRows log rows that start a compaction into the snapshot
 * @property {number} compactBytes log bytes that start a compaction into the snapshot
 * @property {number} rate messages per second one client may send on average (LimitExceeded)
 * @property {number} burst ... and at once
 */

/** @type {Readonly<Limits>} */
export const DEFAULTS = Object.freeze({
  maxMessage: 1024 * 1024,
  maxClients: 256,
  maxPendingClients: 64,
  maxDocument: 64 * 1024 * 1024,
  maxAwarenessClients: 16,
  authTimeoutMs: 5000,
  compactRows: 1000,
  compactBytes: 4 * 1024 * 1024,
  rate: 500,
  burst: 2000,
});

/** @type {Readonly<Record<keyof Limits, string>>} */
const BINDINGS = Object.freeze({
  maxMessage: "KIKI_MAX_MESSAGE",
  maxClients: "KIKI_MAX_CLIENTS",
  maxPendingClients: "KIKI_MAX_PENDING_CLIENTS",
  maxDocument: "KIKI_MAX_DOCUMENT",
  maxAwarenessClients: "KIKI_MAX_AWARENESS_CLIENTS",
  authTimeoutMs: "KIKI_AUTH_TIMEOUT_MS",
  compactRows: "KIKI_COMPACT_ROWS",
  compactBytes: "KIKI_COMPACT_BYTES",
  rate: "KIKI_RATE",
  burst: "KIKI_BURST",
});

/**
 * The limits set in `env`; a binding that is not a positive integer keeps the default.
 * @param {Record<string, unknown>} env
 * @returns {Limits}
 */
export function limitsFrom(env) {
  const limits = { ...DEFAULTS };
  for (const [field, binding] of Object.entries(BINDINGS)) {
    const value = Number(env[binding]);
    if (Number.isSafeInteger(value) && value > 0) {
      limits[/** @type {keyof Limits} */ (field)] = value;
    }
  }
  return limits;
}

/** At most `burst` at once, refilled at `rate` per second (the device relay's bucket). */
export class TokenBucket {
  /**
   * @param {number} rate
   * @param {number} burst
   * @param {number} now ms
   */
  constructor(rate, burst, now) {
    this.rate = rate;
    this.burst = burst;
    this.level = burst;
    this.at = now;
  }

  /** @param {number} now ms */
  take(now) {
    this.level = Math.min(this.burst, this.level + ((now - this.at) / 1000) * this.rate);
    this.at = now;
    if (this.level < 1) return false;
    this.level -= 1;
    return true;
  }
}

/**
 * @param {unknown} body
 * @param {number} [status]
 */
export function json(body, status = 200) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json" },
  });
}
