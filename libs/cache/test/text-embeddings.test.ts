import * as zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '@longshot/random';
import { CorruptValueError, TextEmbeddingCache, type CachedTextEmbeddings } from '../src';
import { testRedis, type TestRedis } from './helpers';

let t: TestRedis;
beforeAll(async () => {
  t = await testRedis();
});
afterAll(async () => {
  await t?.close();
});

const parts = { encoder: 'a'.repeat(64), numerics: 'cpu:simd=avx2', prompt: 'a paper boat', negativePrompt: '' };

function embeddings(rows: number, width: number): CachedTextEmbeddings {
  const cond = Rng.from('text-cache', 'cond').fillNormal(new Float32Array(rows * width));
  new Uint32Array(cond.buffer)[0] = 0x7fc00001; // a NaN payload must come back as is
  return { cond, uncond: Rng.from('text-cache', 'uncond').fillNormal(new Float32Array(rows * width)), condIds: Int32Array.of(5, 9, 1), uncondIds: Int32Array.of(1), truncated: 2 };
}

const bytes = (a: Float32Array | Int32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('TextEmbeddingCache', () => {
  it('round-trips an entry bit for bit under a key of every part, with the TTL', async () => {
    const cache = new TextEmbeddingCache(t.redis, { ttlSeconds: 60, maxEntryBytes: 1 << 20, keys: t.keys });
    const e = embeddings(16, 8);
    expect(await cache.get(parts)).toBeNull();
    expect(await cache.put(parts, e)).toBe(true);
    const got = (await cache.get(parts))!;
    for (const f of ['cond', 'uncond', 'condIds', 'uncondIds'] as const) expect(bytes(got[f]).equals(bytes(e[f])), f).toBe(true);
    expect(got.truncated).toBe(2);
    const key = cache.keyOf(parts);
    expect(key).toMatch(new RegExp(`^${t.keys.root}:text-embedding:[0-9a-f]{64}$`));
    const ttl = await t.redis.pttl(key);
    expect(ttl).toBeGreaterThan(50_000);
    expect(ttl).toBeLessThanOrEqual(60_000);
    // Any other part is another entry.
    for (const change of [{ encoder: 'b'.repeat(64) }, { numerics: 'cpu:simd=scalar' }, { prompt: 'a paper boat.' }, { negativePrompt: 'blur' }]) {
      expect(cache.keyOf({ ...parts, ...change })).not.toBe(key);
      expect(await cache.get({ ...parts, ...change })).toBeNull();
    }
  });

  it('leaves out the zero rows past the prompt and puts them back bit for bit; an entry written before that reads the same', async () => {
    const cache = new TextEmbeddingCache(t.redis, { ttlSeconds: 60, maxEntryBytes: 1 << 20, keys: t.keys });
    const p = { ...parts, prompt: 'padded' };
    const e = embeddings(64, 16);
    e.cond.fill(0, 3 * 16);
    e.uncond.fill(0, 16);
    expect(await cache.put(p, e)).toBe(true);
    const value = (await t.redis.getBuffer(cache.keyOf(p)))!;
    expect(value.length).toBeLessThan(4 * (3 * 16 + 16) + 200);
    const got = (await cache.get(p))!;
    for (const f of ['cond', 'uncond', 'condIds', 'uncondIds'] as const) expect(bytes(got[f]).equals(bytes(e[f])), f).toBe(true);
    // Before: no condStored / uncondStored in the header, every value stored.
    const header = Buffer.from(JSON.stringify({ cond: e.cond.length, uncond: e.uncond.length, condIds: 3, uncondIds: 1, truncated: 2 }));
    const body = Buffer.concat([Buffer.from('LSTE', 'latin1'), Buffer.from(Uint32Array.of(header.length).buffer), header, ...[e.cond, e.uncond, e.condIds, e.uncondIds].map(bytes)]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(body) >>> 0, 0);
    await t.redis.set(cache.keyOf(p), Buffer.concat([body, crc]));
    const old = (await cache.get(p))!;
    for (const f of ['cond', 'uncond', 'condIds', 'uncondIds'] as const) expect(bytes(old[f]).equals(bytes(e[f])), f).toBe(true);
  });

  it('does not cache an entry above the size cap', async () => {
    const e = embeddings(64, 64); // 32 KiB of floats
    const capped = new TextEmbeddingCache(t.redis, { ttlSeconds: 60, maxEntryBytes: 16 * 1024, keys: t.keys });
    const p = { ...parts, prompt: 'too big' };
    expect(await capped.put(p, e)).toBe(false);
    expect(await t.redis.exists(capped.keyOf(p))).toBe(0);
    expect(await capped.get(p)).toBeNull();
  });

  it('names the key of a corrupt value', async () => {
    const cache = new TextEmbeddingCache(t.redis, { ttlSeconds: 60, maxEntryBytes: 1 << 20, keys: t.keys });
    const p = { ...parts, prompt: 'corrupt me' };
    await cache.put(p, embeddings(4, 4));
    const key = cache.keyOf(p);
    const v = (await t.redis.getBuffer(key))!;
    v[v.length - 10] ^= 0xff;
    await t.redis.set(key, v);
    await expect(cache.get(p)).rejects.toThrow(CorruptValueError);
    await expect(cache.get(p)).rejects.toThrow(key);
    expect(() => new TextEmbeddingCache(t.redis, { ttlSeconds: 0, maxEntryBytes: 1, keys: t.keys })).toThrow(/ttlSeconds/);
  });
});
