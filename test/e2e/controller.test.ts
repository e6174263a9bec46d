import { WAN_SCHEDULER_CONFIG } from '@longshot/sampler';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_KEYS as keys } from '@longshot/cache';
import { cpuBackend } from '@longshot/engine';
import { probeVideo, Stitcher } from '@longshot/media';
import { encodePrompt, getConfig, modelBlockDecoder, resolveModel, seededStageWeights, Stage, writeSeededPipeline } from '@longshot/model';
import { BlockQueue, FAILOVER_REASONS, runLocalPipeline } from '@longshot/pipeline';
import { normalizeSpec, partitionLayers, planJob, type JobRequest, type JobSpec } from '@longshot/planner';
import { HOP_TRANSPORTS } from '@longshot/transport';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { queuePrefix } from '../../apps/controller/src/queue';
import { REFUSAL_REASONS } from '../../apps/worker/src/metrics';
import { SESSION_ERROR_CODES } from '../../apps/worker/src/session-error';
import { metricValue } from './metrics';
import { request, waitFor } from './http';

let dir: string;
let cluster: LocalCluster;
let redis: Redis;
let queueConnection: Redis;
let queue: Queue;

const base = { prompt: 'a lighthouse in a storm', size: '64x64', block: 2, context: 1, steps: 6, model: 'tiny', seed: 11 };
const framesFor = (latentFrames: number): number => 4 * (latentFrames - 1) + 1;

/** The single-process result: stage objects chained in this process (as test/e2e/pipeline.test.ts does). */
async function inProcess(req: JobRequest): Promise<string> {
  return (await inProcessFingerprints(req)).latentSha256;
}

async function inProcessFingerprints(req: JobRequest): Promise<{ latentSha256: string; frameSha256: string }> {
  const [width, height] = String((req as { size?: string }).size ?? '256x256').split('x').map(Number);
  const s: JobSpec = normalizeSpec({ ...req, size: undefined, width, height, stages: 1 } as JobRequest);
  const config = getConfig(s.model);
  const plan = planJob(s);
  const text = { cond: encodePrompt(s.prompt, config), uncond: encodePrompt('', config) };
  const stages = partitionLayers(config.layers, 1).map((range) => new Stage({ config, range, weights: seededStageWeights(config, range, 0), backend: cpuBackend(), text, guidance: s.guidance }));
  const geometry = { frames: s.frames, fps: s.fps, width: s.width, height: s.height, block: s.block, blocks: plan.blocks, latentChannels: 16 };
  const stitcher = new Stitcher(path.join(dir, `local-${s.frames}-${s.steps}.mp4`), geometry, modelBlockDecoder(resolveModel(s.model), { block: s.block, latentHeight: plan.latentHeight, latentWidth: plan.latentWidth }, cpuBackend()));
  await runLocalPipeline(new BlockQueue(s, plan, { channels: config.latentChannels, scheduler: WAN_SCHEDULER_CONFIG }), stages, { onBlockFinished: async (b) => void (await stitcher.add(b.index, b.latents)) });
  return stitcher.finish();
}

const controllerUrl = (i = 0): string => [...cluster.controllers.values()][i].url;

const api = (method: string, url: string, body?: unknown, headers: Record<string, string> = {}) =>
  request(controllerUrl(), method, url, typeof body === 'string' ? { raw: body, headers: { 'content-type': 'application/json', ...headers } } : { body, headers });


const job = async (id: string, base = controllerUrl()): Promise<any> => (await api('GET', `${base}/v1/videos/${id}`)).json;
const finished = (id: string, timeoutMs = 120_000, base = controllerUrl()) =>
  waitFor(`${id} to finish`, async () => {
    const j = await job(id, base);
    return ['succeeded', 'failed', 'canceled'].includes(j.status) ? j : null;
  }, timeoutMs);

/** Reads a job's SSE stream to its end (the terminal event closes it). */
async function sse(url: string): Promise<{ id: string; event: string; data: any }[]> {
  const res = await fetch(url, { headers: { accept: 'text/event-stream' } });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
  const text = await res.text();
  return text
    .split('\n\n')
    .filter((chunk) => chunk.includes('event: '))
    .map((chunk) => {
      const field = (name: string) => chunk.split('\n').find((l) => l.startsWith(`${name}: `))?.slice(name.length + 2) ?? '';
      return { id: field('id'), event: field('event'), data: JSON.parse(field('data')) };
    });
}

const queueCounts = () => queue.getJobCounts('waiting', 'prioritized', 'delayed', 'active', 'completed', 'failed');

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-controller-'));
  fs.mkdirSync(path.join(dir, 'models'));
  cluster = await LocalCluster.start({
    auth: 'none', // the API without identities; test/e2e/auth.test.ts covers keys
    workers: 3,
    // Models clients may name besides the built-ins: the entries of this directory.
    modelsDir: path.join(dir, 'models'),
    controllers: 2,
    respawn: true,
    name: 'ctl',
    controllerEnv: {
      LONGSHOT_RESULTS_DIR: path.join(dir, 'results'),
      LONGSHOT_MAX_FRAMES: '201',
      // Short locks and leases so a takeover after a replica dies happens within seconds.
      LONGSHOT_JOB_LOCK_MS: '3000',
      LONGSHOT_JOB_STALLED_MS: '1000',
      LONGSHOT_LEASE_MS: '3000',
      LONGSHOT_WAIT_FOR_WORKERS_MS: '300',
      LONGSHOT_LIVENESS_MS: '200',
    },
  });
  redis = new Redis(cluster.redisUrl);
  queueConnection = redis.duplicate();
  queue = new Queue('render', { connection: queueConnection, prefix: queuePrefix() });
});

afterAll(async () => {
  await queue?.close();
  // BullMQ leaves a connection it was given open: closed here, before Redis stops, it does not
  // reconnect to a stopped server and report ECONNREFUSED with no listener.
  queueConnection?.disconnect();
  redis?.disconnect();
  await cluster?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('controller', () => {
  it('exports every counter of known label values at 0 before its first event (fresh controller and worker)', async () => {
    const zero = (page: string, sample: string) => expect(page.split('\n'), sample).toContain(`${sample} 0`);
    for (const c of cluster.controllers.values()) {
      const page = await (await fetch(`${c.url}/metrics`)).text();
      for (const reason of FAILOVER_REASONS) zero(page, `longshot_failovers_total{reason="${reason}"}`);
      for (const where of ['http', 'sse', 'reconciler']) zero(page, `longshot_redis_unavailable_total{where="${where}"}`);
      zero(page, 'longshot_results_store_failures_total{code="ENOSPC"}');
    }
    for (const w of cluster.workers.values()) {
      const page = await (await fetch(`http://${w.metricsAddress}/metrics`)).text();
      for (const result of ['hit', 'miss']) zero(page, `longshot_text_embedding_cache_total{result="${result}"}`);
      for (const reason of REFUSAL_REASONS) zero(page, `longshot_worker_refused_calls_total{reason="${reason}"}`);
      for (const code of SESSION_ERROR_CODES) zero(page, `longshot_rejected_tensors_total{code="${code}"}`);
      for (const transport of HOP_TRANSPORTS) zero(page, `longshot_dataplane_bytes_total{transport="${transport}"}`);
      zero(page, 'longshot_dataplane_shared_destination_bytes_total');
      for (const direction of ['sent', 'received']) zero(page, `longshot_group_failure_reports_total{direction="${direction}"}`);
    }
  });

  it('runs three jobs submitted at once with K = 1, 2, 3 to the single-process result', async () => {
    const req = { ...base, frames: framesFor(8) };
    const reference = await inProcess(req);
    const started = Date.now();
    const submitted = await Promise.all([1, 2, 3].map((stages) => api('POST', '/v1/videos', { ...req, stages })));
    for (const s of submitted) {
      expect(s.status).toBe(202);
      expect(s.json.status).toBe('queued');
      expect(s.json.urls.events).toBe(`/v1/videos/${s.json.id}/events`);
    }
    // SSE from the other replica than the one that accepted the job: events live in Redis.
    const streams = submitted.map((s) => sse(`${controllerUrl(1)}${s.json.urls.events}`));
    const results = await Promise.all(submitted.map((s) => finished(s.json.id)));
    const plan = planJob(normalizeSpec({ ...req, size: undefined, width: 256, height: 256 } as JobRequest));
    for (const [i, r] of results.entries()) {
      expect(r.status, JSON.stringify(r.error)).toBe('succeeded');
      expect(r.stages).toBe(i + 1);
      expect(r.result.latentSha256).toBe(reference);
      // Pinned at the start, reported in the result: the workers' numerics fingerprint.
      expect(r.result.numerics).toMatch(/^cpu:simd=\w+:storage=f32:build=[0-9a-f]{12}$/);
      expect(r.numerics).toBe(r.result.numerics);
      // The solver and the shift the job used: Wan's UniPC and the scheduler's flow_shift.
      expect([r.result.sampler, r.result.shift]).toEqual(['unipc', 3]);
      // Each hop's transport: workers of one host on --data-plane auto share memory.
      const K = i + 1;
      // Their modelled link: one host, no NVLink domain.
      expect(r.result.hops).toEqual(K === 1 ? [] : Array.from({ length: K }, (_, k) => ({ from: k, to: (k + 1) % K, transport: 'shm', link: expect.objectContaining({ kind: 'host' }) })));
      expect(r.result.placement.map((p: any) => p.worker)).toEqual(r.workers);
      expect(r.result.placement.every((p: any) => p.host === r.result.placement[0].host && p.host !== null && p.nvlinkDomain === null && p.gpu === null)).toBe(true);
      expect(r.progress.blocksDone).toBe(plan.blocks);
      const events = await streams[i];
      expect(events[0].event).toBe('queued');
      expect(events.some((e) => e.event === 'started')).toBe(true);
      expect(events.filter((e) => e.event === 'block').map((e) => e.data.index)).toEqual([...Array(plan.blocks).keys()]);
      expect(events.some((e) => e.event === 'progress')).toBe(true);
      expect(events.at(-1)!.event).toBe('succeeded');
      expect(events.at(-1)!.data.result.latentSha256).toBe(reference);

      const content = await fetch(`${controllerUrl()}${r.result.contentUrl}`);
      expect(content.status).toBe(200);
      expect(content.headers.get('accept-ranges')).toBe('bytes');
      const file = path.join(dir, `${r.id}.mp4`);
      fs.writeFileSync(file, Buffer.from(await content.arrayBuffer()));
      expect((await probeVideo(file)).frames).toBe(req.frames);
      const range = await fetch(`${controllerUrl()}${r.result.contentUrl}`, { headers: { range: 'bytes=0-99' } });
      expect(range.status).toBe(206);
      expect(range.headers.get('content-range')).toMatch(/^bytes 0-99\/\d+$/);
      expect((await range.arrayBuffer()).byteLength).toBe(100);
      const preview = await fetch(`${controllerUrl()}${events.find((e) => e.event === 'block')!.data.previewUrl}`);
      expect(preview.headers.get('content-type')).toMatch(/image\/jpeg/);
      expect(Buffer.from(await preview.arrayBuffer()).subarray(0, 2)).toEqual(Buffer.from([0xff, 0xd8]));
    }
    console.log(`three jobs (K = 1, 2, 3) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    const listed = await api('GET', '/v1/videos?status=succeeded&limit=2');
    expect(listed.json.items).toHaveLength(2);
    expect(listed.json.nextCursor).not.toBeNull();
    const metrics = await (await fetch(`${controllerUrl()}/metrics`)).text();
    expect(metrics).toMatch(/longshot_queue_jobs\{state="completed"\} \d+/);
    expect(metrics).toMatch(/longshot_workers_registered 3/);
    // Every job's set-up is observed by the replica that drove it.
    let setups = 0;
    for (const c of cluster.controllers.values()) setups += metricValue(await (await fetch(`${c.url}/metrics`)).text(), 'longshot_job_setup_seconds_count');
    expect(setups).toBeGreaterThanOrEqual(3);
    let [shared, direct, destinations] = [0, 0, 0];
    for (const w of cluster.workers.values()) {
      const page = await (await fetch(`http://${w.metricsAddress}/metrics`)).text();
      shared += metricValue(page, 'longshot_dataplane_bytes_total{transport="shm"}');
      direct += metricValue(page, 'longshot_dataplane_direct_bytes_total');
      destinations += metricValue(page, 'longshot_dataplane_shared_destination_bytes_total');
    }
    expect(shared).toBeGreaterThan(0);
    // Stages whose previous stage is on this host received into shared memory they allocated.
    expect(destinations).toBeGreaterThan(0);
    // Every tensor landed in a stage's pooled buffer, in shared memory: the sender wrote each straight there.
    expect(direct).toBe(shared);
    expect(metrics).toMatch(/longshot_http_request_duration_seconds_count\{method="POST",route="\/v1\/videos",status="202"\}/);
  });

  it('runs stage groups asked for over the API, and the layout the planner picks, to the single-process result', async () => {
    const req = { ...base, frames: framesFor(4) };
    const reference = await inProcess(req);
    // Asked for: one stage of two Ulysses workers. Left to the planner with CFG parallel fixed: K
    // from the cost model and the free workers (3 at most, so one stage of two).
    const asked = await api('POST', '/v1/videos', { ...req, stages: 1, ulysses: 2 });
    const planned = await api('POST', '/v1/videos', { ...req, cfgParallel: true });
    expect([asked.status, planned.status]).toEqual([202, 202]);
    const [a, p] = await Promise.all([finished(asked.json.id), finished(planned.json.id)]);
    for (const [r, layout] of [
      [a, { stages: 1, ulysses: 2, cfgParallel: false }],
      [p, { stages: 1, ulysses: 1, cfgParallel: true }],
    ] as const) {
      expect(r.status, JSON.stringify(r.error)).toBe('succeeded');
      expect(r.result.latentSha256).toBe(reference);
      expect(r.result.layout).toEqual(layout);
      expect([r.stages, r.layout]).toEqual([layout.stages, { ulysses: layout.ulysses, cfgParallel: layout.cfgParallel }]);
      // Both members of the one group, rank 0 first.
      expect(r.workers).toHaveLength(2);
      expect(r.result.placement.map((m: any) => [m.stage, m.worker])).toEqual(r.workers.map((w: string) => [0, w]));
      expect(r.result.hops).toEqual([]);
    }
    expect(a.spec).toMatchObject({ autoStages: false, stages: 1, ulysses: 2, cfgParallel: false });
    expect(p.spec).toMatchObject({ autoStages: true, stages: 1, ulysses: null, cfgParallel: true });
  });

  it("encodes a pipeline directory's prompts once, on a worker, never on the controller; repeats hit the Redis cache", async () => {
    const pipe = path.join(dir, 'models', 'pipe');
    writeSeededPipeline(pipe, { config: getConfig('tiny'), seed: 0, shards: 2, dtype: 'F32' });
    const workerMetric = async (name: string): Promise<number> => {
      let sum = 0;
      for (const w of cluster.workers.values()) sum += metricValue(await (await fetch(`http://${w.metricsAddress}/metrics`)).text(), name);
      return sum;
    };
    const misses = () => workerMetric('longshot_text_embedding_cache_total{result="miss"}');
    const hits = () => workerMetric('longshot_text_embedding_cache_total{result="hit"}');
    const encodes = () => workerMetric('longshot_umt5_encodes_total');
    const [m0, h0, e0] = [await misses(), await hits(), await encodes()];
    const req = { ...base, model: 'pipe', frames: framesFor(4), negativePrompt: 'blurry, dark' };
    const first = await finished((await api('POST', '/v1/videos', { ...req, stages: 1 })).json.id);
    expect(first.status, JSON.stringify(first.error)).toBe('succeeded');
    // One miss: prompt and negative prompt encoded by umT5 on a worker, two forward passes.
    expect(await misses()).toBe(m0 + 1);
    expect(await encodes()).toBe(e0 + 2);
    expect(await redis.keys(`${keys.root}:text-embedding:*`)).not.toHaveLength(0);
    // The same prompts again, other K: from the cache, no encoder run, the same bits.
    const second = await finished((await api('POST', '/v1/videos', { ...req, stages: 2 })).json.id);
    expect(second.status, JSON.stringify(second.error)).toBe('succeeded');
    expect(second.result.latentSha256).toBe(first.result.latentSha256);
    expect(await hits()).toBe(h0 + 1);
    expect(await encodes()).toBe(e0 + 2);
    // Another negative prompt is another conditioning.
    const other = await finished((await api('POST', '/v1/videos', { ...req, negativePrompt: '', stages: 1 })).json.id);
    expect(other.status).toBe('succeeded');
    expect(other.result.latentSha256).not.toBe(first.result.latentSha256);
    expect(await encodes()).toBe(e0 + 4);
    // Neither controller replica ever ran the encoder (the counter is registered there, at 0).
    for (const c of cluster.controllers.values()) {
      const text = await (await fetch(`${c.url}/metrics`)).text();
      expect(text).toMatch(/^longshot_umt5_encodes_total 0$/m);
    }
  });

  it('rejects bad bodies with 400 naming the field and enqueues nothing; honours Idempotency-Key', async () => {
    const before = await queueCounts();
    const listedBefore = (await api('GET', '/v1/videos?limit=100')).json.items.length;
    const bad: [unknown, string][] = [
      [{ ...base, prompt: undefined, frames: 13 }, 'prompt'],
      [{ ...base, frames: -5 }, 'frames'],
      [{ ...base, frames: 401 }, 'frames'],
      [{ ...base, frames: 13, model: 'no-such-model' }, 'model'],
      [{ ...base, frames: '9' }, 'frames'],
      [{ ...base, frames: 13, steps: 2.5 }, 'steps'],
      [{ ...base, frames: 13, colour: 'red' }, 'colour'],
      [{ ...base, frames: 13, stages: 7 }, 'stages'],
      // Layouts: U within the tiny model's 2 heads, no more workers than the 3 that serve it.
      [{ ...base, frames: 13, ulysses: 3 }, 'ulysses'],
      [{ ...base, frames: 13, ulysses: 0 }, 'ulysses'],
      [{ ...base, frames: 13, stages: 2, ulysses: 2 }, 'ulysses'],
      [{ ...base, frames: 13, stages: 2, cfgParallel: true }, 'cfgParallel'],
      [{ ...base, frames: 13, ulysses: 2, cfgParallel: true }, 'ulysses'],
      [{ ...base, frames: 13, cfgParallel: 'yes' }, 'cfgParallel'],
      [{ ...base, frames: 13, priority: 0 }, 'priority'],
      [{ ...base, frames: 13, sampler: 'ddim' }, 'sampler'],
      [{ ...base, frames: 13, negativePrompt: 5 }, 'negativePrompt'],
      [{ ...base, frames: 13, negativePrompt: 'x'.repeat(10_001) }, 'negativePrompt'],
      ['{"prompt": ', 'body'],
    ];
    for (const [body, field] of bad) {
      const r = await api('POST', '/v1/videos', body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.json.error).toBe('invalid_request');
      expect(r.json.field, JSON.stringify(r.json)).toBe(field);
      expect(r.json.message).toBeTruthy();
    }
    expect(await queueCounts()).toEqual(before);
    expect((await api('GET', '/v1/videos?limit=100')).json.items.length).toBe(listedBefore);
    expect((await api('GET', '/v1/videos/00000000-0000-0000-0000-000000000000')).status).toBe(404);

    const body = { ...base, frames: framesFor(4), stages: 1 };
    const first = await api('POST', '/v1/videos', body, { 'Idempotency-Key': 'abc-123' });
    expect(first.status).toBe(202);
    // Same key and body, on the other replica, keys in another order: the same job.
    const reordered = Object.fromEntries(Object.entries(body).reverse());
    const again = await api('POST', `${controllerUrl(1)}/v1/videos`, reordered, { 'Idempotency-Key': 'abc-123' });
    expect(again.status).toBe(200);
    expect(again.json.id).toBe(first.json.id);
    const other = await api('POST', '/v1/videos', { ...body, seed: 12 }, { 'Idempotency-Key': 'abc-123' });
    expect(other.status).toBe(409);
    expect((await finished(first.json.id)).status).toBe('succeeded');
  });

  it('cancels a running job, frees its workers within seconds, and the next queued job starts', async () => {
    const long = await api('POST', '/v1/videos', { ...base, frames: framesFor(48), steps: 8, stages: 3 });
    const next = await api('POST', '/v1/videos', { ...base, frames: framesFor(4), stages: 3 });
    expect(long.status, JSON.stringify(long.json)).toBe(202);
    const id = long.json.id;
    await waitFor('the long job to make progress', async () => {
      const j = await job(id);
      return j.status === 'running' && j.progress.blockStepsDone > 0;
    });
    expect((await job(next.json.id)).status).toBe('queued');
    const leased = (await api('GET', '/v1/workers')).json.items.filter((w: any) => w.lease?.job === id);
    expect(leased).toHaveLength(3);
    // Their topology as registered: one host, CPU workers without an NVLink domain or a link speed.
    expect(leased.map((w: any) => [w.host === leased[0].host && w.host !== null, w.nvlinkDomain, w.gpu, w.linkGbps])).toEqual(leased.map(() => [true, null, null, null]));
    const canceledBefore = metricValue(await (await fetch(`${controllerUrl(1)}/metrics`)).text(), 'longshot_job_duration_seconds_count{status="canceled"}');
    const t0 = Date.now();
    const c = await api('POST', `${controllerUrl(1)}/v1/videos/${id}/cancel`);
    expect(c.status).toBe(200);
    expect(c.json.status).toBe('canceled');
    await waitFor('the canceled job to release its workers', async () => {
      const ws = (await api('GET', '/v1/workers')).json.items;
      return ws.every((w: any) => w.lease?.job !== id);
    }, 10_000);
    const freedIn = Date.now() - t0;
    const n = await waitFor('the next job to start', async () => {
      const j = await job(next.json.id);
      return j.status !== 'queued' ? j : null;
    }, 20_000);
    console.log(`cancel freed the workers in ${freedIn} ms; next job ${n.status} after ${Date.now() - t0} ms`);
    expect(freedIn).toBeLessThan(5000);
    expect((await finished(next.json.id)).status).toBe('succeeded');
    expect((await job(id)).status).toBe('canceled');
    // BullMQ never reports a canceled job as completed: it failed, reason `canceled`.
    const entry = await waitFor('the canceled job to leave active in BullMQ', async () => {
      const j = await queue.getJob(id);
      return j && (await j.getState()) !== 'active' ? j : null;
    }, 20_000);
    expect(await entry.getState()).toBe('failed');
    expect(entry.failedReason).toBe('canceled');
    expect(entry.attemptsMade).toBe(1);
    // Its duration is observed by the replica that took the cancel.
    expect(metricValue(await (await fetch(`${controllerUrl(1)}/metrics`)).text(), 'longshot_job_duration_seconds_count{status="canceled"}')).toBe(canceledBefore + 1);
    expect((await api('POST', `/v1/videos/${id}/cancel`)).status).toBe(409);
    const events = await sse(`${controllerUrl()}/v1/videos/${id}/events`);
    expect(events.at(-1)!.event).toBe('canceled');
  });

  it('decodes on a worker, never on the controller; SIGKILLing the decoding worker mid-job changes no bit', async () => {
    const req = { ...base, size: '128x128', frames: framesFor(16), steps: 8, stages: 2 };
    const reference = await inProcessFingerprints(req);
    const undisturbed = await finished((await api('POST', '/v1/videos', req)).json.id);
    expect(undisturbed.status, JSON.stringify(undisturbed.error)).toBe('succeeded');
    expect(undisturbed.result).toMatchObject(reference);
    const id = (await api('POST', '/v1/videos', { ...req, seed: base.seed })).json.id;
    // Some blocks decoded, more to come: the tail worker decodes them.
    const running = await waitFor('a block to be stitched', async () => {
      const j = await job(id);
      return j.status === 'running' && j.progress.blocksDone >= 1 ? j : null;
    });
    expect(running.progress.blocksDone).toBeLessThan(running.progress.blocks);
    const tail: string = running.workers[running.workers.length - 1];
    cluster.kill(tail, 'SIGKILL');
    const done = await finished(id, 120_000);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    expect(done.workers).not.toContain(tail);
    expect(done.result.frameSha256).toBe(reference.frameSha256);
    expect(done.result.latentSha256).toBe(reference.latentSha256);
    // The decoder ran on workers only: the controllers' counter is registered and stays 0.
    for (const c of cluster.controllers.values()) expect(await (await fetch(`${c.url}/metrics`)).text()).toMatch(/^longshot_vae_decodes_total 0$/m);
    let workerDecodes = 0;
    for (const w of cluster.workers.values()) workerDecodes += metricValue(await fetch(`http://${w.metricsAddress}/metrics`).then((r) => r.text(), () => ''), 'longshot_vae_decodes_total');
    expect(workerDecodes).toBeGreaterThan(0);
  });

  it('counts a worker SIGKILLed while the job computes as a failover and tells SSE clients which worker was lost', async () => {
    const id = (await api('POST', '/v1/videos', { ...base, frames: framesFor(48), steps: 8, stages: 2 })).json.id;
    const running = await waitFor('the job to compute', async () => {
      const j = await job(id);
      return j.status === 'running' && j.progress.blockStepsDone >= 1 ? j : null;
    });
    expect(running.progress.blockStepsDone).toBeLessThan(running.progress.blockSteps);
    const head: string = running.workers[0];
    const failovers = async (): Promise<number> => {
      let sum = 0;
      for (const c of cluster.controllers.values()) {
        const page = await (await fetch(`${c.url}/metrics`)).text();
        sum += FAILOVER_REASONS.reduce((n, reason) => n + metricValue(page, `longshot_failovers_total{reason="${reason}"}`), 0);
      }
      return sum;
    };
    const before = await failovers();
    cluster.kill(head, 'SIGKILL');
    const done = await finished(id, 120_000);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    expect(done.workers).not.toContain(head);
    const events = await sse(`${controllerUrl(1)}/v1/videos/${id}/events`);
    const failover = events.filter((e) => e.event === 'failover');
    expect(failover).toHaveLength(1);
    expect(failover[0].data).toMatchObject({ attempt: 2, lost: [head] });
    expect(FAILOVER_REASONS).toContain(failover[0].data.reason);
    // After the lost attempt's events, before the job's end.
    expect(events.findIndex((e) => e.event === 'failover')).toBeGreaterThan(events.findIndex((e) => e.event === 'started'));
    expect(await failovers()).toBe(before + 1);
  });

  it('finishes a job on the other replica when the one running it is killed, with the same result', async () => {
    // Heavy enough that the pipeline is still running when the owner dies: its sessions close
    // 2 s later, so the rest of the job must be computed by the survivor's run.
    const req = { ...base, size: '256x256', frames: framesFor(40), steps: 12 };
    const reference = await inProcess(req);
    const s = await api('POST', '/v1/videos', { ...req, stages: 2 });
    const id = s.json.id;
    // Mid-pipeline: some block-steps applied, most still to come.
    const running = await waitFor('the job to make progress', async () => {
      const j = await job(id);
      return j.status === 'running' && j.progress.blockStepsDone >= 10 ? j : null;
    });
    const owner: string = running.owner;
    expect(running.progress.blockStepsDone).toBeLessThanOrEqual(running.progress.blockSteps / 2);
    expect(cluster.controllers.has(owner)).toBe(true);
    const survivor = [...cluster.controllers.values()].find((c) => c.id !== owner)!.url;
    const t0 = Date.now();
    cluster.kill(owner, 'SIGKILL');
    const done = await finished(id, 240_000, survivor);
    console.log(`takeover: job finished ${((Date.now() - t0) / 1000).toFixed(1)} s after the owner was killed`);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    expect(done.result.latentSha256).toBe(reference);
    expect(done.attempts).toBeGreaterThanOrEqual(2);
    const events = await sse(`${survivor}/v1/videos/${id}/events`);
    const plan = planJob(normalizeSpec({ ...req, size: undefined, width: 256, height: 256 } as JobRequest));
    expect(events.filter((e) => e.event === 'block').map((e) => e.data.index)).toEqual([...Array(plan.blocks).keys()]);
    const file = path.join(dir, 'takeover.mp4');
    fs.writeFileSync(file, Buffer.from(await (await fetch(`${survivor}${done.result.contentUrl}`)).arrayBuffer()));
    expect((await probeVideo(file)).frames).toBe(req.frames);
  }, 300_000); // the survivor recomputes most of a heavy job: minutes on 2 loaded cores
});
