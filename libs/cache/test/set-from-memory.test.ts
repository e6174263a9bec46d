import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setFromMemory } from '../src/set-from-memory';
import { testRedis, type TestRedis } from './helpers';

describe('setFromMemory (SET whose value is written from the caller memory)', () => {
  let t: TestRedis;
  beforeAll(async () => {
    t = await testRedis();
  });
  afterAll(async () => {
    await t.close();
  });

  const tensorBytes = (n: number, salt: number): Buffer => {
    const values = new Float32Array(new SharedArrayBuffer(n * 4));
    for (let i = 0; i < n; i++) values[i] = Math.sin(i * 0.37 + salt) * 1e3;
    return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  };

  it('stores megabytes from shared memory bit for bit, with the TTL', async () => {
    const key = `${t.keys.root}:tensor`;
    const value = tensorBytes(1_300_000, 1);
    expect(await setFromMemory(t.redis, key, value, 60_000)).toBe('OK');
    expect((await t.redis.getBuffer(key))!.equals(value)).toBe(true);
    const ttl = await t.redis.pttl(key);
    expect(ttl).toBeGreaterThan(50_000);
    expect(ttl).toBeLessThanOrEqual(60_000);
  });

  it('stores an empty value and a key of multi-byte characters', async () => {
    const key = `${t.keys.root}:größe→`;
    expect(await setFromMemory(t.redis, key, Buffer.alloc(0), 10_000)).toBe('OK');
    expect((await t.redis.getBuffer(key))!.length).toBe(0);
    expect(await t.redis.exists(key)).toBe(1);
  });

  it('keeps command order with other commands on the same connection, many in flight', async () => {
    const values = Array.from({ length: 24 }, (_, i) => tensorBytes(20_000 + i * 1_000, i));
    const writes = values.flatMap((v, i) => [setFromMemory(t.redis, `${t.keys.root}:many:${i}`, v, 10_000), t.redis.set(`${t.keys.root}:small:${i}`, String(i), 'PX', 10_000)]);
    expect(await Promise.all(writes)).toEqual(writes.map(() => 'OK'));
    for (let i = 0; i < values.length; i++) {
      expect((await t.redis.getBuffer(`${t.keys.root}:many:${i}`))!.equals(values[i])).toBe(true);
      expect(await t.redis.get(`${t.keys.root}:small:${i}`)).toBe(String(i));
    }
  });

  it('is written in order when issued before the connection is up (offline queue)', async () => {
    const fresh = new Redis(t.server.url);
    try {
      const value = tensorBytes(300_000, 7);
      const [set, after] = await Promise.all([setFromMemory(fresh, `${t.keys.root}:offline`, value, 10_000), fresh.set(`${t.keys.root}:offline:after`, 'x', 'PX', 10_000)]);
      expect([set, after]).toEqual(['OK', 'OK']);
      expect((await fresh.getBuffer(`${t.keys.root}:offline`))!.equals(value)).toBe(true);
    } finally {
      fresh.disconnect();
    }
  });

  it('refuses a TTL that is not a positive whole number of milliseconds', () => {
    for (const ms of [0, -1, 1.5, Number.NaN]) expect(() => setFromMemory(t.redis, `${t.keys.root}:x`, Buffer.alloc(4), ms)).toThrow(/ttl must be a positive number of milliseconds/);
  });
});
