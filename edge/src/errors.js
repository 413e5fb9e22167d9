// Refusals end a WebSocket with the close code of the error's class in libkiki.errors
// (ws_close_code), and the reason "<ErrorClass>: <message>", as the device relay does.

/** @typedef {{name: string, code: number}} ErrorKind */

/** @type {Readonly<Record<string, ErrorKind>>} */
export const KINDS = Object.freeze({
  PermissionDenied: { name: "PermissionDenied", code: 1008 },
  FrameTooLarge: { name: "FrameTooLarge", code: 1009 },
  InvalidFrame: { name: "InvalidFrame", code: 1007 },
  ProtocolError: { name: "ProtocolError", code: 1002 },
  LimitExceeded: { name: "LimitExceeded", code: 1013 },
  Unavailable: { name: "Unavailable", code: 1013 },
});

/** A refusal that ends one client's connection; the session goes on. */
export class Refusal extends Error {
  /**
   * @param {ErrorKind} kind
   * @param {string} message
   */
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }

  /** The close code (RFC 6455 section 7.4.1). */
  get code() {
    return this.kind.code;
  }

  /** "<ErrorClass>: <message>", cut to the 123 bytes a close frame has room for. */
  get reason() {
    return closeReason(`${this.kind.name}: ${this.message}`);
  }
}

const encoder = new TextEncoder();

/**
 * The longest prefix of `text` that fits in `limit` bytes of UTF-8, never splitting a character.
 * @param {string} text
 * @param {number} [limit]
 */
export function closeReason(text, limit = 123) {
  if (encoder.encode(text).length <= limit) return text;
  let out = "";
  let size = 0;
  for (const ch of text) {
    const n = encoder.encode(ch).length;
    if (size + n > limit) break;
    out += ch;
    size += n;
  }
  return out;
}
