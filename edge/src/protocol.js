// The y-websocket wire: a varuint message type (0 sync, 1 awareness, 3 queryAwareness), for
// sync a varuint sub-type (0 step 1, 1 step 2, 2 update) and a length-prefixed payload. Read
// and written with lib0's and y-protocols' codecs.
import * as decoding from "lib0/decoding";
import * as encoding from "lib0/encoding";
import * as awarenessProtocol from "y-protocols/awareness";
import * as syncProtocol from "y-protocols/sync";
import * as Y from "yjs";
import { KINDS, Refusal } from "./errors.js";

export const MESSAGE_SYNC = 0;
export const MESSAGE_AWARENESS = 1;
export const MESSAGE_QUERY_AWARENESS = 3;

/**
 * @typedef {{kind: "step1", stateVector: Uint8Array}
 *   | {kind: "update", update: Uint8Array}
 *   | {kind: "awareness", update: Uint8Array}
 *   | {kind: "queryAwareness"}} Message
 */

/** @param {unknown} error */
const text = (error) => (error instanceof Error ? error.message : String(error));

/**
 * One client message, or a refusal: garbage is InvalidFrame, a type this protocol does not
 * have is ProtocolError.
 * @param {Uint8Array} data
 * @returns {Message}
 */
export function parseMessage(data) {
  const decoder = decoding.createDecoder(data);
  try {
    const type = decoding.readVarUint(decoder);
    switch (type) {
      case MESSAGE_SYNC: {
        const sub = decoding.readVarUint(decoder);
        switch (sub) {
          case syncProtocol.messageYjsSyncStep1:
            return { kind: "step1", stateVector: decoding.readVarUint8Array(decoder) };
          case syncProtocol.messageYjsSyncStep2:
          case syncProtocol.messageYjsUpdate:
            return { kind: "update", update: decoding.readVarUint8Array(decoder) };
          default:
            throw new Refusal(KINDS.ProtocolError, `unknown sync message type ${sub}`);
        }
      }
      case MESSAGE_AWARENESS:
        return { kind: "awareness", update: decoding.readVarUint8Array(decoder) };
      case MESSAGE_QUERY_AWARENESS:
        return { kind: "queryAwareness" };
      default:
        throw new Refusal(KINDS.ProtocolError, `unknown message type ${type}`);
    }
  } catch (error) {
    if (error instanceof Refusal) throw error;
    throw new Refusal(KINDS.InvalidFrame, `not a y-websocket message: ${text(error)}`);
  }
}

/** @param {(encoder: encoding.Encoder) => void} write */
function message(write) {
  const encoder = encoding.createEncoder();
  write(encoder);
  return encoding.toUint8Array(encoder);
}

/** @param {Y.Doc} doc */
export function syncStep1(doc) {
  return message((e) => {
    encoding.writeVarUint(e, MESSAGE_SYNC);
    syncProtocol.writeSyncStep1(e, doc);
  });
}

/**
 * The answer to a client's step 1: what `doc` has that the state vector lacks.
 * @param {Y.Doc} doc
 * @param {Uint8Array} stateVector
 */
export function syncStep2(doc, stateVector) {
  try {
    return message((e) => {
      encoding.writeVarUint(e, MESSAGE_SYNC);
      syncProtocol.writeSyncStep2(e, doc, stateVector);
    });
  } catch (error) {
    throw new Refusal(KINDS.InvalidFrame, `not a state vector: ${text(error)}`);
  }
}

/** @param {Uint8Array} update */
export function updateMessage(update) {
  return message((e) => {
    encoding.writeVarUint(e, MESSAGE_SYNC);
    syncProtocol.writeUpdate(e, update);
  });
}

/** @param {Uint8Array} update an encoded awareness update */
export function awarenessMessage(update) {
  return message((e) => {
    encoding.writeVarUint(e, MESSAGE_AWARENESS);
    encoding.writeVarUint8Array(e, update);
  });
}

/**
 * The awareness states of `clients` as one awareness message.
 * @param {awarenessProtocol.Awareness} awareness
 * @param {number[]} clients
 */
export function awarenessStates(awareness, clients) {
  return awarenessMessage(awarenessProtocol.encodeAwarenessUpdate(awareness, clients));
}

/**
 * Whether an update changes nothing (no items, no deletions): what a reader sends as its
 * step 2 when it has nothing the server lacks.
 * @param {Uint8Array} update
 */
export function isEmptyUpdate(update) {
  try {
    const { structs, ds } = Y.decodeUpdate(update);
    return structs.length === 0 && ds.clients.size === 0;
  } catch (error) {
    throw new Refusal(KINDS.InvalidFrame, `not a Yjs update: ${text(error)}`);
  }
}

/**
 * Refuses an update that does not apply to a document of its own, before it reaches the live
 * one: decoding every struct and its content catches garbage and unknown content, and what
 * the live document would reject on integration is caught there (see document.js, apply).
 * @param {Uint8Array} update
 */
export function checkOnScratch(update) {
  const scratch = new Y.Doc({ gc: false });
  try {
    Y.applyUpdate(scratch, update);
  } catch (error) {
    throw new Refusal(KINDS.InvalidFrame, `not a Yjs update: ${text(error)}`);
  } finally {
    scratch.destroy();
  }
}
