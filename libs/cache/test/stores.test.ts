import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QueueState } from '@longshot/planner';
import { Rng } from '@longshot/random';
import { BlockStore, CheckpointStore, CorruptValueError, encodeCheckpoint, FencedWriteError, FrameDigestStore, JobKeyspace } from '../src';
import { checksum } from '../src/codec';
import { eventually, testRedis, type TestRedis } from './helpers';

let t: TestRedis;
beforeAll(async () => {
  t = await testRedis();
});
afterAll(async () => {
  await t?.close();
});

const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** Latents with the values a lossy path would mangle: NaN payloads, -0, infinities, subnormals. */
function latents(n: number, key: string): Float32Array {
  const a = Rng.from('cache-test', key).fillNormal(new Float32Array(n));
  const raw = bits(a);
  raw[0] = 0x7fc00001; // NaN with a payload
  raw[1] = 0xffa00000; // negative signalling-looking NaN
  raw[2] = 0x80000000; // -0
  raw[3] = 0x00000001; // smallest subnormal
  a[4] = Infinity;
  a[5] = -Infinity;
  return a;
}

const N = 16 * 4 * 6 * 8;
const history = (key: string, outputs: number) => ({
  modelOutputs: Array.from({ length: outputs }, (_, i) => latents(N, `${key}-m${i}`)),
  lastSample: outputs > 0 ? latents(N, `${key}-last`) : null,
  lowerOrderNums: outputs,
  lastOrder: outputs,
});

function state(): QueueState {
  return {
    iteration: 7,
    sampler: 'unipc',
    blocks: [
      { index: 3, step: 4, latents: latents(N, 'b3'), history: history('b3', 2) },
      { index: 4, step: 3, latents: latents(N, 'b4'), history: history('b4', 1) },
      { index: 5, step: 0, latents: latents(N, 'b5'), history: history('b5', 0) },
    ],
    noise: { rng: [1, 0xffffffff, 12345, 0], previous: [5, 2, 0, 1] },
    finishedTail: { index: 2, latents: latents(16 * 4 * 6 * 8, 'tail') },
  };
}

function expectSameState(got: QueueState | null, want: QueueState): void {
  expect(got).not.toBeNull();
  const g = got as QueueState;
  expect(g.iteration).toBe(want.iteration);
  expect(g.noise).toEqual(want.noise);
  expect(g.blocks.map((b) => [b.index, b.step])).toEqual(want.blocks.map((b) => [b.index, b.step]));
  expect(g.sampler).toBe(want.sampler);
  g.blocks.forEach((b, i) => {
    const w = want.blocks[i];
    expect(bits(b.latents)).toEqual(bits(w.latents));
    expect([b.history.lowerOrderNums, b.history.lastOrder, b.history.modelOutputs.length]).toEqual([w.history.lowerOrderNums, w.history.lastOrder, w.history.modelOutputs.length]);
    b.history.modelOutputs.forEach((m, j) => expect(bits(m)).toEqual(bits(w.history.modelOutputs[j])));
    if (w.history.lastSample) expect(bits(b.history.lastSample!)).toEqual(bits(w.history.lastSample));
    else expect(b.history.lastSample).toBeNull();
  });
  expect(g.finishedTail?.index).toBe(want.finishedTail?.index);
  if (want.finishedTail) expect(bits(g.finishedTail!.latents)).toEqual(bits(want.finishedTail.latents));
  else expect(g.finishedTail).toBeNull();
}

describe('CheckpointStore', () => {
  it('round-trips a QueueState bit for bit, with a TTL', async () => {
    const store = new CheckpointStore(t.redis, { keys: t.keys });
    const prefix = t.keys.jobPrefix('ckpt-roundtrip');
    expect(await store.load(prefix)).toBeNull();
    const s = state();
    await store.save(prefix, s, 60);
    expectSameState(await store.load(prefix), s);
    const ttl = await t.redis.pttl(t.keys.checkpointKey(prefix));
    expect(ttl).toBeGreaterThan(55_000);
    expect(ttl).toBeLessThanOrEqual(60_000);

    // Replaced whole by the next save; an empty queue and no tail round-trip too.
    const empty: QueueState = { iteration: 0, sampler: 'euler', blocks: [], noise: { rng: [9, 8, 7, 6], previous: [] }, finishedTail: null };
    await store.save(prefix, empty, 60);
    expectSameState(await store.load(prefix), empty);
  });

  it('rejects an invalid state without writing', async () => {
    const store = new CheckpointStore(t.redis, { keys: t.keys });
    const prefix = t.keys.jobPrefix('ckpt-invalid');
    const bad = { ...state(), noise: { rng: [1, 2, 3], previous: [] } } as unknown as QueueState;
    await expect(store.save(prefix, bad, 60)).rejects.toThrow(/four uint32 words/);
    await expect(store.save(prefix, { ...state(), iteration: -1 }, 60)).rejects.toThrow(/iteration/);
    await expect(store.save(prefix, state(), 0)).rejects.toThrow(/positive number of seconds/);
    expect(await t.redis.exists(t.keys.checkpointKey(prefix))).toBe(0);
  });

  describe('detects corruption and names the key', () => {
    const store = (): CheckpointStore => new CheckpointStore(t.redis, { keys: t.keys });
    const good = (): Buffer => encodeCheckpoint(state());

    async function loadWith(name: string, value: Buffer): Promise<unknown> {
      const prefix = t.keys.jobPrefix(`ckpt-${name}`);
      await t.redis.set(t.keys.checkpointKey(prefix), value);
      return store()
        .load(prefix)
        .then(
          () => new Error('load accepted a corrupt checkpoint'),
          (err: unknown) => err,
        );
    }

    it.each([
      ['bad-magic', (b: Buffer) => (b.write('NOPE', 0, 'latin1'), b), /bad magic "NOPE"/],
      ['version', (b: Buffer) => (b.writeUInt32LE(2, 4), b), /version 2; this build reads version 3/],
      ['truncated', (b: Buffer) => b.subarray(0, b.length - 1000), /truncated: \d+ bytes, its header declares \d+/],
      ['tiny', (b: Buffer) => b.subarray(0, 20), /truncated: 20 bytes/],
      ['header-length', (b: Buffer) => (b.writeUInt32LE(0x7fffffff, 8), b), /declares a 2147483647-byte header/],
      ['trailing', (b: Buffer) => Buffer.concat([b, Buffer.alloc(4)]), /4 bytes after the declared payloads/],
      ['payload-bit', (b: Buffer) => ((b[b.length - 100] ^= 0x01), b), /checksum mismatch/],
      ['checksum-bit', (b: Buffer) => ((b[b.length - 1] ^= 0x80), b), /checksum mismatch/],
      ['header-bit', (b: Buffer) => ((b[14] ^= 0x20), b), /checksum mismatch|truncated|after the declared/],
    ])('%s', async (name, corrupt, message) => {
      const err = await loadWith(name, corrupt(good()));
      expect(err).toBeInstanceOf(CorruptValueError);
      expect((err as Error).message).toContain(t.keys.checkpointKey(t.keys.jobPrefix(`ckpt-${name}`)));
      expect((err as Error).message).toMatch(message);
    });

    it('a header whose lengths disagree with the payload, under a valid checksum', async () => {
      const b = good();
      const headerLength = b.readUInt32LE(8);
      const header = JSON.parse(b.subarray(12, 12 + headerLength).toString('utf8'));
      header.blocks[1].length += 7;
      const json = Buffer.from(JSON.stringify(header));
      const pre = Buffer.from(b.subarray(0, 12));
      pre.writeUInt32LE(json.length, 8);
      const body = Buffer.concat([pre, json, b.subarray(12 + headerLength, b.length - 4)]);
      const err = await loadWith('lying', Buffer.concat([body, checksum(body)]));
      expect((err as Error).message).toMatch(/truncated: \d+ bytes, its header declares/);
    });

    it('a block without its solver history, under a valid checksum', async () => {
      const b = good();
      const headerLength = b.readUInt32LE(8);
      const header = JSON.parse(b.subarray(12, 12 + headerLength).toString('utf8'));
      delete header.blocks[0].history;
      const json = Buffer.from(JSON.stringify(header));
      const pre = Buffer.from(b.subarray(0, 12));
      pre.writeUInt32LE(json.length, 8);
      const body = Buffer.concat([pre, json, b.subarray(12 + headerLength, b.length - 4)]);
      const err = await loadWith('no-history', Buffer.concat([body, checksum(body)]));
      expect((err as Error).message).toMatch(/invalid header: block 0 needs a solver history/);
    });

    it('a non-JSON header under a valid checksum', async () => {
      const pre = Buffer.alloc(12);
      pre.write('LSCK', 0, 'latin1');
      pre.writeUInt32LE(3, 4);
      pre.writeUInt32LE(5, 8);
      const body = Buffer.concat([pre, Buffer.from('{oops')]);
      const err = await loadWith('not-json', Buffer.concat([body, checksum(body)]));
      expect((err as Error).message).toMatch(/invalid header: not JSON/);
    });
  });
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
    await expect(checkpoints.save(prefix, { ...state(), nextIteration: 1 } as QueueState, 60, 'run-1')).rejects.toThrow(FencedWriteError);
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
    for (const p of [job, other]) {
      await blocks.put(p, 0, latents(64, 'e0'), 3600);
      await blocks.put(p, 1, latents(64, 'e1'), 3600);
      await checkpoints.save(p, state(), 3600);
      await digests.save(p, 0, 'cd'.repeat(32), 3600);
    }
    const jobKeys = [t.keys.blockKey(job, 0), t.keys.blockKey(job, 1), t.keys.checkpointKey(job), t.keys.frameDigestKey(job, 0)];
    // The tracking set lives at least as long as the longest member.
    expect(await t.redis.pttl(t.keys.jobKeysKey(job))).toBeGreaterThan(3_590_000);
    expect((await t.redis.smembers(t.keys.jobKeysKey(job))).sort()).toEqual([...jobKeys].sort());

    expect(await blocks.expireJob(job, 30)).toBe(4);
    for (const k of [...jobKeys, t.keys.jobKeysKey(job)]) {
      const ttl = await t.redis.pttl(k);
      expect(ttl, k).toBeGreaterThan(25_000);
      expect(ttl, k).toBeLessThanOrEqual(30_000);
    }
    expect(await t.redis.pttl(t.keys.checkpointKey(other))).toBeGreaterThan(3_590_000);

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
