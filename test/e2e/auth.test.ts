/**
 * API identity against a real controller, Redis and worker (docs/api.md "Authentication"):
 * keys made and revoked with `longshot keys`, tenants isolated, operator-only routes, the
 * console's session cookie, signed URLs, the rate limit and the admission cost cap.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { signedUrl } from '../../apps/controller/src/signing';
import { longshot } from './cli';
import { request, waitFor, type HttpInit } from './http';
import { embeddingsFile } from './uploads';

const SESSION_SECRET = randomBytes(32).toString('base64url');
const JOB = { prompt: 'a paper boat', size: '64x64', frames: 21, block: 2, context: 1, steps: 4, model: 'tiny', seed: 7 };

let cluster: LocalCluster;
let dir: string;
let url: string;
/** Keys by name: operator (the cluster's), red and blue tenants, limited (1 request a minute: no refill within a test), capped (a tiny cost cap). */
const keys: Record<string, string> = {};

const as = (key: string | null, method: string, route: string, init: HttpInit = {}) => request(url, method, route, { ...init, headers: { ...(key ? { authorization: `Bearer ${key}` } : {}), ...init.headers } });

/** `longshot keys ...` against the cluster's Redis. */
const keysCli = (...args: string[]) => longshot(['keys', ...args, '--redis', cluster.redisUrl], dir);

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-auth-'));
  cluster = await LocalCluster.start({
    workers: 1,
    controllers: 1,
    name: 'auth',
    controllerEnv: {
      LONGSHOT_RESULTS_DIR: path.join(dir, 'results'),
      LONGSHOT_WAIT_FOR_WORKERS_MS: '200',
      LONGSHOT_SESSION_SECRET: SESSION_SECRET,
      LONGSHOT_TENANT_LIMITS: JSON.stringify({ limited: { requestsPerMinute: 1 }, capped: { maxJobCost: 1000 } }),
    },
  });
  url = [...cluster.controllers.values()][0].url;
  keys.operator = cluster.apiKey!;
  for (const tenant of ['red', 'blue', 'limited', 'capped']) keys[tenant] = await cluster.createApiKey({ tenant, role: 'tenant' });
});

afterAll(async () => {
  await cluster?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('API keys', () => {
  it('refuses a request without a key, with a malformed or unknown one: 401 with WWW-Authenticate', async () => {
    const unknown = `lsk_000000000000_${randomBytes(32).toString('base64url')}`;
    for (const [key, header] of [[null, undefined], [null, 'Basic abc'], ['lsk_nope', undefined], [unknown, undefined]] as const) {
      const r = await as(key, 'GET', '/v1/videos', header ? { headers: { authorization: header } } : {});
      expect(r.status).toBe(401);
      expect(r.json.error).toBe('unauthorized');
      expect(r.headers.get('www-authenticate')).toMatch(/^Bearer/);
    }
    expect((await as(null, 'GET', '/healthz')).status).toBe(200);
    expect((await as(null, 'GET', '/readyz')).status).toBe(200);
    expect((await as(null, 'GET', '/')).status).toBe(200);
  });

  it('lists keys without secrets, and a revoked key (and its session) is refused', async () => {
    const made = await keysCli('create', '--tenant', 'gone');
    expect(made.code, made.stderr).toBe(0);
    const key = made.stdout.trim();
    const id = key.split('_')[1];
    // The creation is one structured log line naming the key and tenant, never the secret.
    expect(JSON.parse(made.stderr.trim().split('\n').pop()!)).toMatchObject({ msg: 'API key created', tenant: 'gone', key: id });
    expect(made.stderr).not.toContain(key);
    const session = await as(key, 'POST', '/v1/session');
    const cookie = session.headers.get('set-cookie')!.split(';')[0];
    expect((await as(key, 'GET', '/v1/videos')).status).toBe(200);
    const list = await keysCli('list', '--json');
    const rows = list.stdout.trim().split('\n').map((l) => JSON.parse(l) as { id: string; tenant: string; revokedAt: string | null });
    expect(rows.find((k) => k.id === id)).toMatchObject({ tenant: 'gone', revokedAt: null });
    expect(list.stdout).not.toContain(key.split('_').slice(2).join('_'));
    const revoked = await keysCli('revoke', id);
    expect(revoked.code, revoked.stderr).toBe(0);
    expect(JSON.parse(revoked.stderr.trim()).msg).toBe('API key revoked');
    expect((await as(key, 'GET', '/v1/videos')).status).toBe(401);
    expect((await as(null, 'GET', '/v1/videos', { headers: { cookie } })).status).toBe(401);
  });

  it('needs an operator key for workers, metrics and the docs UI (403 for a tenant)', async () => {
    for (const route of ['/v1/workers', '/metrics', '/docs']) {
      expect((await as(keys.red, 'GET', route)).status, route).toBe(403);
      expect((await as(keys.red, 'GET', route)).json.error).toBe('forbidden');
      expect((await as(null, 'GET', route)).status, route).toBe(401);
      expect((await as(keys.operator, 'GET', route)).status, route).toBe(200);
    }
    // The document itself (the console's submit form is built from it) is for any key.
    expect((await as(keys.red, 'GET', '/docs-json')).status).toBe(200);
    expect((await as(null, 'GET', '/docs-json')).status).toBe(401);
    expect((await as(keys.operator, 'GET', '/metrics')).text).toMatch(/longshot_api_keys\{role="tenant",state="active"\} \d+/);
  });
});

describe('tenants', () => {
  let id: string;
  let job: any;

  beforeAll(async () => {
    const r = await as(keys.red, 'POST', '/v1/videos', { body: JOB });
    expect(r.status, r.text).toBe(202);
    id = r.json.id;
    job = await waitFor('the job to succeed', async () => {
      const g = (await as(keys.red, 'GET', `/v1/videos/${id}`)).json;
      return ['succeeded', 'failed'].includes(g.status) && g;
    });
    expect(job.status).toBe('succeeded');
    expect(job.tenant).toBe('red');
  });

  it("see only their own jobs: another tenant's is 404 on every route", async () => {
    expect((await as(keys.red, 'GET', '/v1/videos')).json.items.map((j: { id: string }) => j.id)).toContain(id);
    expect((await as(keys.blue, 'GET', '/v1/videos')).json.items).toEqual([]);
    for (const [method, route] of [['GET', ''], ['GET', '/events'], ['GET', '/content'], ['GET', '/blocks/0/preview.jpg'], ['POST', '/cancel'], ['DELETE', '']] as const) {
      const r = await as(keys.blue, method, `/v1/videos/${id}${route}`);
      expect(r.status, `${method} ${route}`).toBe(404);
      expect(r.json.message).toBe(`no video ${id}`);
    }
    // The operator sees every tenant's jobs.
    expect((await as(keys.operator, 'GET', '/v1/videos')).json.items.map((j: { id: string }) => j.id)).toContain(id);
    expect((await as(keys.operator, 'GET', `/v1/videos/${id}`)).status).toBe(200);
  });

  it("cannot use another tenant's upload of text embeddings", async () => {
    const up = await as(keys.red, 'POST', '/v1/embeddings', { raw: embeddingsFile(), headers: { 'content-type': 'application/octet-stream' } });
    expect(up.status, up.text).toBe(201);
    const { prompt: _, ...rest } = JOB;
    const r = await as(keys.blue, 'POST', '/v1/videos', { body: { ...rest, textEmbeddingsId: up.json.id } });
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ field: 'textEmbeddingsId', message: expect.stringMatching(/^textEmbeddingsId: no upload/) });
  });

  it('keep Idempotency-Keys apart: the same key of another tenant is another job', async () => {
    const headers = { 'idempotency-key': 'same-key' };
    const red = await as(keys.red, 'POST', '/v1/videos', { body: { ...JOB, steps: 1 }, headers });
    const blue = await as(keys.blue, 'POST', '/v1/videos', { body: { ...JOB, steps: 1 }, headers });
    expect([red.status, blue.status]).toEqual([202, 202]);
    expect(blue.json.id).not.toBe(red.json.id);
    for (const [k, j] of [[keys.red, red.json.id], [keys.blue, blue.json.id]]) expect((await as(k, 'POST', `/v1/videos/${j}/cancel`)).status).toBe(200);
  });

  it('get a session cookie (HttpOnly, SameSite=Strict) that works for the event stream and the MP4', async () => {
    const s = await as(keys.red, 'POST', '/v1/session');
    expect(s.status).toBe(200);
    expect(s.json).toMatchObject({ tenant: 'red', role: 'tenant' });
    const set = s.headers.get('set-cookie')!;
    expect(set).toMatch(/^longshot_session=/);
    expect(set).toMatch(/HttpOnly/);
    expect(set).toMatch(/SameSite=Strict/);
    expect(set).not.toMatch(/Secure/); // plain HTTP on loopback
    const cookie = set.split(';')[0];
    const events = await request(url, 'GET', `/v1/videos/${id}/events`, { headers: { cookie } });
    expect(events.status).toBe(200);
    expect(events.text).toContain('event: succeeded');
    expect((await request(url, 'GET', `/v1/videos/${id}/content`, { headers: { cookie } })).headers.get('content-type')).toBe('video/mp4');
    const tampered = cookie.replace(/.(.{5})$/, (_, tail: string) => `${cookie.at(-6) === 'x' ? 'y' : 'x'}${tail}`);
    expect((await request(url, 'GET', '/v1/videos', { headers: { cookie: tampered } })).status).toBe(401);
    expect((await as(null, 'POST', '/v1/session')).status).toBe(401);
  });

  it('get signed URLs for one job and one path, valid until they expire', async () => {
    const { events, content, expiresAt } = job.signedUrls;
    expect(Date.parse(expiresAt)).toBeGreaterThan(Date.now());
    const sse = await request(url, 'GET', events);
    expect(sse.status).toBe(200);
    expect(sse.text).toContain('event: succeeded');
    const mp4 = await request(url, 'GET', content);
    expect(mp4.status).toBe(200);
    expect(mp4.headers.get('content-type')).toBe('video/mp4');
    // The content URL's signature on the events path, or on another job: refused.
    const query = new URL(content, url).search;
    expect((await request(url, 'GET', `/v1/videos/${id}/events${query}`)).status).toBe(401);
    expect((await request(url, 'GET', `/v1/videos/00000000-0000-4000-8000-000000000000/content${query}`)).status).toBe(401);
    // Signed with the server's secret but expired: refused.
    const keyId = keys.red.split('_')[1];
    const expired = signedUrl(`/v1/videos/${id}/content`, keyId, Math.floor(Date.now() / 1000) - 1, Buffer.from(SESSION_SECRET, 'utf8'));
    const r = await request(url, 'GET', expired);
    expect(r.status).toBe(401);
    expect(r.json.message).toMatch(/expired/);
  });
});

describe('limits', () => {
  it("answers 429 with Retry-After once a tenant's requests per minute are spent", async () => {
    expect((await as(keys.limited, 'GET', '/v1/videos')).status).toBe(200);
    const r = await as(keys.limited, 'GET', '/v1/videos');
    expect(r.status).toBe(429);
    expect(r.json.error).toBe('rate_limited');
    expect(r.json.message).toMatch(/limit of 1 requests per minute \(requestsPerMinute\)/);
    expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    // Other tenants have their own budgets.
    expect((await as(keys.blue, 'GET', '/v1/videos')).status).toBe(200);
  });

  it('refuses a job over the admission cost cap with a 400 naming the field and the cap, storing nothing', async () => {
    const r = await as(keys.capped, 'POST', '/v1/videos', { body: JOB });
    expect(r.status).toBe(400);
    expect(r.json.field).toBe('frames');
    expect(r.json.message).toMatch(/block-steps x .* parameters of tiny.*cap of 1\.000e\+3 \(maxJobCost\)/);
    expect((await as(keys.capped, 'GET', '/v1/videos')).json.items).toEqual([]);
  });
});
