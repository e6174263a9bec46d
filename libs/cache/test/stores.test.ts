import * as zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockStore, CheckpointStore, CorruptValueError, FencedWriteError, FrameDigestStore, JobKeyspace, JobTextStore } from '../src';
import { bits, checkpointState, eventually, latents, saveCheckpoint, testRedis, type TestRedis } from './helpers';

let t: TestRedis;
beforeAll(async () => {
  t = await testRedis();
});
afterAll(async () => {
  await t?.close();
});

describe('BlockStore', () => {
  it('puts, gets bit for bit, and answers has', async () => {
    const store = new BlockStore(t.redis, { keys: t.keys });
    const prefix = t.keys.jobPrefix('blocks');
    const z = latents(16 * 4 * 6 * 8, 'block');
    expect(await store.has(prefix, 0)).toBe(false);
    expect(await store.get(prefix, 0)).toBeNull();
    await store.put(prefix, 0, z, 60);
    expect(await store.has(prefix, 0)).toBe(true);
    expect(bits((await store.get(prefix, 0))!)).toEqual(bits(z));
    // A subarray view stores only its own values.
    await store.put(prefix, 1, z.subarray(10, 20), 60);
    expect(bits((await store.get(prefix, 1))!)).toEqual(bits(z.subarray(10, 20)));
    expect(await t.redis.pttl(t.keys.blockKey(prefix, 0))).toBeGreaterThan(55_000);
  });

  it('refuses a block stored under another index, and corrupt values, naming the key', async () => {
    const store = new BlockStore(t.redis, { keys: t.keys });
    const prefix = t.keys.jobPrefix('blocks-bad');
    await store.put(prefix, 0, latents(64, 'x'), 60);
    const value = (await t.redis.getBuffer(t.keys.blockKey(prefix, 0)))!;
    await t.redis.set(t.keys.blockKey(prefix, 5), value);
    await expect(store.get(prefix, 5)).rejects.toThrow(/block:5: block holds block 0, not block 5/);
    const flipped = Buffer.from(value);
    flipped[40] ^= 1;
    await t.redis.set(t.keys.blockKey(prefix, 1), flipped);
    await expect(store.get(prefix, 1)).rejects.toThrow(/block:1: block checksum mismatch/);
    await t.redis.set(t.keys.blockKey(prefix, 2), value.subarray(0, value.length - 8));
    await expect(store.get(prefix, 2)).rejects.toThrow(/block:2: block is truncated/);
    await t.redis.set(t.keys.blockKey(prefix, 3), 'hello world, this is certainly not a Longshot block at all, and long enough');
    await expect(store.get(prefix, 3)).rejects.toThrow(/block:3: block has bad magic/);
  });
});

describe('fenced writes (a run that no longer owns the job)', () => {
  it("lands only the current run's writes, atomically, keeps the TTL and tracking, and leaves no staged value", async () => {
    const store = new BlockStore(t.redis, { keys: t.keys });
    const jobKeys = new JobKeyspace(t.redis, t.keys);
    const prefix = t.keys.jobPrefix('fenced');
    const old = latents(256, 'old');
    const tampered = latents(256, 'tampered');
    // No run has claimed the job: a fenced write lands nowhere.
    await expect(store.put(prefix, 0, old, 60, 'run-1')).rejects.toThrow(FencedWriteError);
    expect(await store.has(prefix, 0)).toBe(false);
    await store.claimRun(prefix, 'run-1', 60);
    expect(await jobKeys.currentRun(prefix)).toBe('run-1');
    await store.put(prefix, 0, old, 60, 'run-1');
    expect(bits((await store.get(prefix, 0))!)).toEqual(bits(old));
    expect(await t.redis.pttl(t.keys.blockKey(prefix, 0))).toBeGreaterThan(55_000);
    expect(await t.redis.sismember(t.keys.jobKeysKey(prefix), t.keys.blockKey(prefix, 0))).toBe(1);
    // A takeover: run-2 claims the job; run-1's late writes are refused and change nothing.
    await store.claimRun(prefix, 'run-2', 60);
    await expect(store.put(prefix, 0, tampered, 60, 'run-1')).rejects.toThrow(/run run-1 no longer owns the job/);
    const checkpoints = new CheckpointStore(t.redis, { keys: t.keys });
    await expect(saveCheckpoint(t, prefix, 'run-1', checkpointState())).rejects.toThrow(FencedWriteError);
    expect(await checkpoints.load(prefix)).toBeNull();
    expect(bits((await store.get(prefix, 0))!)).toEqual(bits(old));
    expect(await t.redis.keys(`${prefix}*~*`)).toEqual([]);
    // The current run writes as before.
    await store.put(prefix, 0, tampered, 60, 'run-2');
    expect(bits((await store.get(prefix, 0))!)).toEqual(bits(tampered));
    // The run key is a job key: it expires with the job.
    expect(await store.expireJob(prefix, 5)).toBeGreaterThanOrEqual(2);
    expect(await t.redis.pttl(t.keys.runKey(prefix))).toBeLessThanOrEqual(5000);
  });
});

describe('JobTextStore', () => {
  it('stores a job\'s text once, fenced by its run and tracked with its keys, and reads it back bit for bit with its reference', async () => {
    const store = new JobTextStore(t.redis, { keys: t.keys });
    const prefix = t.keys.jobPrefix('job-text');
    const cond = latents(64 * 8, 'cond');
    const uncond = latents(64 * 8, 'uncond');
    expect(await store.get(prefix)).toBeNull();
    await new BlockStore(t.redis, { keys: t.keys }).claimRun(prefix, 'run-a', 60);
    await expect(store.put(prefix, { cond, uncond }, 'run-b')).rejects.toThrow(FencedWriteError);
    expect(await store.get(prefix)).toBeNull();
    const ref = await store.put(prefix, { cond, uncond }, 'run-a');
    expect(ref.byteLength).toBe(20 + 8 * cond.length + 4); // no zeros at the end to leave out
    const got = (await store.get(prefix))!;
    expect(got.ref).toEqual(ref);
    expect([bits(got.text.cond), bits(got.text.uncond)]).toEqual([bits(cond), bits(uncond)]);
    expect(await t.redis.sismember(t.keys.jobKeysKey(prefix), t.keys.jobTextKey(prefix))).toBe(1);
    // Other text, another reference.
    expect((await store.put(prefix, { cond: uncond, uncond: cond }, 'run-a')).crc32).not.toBe(ref.crc32);
    await expect(store.put(prefix, { cond, uncond: cond.subarray(1) }, 'run-a')).rejects.toThrow(/cond has 512 values, uncond 511/);
    // A flipped bit or a cut value is refused, naming the key.
    const stored = (await t.redis.getBuffer(t.keys.jobTextKey(prefix)))!;
    stored[100] ^= 1;
    await t.redis.set(t.keys.jobTextKey(prefix), stored);
    await expect(store.get(prefix)).rejects.toThrow(CorruptValueError);
    await expect(store.get(prefix)).rejects.toThrow(`${t.keys.jobTextKey(prefix)}: text embeddings fail their checksum`);
    await t.redis.set(t.keys.jobTextKey(prefix), stored.subarray(0, 200));
    await expect(store.get(prefix)).rejects.toThrow(/text embeddings have 200 bytes, 512 values per tensor \(512 and 512 stored\) need 4120/);
  });
});

describe('JobTextStore: zero rows', () => {
  it('leaves the zero rows past the prompt out of the value and reads them back bit for bit; a version 1 value still reads', async () => {
    const store = new JobTextStore(t.redis, { keys: t.keys });
    const prefix = t.keys.jobPrefix('job-text-rows');
    await new BlockStore(t.redis, { keys: t.keys }).claimRun(prefix, 'run-a', 60);
    // [64, 8] each: 5 rows of a prompt (the last one ending in -0.0, which is kept) and 1 of "".
    const cond = new Float32Array(64 * 8);
    cond.set(latents(5 * 8, 'rows cond'));
    cond[5 * 8 - 1] = -0;
    const uncond = new Float32Array(64 * 8);
    uncond.set(latents(8, 'rows uncond'));
    const ref = await store.put(prefix, { cond, uncond }, 'run-a');
    expect(ref.byteLength).toBe(20 + 4 * (5 * 8 + 8) + 4);
    const got = (await store.get(prefix))!;
    expect(got.ref).toEqual(ref);
    expect([bits(got.text.cond), bits(got.text.uncond)]).toEqual([bits(cond), bits(uncond)]);
    expect(Object.is(got.text.cond[5 * 8 - 1], -0)).toBe(true);
    // All zeros stores nothing of either tensor.
    const zeros = new Float32Array(64 * 8);
    expect((await store.put(prefix, { cond: zeros, uncond: zeros }, 'run-a')).byteLength).toBe(24);
    expect(bits((await store.get(prefix))!.text.cond)).toEqual(bits(zeros));
    // A value written by a build of version 1 (every value stored) reads the same.
    const v1 = Buffer.concat([Buffer.from('LSJT', 'latin1'), Buffer.from(Uint32Array.of(1, cond.length).buffer), Buffer.from(cond.buffer), Buffer.from(uncond.buffer)]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(v1) >>> 0, 0);
    await t.redis.set(t.keys.jobTextKey(prefix), Buffer.concat([v1, crc]));
    const old = (await store.get(prefix))!;
    expect([bits(old.text.cond), bits(old.text.uncond)]).toEqual([bits(cond), bits(uncond)]);
    // A version 2 value that says it stores more than a tensor holds is refused, naming the key.
    const bad = Buffer.concat([Buffer.from('LSJT', 'latin1'), Buffer.from(Uint32Array.of(2, 4, 5, 0).buffer), Buffer.alloc(20)]);
    const badCrc = Buffer.alloc(4);
    badCrc.writeUInt32BE(zlib.crc32(bad) >>> 0, 0);
    await t.redis.set(t.keys.jobTextKey(prefix), Buffer.concat([bad, badCrc]));
    await expect(store.get(prefix)).rejects.toThrow(`${t.keys.jobTextKey(prefix)}: text embeddings store 5 and 0 values of tensors of 4`);
  });
});

describe('FrameDigestStore', () => {
  it('keeps each block\'s frame digest for the run that finishes the stitch', async () => {
    const store = new FrameDigestStore(t.redis, { keys: t.keys });
    const prefix = t.keys.jobPrefix('digests');
    const d = 'ab'.repeat(32);
    expect(await store.load(prefix, 0)).toBeNull();
    await store.save(prefix, 0, d, 60);
    expect(await store.load(prefix, 0)).toBe(d);
    expect(await t.redis.strlen(t.keys.frameDigestKey(prefix, 0))).toBe(32);
    await expect(store.save(prefix, 1, 'not hex', 60)).rejects.toThrow(/expected a SHA-256 hex digest/);
    await t.redis.set(t.keys.frameDigestKey(prefix, 2), 'short');
    await expect(store.load(prefix, 2)).rejects.toThrow(/frames:2: frame digest has 5 bytes, expected 32/);
  });
});

describe('job expiry', () => {
  it('sets the retention on every key of the job, and only that job', async () => {
    const blocks = new BlockStore(t.redis, { keys: t.keys });
    const checkpoints = new CheckpointStore(t.redis, { keys: t.keys });
    const digests = new FrameDigestStore(t.redis, { keys: t.keys });
    const job = t.keys.jobPrefix('expire-me');
    const other = t.keys.jobPrefix('keep-me');
    const pieces = (p: string) => t.redis.keys(`${p}:piece:*`);
    for (const p of [job, other]) {
      await blocks.put(p, 0, latents(64, 'e0'), 3600);
      await blocks.put(p, 1, latents(64, 'e1'), 3600);
      await blocks.claimRun(p, 'run-e', 3600);
      await saveCheckpoint(t, p, 'run-e', checkpointState(), 3600);
      await digests.save(p, 0, 'cd'.repeat(32), 3600);
    }
    // Blocks, the run key, the manifest, its pieces (and the finished block 2 it names), the digest.
    const jobKeys = [t.keys.blockKey(job, 0), t.keys.blockKey(job, 1), t.keys.blockKey(job, 2), t.keys.runKey(job), t.keys.checkpointKey(job), ...(await pieces(job)), t.keys.frameDigestKey(job, 0)];
    expect(await pieces(job)).toHaveLength(8);
    // The tracking set lives at least as long as the longest member.
    expect(await t.redis.pttl(t.keys.jobKeysKey(job))).toBeGreaterThan(3_590_000);
    expect((await t.redis.smembers(t.keys.jobKeysKey(job))).sort()).toEqual([...jobKeys].sort());

    expect(await blocks.expireJob(job, 30)).toBe(jobKeys.length);
    for (const k of [...jobKeys, t.keys.jobKeysKey(job)]) {
      const ttl = await t.redis.pttl(k);
      expect(ttl, k).toBeGreaterThan(25_000);
      expect(ttl, k).toBeLessThanOrEqual(30_000);
    }
    expect(await t.redis.pttl(t.keys.checkpointKey(other))).toBeGreaterThan(3_590_000);
    expect(await checkpoints.load(other)).not.toBeNull();

    // And they do go away.
    await blocks.expireJob(job, 0.2);
    await eventually('job keys expire', async () => (await t.redis.exists(...jobKeys, t.keys.jobKeysKey(job))) === 0);
    expect(await blocks.has(other, 0)).toBe(true);
  });

  it('drops keys that already expired from the tracking set', async () => {
    const blocks = new BlockStore(t.redis, { keys: t.keys });
    const job = t.keys.jobPrefix('expire-partial');
    await blocks.put(job, 0, latents(8, 'p0'), 0.05);
    await blocks.put(job, 1, latents(8, 'p1'), 3600);
    await eventually('block 0 expires', async () => !(await blocks.has(job, 0)));
    expect(await blocks.expireJob(job, 10)).toBe(1);
    expect(await t.redis.smembers(t.keys.jobKeysKey(job))).toEqual([t.keys.blockKey(job, 1)]);
  });
});
