/**
 * Stage groups across worker processes (docs/parallelism.md): K stages of Ulysses and/or CFG
 * parallel groups of real worker processes (gRPC, data plane, Redis leases and grants) give the
 * in-process single-stage latents, and a group member SIGKILLed mid-job fails over to the same bits.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobPrefix } from '@longshot/cache';
import { cpuBackend } from '@longshot/engine';
import { assembleLatents, latentSha256 } from '@longshot/media';
import { getConfig, loadStageWeights, Stage, writeSeededModel, type ModelConfig, type StageLayout, type TextEmbeddings } from '@longshot/model';
import { BlockQueue, runDistributedJob, runLocalPipeline, type DistributedResult } from '@longshot/pipeline';
import { normalizeSpec, partitionLayers, planJob, type JobSpec } from '@longshot/planner';
import { WAN_SCHEDULER_CONFIG } from '@longshot/sampler';
import { Rng } from '@longshot/random';
import { createWorkerClient, encodePayload, Role, toWireDtype, type SessionEvent, type WorkerClient } from '@longshot/transport';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { leaseAndGrant } from './grants';

/** 'tiny' widened to 6 heads of 12: three Ulysses members hold two heads each. */
const SIX_HEADS: ModelConfig = { ...getConfig('tiny'), name: 'tiny-6-heads', dim: 72, heads: 6, layers: 3 };
const SIX_HEADS_FILE = 'tiny-6-heads.safetensors';
const TINY_FILE = 'tiny.safetensors';

let dir: string;
let cluster: LocalCluster;
let redis: Redis;

/** 6 blocks of 2 latent frames, context 1 (windows of 2 and 3 frames of 16 tokens), 5 steps. */
const spec = (model: string, stages: number): JobSpec =>
  normalizeSpec({ prompt: 'a kite over dunes', width: 64, height: 64, frames: 4 * (12 - 1) + 1, block: 2, context: 1, steps: 5, seed: 3, model, stages });

function textFor(config: ModelConfig): TextEmbeddings {
  const rng = Rng.from(7, 'parallelism text');
  const n = config.textLen * config.textDim;
  return { cond: rng.fillNormal(new Float32Array(n)), uncond: rng.fillNormal(new Float32Array(n)) };
}

const digest = (s: JobSpec, config: ModelConfig, blocks: Float32Array[]): string => latentSha256(assembleLatents(blocks, config.latentChannels, s.block, planJob(s).latentHeight * planJob(s).latentWidth));

/** One stage holding every layer, in this process, from the same model file the workers load. */
async function inProcess(s: JobSpec, config: ModelConfig, file: string): Promise<string> {
  const range = partitionLayers(config.layers, 1)[0];
  const stage = new Stage({ config, range, weights: loadStageWeights(path.join(dir, file), range).weights, backend: cpuBackend(), text: textFor(config), guidance: s.guidance });
  const blocks: Float32Array[] = [];
  await runLocalPipeline(new BlockQueue(s, planJob(s), { channels: config.latentChannels, scheduler: WAN_SCHEDULER_CONFIG }), [stage], { onBlockFinished: (b) => void blocks.push(b.latents) });
  return digest(s, config, blocks);
}

async function distributed(s: JobSpec, config: ModelConfig, layout: StageLayout, id: string, hooks: { onBlockStep?: (n: number) => void; onAttempt?: (workers: string[]) => void } = {}): Promise<DistributedResult & { latentSha256: string }> {
  const blocks: Float32Array[] = [];
  let steps = 0;
  const run = await runDistributedJob(
    { jobId: id, spec: s, model: config, keyPrefix: jobPrefix(id), text: textFor(config), layout },
    {
      ...cluster.driver(redis, id),
      onBlock: (i, latents) => void (blocks[i] = latents),
      onBlockStep: () => hooks.onBlockStep?.(++steps),
      onAttempt: (a) => hooks.onAttempt?.(a.workers.map((w) => w.id)),
      livenessIntervalMs: 200,
    },
  );
  return { ...run, latentSha256: digest(s, config, blocks) };
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-parallelism-'));
  writeSeededModel(path.join(dir, SIX_HEADS_FILE), SIX_HEADS, 0);
  writeSeededModel(path.join(dir, TINY_FILE), getConfig('tiny'), 0);
  cluster = await LocalCluster.start({ workers: 6, respawn: true, name: 'e2e-groups', modelsDir: dir });
  redis = new Redis(cluster.redisUrl);
});

afterAll(async () => {
  redis?.disconnect();
  await cluster?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('stage groups across worker processes give the in-process bits', () => {
  const cases: { name: string; config: ModelConfig; file: string; stages: number; layout: StageLayout }[] = [
    { name: 'K=2 x U=2', config: getConfig('tiny'), file: TINY_FILE, stages: 2, layout: { ulysses: 2, cfgParallel: false } },
    { name: 'K=1 x U=3 (6 heads)', config: SIX_HEADS, file: SIX_HEADS_FILE, stages: 1, layout: { ulysses: 3, cfgParallel: false } },
    { name: 'K=3 x CFG', config: getConfig('tiny'), file: TINY_FILE, stages: 3, layout: { ulysses: 1, cfgParallel: true } },
  ];
  it.each(cases)('$name', async ({ name, config, file, stages, layout }) => {
    const s = spec(file, stages);
    const reference = await inProcess(s, config, file);
    const r = await distributed(s, config, layout, `groups-${name.replace(/[^a-z0-9]+/gi, '-')}`);
    expect(r.latentSha256).toBe(reference);
    expect(r.layout).toEqual({ stages, ...layout });
    const workers = stages * layout.ulysses * (layout.cfgParallel ? 2 : 1);
    expect(new Set(r.workers).size).toBe(workers);
    expect(r.recomputedBlockSteps).toBe(0);
  });

  it("a member whose forward throws fails its group's rank 0 at once with the member's error", async () => {
    // K=1 x U=2 opened by hand on two real workers: rank 1 is opened for 48x48 frames, rank 0 (the
    // head) for 64x64, so the window rank 0 sends passes rank 1's admission but not its forward.
    // Without the member's failure report rank 0 would wait for rank 1's exchange until a stall.
    const config = getConfig('tiny');
    const s = spec(TINY_FILE, 1);
    const [w0, w1] = [...cluster.workers.values()];
    const job = 'member-fails';
    const clients: WorkerClient[] = [w0, w1].map((w) => createWorkerClient(w.address));
    const leases = await Promise.all([w0, w1].map((w) => leaseAndGrant(redis, cluster.grantKey, w.id, { job, stage: 0, layerBegin: 0, layerEnd: config.layers })));
    const members = [w0, w1].map((w, r) => ({ address: w.address, sessionId: `${job}.s0${r === 0 ? '' : `.m${r}`}`, token: `${'t'.repeat(23)}${r}`, dataPlane: undefined }));
    const text = textFor(config);
    const open = (rank: number, height: number) =>
      new Promise<void>((resolve, reject) =>
        clients[rank].openSession(
          {
            jobId: job,
            sessionId: members[rank].sessionId,
            token: members[rank].token,
            spec: { prompt: s.prompt, frames: s.frames, fps: s.fps, width: s.width, height, steps: s.steps, guidance: s.guidance, shift: s.shift ?? 0, sampler: s.sampler, block: s.block, context: s.context, stages: 1, seed: s.seed, model: s.model },
            layerBegin: 0,
            layerEnd: config.layers,
            role: Role.ROLE_HEAD_TAIL,
            nextAddress: '',
            nextSessionId: '',
            nextToken: '',
            nextDataPlane: undefined,
            prevDataPlane: undefined,
            wireDtype: toWireDtype('f32'),
            text: { cond: encodePayload(text.cond, 'f32'), uncond: encodePayload(text.uncond, 'f32') },
            resume: false,
            keyPrefix: '',
            payloadScale: 1,
            grant: leases[rank].grant,
            group: { ulysses: 2, cfgParallel: false, rank, members },
            textStored: undefined,
          },
          (err) => (err ? reject(err) : resolve()),
        ),
      );
    await open(1, 48);
    await open(0, s.height);
    const failed = await new Promise<string>((resolve, reject) => {
      const call = clients[0].watchSession({ sessionId: members[0].sessionId, token: members[0].token });
      call.on('data', (e: SessionEvent) => {
        if (e.event?.$case === 'failed') resolve(e.event.value.message);
        if (e.event?.$case === 'done') reject(new Error('the job finished'));
      });
      call.on('error', (e: grpc.ServiceError) => reject(e));
    });
    expect(failed).toMatch(new RegExp(`^stage group member 1 \\(${w1.address.replace(/\./g, '\\.')}\\) failed: .+`));
    await Promise.all(clients.map((c, r) => new Promise<void>((resolve) => c.closeSession({ sessionId: members[r].sessionId, token: members[r].token }, () => resolve()))));
    await Promise.all(leases.map((l) => l.release()));
    clients.forEach((c) => c.close());
  });

  it('a Ulysses member SIGKILLed mid-job: failover, same bits', async () => {
    const config = getConfig('tiny');
    const s = spec(TINY_FILE, 2);
    const layout = { ulysses: 2, cfgParallel: false };
    const reference = await inProcess(s, config, TINY_FILE);
    const plan = planJob(s);
    let first: string[] = [];
    let killed: string | null = null;
    const r = await distributed(s, config, layout, 'groups-kill', {
      onAttempt: (w) => {
        if (first.length === 0) first = w;
      },
      onBlockStep: (n) => {
        if (killed || n < plan.blockSteps / 3) return;
        // Rank 1 of the second stage's group: no hop to another stage, only its group's exchanges.
        killed = first[3];
        cluster.kill(killed, 'SIGKILL');
      },
    });
    expect(killed).not.toBeNull();
    expect(r.attempts.length).toBeGreaterThanOrEqual(2);
    expect(r.attempts[0].error).not.toBeNull();
    expect(r.workers).not.toContain(killed);
    expect(r.latentSha256).toBe(reference);
  });
});
