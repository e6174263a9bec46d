import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiKeyStore, formatApiKey, generateApiKey, hashSecret, parseApiKey, RateLimiter, secretMatches } from '../src';
import { testRedis, type TestRedis } from './helpers';

describe('API key tokens', () => {
  it('round-trips lsk_<id>_<secret> and refuses anything else', () => {
    const k = generateApiKey();
    const token = formatApiKey(k);
    expect(token).toMatch(/^lsk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/);
    expect(parseApiKey(token)).toEqual(k);
    for (const bad of ['', 'lsk_', `Bearer ${token}`, `${token}x`, token.replace('lsk_', 'lsx_'), `lsk_ABCDEF012345_${k.secret}`, `lsk_${k.id}_${k.secret.slice(1)}`]) {
      expect(parseApiKey(bad)).toBeNull();
    }
  });

  it('keeps only SHA-256 of the secret and compares it to the presented one', () => {
    const k = generateApiKey();
    const stored = hashSecret(k.secret);
    expect(stored).toMatch(/^[0-9a-f]{64}$/);
    expect(stored).not.toContain(k.secret);
    expect(secretMatches(k.secret, stored)).toBe(true);
    expect(secretMatches(generateApiKey().secret, stored)).toBe(false);
    expect(secretMatches(k.secret, 'abcd')).toBe(false);
  });
});

describe('ApiKeyStore and RateLimiter (real Redis)', () => {
  let t: TestRedis;
  beforeAll(async () => {
    t = await testRedis();
  });
  afterAll(async () => t?.close());

  it('creates, verifies, lists and revokes keys; Redis holds no secret', async () => {
    const store = new ApiKeyStore(t.redis, t.keys);
    const a = await store.create({ tenant: 'acme', role: 'tenant' });
    const op = await store.create({ tenant: 'ops', role: 'operator' });
    expect(await store.verify(a.token)).toEqual(a.record);
    expect((await store.verify(op.token))!.role).toBe('operator');
    // The right id with another secret, and a malformed token, verify as nothing.
    expect(await store.verify(formatApiKey({ id: a.record.id, secret: generateApiKey().secret }))).toBeNull();
    expect(await store.verify('lsk_nope')).toBeNull();
    const dump = (
      await Promise.all((await t.redis.keys(`${t.keys.root}:{apikeys}:*`)).map(async (k) => JSON.stringify((await t.redis.type(k)) === 'hash' ? await t.redis.hgetall(k) : await t.redis.smembers(k))))
    ).join('\n');
    expect(dump).toContain(hashSecret(parseApiKey(a.token)!.secret));
    expect(dump).not.toContain(parseApiKey(a.token)!.secret);
    expect((await store.list()).map((r) => r.id).sort()).toEqual([a.record.id, op.record.id].sort());
    const revoked = await store.revoke(a.record.id);
    expect(revoked!.revokedAt).toEqual(expect.any(Number));
    expect(await store.verify(a.token)).toBeNull();
    expect((await store.get(a.record.id))!.revokedAt).toBe(revoked!.revokedAt);
    expect(await store.revoke('000000000000')).toBeNull();
    await expect(store.create({ tenant: 'Not A Tenant', role: 'tenant' })).rejects.toThrow(/tenant/);
  });

  it('lets perMinute requests through, then says how long until the next', async () => {
    const limiter = new RateLimiter(t.redis, t.keys);
    for (let i = 0; i < 3; i++) expect((await limiter.take('acme', 3)).allowed).toBe(true);
    const refused = await limiter.take('acme', 3);
    expect(refused.allowed).toBe(false);
    // One token comes back every 20 s at 3 a minute.
    expect(refused.retryAfterMs).toBeGreaterThan(0);
    expect(refused.retryAfterMs).toBeLessThanOrEqual(20_000);
    expect((await limiter.take('other', 3)).allowed).toBe(true);
  });
});
