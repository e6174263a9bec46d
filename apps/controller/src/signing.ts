import { createHmac, timingSafeEqual } from 'node:crypto';

/*
 * What the controller signs for browsers (docs/api.md "Authentication"): session cookies and
 * short-lived URLs. Both carry the id of the API key they were made from, never its secret, so
 * revoking the key ends them too; both are HMAC-SHA256 under the server's session secret, with a
 * distinct first line per kind so a signature of one can never pass as the other.
 */

const b64 = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

function mac(secret: Buffer, ...lines: string[]): Buffer {
  return createHmac('sha256', secret).update(lines.join('\n')).digest();
}

/** Constant-time comparison of a presented signature with the expected one, as text: only the canonical encoding passes. */
function same(presented: string, expected: Buffer): boolean {
  const a = Buffer.from(presented, 'utf8');
  const b = Buffer.from(b64(expected), 'utf8');
  return a.length === b.length && timingSafeEqual(a, b);
}

const KEY_ID = /^[0-9a-f]{12}$/;

/** `<keyId>.<expires, unix seconds>.<mac>`: the session cookie's value. */
export function signSession(keyId: string, expiresAt: number, secret: Buffer): string {
  if (!KEY_ID.test(keyId)) throw new Error('session: not an API key id');
  return `${keyId}.${expiresAt}.${b64(mac(secret, 'longshot-session', keyId, String(expiresAt)))}`;
}

/** The key id of a valid, unexpired session value; null for anything else. */
export function verifySession(value: string, secret: Buffer, nowSeconds: number): string | null {
  const m = /^([0-9a-f]{12})\.(\d{1,12})\.([A-Za-z0-9_-]{43})$/.exec(value);
  if (!m || Number(m[2]) <= nowSeconds) return null;
  return same(m[3], mac(secret, 'longshot-session', m[1], m[2])) ? m[1] : null;
}

/** The query a signed URL of `path` carries: `key`, `exp` (unix seconds) and `sig`. */
export interface UrlSignature {
  readonly key: string;
  readonly exp: string;
  readonly sig: string;
}

export function signPath(path: string, keyId: string, expiresAt: number, secret: Buffer): UrlSignature {
  if (!KEY_ID.test(keyId)) throw new Error('signed URL: not an API key id');
  return { key: keyId, exp: String(expiresAt), sig: b64(mac(secret, 'longshot-url', path, keyId, String(expiresAt))) };
}

/** `path?key=..&exp=..&sig=..` */
export function signedUrl(path: string, keyId: string, expiresAt: number, secret: Buffer): string {
  return `${path}?${new URLSearchParams({ ...signPath(path, keyId, expiresAt, secret) }).toString()}`;
}

/**
 * The key id when `q` signs exactly `path` and has not expired; null otherwise (another path,
 * another job, an edited expiry, a stale URL).
 */
export function verifyPath(path: string, q: Partial<Record<keyof UrlSignature, unknown>>, secret: Buffer, nowSeconds: number): string | null {
  const { key, exp, sig } = q;
  if (typeof key !== 'string' || typeof exp !== 'string' || typeof sig !== 'string') return null;
  if (!KEY_ID.test(key) || !/^\d{1,12}$/.test(exp) || !/^[A-Za-z0-9_-]{43}$/.test(sig) || Number(exp) <= nowSeconds) return null;
  return same(sig, mac(secret, 'longshot-url', path, key, exp)) ? key : null;
}
