// Session tokens: JWTs signed EdDSA (Ed25519) by a device, verified with jose against the
// public JWKs in the KIKI_TRUSTED_KEYS binding (a JSON array). The claims are the sync
// contract's, checked as libkiki.sync.tokens checks them on the device.
//
// A session at the edge belongs to the key that signs its tokens: the Worker names each
// Session object by that key's kid and the session's name (scopeOf), and the object checks
// every token against that scope, so tokens of different keys never meet in one document (one
// device's key cannot write into another device's session of the same name).
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from "jose";
import { KINDS, Refusal } from "./errors.js";

export const AUDIENCE = "kiki-sync";
export const ROLES = Object.freeze(["observer", "controller", "device"]);
export const WRITERS = Object.freeze(new Set(["controller", "device"]));
// Clocks of a device and the edge may differ by this much (libkiki's LEEWAY).
export const LEEWAY_SECONDS = 30;
const REQUIRED = ["iss", "sid", "sub", "role", "iat", "exp", "jti"];
const MAX_CLAIM = 256;

/**
 * @typedef {object} Claims
 * @property {string} iss
 * @property {string} sid
 * @property {string} sub
 * @property {string} role
 * @property {number} iat
 * @property {number} exp
 * @property {string} jti
 * @property {string} kid the verified key's id
 */

// kid (base64url) and session names ([A-Za-z0-9._-]) never hold a ":".
const SCOPE = /^([A-Za-z0-9_-]+):([A-Za-z0-9._-]{1,64})$/;

/**
 * The session `name` of the key `kid`: what the Worker names its object by and what the
 * object checks each token against.
 * @param {string} kid
 * @param {string} name
 */
export function scopeOf(kid, name) {
  return `${kid}:${name}`;
}

/**
 * The kids of the trusted keys, in the binding's order.
 * @param {string | undefined} trusted the KIKI_TRUSTED_KEYS binding
 * @returns {string[]}
 */
export function trustedKids(trusted) {
  trustedKeys(trusted);
  return cached?.kids ?? [];
}

/** @type {{source: string, keys: ReturnType<typeof createLocalJWKSet>, kids: string[]} | null} */
let cached = null;

/**
 * The trusted key set of this isolate, parsed once per binding value.
 * @param {string | undefined} source the KIKI_TRUSTED_KEYS binding
 */
function trustedKeys(source) {
  if (cached !== null && cached.source === source) return cached.keys;
  /** @type {unknown} */
  let parsed;
  try {
    parsed = JSON.parse(source ?? "[]");
  } catch {
    throw new Refusal(KINDS.Unavailable, "KIKI_TRUSTED_KEYS is not JSON");
  }
  const list = Array.isArray(parsed) ? parsed : [];
  const keys = list.filter(
    (k) => k && typeof k === "object" && k.kty === "OKP" && k.crv === "Ed25519" && !("d" in k),
  );
  const set = createLocalJWKSet({ keys });
  const kids = keys.map((k) => k.kid).filter((kid) => typeof kid === "string");
  cached = { source: source ?? "[]", keys: set, kids };
  return set;
}

/**
 * Why jose refused a token, in the words the device relay uses.
 * @param {unknown} error
 */
function why(error) {
  const code = error && typeof error === "object" && "code" in error ? error.code : "";
  switch (code) {
    case "ERR_JWT_EXPIRED":
      return "token expired";
    case "ERR_JWKS_NO_MATCHING_KEY":
      return "token signed by an unknown key";
    case "ERR_JWS_SIGNATURE_VERIFICATION_FAILED":
      return "token signature does not verify";
    case "ERR_JOSE_ALG_NOT_ALLOWED":
      return "token algorithm is not EdDSA";
    case "ERR_JWT_CLAIM_VALIDATION_FAILED":
      return `token claim refused: ${error instanceof Error ? error.message : code}`;
    default:
      return "not a token";
  }
}

/**
 * The claims of `token` for `session`, or a PermissionDenied refusal saying why. `session` is
 * a name, or a name in the scope of one key (scopeOf): then only that key's tokens are taken.
 * @param {string} token
 * @param {string} session
 * @param {string | undefined} trusted the KIKI_TRUSTED_KEYS binding
 * @returns {Promise<Claims>}
 */
export async function verifyToken(token, session, trusted) {
  const scoped = SCOPE.exec(session);
  const owner = scoped === null ? null : scoped[1];
  const name = scoped === null ? session : scoped[2];
  const keys = trustedKeys(trusted);
  /** @type {Record<string, unknown>} */
  let payload;
  // A key is chosen by its kid alone, as on the device (jose would try a lone key without one).
  /** @type {unknown} */
  let kid;
  /** @type {unknown} */
  let alg;
  try {
    ({ kid, alg } = decodeProtectedHeader(token));
  } catch {
    throw new Refusal(KINDS.PermissionDenied, "not a token");
  }
  if (alg !== "EdDSA") throw new Refusal(KINDS.PermissionDenied, "token algorithm is not EdDSA");
  if (typeof kid !== "string") {
    throw new Refusal(KINDS.PermissionDenied, "token signed by an unknown key");
  }
  if (owner !== null && kid !== owner) {
    throw new Refusal(KINDS.PermissionDenied, "token signed by another key than the session's");
  }
  try {
    ({ payload } = await jwtVerify(token, keys, {
      algorithms: ["EdDSA"],
      audience: AUDIENCE,
      requiredClaims: REQUIRED,
      clockTolerance: LEEWAY_SECONDS,
    }));
  } catch (error) {
    throw new Refusal(KINDS.PermissionDenied, why(error));
  }
  const { iss, sid, sub, role, iat, exp, jti } = payload;
  if (
    typeof iss !== "string" ||
    typeof sid !== "string" ||
    typeof sub !== "string" ||
    typeof role !== "string" ||
    typeof iat !== "number" ||
    typeof exp !== "number" ||
    typeof jti !== "string"
  ) {
    throw new Refusal(KINDS.PermissionDenied, "token claims have the wrong types");
  }
  // Kept in each socket's attachment, which holds 2 KiB in all.
  if (sub.length > MAX_CLAIM || jti.length > MAX_CLAIM) {
    throw new Refusal(KINDS.PermissionDenied, `token sub or jti over ${MAX_CLAIM} characters`);
  }
  if (sid !== name) {
    throw new Refusal(KINDS.PermissionDenied, "token is for another session");
  }
  if (!ROLES.includes(role)) {
    throw new Refusal(KINDS.PermissionDenied, `token role ${JSON.stringify(role)} is unknown`);
  }
  if (iat > Date.now() / 1000 + LEEWAY_SECONDS) {
    throw new Refusal(KINDS.PermissionDenied, "token issued in the future");
  }
  return { iss, sid, sub, role, iat, exp, jti, kid };
}
