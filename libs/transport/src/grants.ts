import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * What a driver (controller run, or an embedded driver holding leases) allows one worker to do
 * for one job: open the stage `stage` over layers [layerBegin, layerEnd) and write under
 * `keyPrefix`, on behalf of run `run`, until `expiresAt`. Workers accept a grant only while
 * `job` holds their lease with `run` (see @longshot/cache leases), and take the key prefix from
 * here, never from the request. Stage -1 is a component call (the text encoder), which writes
 * nothing under the prefix.
 */
export interface SessionGrant {
  readonly job: string;
  readonly run: string;
  readonly stage: number;
  readonly layerBegin: number;
  readonly layerEnd: number;
  readonly keyPrefix: string;
  /** Epoch milliseconds. */
  readonly expiresAt: number;
}

/** One HMAC-SHA256 key; the id travels with each grant so keys can be rotated without downtime. */
export interface GrantKey {
  readonly id: string;
  readonly secret: Buffer;
}

/**
 * Parses `id:secret[,id:secret]` (secret: at least 32 characters). The first key signs; every key
 * listed verifies, so a rotation lists the new key first and the old one second until no grant
 * signed with the old one can still be alive (their lifetime is minutes).
 */
export function parseGrantKeys(spec: string, what = 'grant keys'): GrantKey[] {
  const out: GrantKey[] = [];
  for (const part of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const i = part.indexOf(':');
    const id = i < 0 ? '' : part.slice(0, i);
    const secret = i < 0 ? '' : part.slice(i + 1);
    if (!/^[A-Za-z0-9_-]{1,32}$/.test(id)) throw new Error(`${what}: each key is id:secret with an id of 1-32 letters, digits, - or _`);
    if (secret.length < 32) throw new Error(`${what}: the secret of key '${id}' must be at least 32 characters`);
    if (out.some((k) => k.id === id)) throw new Error(`${what}: key id '${id}' is listed twice`);
    out.push({ id, secret: Buffer.from(secret, 'utf8') });
  }
  if (out.length === 0) throw new Error(`${what}: give at least one id:secret`);
  if (out.length > 2) throw new Error(`${what}: at most two keys (the current one and the previous one)`);
  return out;
}

const b64 = (b: Buffer | string): string => Buffer.from(b).toString('base64url');
const mac = (key: GrantKey, body: string): Buffer => createHmac('sha256', key.secret).update(`${key.id}.${body}`).digest();

/** `keyId.payload.mac`, all base64url: opaque to clients, checked by workers with `verifyGrant`. */
export function signGrant(grant: SessionGrant, key: GrantKey): string {
  const body = b64(JSON.stringify(grant));
  return `${key.id}.${body}.${b64(mac(key, body))}`;
}

/** Why a grant was refused; `reason` labels the workers' refusal metric. */
/** Why a grant was refused (the worker's `longshot_worker_refused_calls_total` counts each). */
export const GRANT_ERROR_REASONS = ['missing', 'malformed', 'unknown-key', 'bad-signature', 'expired'] as const;

export class GrantError extends Error {
  constructor(
    readonly reason: (typeof GRANT_ERROR_REASONS)[number],
    message: string,
  ) {
    super(message);
  }
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= -1;
const isText = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= 512;

/** Checks signature and expiry against `keys` (any of them); returns the grant's claims. */
export function verifyGrant(token: string, keys: readonly GrantKey[], now = Date.now()): SessionGrant {
  if (!token) throw new GrantError('missing', 'a session grant is required');
  const parts = token.split('.');
  if (parts.length !== 3 || token.length > 4096) throw new GrantError('malformed', 'the session grant is malformed');
  const [id, body, sig] = parts;
  const key = keys.find((k) => k.id === id);
  if (!key) throw new GrantError('unknown-key', `the session grant is signed with an unknown key '${id.slice(0, 32)}'`);
  const given = Buffer.from(sig, 'base64url');
  const want = mac(key, body);
  if (given.length !== want.length || !timingSafeEqual(given, want)) throw new GrantError('bad-signature', 'the session grant has a bad signature');
  let g: Partial<SessionGrant>;
  try {
    g = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as Partial<SessionGrant>;
  } catch {
    throw new GrantError('malformed', 'the session grant is malformed');
  }
  if (!isText(g.job) || !isText(g.run) || !isText(g.keyPrefix) || !isCount(g.stage) || !isCount(g.layerBegin) || !isCount(g.layerEnd) || !isCount(g.expiresAt)) {
    throw new GrantError('malformed', 'the session grant is malformed');
  }
  if (g.expiresAt <= now) throw new GrantError('expired', 'the session grant has expired');
  return g as SessionGrant;
}
