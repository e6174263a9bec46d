/**
 * Bull Board at /admin/queues (docs/operations.md "Queue board") against a real controller, Redis
 * and worker: operators only (a tenant key 403, no key 401, the API's error shape), its page and
 * scripts served from node_modules, the render queue listed with a finished job, and read-only:
 * the board's mutating calls are refused and the job stays in Redis as it was.
 */
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { QUEUE_BOARD_CSP, QUEUE_BOARD_PATH } from '../../apps/controller/src/http/queue-board';
import { QUEUE_NAME, queuePrefix } from '../../apps/controller/src/queue';
import { request, waitFor, type HttpInit } from './http';

const JOB = { prompt: 'a paper boat', size: '64x64', frames: 21, block: 2, context: 1, steps: 2, model: 'tiny', seed: 7 };

let cluster: LocalCluster;
let url: string;
let operator: string;
let tenant: string;
/** The id of the one job the test runs; it has succeeded before any test starts. */
let jobId: string;
/** The render queue straight from Redis, under the controller's braced prefix. */
let redis: Redis;
let queue: Queue;

const as = (key: string | null, method: string, route: string, init: HttpInit = {}) => request(url, method, route, { ...init, headers: { ...(key ? { authorization: `Bearer ${key}` } : {}), ...init.headers } });
/** The session cookie (name=value) POST /v1/session sets for `key`, as the console holds it. */
const sessionOf = async (key: string) => (await as(key, 'POST', '/v1/session')).headers.get('set-cookie')!.split(';')[0];
/** The board's view of the render queue, with the completed jobs listed. */
const renderQueue = async () => {
  const r = await as(operator, 'GET', `${QUEUE_BOARD_PATH}/api/queues?activeQueue=${QUEUE_NAME}&status=completed&page=1&jobsPerPage=10`);
  expect(r.status, r.text).toBe(200);
  return (r.json.queues as { name: string; counts: Record<string, number>; jobs: { id: string }[]; readOnlyMode: boolean; isPaused: boolean }[]).find((q) => q.name === QUEUE_NAME)!;
};

beforeAll(async () => {
  cluster = await LocalCluster.start({ workers: 1, controllers: 1, name: 'board', controllerEnv: { LONGSHOT_WAIT_FOR_WORKERS_MS: '200' } });
  url = [...cluster.controllers.values()][0].url;
  operator = cluster.apiKey!;
  tenant = await cluster.createApiKey({ tenant: 'red', role: 'tenant' });
  const r = await as(tenant, 'POST', '/v1/videos', { body: JOB });
  expect(r.status, r.text).toBe(202);
  jobId = r.json.id;
  const done = await waitFor('the job to finish', async () => {
    const g = (await as(tenant, 'GET', `/v1/videos/${jobId}`)).json;
    return ['succeeded', 'failed'].includes(g.status) && g;
  });
  expect(done.status).toBe('succeeded');
  // The record says succeeded a moment before BullMQ files the job as completed.
  redis = new Redis(cluster.redisUrl, { maxRetriesPerRequest: null });
  queue = new Queue(QUEUE_NAME, { connection: redis, prefix: queuePrefix() });
  await waitFor('BullMQ to file the job as completed', async () => (await queue.getJobState(jobId)) === 'completed');
});

afterAll(async () => {
  await queue?.close();
  redis?.disconnect();
  await cluster?.stop();
});

describe('queue board', () => {
  it('is for operators: a tenant gets 403, no key 401, in the API error shape', async () => {
    for (const [method, route] of [['GET', ''], ['GET', '/api/queues'], ['PUT', `/api/queues/${QUEUE_NAME}/clean/completed`]] as const) {
      const path = `${QUEUE_BOARD_PATH}${route}`;
      const forbidden = await as(tenant, method, path);
      expect(forbidden.status, `${method} ${path}`).toBe(403);
      expect(forbidden.json).toEqual({ error: 'forbidden', message: expect.stringContaining('operator key') });
      const anonymous = await as(null, method, path);
      expect(anonymous.status, `${method} ${path}`).toBe(401);
      expect(anonymous.json).toEqual({ error: 'unauthorized', message: expect.any(String) });
      expect(anonymous.headers.get('www-authenticate')).toMatch(/^Bearer/);
    }
    // The console's session cookie counts as its key: an operator's opens the board, a tenant's does not.
    expect((await as(null, 'GET', `${QUEUE_BOARD_PATH}/api/queues`, { headers: { cookie: await sessionOf(operator) } })).status).toBe(200);
    expect((await as(null, 'GET', `${QUEUE_BOARD_PATH}/api/queues`, { headers: { cookie: await sessionOf(tenant) } })).status).toBe(403);
  });

  it('serves its page and scripts from node_modules, with a CSP that keeps the browser on this origin', async () => {
    const page = await as(operator, 'GET', QUEUE_BOARD_PATH);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    expect(page.headers.get('content-security-policy')).toBe(QUEUE_BOARD_CSP);
    expect(page.text).toContain('<title>Longshot queues</title>');
    expect(page.text).toContain(`<base href="${QUEUE_BOARD_PATH}/" />`);
    const scripts = [...page.text.matchAll(/<script defer src="(static\/js\/[^"]+\.js)"/g)].map((m) => m[1]);
    expect(scripts.length).toBeGreaterThan(0);
    for (const src of scripts) {
      const js = await as(operator, 'GET', `${QUEUE_BOARD_PATH}/${src}`);
      expect(js.status, src).toBe(200);
      expect(js.headers.get('content-type'), src).toMatch(/javascript/);
    }
    // Its static files are behind the same check as the page.
    expect((await as(tenant, 'GET', `${QUEUE_BOARD_PATH}/${scripts[0]}`)).status).toBe(403);
  });

  it('lists the render queue, read-only, with the finished job', async () => {
    const q = await renderQueue();
    expect(q).toMatchObject({ readOnlyMode: true, isPaused: false });
    expect(q.counts.completed).toBe(1);
    expect(q.jobs.map((j) => j.id)).toEqual([jobId]);
    const job = await as(operator, 'GET', `${QUEUE_BOARD_PATH}/api/queues/${QUEUE_NAME}/${jobId}`);
    expect(job.status, job.text).toBe(200);
    expect(job.json.job).toMatchObject({ id: jobId, name: 'render', data: { id: jobId } });
  });

  it('refuses every call that would change a queue, and Redis keeps the job as it was', async () => {
    const mutations = [
      ['PUT', `/api/queues/${QUEUE_NAME}/${jobId}/retry`],
      ['PUT', `/api/queues/${QUEUE_NAME}/${jobId}/clean`],
      ['PUT', `/api/queues/${QUEUE_NAME}/${jobId}/promote`],
      ['PUT', `/api/queues/${QUEUE_NAME}/retry/completed`],
      ['PUT', `/api/queues/${QUEUE_NAME}/clean/completed`],
      ['PUT', `/api/queues/${QUEUE_NAME}/empty`],
      ['PUT', `/api/queues/${QUEUE_NAME}/obliterate`],
      ['PUT', `/api/queues/${QUEUE_NAME}/pause`],
      ['PUT', '/api/queues/pause'],
      ['POST', `/api/queues/${QUEUE_NAME}/add`],
      ['PATCH', `/api/queues/${QUEUE_NAME}/${jobId}/update-data`],
    ] as const;
    for (const [method, route] of mutations) {
      const r = await as(operator, method, `${QUEUE_BOARD_PATH}${route}`, { body: { name: 'render', data: { id: 'x' } } });
      expect(r.status, `${method} ${route}`).toBe(405);
      expect(r.json).toEqual({ error: 'read_only', message: expect.stringContaining('read-only') });
      expect(r.headers.get('allow')).toBe('GET, HEAD');
    }
    // Straight from Redis: the job is still completed with its data, the queue not paused, nothing added.
    expect(queuePrefix()).toMatch(/\{bull\}$/);
    expect(await queue.getJobState(jobId)).toBe('completed');
    expect((await queue.getJob(jobId))?.data).toEqual({ id: jobId });
    expect(await queue.isPaused()).toBe(false);
    expect(await queue.getJobCounts('waiting', 'prioritized', 'delayed', 'active', 'completed', 'failed', 'paused')).toEqual({ waiting: 0, prioritized: 0, delayed: 0, active: 0, completed: 1, failed: 0, paused: 0 });
    expect((await renderQueue()).counts.completed).toBe(1);
  });
});
