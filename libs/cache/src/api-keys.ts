import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Redis } from 'ioredis';
import { DEFAULT_KEYS as defaultKeys, type KeySchema } from './keys';

/*
 * API keys (docs/api.md "Authentication", docs/operations.md "API keys"). A key is shown once as
 * `lsk_<id>_<secret>`: the id (12 hex digits) names the record, the secret (32 random bytes,
 * base64url) proves possession. Redis keeps only SHA-256 of the secret: the secret has 256 bits
 * of entropy, so a fast hash is as safe as a slow one (there is no dictionary to try) and costs
 * a request nothing.
 *
 *   R:{apikeys}:key:<id>   hash: secretSha256, tenant, role, createdAt, revokedAt ('' while valid)
 *   R:{apikeys}:index      set of every key id (listing)
 */

export type ApiRole = 'tenant' | 'operator';
export const API_ROLES: readonly ApiRole[] = ['tenant', 'operator'];

/** Tenant names: lower-case letters, digits, '-' and '_', 1..64, starting with a letter or digit. */
export const TENANT_PATTERN = /^[a-z0-9][a-z0-9_-]{0,63}$/;

const ID_PATTERN = /^[0-9a-f]{12}$/;
const SECRET_PATTERN = /^[A-Za-z0-9_-]{43}$/;

export interface ApiKeyRecord {
  readonly id: string;
  readonly tenant: string;
  readonly role: ApiRole;
  readonly createdAt: number;
  readonly revokedAt: number | null;
}

/** A key as it is presented: its id and its secret. */
export interface ParsedApiKey {
  readonly id: string;
  readonly secret: string;
}

/** `lsk_<id>_<secret>`, or null when `token` is not shaped like one. */
export function parseApiKey(token: string): ParsedApiKey | null {
  const m = /^lsk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$/.exec(token);
  return m ? { id: m[1], secret: m[2] } : null;
}

export function formatApiKey(k: ParsedApiKey): string {
  if (!ID_PATTERN.test(k.id) || !SECRET_PATTERN.test(k.secret)) throw new Error('not an API key id and secret');
  return `lsk_${k.id}_${k.secret}`;
}

/** A fresh key: 6 random bytes of id, 32 of secret. */
export function generateApiKey(): ParsedApiKey {
  return { id: randomBytes(6).toString('hex'), secret: randomBytes(32).toString('base64url') };
}

export const hashSecret = (secret: string): string => createHash('sha256').update(secret, 'utf8').digest('hex');

/** Whether `secret` hashes to `storedHash`, compared in constant time. */
export function secretMatches(secret: string, storedHash: string): boolean {
  const a = Buffer.from(hashSecret(secret), 'hex');
  const b = Buffer.from(storedHash, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

export function checkTenant(tenant: string): string {
  if (!TENANT_PATTERN.test(tenant)) throw new Error(`tenant ${JSON.stringify(tenant)} must match ${TENANT_PATTERN.source}`);
  return tenant;
}

/** The API keys in Redis: the one place that reads or writes them. */
export class ApiKeyStore {
  private readonly keys: KeySchema;

  constructor(
    private readonly redis: Redis,
    keys?: KeySchema,
  ) {
    this.keys = keys ?? defaultKeys;
  }

  private recordKey(id: string): string {
    return `${this.keys.root}:{apikeys}:key:${id}`;
  }

  private indexKey(): string {
    return `${this.keys.root}:{apikeys}:index`;
  }

  /** Stores a new key; the returned token is the only time its secret exists outside the caller. */
  async create(input: { tenant: string; role: ApiRole }): Promise<{ record: ApiKeyRecord; token: string }> {
    checkTenant(input.tenant);
    if (!API_ROLES.includes(input.role)) throw new Error(`role must be one of ${API_ROLES.join(', ')}`);
    const key = generateApiKey();
    const record: ApiKeyRecord = { id: key.id, tenant: input.tenant, role: input.role, createdAt: Date.now(), revokedAt: null };
    if ((await this.redis.hsetnx(this.recordKey(key.id), 'secretSha256', hashSecret(key.secret))) !== 1) throw new Error(`API key id ${key.id} exists already; try again`);
    await this.redis
      .multi()
      .hset(this.recordKey(key.id), { tenant: record.tenant, role: record.role, createdAt: String(record.createdAt), revokedAt: '' })
      .sadd(this.indexKey(), key.id)
      .exec();
    return { record, token: formatApiKey(key) };
  }

  /** The record of a presented key when its secret matches and it is not revoked; null otherwise. */
  async verify(token: string): Promise<ApiKeyRecord | null> {
    const parsed = parseApiKey(token);
    if (!parsed) return null;
    const h = await this.redis.hgetall(this.recordKey(parsed.id));
    if (!h.secretSha256 || !secretMatches(parsed.secret, h.secretSha256)) return null;
    const rec = decode(parsed.id, h);
    return rec.revokedAt === null ? rec : null;
  }

  /** A key by id, revoked or not (null: no such key). */
  async get(id: string): Promise<ApiKeyRecord | null> {
    if (!ID_PATTERN.test(id)) return null;
    const h = await this.redis.hgetall(this.recordKey(id));
    return h.secretSha256 ? decode(id, h) : null;
  }

  /** Every key, oldest first. */
  async list(): Promise<ApiKeyRecord[]> {
    const ids = await this.redis.smembers(this.indexKey());
    const out: ApiKeyRecord[] = [];
    for (const id of ids) {
      const rec = await this.get(id);
      if (rec) out.push(rec);
    }
    return out.sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id));
  }

  /** Revokes a key (sessions and signed URLs made with it stop working too); null: no such key. */
  async revoke(id: string): Promise<ApiKeyRecord | null> {
    const rec = await this.get(id);
    if (!rec) return null;
    if (rec.revokedAt !== null) return rec;
    const revokedAt = Date.now();
    await this.redis.hset(this.recordKey(id), 'revokedAt', String(revokedAt));
    return { ...rec, revokedAt };
  }
}

function decode(id: string, h: Record<string, string>): ApiKeyRecord {
  return { id, tenant: h.tenant, role: h.role === 'operator' ? 'operator' : 'tenant', createdAt: Number(h.createdAt), revokedAt: h.revokedAt ? Number(h.revokedAt) : null };
}

/*
 * Per-tenant request budgets: a token bucket of `perMinute` tokens refilled continuously,
 * timed by Redis's clock so every replica shares one bucket. KEYS: bucket. ARGV: capacity,
 * refill per ms. Returns {allowed, ms until one token is back}.
 */
const TAKE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or cap
local at = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate) + 1000)
local wait = 0
if allowed == 0 then wait = math.ceil((1 - tokens) / rate) end
return {allowed, wait}
`;

export class RateLimiter {
  private readonly keys: KeySchema;

  constructor(
    private readonly redis: Redis,
    keys?: KeySchema,
  ) {
    this.keys = keys ?? defaultKeys;
  }

  /** Takes one request from `tenant`'s bucket of `perMinute`; when empty, says how long until the next. */
  async take(tenant: string, perMinute: number): Promise<{ allowed: boolean; retryAfterMs: number }> {
    const [allowed, wait] = (await this.redis.eval(TAKE, 1, `${this.keys.root}:{ratelimit}:${checkTenant(tenant)}`, perMinute, perMinute / 60_000)) as [number, number];
    return { allowed: allowed === 1, retryAfterMs: wait };
  }
}
