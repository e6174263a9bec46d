import { randomBytes } from 'node:crypto';
import Redis from 'ioredis';
import { canonicalPieces, type BlockPieces, type CheckpointManifest, type PieceId, type QueueState } from '@longshot/planner';
import { Rng } from '@longshot/random';
import { BlockStore, CheckpointStore, DirectCheckpointWrites, JobCheckpoint, KeySchema, startRedis, type CheckpointWrites, type RedisHandle } from '../src';

export interface TestRedis {
  server: RedisHandle;
  redis: Redis;
  /** A root of its own, so suites sharing a REDIS_URL server never see each other's keys. */
  keys: KeySchema;
  close(): Promise<void>;
}

export async function testRedis(): Promise<TestRedis> {
  // The suite's REDIS_URL, when CI gives one; else a private server.
  const server = await startRedis({ url: process.env.REDIS_URL });
  const redis = new Redis(server.url, { lazyConnect: true });
  await redis.connect();
  const keys = new KeySchema(`test-${randomBytes(6).toString('hex')}`);
  return {
    server,
    redis,
    keys,
    async close() {
      if (server.external) {
        const found = await redis.keys(`${keys.root}:*`);
        if (found.length) await redis.del(...found);
      }
      redis.disconnect();
      await server.stop();
    },
  };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls until `check` holds, or fails with `what` after `timeoutMs`. */
export async function eventually(what: string, check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(25);
  }
}

export const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** Latents with the values a lossy path would mangle: NaN payloads, -0, infinities, subnormals. */
export function latents(n: number, key: string): Float32Array {
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

/** A head's state at an iteration boundary: three queued blocks (UniPC histories of 2, 1, 0) and a finished block 2. */
export function checkpointState(): QueueState {
  return {
    iteration: 7,
    sampler: 'unipc',
    blocks: [
      { index: 3, step: 4, latents: latents(N, 'b3'), history: history('b3', 2) },
      { index: 4, step: 3, latents: latents(N, 'b4'), history: history('b4', 1) },
      { index: 5, step: 0, latents: latents(N, 'b5'), history: history('b5', 0) },
    ],
    noise: { rng: [1, 0xffffffff, 12345, 0], previous: [5, 2, 0, 1] },
    finishedTail: { index: 2, latents: latents(N, 'tail') },
  };
}

/** The pieces a block's tensors are stored as (as the head names them). */
export const piecesOf = (b: QueueState['blocks'][number]): BlockPieces => canonicalPieces(b.index, b.step, b.history.modelOutputs.length, b.history.lastSample !== null);

export function manifestOf(s: QueueState): CheckpointManifest {
  return {
    iteration: s.iteration,
    sampler: s.sampler,
    blocks: s.blocks.map((b) => ({ index: b.index, step: b.step, lowerOrderNums: b.history.lowerOrderNums, lastOrder: b.history.lastOrder, pieces: piecesOf(b) })),
    noise: s.noise,
    finishedTail: s.finishedTail?.index ?? null,
  };
}

/** Puts every tensor of `s` as a piece (and its finished block) through `job`, without committing. */
export async function putState(job: JobCheckpoint, s: QueueState): Promise<void> {
  for (const b of s.blocks) {
    const p = piecesOf(b);
    const tensors: [PieceId, Float32Array][] = [[p.latents, b.latents], ...p.modelOutputs.map((id, j): [PieceId, Float32Array] => [id, b.history.modelOutputs[j]])];
    if (p.lastSample && b.history.lastSample) tensors.push([p.lastSample, b.history.lastSample]);
    job.put(tensors.map(([id, values]) => ({ id, values })));
  }
  if (s.finishedTail) await job.putBlock(s.finishedTail.index, s.finishedTail.latents);
  await job.flush();
}

export function jobCheckpoint(t: TestRedis, prefix: string, run: string, ttlSeconds = 60, writes?: CheckpointWrites): JobCheckpoint {
  const checkpoints = new CheckpointStore(t.redis, { keys: t.keys });
  return new JobCheckpoint(checkpoints, writes ?? new DirectCheckpointWrites(checkpoints, new BlockStore(t.redis, { keys: t.keys })), prefix, run, ttlSeconds);
}

/** Stores `s` as the head does (pieces, finished block, manifest) for `run`, which must own the job. */
export async function saveCheckpoint(t: TestRedis, prefix: string, run: string, s: QueueState, ttlSeconds = 60): Promise<JobCheckpoint> {
  const job = jobCheckpoint(t, prefix, run, ttlSeconds);
  await putState(job, s);
  await job.commit(manifestOf(s));
  return job;
}
