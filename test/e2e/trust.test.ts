/**
 * Worker trust, replayed as the attacks of issue 13: a foreign client opening sessions, a grant
 * used with another job's key prefix, a superseded run writing through a takeover, and sessions
 * without grants exhausting a worker's capacity. Plus numerics pinning: a job never mixes
 * workers of different numerics fingerprints, failover included. Real Redis, real worker
 * processes, real gRPC.
 */
import * as grpc from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockStore, JobTextStore, jobPrefix, WorkerRegistry, type StoredTextRef, type WorkerInfo } from '@longshot/cache';
import { assembleLatents, latentSha256 } from '@longshot/media';
import { getConfig } from '@longshot/model';
import { runDistributedJob } from '@longshot/pipeline';
import { normalizeSpec, planJob, type JobSpec } from '@longshot/planner';
import {
  ComponentKind,
  createWorkerClient,
  encodePayload,
  Role,
  runComponent,
  signGrant,
  toWireDtype,
  type OpenSessionRequest,
  type SessionEvent,
  type WorkerClient,
} from '@longshot/transport';
import { LocalCluster, type LocalWorker } from '../../apps/cli/src/local-cluster';
import { leaseAndGrant } from './grants';

let cluster: LocalCluster;
let redis: Redis;
let scalar: LocalWorker;

const base = { prompt: 'a lighthouse in a storm', width: 64, height: 64, block: 2, context: 1, steps: 4, model: 'tiny', seed: 11, sampler: 'unipc' };
const spec = (over: Partial<Parameters<typeof normalizeSpec>[0]> = {}): JobSpec => normalizeSpec({ ...base, frames: 4 * (6 - 1) + 1, ...over });
const LAYERS = getConfig('tiny').layers;

beforeAll(async () => {
  cluster = await LocalCluster.start({ workers: 3, respawn: true, name: 'trust' });
  // One worker computes with other numerics (scalar kernels instead of this CPU's best).
  scalar = await cluster.spawnWorker({ env: { LONGSHOT_SIMD: 'scalar' } });
  redis = new Redis(cluster.redisUrl);
});

afterAll(async () => {
  redis?.disconnect();
  await cluster?.stop();
});

const defaults = (): LocalWorker[] => [...cluster.workers.values()].filter((w) => w.id !== scalar.id);
const registered = async (): Promise<Map<string, WorkerInfo>> => new Map((await new WorkerRegistry(redis).list()).map((w) => [w.id, w]));

/** The job's latents as the controller hashes them, read back from Redis. */
async function redisSha(s: JobSpec, job: string): Promise<string> {
  const plan = planJob(s);
  const blocks = new BlockStore(redis);
  const latents: Float32Array[] = [];
  for (let i = 0; i < plan.blocks; i++) {
    const b = await blocks.get(jobPrefix(job), i);
    if (!b) throw new Error(`block ${i} of ${job} missing`);
    latents.push(b);
  }
  return latentSha256(assembleLatents(latents, getConfig('tiny').latentChannels, s.block, plan.latentHeight * plan.latentWidth));
}

async function embedded(s: JobSpec, job: string, o: { waitMs?: number; onBlockStep?: (n: number) => void; onAttempt?: (workers: string[]) => void } = {}) {
  let steps = 0;
  return runDistributedJob(
    { jobId: job, spec: s, keyPrefix: jobPrefix(job), text: null },
    { ...cluster.driver(redis, job, { waitMs: o.waitMs }), onBlock: () => undefined, onBlockStep: () => o.onBlockStep?.(++steps), onAttempt: (a) => o.onAttempt?.(a.workers.map((w) => w.id)), livenessIntervalMs: 200 },
  );
}

/** A K = 1 session request (head and tail) as a driver sends it; zero text embeddings. */
function headTail(s: JobSpec, job: string, over: Partial<OpenSessionRequest> = {}): OpenSessionRequest {
  const c = getConfig('tiny');
  const text = encodePayload(new Float32Array(c.textLen * c.textDim), 'f32');
  return {
    jobId: job,
    sessionId: `${job}.${Math.random().toString(16).slice(2)}`,
    token: 't'.repeat(32),
    spec: { prompt: s.prompt, frames: s.frames, fps: s.fps, width: s.width, height: s.height, steps: s.steps, guidance: s.guidance, shift: s.shift ?? 0, sampler: s.sampler, block: s.block, context: s.context, stages: 1, seed: s.seed, model: s.model },
    layerBegin: 0,
    layerEnd: LAYERS,
    role: Role.ROLE_HEAD_TAIL,
    nextAddress: '',
    nextSessionId: '',
    nextToken: '',
    wireDtype: toWireDtype('f32'),
    text: { cond: text, uncond: text },
    resume: false,
    keyPrefix: '',
    payloadScale: 1,
    grant: '',
    nextDataPlane: undefined,
    prevDataPlane: undefined,
    group: undefined,
    textStored: undefined,
    ...over,
  };
}

const open = (client: WorkerClient, req: OpenSessionRequest): Promise<grpc.ServiceError | null> =>
  new Promise((resolve) => client.openSession(req, (err) => resolve(err)));

/** Follows a head's events to the end: 'done', or the failure message. */
function watch(client: WorkerClient, req: OpenSessionRequest): Promise<string> {
  return new Promise((resolve) => {
    const call = client.watchSession({ sessionId: req.sessionId, token: req.token });
    call.on('data', (e: SessionEvent) => {
      if (e.event?.$case === 'done') resolve('done');
      if (e.event?.$case === 'failed') resolve(`failed: ${e.event.value.message}`);
    });
    call.on('error', (e: grpc.ServiceError) => resolve(`error: ${e.details}`));
    call.on('end', () => resolve('ended'));
  });
}

const close = (client: WorkerClient, req: OpenSessionRequest): Promise<void> => new Promise((resolve) => client.closeSession({ sessionId: req.sessionId, token: req.token }, () => resolve()));

/** The registry's session count of `id` once it equals `want` (heartbeats are 1 s apart), or the last seen after 5 s. */
async function sessionsSettle(id: string, want: number): Promise<number> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const seen = (await registered()).get(id)!.sessions;
    if (seen === want || Date.now() > deadline) return seen;
    await new Promise((r) => setTimeout(r, 100));
  }
}

const metric = async (w: LocalWorker, name: string): Promise<number> => {
  const text = await (await fetch(`http://${w.metricsAddress}/metrics`)).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith(name))
    .reduce((n, l) => n + Number(l.split(' ').pop()), 0);
};

describe('worker sessions belong to leases', () => {
  it('(a) refuses a foreign client: no grant, a forged grant, a grant of a run without the lease, for other layers, expired', async () => {
    const [w] = defaults();
    const client = createWorkerClient(w.address);
    try {
      const s = spec();
      const before = await metric(w, 'longshot_worker_refused_calls_total');
      const noGrant = await open(client, headTail(s, 'foreign'));
      expect(noGrant?.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(noGrant?.details).toBe('a session grant is required');
      const forged = signGrant({ job: 'foreign', run: 'r', stage: 0, layerBegin: 0, layerEnd: LAYERS, keyPrefix: jobPrefix('foreign'), expiresAt: Date.now() + 60_000 }, { id: cluster.grantKey.id, secret: Buffer.alloc(32, 7) });
      const bad = await open(client, headTail(s, 'foreign', { grant: forged }));
      expect(bad?.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(bad?.details).toBe('the session grant has a bad signature');
      // Correctly signed, but the job does not hold this worker's lease.
      const unleased = signGrant({ job: 'foreign', run: 'r', stage: 0, layerBegin: 0, layerEnd: LAYERS, keyPrefix: jobPrefix('foreign'), expiresAt: Date.now() + 60_000 }, cluster.grantKey);
      const denied = await open(client, headTail(s, 'foreign', { grant: unleased }));
      expect(denied?.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(denied?.details).toMatch(/^job foreign \(this run\) does not hold worker .+'s lease$/);
      // Leased and signed, but for other layers than the session asks for.
      const narrow = await leaseAndGrant(redis, cluster.grantKey, w.id, { job: 'foreign', stage: 0, layerBegin: 0, layerEnd: 1 });
      const scope = await open(client, headTail(s, 'foreign', { grant: narrow.grant }));
      await narrow.release();
      expect(scope?.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(scope?.details).toBe(`the session grant is for layers [0, 1), not [0, ${LAYERS})`);
      const expired = signGrant({ job: 'foreign', run: 'r', stage: 0, layerBegin: 0, layerEnd: LAYERS, keyPrefix: jobPrefix('foreign'), expiresAt: Date.now() - 1 }, cluster.grantKey);
      expect((await open(client, headTail(s, 'foreign', { grant: expired })))?.code).toBe(grpc.status.UNAUTHENTICATED);
      // The text encoder is a worker's compute too.
      const comp = await runComponent(client, { kind: ComponentKind.COMPONENT_KIND_TEXT_ENCODER, model: 'tiny', jobId: 'foreign', input: { $case: 'text', value: { prompt: 'x', negativePrompt: '', storeForJob: true } }, grant: '' }).then(
        () => null,
        (e: grpc.ServiceError) => e,
      );
      expect(comp?.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(await redis.keys(`${jobPrefix('foreign')}*`)).toEqual([]);
      expect((await metric(w, 'longshot_worker_refused_calls_total')) - before).toBe(6);
    } finally {
      client.close();
    }
  });

  it('rotates grant keys without downtime: a worker listing [new, current] accepts grants of both, and no other', async () => {
    const current = cluster.grantKey;
    const next = { id: 'k-next', secret: Buffer.from('n'.repeat(40)) };
    const w = await cluster.spawnWorker({ args: ['--grant-keys', `${next.id}:${next.secret},${current.id}:${current.secret}`] });
    const client = createWorkerClient(w.address);
    try {
      const s = spec();
      // A tail session: nothing computes until its upstream sends.
      const tail = (grant: string, id: string) => headTail(s, 'rotation', { grant, sessionId: id, layerBegin: 1, role: Role.ROLE_TAIL, nextAddress: '127.0.0.1:9', nextSessionId: 'x', nextToken: 'x' });
      const lease = await leaseAndGrant(redis, current, w.id, { job: 'rotation', stage: 1, layerBegin: 1, layerEnd: LAYERS });
      try {
        const claims = { job: 'rotation', run: lease.run, stage: 1, layerBegin: 1, layerEnd: LAYERS, keyPrefix: jobPrefix('rotation'), expiresAt: Date.now() + 60_000 };
        for (const [name, key, code] of [
          ['the new key', next, null],
          ['the current (soon previous) key', current, null],
          ['an unknown key', { id: 'k-other', secret: Buffer.from('o'.repeat(40)) }, grpc.status.UNAUTHENTICATED],
        ] as const) {
          const req = tail(signGrant(claims, key), `rotation-${key.id}`);
          const err = await open(client, req);
          expect(err?.code ?? null, name).toBe(code);
          if (!err) await close(client, req);
        }
      } finally {
        await lease.release();
      }
    } finally {
      client.close();
    }
  });

  it("reads the text embeddings a session names by reference from its own job's keys only, and refuses a missing, mismatched or doubled one", async () => {
    const [w] = defaults();
    const s = spec();
    const c = getConfig('tiny');
    const lease = await leaseAndGrant(redis, cluster.grantKey, w.id, { job: 'stored-text', stage: 0, layerBegin: 0, layerEnd: LAYERS });
    const client = createWorkerClient(w.address);
    try {
      const prefix = jobPrefix('stored-text');
      const ref = (r: StoredTextRef) => ({ text: undefined, textStored: { byteLength: r.byteLength, crc32: r.crc32 }, grant: lease.grant });
      const values = new Float32Array(c.textLen * c.textDim).map((_, i) => Math.sin(i));
      // Another job's stored text, valid and of the right shape: not this session's to read.
      await new BlockStore(redis).claimRun(jobPrefix('stored-text-other'), 'run-other', 60);
      const other = await new JobTextStore(redis).put(jobPrefix('stored-text-other'), { cond: values, uncond: values }, 'run-other');
      const missing = await open(client, headTail(s, 'stored-text', ref(other)));
      expect(missing?.code).toBe(grpc.status.FAILED_PRECONDITION);
      expect(missing?.details).toBe('text_stored: job stored-text has no text embeddings stored');
      await new BlockStore(redis).claimRun(prefix, lease.run, 60);
      const mine = await new JobTextStore(redis).put(prefix, { cond: values, uncond: values.map((v) => -v) }, lease.run);
      const mismatched = await open(client, headTail(s, 'stored-text', ref({ ...mine, crc32: (mine.crc32 ^ 1) >>> 0 })));
      expect(mismatched?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(mismatched?.details).toMatch(/^text_stored: the job's text embeddings are \d+ bytes with CRC-32 [0-9a-f]{8}, the request names \d+ bytes with CRC-32 [0-9a-f]{8}$/);
      const doubled = await open(client, { ...headTail(s, 'stored-text', ref(mine)), text: headTail(s, 'x').text });
      expect(doubled?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(doubled?.details).toBe('text and text_stored are both set: a session takes its text embeddings one way');
      // Nothing was opened: the worker holds no session of this job.
      expect(await metric(w, 'longshot_sessions_open')).toBe(0);
      const req = headTail(s, 'stored-text', ref(mine));
      expect(await open(client, req)).toBeNull();
      expect(await watch(client, req)).toBe('done');
      await close(client, req);
    } finally {
      await lease.release();
      client.close();
    }
  });

  it("(b) takes the key prefix from the grant: a grant for job A sent with job B's prefix writes A's keys only", async () => {
    const s = spec();
    const victim = await embedded(s, 'victim-b');
    const victimSha = await redisSha(s, 'victim-b');
    const victimKeys = (await redis.keys(`${jobPrefix('victim-b')}*`)).sort();
    const [w] = defaults();
    const lease = await leaseAndGrant(redis, cluster.grantKey, w.id, { job: 'attacker-a', stage: 0, layerBegin: 0, layerEnd: LAYERS });
    const client = createWorkerClient(w.address);
    try {
      await new BlockStore(redis).claimRun(jobPrefix('attacker-a'), lease.run, 60);
      // Another seed: whatever it writes differs from the victim's blocks.
      const req = headTail(spec({ seed: 99 }), 'attacker-a', { grant: lease.grant, keyPrefix: jobPrefix('victim-b') });
      expect(await open(client, req)).toBeNull();
      expect(await watch(client, req)).toBe('done');
      await close(client, req);
      expect(await redis.exists(`${jobPrefix('attacker-a')}:block:0`)).toBe(1);
      expect((await redis.keys(`${jobPrefix('victim-b')}*`)).sort()).toEqual(victimKeys);
      expect(await redisSha(s, 'victim-b')).toBe(victimSha);
      expect(victim.numerics).toBe((await registered()).get(w.id)!.numerics);
    } finally {
      await lease.release();
      client.close();
    }
  });

  it("(c) fences a superseded run: its head's writes are refused and the victim's latentSha256 is unchanged", async () => {
    const s = spec();
    await embedded(s, 'victim-c');
    const victimSha = await redisSha(s, 'victim-c');
    const blocks = planJob(s).blocks;
    // A run of the same job that has been superseded (the victim's run claimed the job after it)
    // but still holds a lease and a valid grant: it recomputes with another seed and tries to
    // overwrite the blocks and the checkpoint.
    const [w] = defaults();
    const before = await metric(w, 'longshot_worker_fenced_writes_total');
    const stale = await leaseAndGrant(redis, cluster.grantKey, w.id, { job: 'victim-c', stage: 0, layerBegin: 0, layerEnd: LAYERS });
    const client = createWorkerClient(w.address);
    try {
      const req = headTail(spec({ seed: 99 }), 'victim-c', { grant: stale.grant, resume: false });
      expect(await open(client, req)).toBeNull();
      expect(await watch(client, req)).toMatch(/^failed: .*run .+ no longer owns the job/);
      await close(client, req);
      expect((await metric(w, 'longshot_worker_fenced_writes_total')) - before).toBeGreaterThanOrEqual(1);
      expect(await redisSha(s, 'victim-c')).toBe(victimSha);
      // No staged value is left behind either.
      expect((await redis.keys(`${jobPrefix('victim-c')}*~*`)).length).toBe(0);
      expect(blocks).toBeGreaterThan(1);
    } finally {
      await stale.release();
      client.close();
    }
  });

  it('(d) sessions without a valid grant use no capacity, and the registry counts granted sessions', async () => {
    const [w] = defaults();
    const clients = Array.from({ length: 8 }, () => createWorkerClient(w.address));
    const lease = await leaseAndGrant(redis, cluster.grantKey, w.id, { job: 'capacity', stage: 0, layerBegin: 0, layerEnd: LAYERS });
    const client = createWorkerClient(w.address);
    try {
      const s = spec();
      expect(await sessionsSettle(w.id, 0)).toBe(0);
      // Twice the worker's capacity of 4, all at once.
      const refused = await Promise.all(clients.map((c, i) => open(c, headTail(s, 'capacity', { sessionId: `flood-${i}` }))));
      expect(refused.map((e) => e?.code)).toEqual(Array(8).fill(grpc.status.UNAUTHENTICATED));
      // A granted session still gets in, and counts: the registry shows it within a heartbeat.
      const req = headTail(s, 'capacity', { grant: lease.grant, sessionId: 'granted' });
      await new BlockStore(redis).claimRun(jobPrefix('capacity'), lease.run, 60);
      expect(await open(client, req)).toBeNull();
      expect(await sessionsSettle(w.id, 1)).toBe(1);
      expect((await registered()).get(w.id)!.capacity).toBe(4);
      await close(client, req);
      expect(await sessionsSettle(w.id, 0)).toBe(0);
    } finally {
      await lease.release();
      clients.forEach((c) => c.close());
      client.close();
    }
  });
});

describe('numerics identity', () => {
  it('registers a fingerprint per worker; a job is pinned to one, failover included, and reports it', async () => {
    const workers = await registered();
    const fast = workers.get(defaults()[0].id)!.numerics;
    expect(fast).toMatch(/^cpu:simd=avx(2|512):storage=f32:build=[0-9a-f]{12}$/);
    expect(workers.get(scalar.id)!.numerics).toBe(fast.replace(/simd=avx(2|512)/, 'simd=scalar'));
    const s = spec({ stages: 2 });
    const reference = await embedded(spec({ stages: 1 }), 'pin-reference').then(() => redisSha(spec({ stages: 1 }), 'pin-reference'));

    // Kill a stage mid-job: the free scalar worker is not a replacement; the respawned default one is.
    const attempts: string[][] = [];
    let killed: string | null = null;
    const r = await embedded(s, 'pinned', {
      waitMs: 30_000,
      onAttempt: (ws) => attempts.push(ws),
      onBlockStep: (n) => {
        if (killed || n < 3) return;
        killed = attempts[0][1];
        cluster.kill(killed, 'SIGKILL');
      },
    });
    expect(killed).not.toBeNull();
    expect(r.attempts.length).toBeGreaterThanOrEqual(2);
    expect(r.attempts.flatMap((a) => a.workers)).not.toContain(scalar.id);
    expect(r.numerics).toBe(fast);
    expect(await redisSha(s, 'pinned')).toBe(reference);

    // More stages than workers of one fingerprint (though enough workers): refused rather than mixed.
    const all = [...(await registered()).values()];
    const K = all.filter((w) => w.numerics === fast).length + 1;
    expect(K).toBeLessThanOrEqual(all.length);
    expect(K).toBeLessThanOrEqual(LAYERS);
    const mixed = await embedded(spec({ stages: K }), 'never-mixed', { waitMs: 1000 }).then(
      () => null,
      (e: Error) => e.message,
    );
    expect(mixed).toBe(`no ${K} free workers for model * within 1000 ms`);
  });
});
