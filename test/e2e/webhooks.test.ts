import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_KEYS as keys, JobStore } from '@longshot/cache';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { DEFAULT_WEBHOOK_EVENTS } from '../../apps/controller/src/webhooks/events';
import { verifyWebhookSignature } from '../../apps/controller/src/webhooks/signing';
import { metricValue } from './metrics';
import { request, waitFor, type HttpInit } from './http';

/*
 * Webhooks (issue 14 item 4) against a real controller, worker and Redis, and a local receiver
 * that fails at first: every selected event arrives signed, with the same id and body on every
 * attempt; the filter holds; an event is given up after its last attempt; loopback and private
 * destinations are refused unless allowed; a controller killed mid-delivery is replaced by
 * another that resumes where the first stopped. Each tenant's jobs are signed with that tenant's
 * own secret (GET /v1/webhooks/secret), and a rotation signs with both secrets for a while.
 */

/** The master key the tenants' secrets derive from. */
const MASTER = 'e2e-webhook-secret-0123456789';
const base = { prompt: 'a lighthouse in a storm', size: '64x64', block: 2, context: 1, steps: 2, model: 'tiny', seed: 3, frames: 5, stages: 1 };

interface Attempt {
  readonly path: string;
  readonly id: string;
  readonly timestamp: string;
  readonly signature: string;
  readonly body: string;
  readonly host: string;
  /** What the receiver answered. */
  readonly status: number;
}

/**
 * The receiver: `/flaky/*` answers 503 to the first two attempts of each event id, then 204;
 * `/ok/*` 204; `/gate` answers 503 until the gate opens; `/never` always 500. It records every attempt.
 */
class Receiver {
  readonly attempts: Attempt[] = [];
  gateOpen = false;
  private constructor(private readonly server: http.Server) {}

  static async start(): Promise<Receiver> {
    const server = http.createServer();
    const r = new Receiver(server);
    server.on('request', (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const header = (name: string) => String(req.headers[name.toLowerCase()] ?? '');
        const id = header('Longshot-Webhook-Id');
        const url = req.url ?? '/';
        const tries = r.attempts.filter((a) => a.path === url && a.id === id).length;
        const status = url.startsWith('/flaky/') ? (tries < 2 ? 503 : 204) : url.startsWith('/ok/') ? 204 : url === '/gate' ? (r.gateOpen ? 200 : 503) : 500;
        r.attempts.push({ path: url, id, timestamp: header('Longshot-Webhook-Timestamp'), signature: header('Longshot-Webhook-Signature'), body: Buffer.concat(chunks).toString(), host: header('host'), status });
        res.writeHead(status).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return r;
  }

  url(route: string): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}${route}`;
  }

  on(route: string): Attempt[] {
    return this.attempts.filter((a) => a.path === route);
  }

  /** The accepted deliveries to `route`, parsed. */
  accepted(route: string): { id: string; type: string; jobId: string; createdAt: string; data: any }[] {
    return this.on(route)
      .filter((a) => a.status < 300)
      .map((a) => JSON.parse(a.body));
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

let dir: string;
let cluster: LocalCluster;
let redis: Redis;
let receiver: Receiver;
let jobs: JobStore;
/** The signing secret of tenant `local`, the operator key's (GET /v1/webhooks/secret). */
let localSecret: string;

const controllerUrl = (): string => [...cluster.controllers.values()].at(-1)!.url;
const bearer = (key: string) => ({ authorization: `Bearer ${key}` });
/** A request with `key` (default: the cluster's operator key, tenant local). */
const api = (method: string, route: string, init: HttpInit = {}, url = controllerUrl(), key = cluster.apiKey!) => request(url, method, route, { ...init, headers: { ...bearer(key), ...init.headers } });
const finished = (id: string) =>
  waitFor(`${id} to finish`, async () => {
    const j = (await api('GET', `/v1/videos/${id}`)).json;
    return ['succeeded', 'failed', 'canceled'].includes(j.status) ? j : null;
  });
/** The job's events in Redis (what its SSE stream sends), of the selected types. */
const selectedEvents = async (id: string, types: readonly string[]) => (await jobs.events(id, '0')).filter((e) => types.includes(e.event));
const webhookKeys = () => redis.keys(`${keys.root}:{webhooks}:*`);
const metric = async (sample: string): Promise<number> => {
  let sum = 0;
  for (const c of cluster.controllers.values()) {
    sum += metricValue((await api('GET', '/metrics', {}, c.url)).text, sample, 0);
  }
  return sum;
};

/** Whether the attempt's signature header checks out with `secret` for the id, timestamp and body it came with. */
const verifies = (a: Attempt, secret: string): boolean => verifyWebhookSignature(secret, a.signature, a.id, a.timestamp, a.body);

/** Every attempt carries one signature, made with `secret` (and not with another key), for its id, timestamp and body. */
function expectSigned(attempts: readonly Attempt[], secret = localSecret): void {
  for (const a of attempts) {
    expect(a.signature).toMatch(/^v1=[0-9a-f]{64}$/);
    expect(verifies(a, secret), a.id).toBe(true);
    expect(verifies(a, MASTER)).toBe(false);
    expect(JSON.parse(a.body).id).toBe(a.id);
  }
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-webhooks-'));
  receiver = await Receiver.start();
  cluster = await LocalCluster.start({
    workers: 1,
    controllers: 1,
    name: 'hooks',
    controllerEnv: {
      LONGSHOT_RESULTS_DIR: path.join(dir, 'results'),
      LONGSHOT_WAIT_FOR_WORKERS_MS: '200',
      // Short locks so the job of a killed controller is taken over within seconds.
      LONGSHOT_JOB_LOCK_MS: '3000',
      LONGSHOT_JOB_STALLED_MS: '1000',
      LONGSHOT_LEASE_MS: '3000',
      LONGSHOT_WEBHOOK_SECRET: MASTER,
      // The receiver is on loopback: allowed here, refused by default.
      LONGSHOT_WEBHOOK_ALLOW_CIDRS: '127.0.0.0/8',
      LONGSHOT_WEBHOOK_BACKOFF_MS: '50',
      LONGSHOT_WEBHOOK_MAX_BACKOFF_MS: '200',
      LONGSHOT_WEBHOOK_MAX_ATTEMPTS: '5',
      LONGSHOT_WEBHOOK_POLL_MS: '100',
      // A claim is held for twice this plus 1 s: long enough that a loaded machine never sees one expire mid-attempt.
      LONGSHOT_WEBHOOK_TIMEOUT_MS: '2000',
    },
  });
  redis = new Redis(cluster.redisUrl);
  jobs = new JobStore(redis);
  localSecret = (await api('GET', '/v1/webhooks/secret')).json.secret;
});

afterAll(async () => {
  redis?.disconnect();
  await cluster?.stop();
  await receiver?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('webhooks', () => {
  it('delivers every selected event, signed, in order, after two failed attempts each with the same id and body', async () => {
    const all = await api('POST', '/v1/videos', { body: { ...base, webhook: receiver.url('/flaky/all?token=s3cret-token') } });
    expect(all.status, all.text).toBe(202);
    const some = await api('POST', '/v1/videos', { body: { ...base, seed: 4, webhook: receiver.url('/flaky/some'), webhookEvents: ['started', 'succeeded'] } });
    expect(some.status, some.text).toBe(202);
    const routes = { [all.json.id]: '/flaky/all?token=s3cret-token', [some.json.id]: '/flaky/some' };
    const selected = { [all.json.id]: DEFAULT_WEBHOOK_EVENTS, [some.json.id]: ['started', 'succeeded'] };
    for (const id of [all.json.id, some.json.id]) {
      expect((await finished(id)).status).toBe('succeeded');
      // Delivered and done: the outbox lets go of the job.
      await waitFor(`the webhook of ${id} to finish`, async () => (await redis.exists(keys.webhookKey(id))) === 0);
      const events = await selectedEvents(id, selected[id]);
      const accepted = receiver.accepted(routes[id]);
      expect(accepted.map((p) => p.type)).toEqual(events.map((e) => e.event));
      expect(accepted.map((p) => p.id)).toEqual(events.map((e) => `${id}:${e.id}`));
      for (const [i, p] of accepted.entries()) {
        expect(p.jobId).toBe(id);
        expect(p.data).toEqual(events[i].data);
        expect(Date.parse(p.createdAt)).toBe(Number(events[i].id.split('-')[0]));
      }
      // Each event: two refused attempts, then the accepted one; the same id and byte-identical body every time.
      const attempts = receiver.on(routes[id]);
      for (const p of accepted) {
        const mine = attempts.filter((a) => a.id === p.id);
        expect(mine.map((a) => a.status)).toEqual([503, 503, 204]);
        expect(new Set(mine.map((a) => a.body)).size).toBe(1);
      }
      expect(attempts).toHaveLength(accepted.length * 3);
      expectSigned(attempts);
      expect(new Set(attempts.map((a) => a.host))).toEqual(new Set([new URL(receiver.url('/')).host]));
    }
    expect(receiver.accepted('/flaky/some').map((p) => p.type)).toEqual(['started', 'succeeded']);
    expect(receiver.accepted('/flaky/all?token=s3cret-token').map((p) => p.type)).not.toContain('progress');

    // Nothing secret comes back: the record and its stream name the events, never the URL.
    const view = await api('GET', `/v1/videos/${all.json.id}`);
    expect(view.json.spec.webhookEvents).toEqual([...DEFAULT_WEBHOOK_EVENTS]);
    expect((await api('GET', `/v1/videos/${some.json.id}`)).json.spec.webhookEvents).toEqual(['started', 'succeeded']);
    const stream = (await api('GET', `/v1/videos/${all.json.id}/events`)).text;
    for (const text of [view.text, stream, (await api('GET', '/v1/videos?limit=10')).text]) {
      expect(text).not.toContain('s3cret-token');
      expect(text).not.toContain('/flaky/');
      expect(text).not.toContain(MASTER);
      expect(text).not.toContain(localSecret);
    }
    const delivered = receiver.attempts.filter((a) => a.status < 300).length;
    expect(await metric('longshot_webhook_deliveries_total{outcome="delivered"}')).toBe(delivered);
    expect(await metric('longshot_webhook_deliveries_total{outcome="failed"}')).toBe(2 * delivered);
    expect(await metric('longshot_webhook_attempt_duration_seconds_count')).toBe(3 * delivered);
  });

  it('gives an event up after its last attempt and counts it; the job then leaves the outbox', async () => {
    const exhausted = await metric('longshot_webhook_deliveries_total{outcome="exhausted"}');
    const sub = await api('POST', '/v1/videos', { body: { ...base, seed: 5, webhook: receiver.url('/never'), webhookEvents: ['succeeded'] } });
    expect(sub.status, sub.text).toBe(202);
    expect((await finished(sub.json.id)).status).toBe('succeeded');
    await waitFor('the webhook to be given up', async () => (await redis.exists(keys.webhookKey(sub.json.id))) === 0);
    const attempts = receiver.on('/never');
    const [succeeded] = await selectedEvents(sub.json.id, ['succeeded']);
    expect(attempts.map((a) => a.id)).toEqual(Array(5).fill(`${sub.json.id}:${succeeded.id}`));
    expectSigned(attempts);
    // Timestamps are the attempts' own, in order.
    const ts = attempts.map((a) => Number(a.timestamp));
    expect([...ts].sort((a, b) => a - b)).toEqual(ts);
    expect(await metric('longshot_webhook_deliveries_total{outcome="exhausted"}')).toBe(exhausted + 1);
  });

  it('refuses loopback, private and link-local destinations by default (400 naming webhook, nothing stored); allows them when configured', async () => {
    // A replica of the same cluster without the allowance: the default policy.
    const strict = await cluster.spawnController(0, { LONGSHOT_WEBHOOK_ALLOW_CIDRS: '' });
    try {
      const before = { hooks: await webhookKeys(), jobs: (await api('GET', '/v1/videos?limit=100', {}, strict.url)).json.items.length };
      const port = new URL(receiver.url('/')).port;
      for (const [webhook, kind] of [
        [receiver.url('/flaky/strict'), 'loopback'],
        [`http://localhost:${port}/flaky/strict`, 'loopback'],
        [`http://[::1]:${port}/`, 'loopback'],
        [`http://[::ffff:127.0.0.1]:${port}/`, 'loopback'],
        ['http://169.254.169.254/latest/meta-data/', 'link-local'],
        ['http://10.0.0.1/', 'private'],
        ['http://[fd00::1]/', 'private'],
        ['http://100.64.0.1/', 'shared'],
        ['http://0.0.0.0/', 'unspecified'],
      ]) {
        const r = await api('POST', '/v1/videos', { body: { ...base, webhook } }, strict.url);
        expect(r.status, webhook).toBe(400);
        expect(r.json, webhook).toMatchObject({ error: 'invalid_request', field: 'webhook' });
        expect(r.json.message, webhook).toContain(`a ${kind} address`);
        expect(r.json.message).not.toContain('127.0.0.1');
      }
      for (const [body, field] of [
        [{ ...base, webhook: 'ftp://hooks.example.com/' }, 'webhook'],
        [{ ...base, webhook: 'https://user:pw@hooks.example.com/' }, 'webhook'],
        [{ ...base, webhook: 'https://hooks.example.com/', webhookEvents: ['completed'] }, 'webhookEvents'],
      ] as const) {
        const r = await api('POST', '/v1/videos', { body }, strict.url);
        expect(r.status).toBe(400);
        expect(r.json.field).toBe(field);
      }
      expect(await webhookKeys()).toEqual(before.hooks);
      expect((await api('GET', '/v1/videos?limit=100', {}, strict.url)).json.items).toHaveLength(before.jobs);
    } finally {
      cluster.kill(strict.id, 'SIGTERM');
      await waitFor('the strict controller to exit', async () => !cluster.controllers.has(strict.id));
    }
    // The cluster's own replica allows loopback: the same URL is accepted there.
    const allowed = await api('POST', '/v1/videos', { body: { ...base, seed: 7, webhook: receiver.url('/flaky/allowed'), webhookEvents: ['queued'] } });
    expect(allowed.status, allowed.text).toBe(202);
    await waitFor('the allowed webhook', async () => receiver.accepted('/flaky/allowed').length === 1);
    expect((await finished(allowed.json.id)).status).toBe('succeeded');
  });

  it('resumes delivery on another controller after the delivering one is killed, with the same event ids', async () => {
    const sub = await api('POST', '/v1/videos', { body: { ...base, seed: 8, webhook: receiver.url('/gate') } });
    expect(sub.status, sub.text).toBe(202);
    const id: string = sub.json.id;
    // The receiver is down: the first event is being retried when its controller dies.
    const refused = await waitFor('a refused attempt', async () => receiver.on('/gate').find((a) => a.status === 503));
    const [only] = [...cluster.controllers.values()];
    cluster.kill(only.id, 'SIGKILL');
    await waitFor('the killed controller to exit', async () => !cluster.controllers.has(only.id));
    receiver.gateOpen = true;
    await cluster.spawnController();
    expect((await finished(id)).status).toBe('succeeded');
    await waitFor(`the webhook of ${id} to finish`, async () => (await redis.exists(keys.webhookKey(id))) === 0);
    const events = await selectedEvents(id, DEFAULT_WEBHOOK_EVENTS);
    const accepted = receiver.accepted('/gate');
    // At least once: every selected event arrived; a repeat (an attempt the dead replica made) carries the same id.
    expect([...new Set(accepted.map((p) => p.id))]).toEqual(events.map((e) => `${id}:${e.id}`));
    expect(accepted[0].id).toBe(refused.id);
    expect(accepted[0].type).toBe('queued');
    expectSigned(receiver.on('/gate'));
  });
});

describe('per-tenant webhook secrets', () => {
  /** A job that is still queued or running when its `queued` webhook arrives (canceled then), delivered to `/ok/<route>`. */
  const queuedHook = async (route: string, key: string, seed: number): Promise<Attempt> => {
    const sub = await api('POST', '/v1/videos', { body: { ...base, seed, steps: 500, frames: 29, webhook: receiver.url(`/ok/${route}`), webhookEvents: ['queued'] } }, undefined, key);
    expect(sub.status, sub.text).toBe(202);
    const [attempt] = await waitFor(`the queued webhook of ${route}`, async () => receiver.on(`/ok/${route}`).length > 0 && receiver.on(`/ok/${route}`));
    expect((await api('POST', `/v1/videos/${sub.json.id}/cancel`, {}, undefined, key)).status).toBe(200);
    return attempt;
  };

  it("signs each tenant's jobs with that tenant's secret only; after a rotation deliveries carry both signatures; no tenant sees another's", async () => {
    const acme = await cluster.createApiKey({ tenant: 'acme', role: 'tenant' });
    const globex = await cluster.createApiKey({ tenant: 'globex', role: 'tenant' });
    const secretOf = async (key: string, query = '') => {
      const r = await api('GET', `/v1/webhooks/secret${query}`, {}, undefined, key);
      expect(r.status, r.text).toBe(200);
      expect(r.headers.get('cache-control')).toBe('no-store');
      return r.json;
    };
    const a = await secretOf(acme);
    const g = await secretOf(globex);
    expect(a).toEqual({ tenant: 'acme', secret: expect.stringMatching(/^whsec_[A-Za-z0-9_-]{43}$/), generation: 0, previous: null });
    expect(g).toMatchObject({ tenant: 'globex', generation: 0, previous: null });
    expect(new Set([a.secret, g.secret, localSecret]).size).toBe(3);
    // A tenant names only itself; an operator names any tenant that has a key.
    expect(await secretOf(acme, '?tenant=acme')).toEqual(a);
    expect(await secretOf(cluster.apiKey!, '?tenant=globex')).toEqual(g);
    const other = await api('GET', '/v1/webhooks/secret?tenant=globex', {}, undefined, acme);
    expect(other.status).toBe(403);
    expect(other.json.error).toBe('forbidden');
    expect(other.text).not.toContain(g.secret);
    expect((await api('POST', '/v1/webhooks/secret/rotate?tenant=globex', {}, undefined, acme)).status).toBe(403);
    expect((await api('GET', '/v1/webhooks/secret?tenant=nobody')).json).toMatchObject({ error: 'not_found' });
    expect((await api('GET', '/v1/webhooks/secret?tenant=Not%20One')).json).toMatchObject({ error: 'invalid_request', field: 'tenant' });

    const fromAcme = await queuedHook('acme', acme, 20);
    const fromGlobex = await queuedHook('globex', globex, 21);
    expectSigned([fromAcme], a.secret);
    expectSigned([fromGlobex], g.secret);
    expect(verifies(fromAcme, g.secret)).toBe(false);
    expect(verifies(fromGlobex, a.secret)).toBe(false);
    expect(verifies(fromAcme, localSecret)).toBe(false);

    const rotated = await api('POST', '/v1/webhooks/secret/rotate', {}, undefined, acme);
    expect(rotated.status, rotated.text).toBe(200);
    expect(rotated.json).toMatchObject({ tenant: 'acme', generation: 1, previous: { secret: a.secret } });
    expect(rotated.json.secret).not.toBe(a.secret);
    // The default grace period: a day.
    expect(Date.parse(rotated.json.previous.expiresAt) - Date.now()).toBeGreaterThan(86_000_000);
    expect(await secretOf(acme)).toEqual(rotated.json);
    expect(await metric('longshot_webhook_secret_rotations_total')).toBe(1);
    // Redis keeps the generation, never a secret.
    expect(await redis.hgetall(keys.webhookSecretKey('acme'))).toEqual({ generation: '1', rotatedAt: expect.stringMatching(/^\d+$/) });

    const afterRotation = await queuedHook('acme-rotated', acme, 22);
    const [current, previous] = afterRotation.signature.split(' ');
    expect(previous).toBeDefined();
    for (const [secret, yes] of [[rotated.json.secret, true], [a.secret, true], [g.secret, false]] as const) expect(verifies(afterRotation, secret), secret).toBe(yes);
    // The current secret's signature comes first.
    expect(verifies({ ...afterRotation, signature: current }, rotated.json.secret)).toBe(true);
    expect(verifies({ ...afterRotation, signature: previous }, a.secret)).toBe(true);
    // Other tenants are untouched.
    expect(await secretOf(globex)).toEqual(g);
  });
});
