import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { request, type HttpInit } from './http';
import { embeddingsFile } from './uploads';

/*
 * The API contract (issue 14 item 5) against a real controller, worker and Redis: the OpenAPI
 * document the controller serves is lint-clean (Redocly), and a client generated from it
 * (openapi-typescript) type-checks against the bodies the controller really answers with, every
 * status included. Also DELETE /v1/videos/{id}, GET /v1/models and the 404 of unknown routes.
 */

const run = promisify(execFile);
const root = path.resolve(__dirname, '../..');
const bin = (p: string): string => path.join(root, 'node_modules', p);

let dir: string;
let results: string;
let cluster: LocalCluster;
let redis: Redis;
let url: string;

const base = { prompt: 'a lighthouse in a storm', size: '64x64', block: 2, context: 1, steps: 2, model: 'tiny', seed: 3, frames: 5, stages: 1 };

/** A request with the cluster's operator key. */
const api = (method: string, route: string, init: HttpInit = {}) => request(url, method, route, { ...init, headers: { authorization: `Bearer ${cluster.apiKey}`, ...init.headers } });

const finished = async (id: string) => {
  for (let i = 0; i < 1200; i++) {
    const j = (await api('GET', `/v1/videos/${id}`)).json;
    if (['succeeded', 'failed', 'canceled'].includes(j.status)) return j;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`job ${id} did not finish`);
};

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-contract-'));
  results = path.join(dir, 'results');
  cluster = await LocalCluster.start({
    workers: 1,
    controllers: 1,
    name: 'contract',
    controllerEnv: { LONGSHOT_RESULTS_DIR: results, LONGSHOT_WAIT_FOR_WORKERS_MS: '200', LONGSHOT_WEBHOOK_SECRET: 'contract-webhook-master-key', LONGSHOT_TENANT_LIMITS: JSON.stringify({ limited: { requestsPerMinute: 1 } }) },
  });
  url = [...cluster.controllers.values()][0].url;
  redis = new Redis(cluster.redisUrl);
});

afterAll(async () => {
  redis?.disconnect();
  await cluster?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Keys of any kind (records, events, pipeline data, BullMQ's) that name the job. */
const keysOf = (id: string) => redis.keys(`*${id}*`);

describe('DELETE /v1/videos/{id}', () => {
  it('refuses a queued or running job (409), deletes a finished one: files, records, events, Redis data; then 404', async () => {
    // Long enough to be queued or running when the DELETE arrives; canceled right after.
    const long = (await api('POST', '/v1/videos', { body: { ...base, steps: 500, frames: 29 } })).json;
    const busy = await api('DELETE', `/v1/videos/${long.id}`);
    expect(busy.status, busy.text).toBe(409);
    expect(busy.json).toMatchObject({ error: 'conflict' });
    expect(['queued', 'running']).toContain((await api('GET', `/v1/videos/${long.id}`)).json.status);
    expect((await api('POST', `/v1/videos/${long.id}/cancel`)).status).toBe(200);
    expect((await api('DELETE', `/v1/videos/${long.id}`)).status).toBe(204);
    expect((await api('GET', `/v1/videos/${long.id}`)).status).toBe(404);

    const sub = await api('POST', '/v1/videos', { body: base, headers: { 'idempotency-key': 'delete-me' } });
    const done = await finished(sub.json.id);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    expect(fs.existsSync(path.join(results, done.id, 'video.mp4'))).toBe(true);
    expect((await keysOf(done.id)).length).toBeGreaterThan(0);

    const del = await api('DELETE', `/v1/videos/${done.id}`);
    expect(del.status, del.text).toBe(204);
    expect(del.text).toBe('');
    expect(fs.existsSync(path.join(results, done.id))).toBe(false);
    expect(await keysOf(done.id)).toEqual([]);
    expect((await api('GET', `/v1/videos/${done.id}`)).json).toMatchObject({ error: 'not_found' });
    expect((await api('GET', `/v1/videos/${done.id}/content`)).status).toBe(404);
    expect((await api('GET', '/v1/videos?limit=100')).json.items.map((j: { id: string }) => j.id)).not.toContain(done.id);
    const again = await api('DELETE', `/v1/videos/${done.id}`);
    expect(again.status).toBe(404);
    expect(again.json).toMatchObject({ error: 'not_found' });
    // Its Idempotency-Key no longer leads to a job: a conflict, never a phantom "queued" job.
    const repeat = await api('POST', '/v1/videos', { body: base, headers: { 'idempotency-key': 'delete-me' } });
    expect(repeat.status, repeat.text).toBe(409);
    expect((await api('DELETE', '/v1/videos/not-a-job-id')).status).toBe(404);
  });
});

describe('the OpenAPI document and a generated client', () => {
  it('lints clean, lists the models, answers unknown routes with the error shape, and types every real body', async () => {
    const work = path.join(dir, 'client');
    fs.mkdirSync(work);
    const docPath = path.join(work, 'openapi.json');
    const doc = await api('GET', '/docs-json');
    expect(doc.status).toBe(200);
    fs.writeFileSync(docPath, doc.text);
    expect(doc.json.servers).toEqual([expect.objectContaining({ url: '/' })]);

    // Redocly: no errors and no warnings (the JSON report counts both).
    const env = { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true' };
    const lint = await run(process.execPath, [bin('@redocly/cli/bin/cli.js'), 'lint', '--config', path.join(root, 'apps/controller/redocly.yaml'), '--format', 'json', docPath], { env, maxBuffer: 1 << 24 }).catch((e: { stdout: string; stderr: string }) => e);
    const report = JSON.parse(lint.stdout.slice(lint.stdout.indexOf('{')));
    expect(report.totals, JSON.stringify(report.problems?.slice(0, 5))).toMatchObject({ errors: 0, warnings: 0 });

    // Real bodies, one per documented status.
    const captured: [string, unknown][] = [];
    const capture = (type: string, body: unknown): void => void captured.push([type, body]);
    const R = (p: string, method: string, status: number | string, media = 'application/json') => `paths['${p}']['${method}']['responses']['${status}']['content']['${media}']`;

    const sub = await api('POST', '/v1/videos', { body: base, headers: { 'idempotency-key': 'contract' } });
    expect(sub.status).toBe(202);
    capture(R('/v1/videos', 'post', 202), sub.json);
    const repeat = await api('POST', '/v1/videos', { body: base, headers: { 'idempotency-key': 'contract' } });
    expect(repeat.status).toBe(200);
    capture(R('/v1/videos', 'post', 200), repeat.json);
    const other = await api('POST', '/v1/videos', { body: { ...base, seed: 4 }, headers: { 'idempotency-key': 'contract' } });
    expect(other.status).toBe(409);
    capture(R('/v1/videos', 'post', 409), other.json);
    const bad = await api('POST', '/v1/videos', { body: { ...base, frames: -5 } });
    expect(bad.status).toBe(400);
    capture(R('/v1/videos', 'post', 400), bad.json);
    const done = await finished(sub.json.id);
    expect(done.status).toBe('succeeded');
    capture(R('/v1/videos/{id}', 'get', 200), done);
    const unknown = await api('GET', '/v1/videos/123e4567-e89b-42d3-a456-426614174000');
    expect(unknown.status).toBe(404);
    capture(R('/v1/videos/{id}', 'get', 404), unknown.json);
    const page = await api('GET', '/v1/videos?limit=5');
    capture(R('/v1/videos', 'get', 200), page.json);
    const badLimit = await api('GET', '/v1/videos?limit=0');
    expect(badLimit.status).toBe(400);
    capture(R('/v1/videos', 'get', 400), badLimit.json);
    const late = await api('POST', `/v1/videos/${done.id}/cancel`);
    expect(late.status).toBe(409);
    capture(R('/v1/videos/{id}/cancel', 'post', 409), late.json);
    const canceled = await api('POST', `/v1/videos/${(await api('POST', '/v1/videos', { body: { ...base, seed: 6 } })).json.id}/cancel`);
    expect(canceled.status).toBe(200);
    capture(R('/v1/videos/{id}/cancel', 'post', 200), canceled.json);
    const range = await api('GET', `/v1/videos/${done.id}/content`, { headers: { range: 'bytes=5-1' } });
    expect(range.status).toBe(416);
    capture(R('/v1/videos/{id}/content', 'get', 416), range.json);
    const lastId = await api('GET', `/v1/videos/${done.id}/events`, { headers: { 'last-event-id': 'garbage' } });
    expect(lastId.status).toBe(400);
    capture(R('/v1/videos/{id}/events', 'get', 400), lastId.json);
    const upload = await api('POST', '/v1/embeddings', { raw: embeddingsFile(), headers: { 'content-type': 'application/octet-stream' } });
    expect(upload.status).toBe(201);
    capture(R('/v1/embeddings', 'post', 201), upload.json);
    const badUpload = await api('POST', '/v1/embeddings', { raw: Buffer.from('nope'), headers: { 'content-type': 'application/octet-stream' } });
    expect(badUpload.status).toBe(400);
    capture(R('/v1/embeddings', 'post', 400), badUpload.json);
    const workers = await api('GET', '/v1/workers');
    capture(R('/v1/workers', 'get', 200), workers.json);
    // Each worker's metrics address, and the same as Prometheus HTTP service discovery targets.
    const [only] = [...cluster.workers.values()];
    expect(workers.json.items.map((w: { id: string; metricsAddress: string }) => [w.id, w.metricsAddress])).toEqual([[only.id, only.metricsAddress]]);
    const sd = await api('GET', '/v1/workers/prometheus-sd');
    expect(sd.status).toBe(200);
    expect(sd.json).toEqual([{ targets: [only.metricsAddress], labels: { worker: only.id, registration: 'live' } }]);
    capture(R('/v1/workers/prometheus-sd', 'get', 200), sd.json);
    capture(R('/healthz', 'get', 200), (await api('GET', '/healthz')).json);

    // Identity: no key (401), a tenant key on an operator route (403), a spent rate limit (429), a session.
    const anonymous = await request(url, 'GET', '/v1/videos');
    expect(anonymous.status).toBe(401);
    capture(R('/v1/videos', 'get', 401), anonymous.json);
    const limited = await cluster.createApiKey({ tenant: 'limited', role: 'tenant' });
    const asLimited = (route: string) => request(url, 'GET', route, { headers: { authorization: `Bearer ${limited}` } });
    const forbidden = await asLimited('/v1/workers');
    expect(forbidden.status).toBe(403);
    capture(R('/v1/workers', 'get', 403), forbidden.json);
    expect((await asLimited('/v1/models')).status).toBe(200); // its one request a minute
    const spent = await asLimited('/v1/models');
    expect(spent.status).toBe(429);
    capture(R('/v1/models', 'get', 429), spent.json);
    const session = await api('POST', '/v1/session');
    expect(session.status).toBe(200);
    capture(R('/v1/session', 'post', 200), session.json);
    const me = await api('GET', '/v1/session');
    expect(me.json).toMatchObject({ tenant: 'local', role: 'operator' });
    capture(R('/v1/session', 'get', 200), me.json);
    const nobody = await request(url, 'GET', '/v1/session');
    expect(nobody.status).toBe(401);
    capture(R('/v1/session', 'get', 401), nobody.json);
    expect(doc.json.components.securitySchemes).toMatchObject({ bearerAuth: { type: 'http', scheme: 'bearer' }, cookie: { type: 'apiKey', in: 'cookie', name: 'longshot_session' } });
    capture(R('/readyz', 'get', 200), (await api('GET', '/readyz')).json);

    // A tenant's webhook signing secret: read, rotate, a malformed, another (403) and an unknown (404) tenant.
    const secretRoute = '/v1/webhooks/secret';
    const webhookStatuses: [string, string, string, number, string?][] = [
      ['GET', secretRoute, secretRoute, 200],
      ['POST', `${secretRoute}/rotate`, `${secretRoute}/rotate`, 200],
      ['GET', `${secretRoute}?tenant=Bad!`, secretRoute, 400],
      ['POST', `${secretRoute}/rotate?tenant=local`, `${secretRoute}/rotate`, 403, await cluster.createApiKey({ tenant: 'other', role: 'tenant' })],
      ['GET', `${secretRoute}?tenant=nobody`, secretRoute, 404],
    ];
    for (const [method, route, documented, status, key] of webhookStatuses) {
      const r = await api(method, route, key ? { headers: { authorization: `Bearer ${key}` } } : {});
      expect(r.status, `${method} ${route}: ${r.text}`).toBe(status);
      capture(R(documented, method.toLowerCase(), status), r.json);
    }

    // GET /v1/models: the catalog's names, each with the worker that serves it.
    const models = await api('GET', '/v1/models');
    expect(models.status).toBe(200);
    capture(R('/v1/models', 'get', 200), models.json);
    const worker = workers.json.items[0].id;
    expect(models.json.items).toContainEqual({ name: 'tiny', catalog: true, workers: [worker] });
    expect(models.json.items.map((m: { name: string }) => m.name)).toEqual(expect.arrayContaining(['tiny', 'small', 'wan2.1-t2v-1.3b']));

    // Unknown routes: the same {error, message} shape, 404.
    for (const [method, route] of [['GET', '/nope'], ['POST', '/v1/nothing'], ['DELETE', '/v1/videos']]) {
      const r = await api(method, route);
      expect(r.status, `${method} ${route}`).toBe(404);
      expect(Object.keys(r.json).sort()).toEqual(['error', 'message']);
      expect(r.json.error).toBe('not_found');
      capture(R('/v1/videos/{id}', 'get', 404), r.json);
    }

    // The generated client, type-checked against the captured bodies (object literals: a field the
    // document does not declare is an error, as is a missing or mistyped one).
    await run(process.execPath, [bin('openapi-typescript/bin/cli.js'), docPath, '--output', path.join(work, 'api.d.ts')]);
    const lines = captured.map(([type, body], i) => `export const body${i}: ${type} = ${JSON.stringify(body)};`);
    // The check can fail: a field the API does not answer with is refused.
    lines.push(`// @ts-expect-error: not a field of a video\nexport const extra: ${R('/v1/videos/{id}', 'get', 200)} = ${JSON.stringify({ ...done, surprise: 1 })};`);
    fs.writeFileSync(path.join(work, 'check.ts'), `import type { paths } from './api';\n${lines.join('\n')}\n`);
    const tsc = await run(process.execPath, [bin('typescript/bin/tsc'), '--noEmit', '--strict', '--target', 'es2022', '--module', 'esnext', '--moduleResolution', 'bundler', path.join(work, 'check.ts')]).catch((e: { stdout: string }) => e);
    expect(tsc.stdout).toBe('');
  });
});
