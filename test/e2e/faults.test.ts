import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobStore } from '@longshot/cache';
import { normalizeSpec, planJob, type JobRequest } from '@longshot/planner';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { request, waitFor as waitUntil } from './http';

/**
 * The fault suite: Redis killed mid-job, the API during a Redis outage, a submit that died
 * before enqueueing, a full results store, a worker lost with no spare. Real Redis (AOF on),
 * real controller and worker processes.
 */
let dir: string;
let results: string;
let cluster: LocalCluster;
let redis: Redis;

const base = { prompt: 'a harbour at night', size: '64x64', block: 2, context: 1, steps: 6, model: 'tiny', seed: 5 };
const framesFor = (latentFrames: number): number => 4 * (latentFrames - 1) + 1;
const url = (): string => [...cluster.controllers.values()][0].url;

const api = (method: string, p: string, body?: unknown) => request(url(), method, p, { body });

/** Errors while the cluster recovers count as 'not yet'. */
const waitFor = <T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs = 90_000): Promise<T> => waitUntil(what, () => fn().catch(() => null), timeoutMs);

const job = async (id: string): Promise<any> => (await api('GET', `/v1/videos/${id}`)).json;
const finished = (id: string) =>
  waitFor(`${id} to finish`, async () => {
    const j = await job(id);
    return ['succeeded', 'failed', 'canceled'].includes(j.status) ? j : null;
  }, 150_000);
const submit = async (body: unknown): Promise<string> => {
  const r = await api('POST', '/v1/videos', body);
  expect(r.status, JSON.stringify(r.json)).toBe(202);
  return r.json.id;
};

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-faults-'));
  results = path.join(dir, 'results');
  cluster = await LocalCluster.start({
    auth: 'none', // the API without identities; test/e2e/auth.test.ts covers keys
    workers: 2,
    controllers: 1,
    name: 'faults',
    controllerEnv: {
      LONGSHOT_RESULTS_DIR: results,
      // A quota on the results store stands in for a small disk: the file layer says ENOSPC past it.
      LONGSHOT_RESULTS_MAX_BYTES: String(64 * 1024 * 1024),
      LONGSHOT_RESULTS_MIN_FREE_BYTES: String(1024 * 1024),
      LONGSHOT_JOB_LOCK_MS: '3000',
      LONGSHOT_JOB_STALLED_MS: '1000',
      LONGSHOT_LEASE_MS: '3000',
      LONGSHOT_WAIT_FOR_WORKERS_MS: '300',
      LONGSHOT_REPLACEMENT_WAIT_MS: '1000',
      LONGSHOT_WORKERS_DEADLINE_MS: '3000',
      LONGSHOT_JOB_BACKOFF_MS: '300',
      LONGSHOT_LIVENESS_MS: '200',
      LONGSHOT_RECONCILE_MS: '300',
      LONGSHOT_RECONCILE_GRACE_MS: '0',
    },
  });
  redis = new Redis(cluster.redisUrl, { maxRetriesPerRequest: null });
  redis.on('error', () => undefined); // Redis is killed on purpose below
});

afterAll(async () => {
  redis?.disconnect();
  await cluster?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('faults', () => {
  it('a record written without its queue entry (crash between the two) still runs: the reconciler enqueues it', async () => {
    const req = { ...base, frames: framesFor(4), stages: 1 };
    const spec = normalizeSpec({ ...req, size: undefined, width: 64, height: 64 } as JobRequest);
    const plan = planJob(spec);
    const id = '11111111-2222-3333-4444-555555555555';
    // What submit writes first; the enqueue that should follow never happens.
    await new JobStore(redis).create({ id, tenant: 'faults', spec: { ...spec, autoStages: false }, priority: 5, stages: 1, blocks: plan.blocks, blockSteps: plan.blockSteps }, null);
    const done = await finished(id);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    const metrics = await (await fetch(`${url()}/metrics`)).text();
    expect(metrics).toMatch(/^longshot_jobs_reenqueued_total [1-9]/m);
  });

  it('Redis SIGKILLed and restarted mid-job (AOF): the API answers 503 + Retry-After meanwhile, and the job ends with the same bits', async () => {
    const req = { ...base, frames: framesFor(16), stages: 2 };
    const reference = await finished(await submit(req));
    expect(reference.status, JSON.stringify(reference.error)).toBe('succeeded');

    const id = await submit(req);
    await waitFor('the job to make progress', async () => {
      const j = await job(id);
      return j.status === 'running' && j.progress.blockStepsDone >= 4;
    });
    await cluster.redis.kill('SIGKILL');
    try {
      const get = await api('GET', `/v1/videos/${id}`);
      expect(get.status, JSON.stringify(get.json)).toBe(503);
      expect(Number(get.headers.get('retry-after'))).toBeGreaterThan(0);
      expect(get.json.error).toBe('unavailable');
      const post = await api('POST', '/v1/videos', req);
      expect(post.status, JSON.stringify(post.json)).toBe(503);
      expect(Number(post.headers.get('retry-after'))).toBeGreaterThan(0);
      expect((await api('GET', '/readyz')).status).toBe(503);
    } finally {
      await cluster.redis.restart();
    }
    const done = await finished(id);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    expect(done.result.latentSha256).toBe(reference.result.latentSha256);
    expect(await (await fetch(`${url()}/metrics`)).text()).toMatch(/^longshot_redis_unavailable_total\{where="http"\} [1-9]/m);
  });

  it('a full results store fails the job clearly, removes its partial files, shows in /readyz, and the next job succeeds once space returns', async () => {
    const ready = await api('GET', '/readyz');
    expect(ready.status, JSON.stringify(ready.json)).toBe(200);
    const id = await submit({ ...base, frames: framesFor(40), steps: 8, stages: 2 });
    await waitFor('the first block to be stitched', async () => (await job(id)).progress.blocksDone >= 1);
    // Fill the store up to its quota: the next segment write meets ENOSPC.
    const ballast = path.join(results, 'ballast');
    fs.writeFileSync(ballast, Buffer.alloc(64 * 1024 * 1024 - 512 * 1024));
    try {
      const failed = await finished(id);
      expect(failed.status).toBe('failed');
      expect(failed.error.message).toMatch(/results store is out of space \(ENOSPC\)/);
      expect(fs.existsSync(path.join(results, id))).toBe(false);
      const full = await api('GET', '/readyz');
      expect(full.status).toBe(503);
      expect(full.json.checks.results).toBe('no space');
      expect(await (await fetch(`${url()}/metrics`)).text()).toMatch(/^longshot_results_store_failures_total\{code="ENOSPC"\} [1-9]/m);
    } finally {
      fs.rmSync(ballast, { force: true });
    }
    expect((await api('GET', '/readyz')).status).toBe(200);
    const next = await finished(await submit({ ...base, frames: framesFor(4), stages: 2 }));
    expect(next.status, JSON.stringify(next.error)).toBe('succeeded');
  });

  it('a worker lost with no spare: the job fails at the workers deadline with a clear error, not queued forever', async () => {
    const id = await submit({ ...base, frames: framesFor(40), steps: 8, stages: 2 });
    await waitFor('the job to make progress', async () => {
      const j = await job(id);
      return j.status === 'running' && j.progress.blockStepsDone >= 4;
    });
    cluster.kill([...cluster.workers.keys()][0], 'SIGKILL');
    const done = await finished(id);
    expect(done.status).toBe('failed');
    expect(done.error.message).toMatch(/no 2 free workers \(K=2\) for model tiny within 3 s \(LONGSHOT_WORKERS_DEADLINE_MS\); 1 registered workers serve it/);
    expect(await (await fetch(`${url()}/metrics`)).text()).toMatch(/^longshot_jobs_workers_deadline_total [1-9]/m);
  });
});
