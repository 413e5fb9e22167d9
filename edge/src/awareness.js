// The session's awareness states and who owns them. An awareness id belongs to the socket that
// first set a state for it (removed states included) until that socket closes: another
// socket's newer state for it is refused, its removal of it dropped. Readers' echoes of what
// they were told are dropped too. Which socket owns what is read from the peers' records (the
// object's, kept in their attachments); this module holds the states and the rules.
import * as decoding from "lib0/decoding";
import * as encoding from "lib0/encoding";
import * as awarenessProtocol from "y-protocols/awareness";
import * as Y from "yjs";
import { KINDS, Refusal } from "./errors.js";
import { awarenessMessage, awarenessStates } from "./protocol.js";
import { WRITERS } from "./tokens.js";

/**
 * An entry of an awareness update: [client id, whether a state is set, clock, state as JSON].
 * @typedef {[number, boolean, number, string]} Entry
 */

/**
 * What an accepted awareness update does: the message to relay to the others, and the sender's
 * owned states as they are now (null when unchanged).
 * @typedef {{relay: Uint8Array, owned: import("./peers.js").Owned | null}} Accepted
 */

/**
 * The entries of an awareness update that y-protocols would apply to `awareness`. A stock
 * y-websocket client sends back every awareness change it applies, the states the server told
 * it included (same clocks): those change nothing and are left out, so an echo is neither
 * refused nor counted.
 * @param {awarenessProtocol.Awareness} awareness
 * @param {Uint8Array} update
 * @returns {Entry[]}
 */
export function awarenessChanges(awareness, update) {
  /** @type {Map<number, number>} */
  const clocks = new Map();
  for (const [id, meta] of awareness.meta) clocks.set(id, meta.clock);
  const held = new Set(awareness.states.keys());
  /** @type {Entry[]} */
  const changes = [];
  try {
    const decoder = decoding.createDecoder(update);
    const count = decoding.readVarUint(decoder);
    for (let i = 0; i < count; i += 1) {
      const id = decoding.readVarUint(decoder);
      const clock = decoding.readVarUint(decoder);
      const state = decoding.readVarString(decoder);
      const present = JSON.parse(state) !== null;
      const known = clocks.get(id) ?? 0;
      if (known < clock || (known === clock && !present && held.has(id))) {
        clocks.set(id, clock);
        if (present) held.add(id);
        else held.delete(id);
        changes.push([id, present, clock, state]);
      }
    }
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error);
    throw new Refusal(KINDS.InvalidFrame, `not an awareness update: ${why}`);
  }
  return changes;
}

/**
 * An awareness update (y-protocols' encoding) of `entries`, as awarenessChanges gives them.
 * @param {Entry[]} entries
 */
export function encodeEntries(entries) {
  const encoder = encoding.createEncoder();
  encoding.writeVarUint(encoder, entries.length);
  for (const [id, , clock, state] of entries) {
    encoding.writeVarUint(encoder, id);
    encoding.writeVarUint(encoder, clock);
    encoding.writeVarString(encoder, state);
  }
  return encoding.toUint8Array(encoder);
}

export class SessionAwareness {
  /** @param {number} maxOwned awareness ids one socket may own (not the device role) */
  constructor(maxOwned) {
    this.maxOwned = maxOwned;
    // Only the Awareness object's codec and bookkeeping are used; destroy() stops its timer,
    // which would otherwise keep the object from hibernating.
    this.awareness = new awarenessProtocol.Awareness(new Y.Doc());
    this.awareness.destroy();
  }

  /** How many states are set. */
  get size() {
    return this.awareness.states.size;
  }

  /**
   * The states again after a hibernation, from what each peer's attachment kept of them (a
   * state too large for it is back when its client renews it).
   * @param {Iterable<[unknown, import("./peers.js").Peer]>} peers
   * @param {number} now ms
   */
  restore(peers, now) {
    for (const [, peer] of peers) {
      for (const [key, [clock, state]] of Object.entries(peer?.aw ?? {})) {
        const id = Number(key);
        this.awareness.meta.set(id, { clock, lastUpdated: now });
        if (state !== null) this.awareness.states.set(id, /** @type {any} */ (state));
      }
    }
  }

  /** Every state set, as one awareness message; null when there is none. */
  states() {
    const clients = [...this.awareness.states.keys()];
    return clients.length > 0 ? awarenessStates(this.awareness, clients) : null;
  }

  /**
   * A client's awareness update: null when there is nothing to apply or relay, else what it
   * did. A stock y-websocket client times out the states of others it has not heard from for
   * 30 s and sends that removal too: a removal from anyone but the owner is dropped (not
   * applied, not relayed), so a stock client stays joined when someone's tab sleeps. An
   * observer owns nothing.
   * @param {import("./peers.js").Peer} peer the sender
   * @param {Uint8Array} update
   * @param {(id: number) => boolean} ownedByAnother whether another socket owns an id
   * @param {unknown} origin the sender, as y-protocols' origin
   * @returns {Accepted | null}
   */
  receive(peer, update, ownedByAnother, origin) {
    const writer = WRITERS.has(peer.role ?? "");
    const entries = awarenessChanges(this.awareness, update);
    const kept = entries.filter(([id, present]) => present || (writer && !ownedByAnother(id)));
    if (!writer) {
      // A stock client also sends back every awareness change it applies, the states the
      // server told it included (same clocks): from a reader that echo is dropped; anything
      // new is refused.
      if (kept.length === 0) return null;
      throw new Refusal(KINDS.PermissionDenied, `an ${peer.role} cannot send awareness`);
    }
    if (kept.length < entries.length) {
      if (kept.length === 0) return null;
      return this.apply(peer, encodeEntries(kept), ownedByAnother, origin);
    }
    return this.apply(peer, update, ownedByAnother, origin);
  }

  /**
   * @param {import("./peers.js").Peer} peer
   * @param {Uint8Array} update
   * @param {(id: number) => boolean} ownedByAnother
   * @param {unknown} origin
   * @returns {Accepted | null}
   */
  apply(peer, update, ownedByAnother, origin) {
    // Checked before anything is applied: a refused message leaves no state behind. A client
    // owns the ids it set a state for (removed ones too) until it goes; only it may change them.
    const changes = awarenessChanges(this.awareness, update);
    const owned = { ...(peer.aw ?? {}) };
    const ids = new Set(Object.keys(owned));
    for (const [id] of changes) {
      if (!ids.has(String(id)) && ownedByAnother(id)) {
        const why = `awareness client ${id} belongs to another client`;
        throw new Refusal(KINDS.PermissionDenied, why);
      }
    }
    for (const [id, present] of changes) if (present) ids.add(String(id));
    // The device's link carries every local client's states: not bound as one client.
    if (peer.role !== "device" && ids.size > this.maxOwned) {
      throw new Refusal(KINDS.LimitExceeded, "too many awareness states from one client");
    }
    if (changes.length === 0) return null;
    /** @type {{added: number[], updated: number[], removed: number[]} | null} */
    let change = null;
    /** @param {{added: number[], updated: number[], removed: number[]}} c */
    const collect = (c) => {
      change = c;
    };
    this.awareness.on("update", collect);
    try {
      awarenessProtocol.applyAwarenessUpdate(this.awareness, update, origin);
    } finally {
      this.awareness.off("update", collect);
    }
    if (change === null) return { relay: awarenessMessage(update), owned: null };
    /** @type {{added: number[], updated: number[], removed: number[]}} */
    const { added, updated, removed } = change;
    for (const id of [...added, ...updated, ...removed]) {
      const clock = this.awareness.meta.get(id)?.clock ?? 0;
      owned[String(id)] = [clock, this.awareness.states.get(id) ?? null];
    }
    return { relay: awarenessMessage(update), owned };
  }

  /**
   * A client gone: the states it owned removed, and the removal to tell the others (null when
   * there was none). A state too large for the attachment is gone after a hibernation; its id
   * and clock are not, and a null state at the same clock removes it at the other clients all
   * the same.
   * @param {import("./peers.js").Owned | undefined} owned
   */
  release(owned) {
    const ids = Object.keys(owned ?? {})
      .map(Number)
      .filter((id) => this.awareness.meta.has(id));
    if (ids.length === 0) return null;
    awarenessProtocol.removeAwarenessStates(this.awareness, ids, "closed");
    const removal = awarenessProtocol.encodeAwarenessUpdate(this.awareness, ids);
    for (const id of ids) this.awareness.meta.delete(id);
    return awarenessMessage(removal);
  }
}
