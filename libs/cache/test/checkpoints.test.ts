import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QueueState } from '@longshot/planner';
import { BlockStore, CheckpointStore, CorruptValueError, FencedWriteError, MissingKeyError, ThreadCheckpointWrites, encodeManifest, type PieceRef } from '../src';
import { checksum } from '../src/codec';
import { bits, checkpointState, jobCheckpoint, latents, manifestOf, putState, saveCheckpoint, testRedis, type TestRedis } from './helpers';

let t: TestRedis;
beforeAll(async () => {
  t = await testRedis();
});
afterAll(async () => {
  await t?.close();
});

function expectSameState(got: QueueState | null | undefined, want: QueueState): void {
  expect(got).toBeTruthy();
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

const store = (): CheckpointStore => new CheckpointStore(t.redis, { keys: t.keys });
const pieceKeys = (prefix: string): Promise<string[]> => t.redis.keys(`${prefix}:piece:*`).then((k) => k.sort());

async function claimed(name: string, run = 'run-a'): Promise<string> {
  const prefix = t.keys.jobPrefix(name);
  await new BlockStore(t.redis, { keys: t.keys }).claimRun(prefix, run, 60);
  return prefix;
}

/** The state one iteration later: block 3 finished, 4 and 5 one step on, block 6 new. */
function nextState(s: QueueState): QueueState {
  const [, b4, b5] = s.blocks;
  return {
    ...s,
    iteration: s.iteration + 1,
    blocks: [
      { index: 4, step: 4, latents: latents(b4.latents.length, 'b4-next'), history: { ...b4.history, modelOutputs: [b4.history.modelOutputs[0], latents(b4.latents.length, 'b4-x0-3')], lowerOrderNums: 2, lastOrder: 2, lastSample: latents(b4.latents.length, 'b4-sample-3') } },
      { index: 5, step: 1, latents: latents(b5.latents.length, 'b5-next'), history: { modelOutputs: [latents(b5.latents.length, 'b5-x0-0')], lastSample: latents(b5.latents.length, 'b5-sample-0'), lowerOrderNums: 1, lastOrder: 1 } },
      { index: 6, step: 0, latents: latents(b5.latents.length, 'b6'), history: { modelOutputs: [], lastSample: null, lowerOrderNums: 0, lastOrder: 0 } },
    ],
    finishedTail: { index: 3, latents: latents(b5.latents.length, 'b3-final') },
  };
}

describe('incremental checkpoints', () => {
  it('round-trip a QueueState bit for bit from its pieces; the manifest is small and has a TTL', async () => {
    const prefix = await claimed('ckpt-roundtrip');
    expect(await store().load(prefix)).toBeNull();
    const s = checkpointState();
    await saveCheckpoint(t, prefix, 'run-a', s);
    const loaded = await store().load(prefix);
    expectSameState(loaded?.state, s);
    // Every tensor is one piece of the run that wrote it, named in the loaded state.
    expect(loaded!.pieces).toHaveLength(8);
    expect(loaded!.state.blocks[0].pieces).toEqual({ latents: { block: 3, kind: 'latents', step: 4 }, modelOutputs: [{ block: 3, kind: 'x0', step: 2 }, { block: 3, kind: 'x0', step: 3 }], lastSample: { block: 3, kind: 'sample', step: 3 } });
    expect(await pieceKeys(prefix)).toContain(t.keys.pieceKey(prefix, 'run-a', { block: 3, kind: 'x0', step: 2 }));
    expect(await t.redis.strlen(t.keys.checkpointKey(prefix))).toBeLessThan(4096);
    const ttl = await t.redis.pttl(t.keys.checkpointKey(prefix));
    expect(ttl).toBeGreaterThan(55_000);
    expect(ttl).toBeLessThanOrEqual(60_000);
  });

  it('a newer manifest deletes (and untracks) the pieces only the older one named', async () => {
    const prefix = await claimed('ckpt-replace');
    const s = checkpointState();
    const job = await saveCheckpoint(t, prefix, 'run-a', s);
    const before = await pieceKeys(prefix);
    const next = nextState(s);
    await putState(job, next);
    await job.commit(manifestOf(next));
    expectSameState((await store().load(prefix))?.state, next);
    const after = await pieceKeys(prefix);
    // Block 3 left the queue: all its pieces are gone; block 4's x0 of step 2 is still named.
    expect(after.filter((k) => k.includes(':3:'))).toEqual([]);
    expect(after).toContain(t.keys.pieceKey(prefix, 'run-a', { block: 4, kind: 'x0', step: 2 }));
    expect(after).not.toContain(t.keys.pieceKey(prefix, 'run-a', { block: 4, kind: 'latents', step: 3 }));
    expect(after).toHaveLength(8);
    const tracked = await t.redis.smembers(t.keys.jobKeysKey(prefix));
    for (const k of before.filter((k) => !after.includes(k))) expect(tracked).not.toContain(k);
    for (const k of after) expect(tracked).toContain(k);
    // An empty queue without a tail round-trips too, and leaves no piece behind.
    const empty: QueueState = { iteration: 0, sampler: 'euler', blocks: [], noise: { rng: [9, 8, 7, 6], previous: [] }, finishedTail: null };
    await job.commit(manifestOf(empty));
    expectSameState((await store().load(prefix))?.state, empty);
    expect(await pieceKeys(prefix)).toEqual([]);
  });

  it('a crash between pieces and their manifest resumes from the previous manifest, bit for bit; the next run drops what it no longer needs', async () => {
    const prefix = await claimed('ckpt-crash');
    const s = checkpointState();
    const job = await saveCheckpoint(t, prefix, 'run-a', s);
    const next = nextState(s);
    await putState(job, next); // ... and the head dies before job.commit(manifestOf(next)).
    // The resumed run takes over and reads the last committed manifest.
    await new BlockStore(t.redis, { keys: t.keys }).claimRun(prefix, 'run-b', 60);
    const resumed = jobCheckpoint(t, prefix, 'run-b');
    expectSameState(await resumed.load(), s);
    // It stores its own pieces (its run in their keys) and names run-a's where they still hold.
    const mine = { ...next, blocks: next.blocks.map((b) => ({ ...b, latents: latents(b.latents.length, `b-${b.index}`) })) };
    await putState(resumed, mine);
    await resumed.commit(manifestOf(mine));
    const loaded = await store().load(prefix);
    expectSameState(loaded?.state, mine);
    expect(new Set(loaded!.pieces.map((p) => p.run))).toEqual(new Set(['run-b']));
    // Run-a's old pieces named by no manifest are gone except the orphans of its crash, which expire with the job.
    const left = await pieceKeys(prefix);
    expect(left.filter((k) => k.includes(':run-a:')).every((k) => k.includes(':4:') || k.includes(':5:') || k.includes(':6:'))).toBe(true);
  });

  it('between commits (--checkpoint-every > 1), deletes at each boundary what neither the last manifest nor the current state names', async () => {
    const prefix = await claimed('ckpt-prune');
    const s = checkpointState();
    const job = await saveCheckpoint(t, prefix, 'run-a', s);
    const committed = await pieceKeys(prefix);
    const next = nextState(s);
    await putState(job, next);
    // A superseded piece: stored during the iteration, named by neither state.
    job.put([{ id: { block: 6, kind: 'latents', step: 9 }, values: latents(16, 'stale') }]);
    await job.prune(manifestOf(next));
    const left = await pieceKeys(prefix);
    expect(left).not.toContain(t.keys.pieceKey(prefix, 'run-a', { block: 6, kind: 'latents', step: 9 }));
    for (const k of committed) expect(left).toContain(k);
    for (const b of manifestOf(next).blocks) expect(left).toContain(t.keys.pieceKey(prefix, 'run-a', b.pieces.latents));
    expect(await t.redis.sismember(t.keys.jobKeysKey(prefix), t.keys.pieceKey(prefix, 'run-a', { block: 6, kind: 'latents', step: 9 }))).toBe(0);
    expectSameState((await store().load(prefix))?.state, s);
    // The next commit names the current state and deletes the rest of the last one.
    await job.commit(manifestOf(next));
    expectSameState((await store().load(prefix))?.state, next);
    expect(await pieceKeys(prefix)).toHaveLength(8);
  });

  it('commits a sealed boundary while the next one is being put: those pieces are neither deleted nor forgotten', async () => {
    const prefix = await claimed('ckpt-sealed');
    const s = checkpointState();
    const job = jobCheckpoint(t, prefix, 'run-a');
    await putState(job, s);
    const sealed = job.seal();
    // The head goes on: the next boundary's pieces are stored before the sealed one commits.
    const next = nextState(s);
    await putState(job, next);
    await job.commit(manifestOf(s), sealed);
    expectSameState((await store().load(prefix))?.state, s);
    const left = await pieceKeys(prefix);
    for (const b of manifestOf(next).blocks) expect(left).toContain(t.keys.pieceKey(prefix, 'run-a', b.pieces.latents));
    await job.commit(manifestOf(next));
    expectSameState((await store().load(prefix))?.state, next);
    expect(await pieceKeys(prefix)).toHaveLength(8);
  });

  it('refuses a manifest naming a piece never stored, or one gone from Redis, without writing', async () => {
    const prefix = await claimed('ckpt-missing');
    const s = checkpointState();
    const job = jobCheckpoint(t, prefix, 'run-a');
    await expect(job.commit(manifestOf(s))).rejects.toThrow(/block 3's latents is the latents of step 4 of block 3, which was never stored/);
    await putState(job, s);
    await t.redis.del(t.keys.pieceKey(prefix, 'run-a', { block: 4, kind: 'sample', step: 2 }));
    const err = await job.commit(manifestOf(s)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MissingKeyError);
    expect((err as Error).message).toContain(t.keys.pieceKey(prefix, 'run-a', { block: 4, kind: 'sample', step: 2 }));
    expect(await t.redis.exists(t.keys.checkpointKey(prefix))).toBe(0);
    expect(await pieceKeys(prefix)).toHaveLength(7);
    expect(() => encodeManifest({ ...manifestOf(s), noise: { rng: [1, 2, 3], previous: [] } } as never, () => undefined)).toThrow(/four uint32 words/);
    expect(() => encodeManifest({ ...manifestOf(s), iteration: -1 }, () => undefined)).toThrow(/iteration/);
    await expect(store().putPiece(prefix, 'run-a', { block: 1, kind: 'latents', step: 0 }, latents(8, 'z'), 0)).rejects.toThrow(/positive number of seconds/);
  });

  it('is fenced: a superseded run commits nothing and deletes nothing', async () => {
    const prefix = await claimed('ckpt-fenced', 'run-a');
    const s = checkpointState();
    const job = await saveCheckpoint(t, prefix, 'run-a', s);
    const next = nextState(s);
    job.put([{ id: { block: 4, kind: 'latents', step: 4 }, values: next.blocks[0].latents }]);
    await job.flush();
    await new BlockStore(t.redis, { keys: t.keys }).claimRun(prefix, 'run-b', 60);
    const keys = await pieceKeys(prefix);
    const piecesOnly = manifestOf({ ...next, finishedTail: null, blocks: [{ ...next.blocks[0], history: { modelOutputs: [], lastSample: null, lowerOrderNums: 0, lastOrder: 0 } }] });
    await expect(job.commit(piecesOnly)).rejects.toThrow(FencedWriteError);
    expect(await pieceKeys(prefix)).toEqual(keys);
    expectSameState((await store().load(prefix))?.state, s);
    expect(await t.redis.keys(`${prefix}*~*`)).toEqual([]);
  });

  it('stores pieces and finished blocks from a thread of its own, bit for bit, fenced likewise', async () => {
    const prefix = await claimed('ckpt-thread');
    const writes = new ThreadCheckpointWrites({ redisUrl: t.server.url, keyRoot: t.keys.root });
    try {
      const s = checkpointState();
      // Shared memory crosses without a copy, ordinary arrays with one; both store the same bytes.
      const inShared = (a: Float32Array): Float32Array => {
        const out = new Float32Array(new SharedArrayBuffer(a.byteLength));
        out.set(a);
        return out;
      };
      const shared = { ...s, blocks: s.blocks.map((b) => ({ ...b, latents: inShared(b.latents) })) };
      const job = jobCheckpoint(t, prefix, 'run-a', 60, writes);
      await putState(job, shared);
      await job.commit(manifestOf(shared));
      expectSameState((await store().load(prefix))?.state, s);
      await new BlockStore(t.redis, { keys: t.keys }).claimRun(prefix, 'run-b', 60);
      await expect(writes.putBlock(prefix, 9, latents(16, 'late'), 60, 'run-a')).rejects.toThrow(FencedWriteError);
      await expect(writes.putPieces(prefix, 'run-a', [{ id: { block: 1, kind: 'nope' as never, step: 0 }, values: latents(8, 'z') }], 60)).rejects.toThrow(/must name a piece/);
    } finally {
      await writes.close();
    }
  });

  describe('detects corruption and names the key', () => {
    let prefix: string;
    let manifest: Buffer;
    let named: PieceRef[];
    beforeAll(async () => {
      prefix = await claimed('ckpt-corrupt');
      await saveCheckpoint(t, prefix, 'run-a', checkpointState());
      manifest = (await t.redis.getBuffer(t.keys.checkpointKey(prefix)))!;
      named = (await store().load(prefix))!.pieces;
    });

    async function loadWith(key: string, value: Buffer | null): Promise<Error> {
      const original = await t.redis.getBuffer(key);
      if (value === null) await t.redis.del(key);
      else await t.redis.set(key, value);
      try {
        return await store()
          .load(prefix)
          .then(
            () => new Error('load accepted a corrupt checkpoint'),
            (err: Error) => err,
          );
      } finally {
        await t.redis.set(key, original!);
      }
    }

    const withHeader = (edit: (h: Record<string, unknown>) => void): Buffer => {
      const headerLength = manifest.readUInt32LE(8);
      const header = JSON.parse(manifest.subarray(12, 12 + headerLength).toString('utf8'));
      edit(header);
      const json = Buffer.from(JSON.stringify(header));
      const pre = Buffer.from(manifest.subarray(0, 12));
      pre.writeUInt32LE(json.length, 8);
      const body = Buffer.concat([pre, json]);
      return Buffer.concat([body, checksum(body)]);
    };

    it.each([
      ['bad-magic', (b: Buffer) => (b.write('NOPE', 0, 'latin1'), b), /bad magic "NOPE"/],
      ['version', (b: Buffer) => (b.writeUInt32LE(3, 4), b), /version 3; this build reads version 4/],
      ['truncated', (b: Buffer) => b.subarray(0, b.length - 10), /truncated: \d+ bytes, its header declares \d+/],
      ['tiny', (b: Buffer) => b.subarray(0, 10), /truncated: 10 bytes/],
      ['header-length', (b: Buffer) => (b.writeUInt32LE(0x7fffffff, 8), b), /declares a 2147483647-byte header/],
      ['trailing', (b: Buffer) => Buffer.concat([b, Buffer.alloc(4)]), /4 bytes after the declared header/],
      ['header-bit', (b: Buffer) => ((b[40] ^= 0x01), b), /checksum mismatch/],
      ['checksum-bit', (b: Buffer) => ((b[b.length - 1] ^= 0x80), b), /checksum mismatch/],
    ])('manifest: %s', async (_name, corrupt, message) => {
      const key = t.keys.checkpointKey(prefix);
      const err = await loadWith(key, corrupt(Buffer.from(manifest)));
      expect(err).toBeInstanceOf(CorruptValueError);
      expect(err.message).toContain(key);
      expect(err.message).toMatch(message);
    });

    it.each([
      ['a piece index out of range', (h: Record<string, unknown>) => ((h.blocks as { latents: number }[])[0].latents = 99), /block 3's latents must index one of the 8 pieces/],
      ['a piece without a checksum', (h: Record<string, unknown>) => delete (h.pieces as { crc?: number }[])[0].crc, /piece 0 needs a run, a byte length/],
      ['pieces of one block that differ in length', (h: Record<string, unknown>) => ((h.pieces as { bytes: number }[])[1].bytes += 4), /block 3's pieces differ in length/],
    ])('manifest with %s, under a valid checksum', async (_name, edit, message) => {
      const err = await loadWith(t.keys.checkpointKey(prefix), withHeader(edit));
      expect(err).toBeInstanceOf(CorruptValueError);
      expect(err.message).toMatch(/invalid header/);
      expect(err.message).toMatch(message);
    });

    it.each([
      ['missing', () => null, /is missing/],
      ['truncated', (b: Buffer) => b.subarray(0, b.length - 4), /has \d+ bytes, \d+ expected/],
      ['bit-flipped', (b: Buffer) => ((b[17] ^= 0x10), b), /fails its checksum/],
    ])('piece %s: names the job, the block and the piece', async (_name, corrupt, message) => {
      const p = named.find((x) => x.block === 4 && x.kind === 'x0')!;
      const key = t.keys.pieceKey(prefix, 'run-a', p);
      const value = (await t.redis.getBuffer(key))!;
      const err = await loadWith(key, corrupt(Buffer.from(value)));
      expect(err).toBeInstanceOf(CorruptValueError);
      expect(err.message).toContain(key);
      expect(err.message).toContain('job ckpt-corrupt: checkpoint piece the x0 of step 2 of block 4');
      expect(err.message).toMatch(message);
    });

    it('the finished block the next prefix comes from, missing', async () => {
      const err = await loadWith(t.keys.blockKey(prefix, 2), null);
      expect(err).toBeInstanceOf(CorruptValueError);
      expect(err.message).toMatch(/job ckpt-corrupt: finished block 2 is missing/);
    });
  });
});
