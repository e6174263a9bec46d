import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobPrefix } from '@longshot/cache';
import { cpuBackend } from '@longshot/engine';
import { Stitcher } from '@longshot/media';
import { encodePrompt, getConfig, modelBlockDecoder, resolveModel, seededStageWeights, Stage } from '@longshot/model';
import { buildSchedule, jobSchedulerConfig, WAN_SCHEDULER_CONFIG } from '@longshot/sampler';
import { BlockQueue, FAILOVER_REASONS, runDistributedJob, runLocalPipeline, type DistributedResult, type Failover } from '@longshot/pipeline';
import { DEFAULT_PLANNER_PROFILE, getProfile, normalizeSpec, partitionLayers, planJob, type JobSpec } from '@longshot/planner';
import { createWorkerClient, DataPlaneTransport, encodePayload, HOP_TRANSPORTS, PayloadKind, Role, toWireDtype, type ActivationAck, type ActivationFrame, type WorkerClient } from '@longshot/transport';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { renderLocal, textFor } from '../../apps/cli/src/render';
import { metricValue } from './metrics';
import { leaseAndGrant } from './grants';

let dir: string;
let cluster: LocalCluster;
let redis: Redis;

/** What --data-plane auto picks between two workers of one host. */
const DEFAULT_HOP = 'shm';

const base = { prompt: 'a lighthouse in a storm', width: 64, height: 64, block: 2, context: 1, steps: 6, model: 'tiny', seed: 11, sampler: 'unipc' };
const spec = (over: Partial<Parameters<typeof normalizeSpec>[0]> = {}): JobSpec => normalizeSpec({ ...base, frames: 4 * (12 - 1) + 1, ...over });

/** The single-process result: K stage objects chained in this process. */
async function inProcess(s: JobSpec): Promise<string> {
  const config = getConfig(s.model);
  const plan = planJob(s);
  const text = { cond: encodePrompt(s.prompt, config), uncond: encodePrompt('', config) };
  const stages = partitionLayers(config.layers, s.stages).map((range) => new Stage({ config, range, weights: seededStageWeights(config, range, 0), backend: cpuBackend(), text, guidance: s.guidance }));
  const stitcher = new Stitcher(path.join(dir, `local-${s.stages}-${s.frames}.mp4`), geometry(s), vaeFor(s));
  await runLocalPipeline(new BlockQueue(s, plan, { channels: config.latentChannels, scheduler: WAN_SCHEDULER_CONFIG }), stages, { onBlockFinished: async (b) => void (await stitcher.add(b.index, b.latents)) });
  return (await stitcher.finish()).latentSha256;
}

function vaeFor(s: JobSpec) {
  const plan = planJob(s);
  return modelBlockDecoder(resolveModel(s.model), { block: s.block, latentHeight: plan.latentHeight, latentWidth: plan.latentWidth }, cpuBackend());
}

function geometry(s: JobSpec) {
  return { frames: s.frames, fps: s.fps, width: s.width, height: s.height, block: s.block, blocks: planJob(s).blocks, latentChannels: 16 };
}

async function distributed(
  s: JobSpec,
  id: string,
  hooks: { onBlockStep?: (n: number) => void; onAttempt?: (workers: string[]) => void; onFailover?: (f: Failover) => void } = {},
  on: { cluster: LocalCluster; redis: Redis } = { cluster, redis },
): Promise<DistributedResult & { latentSha256: string }> {
  const stitcher = new Stitcher(path.join(dir, `${id}.mp4`), geometry(s), vaeFor(s));
  let steps = 0;
  const run = await runDistributedJob(
    { jobId: id, spec: s, keyPrefix: jobPrefix(id), text: null },
    {
      ...on.cluster.driver(on.redis, id),
      onBlock: async (i, latents) => void (await stitcher.add(i, latents)),
      onBlockStep: () => hooks.onBlockStep?.(++steps),
      onAttempt: (a) => hooks.onAttempt?.(a.workers.map((w) => w.id)),
      onFailover: (f) => hooks.onFailover?.(f),
      livenessIntervalMs: 200,
    },
  );
  return { ...run, latentSha256: (await stitcher.finish()).latentSha256 };
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-pipeline-'));
  cluster = await LocalCluster.start({ workers: 5, respawn: true, name: 'e2e' });
  redis = new Redis(cluster.redisUrl);
});

afterAll(async () => {
  redis?.disconnect();
  await cluster?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('DualParal across worker processes', () => {
  it('gives the same latents for K = 1 in process and 2, 3, 4 workers', async () => {
    const reference = await inProcess(spec());
    for (const K of [2, 3, 4]) {
      const r = await distributed(spec({ stages: K }), `same-${K}`);
      expect(r.latentSha256, `K = ${K}`).toBe(reference);
      expect(new Set(r.workers).size).toBe(K);
      expect(r.recomputedBlockSteps).toBe(0);
      // --data-plane auto (the default): every hop, the tail's back to the head included, is native;
      // one host without NVLink domains, so the cost model gives every hop the host link.
      expect(r.hops, `K = ${K}`).toEqual(Array.from({ length: K }, (_, k) => ({ from: k, to: (k + 1) % K, transport: DEFAULT_HOP, link: expect.objectContaining({ kind: 'host' }) })));
      expect(r.placement.map((p) => [p.stage, p.worker, p.nvlinkDomain, p.gpu])).toEqual(r.workers.map((w, k) => [k, w, null, null]));
      expect(new Set(r.placement.map((p) => p.host)).size).toBe(1);
    }
    // Euler stays selectable and distributes the same way; it is a different solve.
    const euler = await inProcess(spec({ sampler: 'euler' }));
    expect(euler).not.toBe(reference);
    expect((await distributed(spec({ stages: 2, sampler: 'euler' }), 'same-euler-2')).latentSha256).toBe(euler);
  });

  /** Runs `s` on its workers and SIGKILLs the middle (or last) stage's worker a third of the way through. */
  async function killedMidJob(s: JobSpec, id: string): Promise<{ r: Awaited<ReturnType<typeof distributed>>; killed: string; failovers: Failover[] }> {
    return killedMidJobOn(s, id, { cluster, redis }, 1);
  }
  it('survives a worker killed mid-job, redoing at most one iteration (UniPC history resumed from the checkpoint)', async () => {
    const s = spec({ stages: 3, frames: 4 * (24 - 1) + 1, steps: 8, sampler: 'unipc' });
    const reference = await inProcess({ ...s, stages: 1 });
    const { r, killed, failovers } = await killedMidJob(s, 'killed');
    expect(r.attempts[0].error).toBeTruthy();
    // One failover per lost attempt, before the attempt that replaced it: the killed worker, and why.
    expect(failovers.map((f) => f.attempt)).toEqual(r.attempts.slice(1).map((_, i) => i + 2));
    expect(failovers[0].lost.map((w) => w.id)).toEqual([killed]);
    expect(FAILOVER_REASONS).toContain(failovers[0].reason);
    expect(failovers[0].error).toBe(r.attempts[0].error);
    expect(r.latentSha256).toBe(reference);
  });

  it('resumes the shipped trained model (longshot-shapes) after a worker is killed mid-job, with the in-process bits', async () => {
    const s = spec({ model: 'longshot-shapes', prompt: 'a small green square moving right on a gray background', stages: 2, steps: 6 });
    const model = resolveModel(s.model);
    const local = { ...s, stages: 1 };
    const reference = await renderLocal({ spec: local, model, text: await textFor(local, model), id: 'shapes-local', out: path.join(dir, 'shapes-local.mp4') });
    const { r } = await killedMidJob(s, 'shapes-killed');
    expect(r.latentSha256).toBe(reference.latentSha256);
  });

  it('refuses malformed activation streams with the right status and keeps serving other sessions', async () => {
    const s = spec({ stages: 2 });
    const [w] = [...cluster.workers.values()];
    const client = createWorkerClient(w.address);
    const token = 'x'.repeat(32);
    const probeText = new Float32Array(getConfig('tiny').textLen * getConfig('tiny').textDim);
    // The probe session belongs to the job that runs beside it (a grant of that job's run).
    const lease = await leaseAndGrant(redis, cluster.grantKey, w.id, { job: 'beside-probes', stage: 1, layerBegin: 3, layerEnd: 6 });
    await new Promise<void>((resolve, reject) =>
      client.openSession(
        {
          jobId: 'beside-probes',
          sessionId: 'probe.s1',
          token,
          spec: { prompt: s.prompt, frames: s.frames, fps: s.fps, width: s.width, height: s.height, steps: s.steps, guidance: s.guidance, shift: s.shift ?? 0, sampler: s.sampler, block: s.block, context: s.context, stages: 2, seed: s.seed, model: s.model },
          layerBegin: 3,
          layerEnd: 6,
          role: Role.ROLE_TAIL,
          nextAddress: '127.0.0.1:9',
          nextSessionId: 'nowhere',
          nextToken: token,
          wireDtype: toWireDtype('f32'),
          text: { cond: encodePayload(probeText, 'f32'), uncond: encodePayload(probeText, 'f32') },
          resume: false,
          keyPrefix: '',
          payloadScale: 1,
          grant: lease.grant,
          nextDataPlane: undefined,
          prevDataPlane: undefined,
          group: undefined,
          textStored: undefined,
        },
        (err) => (err ? reject(err) : resolve()),
      ),
    );
    const tokens = 2 * (0 + s.block) * 16; // block 0: no prefix, (64/8/2)^2 = 16 tokens per frame
    const timestep = buildSchedule(jobSchedulerConfig(WAN_SCHEDULER_CONFIG, s), s.steps).timesteps[0];
    const goodStep = { iteration: 0, block: 0, step: 0, timestep, prefixFrames: 0, ownFrames: s.block, contextFrames: s.context, height: 8, width: 8 };
    const header = (over: object) => ({ sessionId: 'probe.s1', token, seq: 1, kind: PayloadKind.PAYLOAD_KIND_HIDDEN, step: goodStep, shape: [2, tokens / 2, 64], dtype: toWireDtype('f32'), byteLength: tokens * 64 * 4, transport: DataPlaneTransport.DATA_PLANE_TRANSPORT_GRPC, ncclId: Buffer.alloc(0), ...over });
    const cases: [string, object, number][] = [
      ['unknown session', { sessionId: 'nope' }, grpc.status.NOT_FOUND],
      ['wrong token', { token: 'y'.repeat(32) }, grpc.status.UNAUTHENTICATED],
      ['wrong shape', { shape: [2, tokens / 2, 63], byteLength: tokens * 63 * 4 }, grpc.status.INVALID_ARGUMENT],
      ['byte length', { byteLength: 12 }, grpc.status.INVALID_ARGUMENT],
      ['dtype', { dtype: toWireDtype('bf16'), byteLength: tokens * 64 * 2 }, grpc.status.INVALID_ARGUMENT],
      ['block-step the job does not have', { step: { ...goodStep, block: 99 } }, grpc.status.INVALID_ARGUMENT],
      ['velocity into a tail', { kind: PayloadKind.PAYLOAD_KIND_VELOCITY }, grpc.status.INVALID_ARGUMENT],
      // Stage groups (docs/parallelism.md): a session without one has no inboxes and takes no group tensors.
      ['a group tensor into a stage without a group', { kind: PayloadKind.PAYLOAD_KIND_GROUP, shape: [tokens * 64] }, grpc.status.INVALID_ARGUMENT],
      ['the inbox of a group member this session is not', { sessionId: 'probe.s1/from0', kind: PayloadKind.PAYLOAD_KIND_GROUP, shape: [tokens * 64] }, grpc.status.NOT_FOUND],
      ['a transport this build does not know', { transport: 7 }, grpc.status.INVALID_ARGUMENT],
    ];
    // A real job runs on the same workers while the bad streams arrive.
    const job = distributed(s, 'beside-probes');
    for (const [name, over, code] of cases) {
      expect(await sendOne(client, header(over), tokens * 64 * 4), name).toBe(code);
    }
    expect((await job).latentSha256).toBe(await inProcess({ ...s, stages: 1 }));
    await lease.release();
    client.close();
  });
});

/** Opens an Activations stream, sends one header (and the bytes), returns the status it ends with. */
function sendOne(client: WorkerClient, header: object, bytes: number): Promise<number> {
  return new Promise((resolve) => {
    const call = client.activations();
    call.on('data', (_: ActivationAck) => undefined);
    call.on('error', (e: grpc.ServiceError) => resolve(e.code));
    call.on('status', (st: grpc.StatusObject) => resolve(st.code));
    call.write({ frame: { $case: 'header', value: header } } as ActivationFrame);
    call.write({ frame: { $case: 'chunk', value: { seq: 1, offset: 0, data: encodePayload(new Float32Array(bytes / 4), 'f32') } } } as ActivationFrame);
    call.end();
  });
}

/** A cluster of its own (two workers unless told), with these worker flags, for the describe block that calls it. */
function ownCluster(name: string, workerArgs: string[], workers = 2): { cluster: LocalCluster; redis: Redis } {
  const own = {} as { cluster: LocalCluster; redis: Redis };
  beforeAll(async () => {
    own.cluster = await LocalCluster.start({ workers, name, workerArgs });
    own.redis = new Redis(own.cluster.redisUrl);
  });
  afterAll(async () => {
    own.redis?.disconnect();
    await own.cluster?.stop();
  });
  return own;
}

/**
 * Runs `s` on the workers of `on` (heads committing every `checkpointEvery` iterations) and
 * SIGKILLs the middle (or last) stage's worker a third of the way through.
 */
async function killedMidJobOn(
  s: JobSpec,
  id: string,
  on: { cluster: LocalCluster; redis: Redis },
  checkpointEvery: number,
): Promise<{ r: Awaited<ReturnType<typeof distributed>>; killed: string; failovers: Failover[] }> {
  const plan = planJob(s);
  let killed: string | null = null;
  let firstAttempt: string[] = [];
  const failovers: Failover[] = [];
  const r = await distributed(
    s,
    id,
    {
    onFailover: (f) => void failovers.push(f),
    onAttempt: (workers) => {
      if (firstAttempt.length === 0) firstAttempt = workers;
    },
    onBlockStep: (n) => {
      if (killed || n < plan.blockSteps / 3) return;
      // A stage after the head: the head only notices through the lost stream or the registry.
      killed = firstAttempt[Math.min(1, firstAttempt.length - 1)];
      on.cluster.kill(killed, 'SIGKILL');
    },
  },
  on,
);
  expect(killed).not.toBeNull();
  const bound = checkpointEvery * Math.min(plan.blocks, s.steps);
  console.log(`${id}: killed ${killed} (SIGKILL) mid-job; attempts ${r.attempts.length}, resumed at iteration ${r.attempts[1]?.startIteration}; block-steps redone ${r.recomputedBlockSteps} (bound: ${checkpointEvery} iteration(s) = ${bound})`);
  expect(r.attempts.length).toBeGreaterThanOrEqual(2);
  expect(r.workers).not.toContain(killed);
  // At most checkpointEvery iterations' block-steps (each the queue length) are applied twice,
  // resumed from a committed boundary.
  expect(r.recomputedBlockSteps).toBeLessThanOrEqual(bound);
  expect(r.attempts[1].startIteration).toBeGreaterThan(0);
  expect(r.attempts[1].startIteration % checkpointEvery).toBe(0);
  return { r, killed: killed!, failovers };
}

describe('--checkpoint-every 3', () => {
  // Three workers: a K = 2 job that loses one still finds a replacement.
  const sparse = ownCluster('sparse-checkpoints', ['--checkpoint-every', '3'], 3);

  /** Checkpoint piece bytes the heads of `on` stored and skipped so far. */
  async function pieceBytes(on: { cluster: LocalCluster }): Promise<{ stored: number; skipped: number }> {
    const total = { stored: 0, skipped: 0 };
    for (const w of on.cluster.workers.values()) {
      const page = await (await fetch(`http://${w.metricsAddress}/metrics`)).text();
      for (const outcome of ['stored', 'skipped'] as const) total[outcome] += metricValue(page, `longshot_checkpoint_piece_bytes_total{outcome="${outcome}"}`);
    }
    return total;
  }

  it('gives the same latents, stores only the pieces a commit names, and the last manifest leaves none behind', async () => {
    const s = spec({ stages: 2 });
    const r = await distributed(s, 'sparse', {}, sparse);
    expect(r.latentSha256).toBe(await inProcess(s));
    // 11 iterations, commits after 3, 6, 9 and 11: the pieces of iterations 0, 3 and 6 (computed
    // more than two iterations before the next commit, UniPC order 2) are never stored.
    const bytes = await pieceBytes(sparse);
    expect(bytes.skipped).toBeGreaterThan(0);
    expect(bytes.stored).toBeGreaterThan(bytes.skipped);
    // The final manifest (no queued block left) names no piece: its commit deleted the rest.
    expect(await sparse.redis.keys(`${jobPrefix('sparse')}:piece:*`)).toEqual([]);
    expect(await sparse.redis.exists(sparse.cluster.keys.checkpointKey(jobPrefix('sparse')))).toBe(1);
    // Committing every iteration (the default, the shared cluster) skips none.
    expect((await pieceBytes({ cluster })).skipped).toBe(0);
  });

  it('resumes a job whose worker is killed mid-job from a committed boundary, with the in-process bits', async () => {
    const s = spec({ stages: 2, frames: 4 * (24 - 1) + 1, steps: 8 });
    const { r } = await killedMidJobOn(s, 'sparse-killed', sparse, 3);
    expect(r.latentSha256).toBe(await inProcess({ ...s, stages: 1 }));
  });
});

describe('--checkpoint-every 600s (a cadence by time)', () => {
  const timed = ownCluster('timed-checkpoints', ['--checkpoint-every', '600s'], 1);

  it('commits the first boundary, then none until the end at this pace, with the same latents and nothing left behind', async () => {
    const s = spec({ stages: 1, frames: 4 * (24 - 1) + 1, steps: 8 });
    const plan = planJob(s);
    const r = await distributed(s, 'timed', {}, timed);
    expect(r.latentSha256).toBe(await inProcess(s));
    const page = await (await fetch(`http://${[...timed.cluster.workers.values()][0].metricsAddress}/metrics`)).text();
    const commits = metricValue(page, 'longshot_checkpoints_written_total');
    console.log(`timed: ${plan.iterations} iterations, ${commits} commits; piece bytes stored ${metricValue(page, 'longshot_checkpoint_piece_bytes_total{outcome="stored"}')}, skipped ${metricValue(page, 'longshot_checkpoint_piece_bytes_total{outcome="skipped"}')}`);
    // Every boundary until the first iteration has measured the pace (the iterations already
    // started by then keep theirs), then 600 s of work: more than this job's whole run.
    expect(commits).toBeGreaterThanOrEqual(2);
    expect(commits).toBeLessThan(plan.iterations / 2);
    expect(metricValue(page, 'longshot_checkpoint_piece_bytes_total{outcome="skipped"}')).toBeGreaterThan(0);
    expect(await timed.redis.keys(`${jobPrefix('timed')}:piece:*`)).toEqual([]);
    expect(await timed.redis.exists(timed.cluster.keys.checkpointKey(jobPrefix('timed')))).toBe(1);
  });
});

// Two hosts, as their host ids say: 'auto' takes TCP both ways, and neither worker allocates
// shared memory for what it receives (no sender on its host would write into it).
describe('--data-plane auto on two hosts', () => {
  const apart = {} as { cluster: LocalCluster; redis: Redis };
  beforeAll(async () => {
    apart.cluster = await LocalCluster.start({ workers: 1, name: 'hosts-apart', workerArgs: ['--host-id', 'e2e-host-a'] });
    await apart.cluster.spawnWorker({ args: ['--host-id', 'e2e-host-b'] });
    apart.redis = new Redis(apart.cluster.redisUrl);
  });
  afterAll(async () => {
    apart.redis?.disconnect();
    await apart.cluster?.stop();
  });

  it('gives the same latents over TCP, with no shared destination allocated', async () => {
    const s = spec({ stages: 2 });
    const r = await distributed(s, 'hosts-apart', {}, apart);
    expect(r.latentSha256).toBe(await inProcess(s));
    expect(r.hops.map((h) => h.transport)).toEqual(['tcp', 'tcp']);
    let [tcp, shared] = [0, 0];
    for (const w of apart.cluster.workers.values()) {
      const page = await (await fetch(`http://${w.metricsAddress}/metrics`)).text();
      tcp += metricValue(page, 'longshot_dataplane_bytes_total{transport="tcp"}');
      shared += metricValue(page, 'longshot_dataplane_shared_destination_bytes_total');
    }
    expect(tcp).toBeGreaterThan(0);
    expect(shared).toBe(0);
  });
});

// The other transports, forced: the gRPC fallback and native TCP (what hosts apart use).
describe.each(['grpc', 'tcp'] as const)('--data-plane %s', (mode) => {
  // Registered in one NVLink domain: the hops' modelled links are NVLink whatever moves the bytes.
  const forced = ownCluster(`${mode}-only`, ['--data-plane', mode, '--nvlink-domain', `e2e-${mode}`, '--link-gbps', '100']);

  it('gives the same latents with every tensor byte on that transport, and counts them under it', async () => {
    const s = spec({ stages: 2 });
    const r = await distributed(s, `${mode}-only`, {}, forced);
    expect(r.latentSha256).toBe(await inProcess(s));
    const nvlink = { kind: 'nvlink', ...getProfile(DEFAULT_PLANNER_PROFILE).links.nvlink, seconds: expect.any(Number) };
    expect(r.hops).toEqual([
      { from: 0, to: 1, transport: mode, link: nvlink },
      { from: 1, to: 0, transport: mode, link: nvlink },
    ]);
    expect(r.placement.map((p) => p.nvlinkDomain)).toEqual([`e2e-${mode}`, `e2e-${mode}`]);
    const bytes = { grpc: 0, tcp: 0, shm: 0, nccl: 0 };
    for (const w of forced.cluster.workers.values()) {
      const page = await (await fetch(`http://${w.metricsAddress}/metrics`)).text();
      for (const t of HOP_TRANSPORTS) {
        bytes[t] += metricValue(page, `longshot_dataplane_bytes_total{transport="${t}"}`);
      }
    }
    expect(bytes[mode]).toBeGreaterThan(0);
    expect(HOP_TRANSPORTS.filter((t) => t !== mode).map((t) => bytes[t])).toEqual([0, 0, 0]);
  });
});
