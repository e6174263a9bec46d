import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_KEYS as keys } from '@longshot/cache';
import { Rng } from '@longshot/random';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { queuePrefix } from '../../apps/controller/src/queue';
import { request, type HttpInit } from './http';
import { embeddingsFile } from './uploads';

/*
 * The attacks of issue 13 (server paths from clients, input hygiene) replayed against a real
 * controller and worker on a real Redis: each is refused with a 4xx naming the field, leaks no
 * bytes, and changes nothing.
 */

let dir: string;
let models: string;
let cluster: LocalCluster;
let redis: Redis;
let queue: Queue;
let queueConnection: Redis;
let url: string;

/** A secret outside the models directory, as /etc/shadow would be. */
const SECRET = 'root:*:20000:0:99999:7:::\n';
const MAX_UPLOAD = 64 * 1024;
const base = { prompt: 'a lighthouse in a storm', size: '64x64', block: 2, context: 1, steps: 2, model: 'tiny', seed: 3, frames: 5, stages: 1 };

const api = (method: string, route: string, init: HttpInit = {}) => request(url, method, route, init);

/** What must not change when a request is refused: jobs, queue and uploads. */
async function state() {
  const jobs = (await api('GET', '/v1/videos?limit=100')).json.items.map((j: any) => `${j.id}:${j.status}`);
  const counts = await queue.getJobCounts('waiting', 'prioritized', 'delayed', 'active', 'completed', 'failed');
  const uploads = (await redis.keys(`${keys.root}:upload:*`)).length;
  return { jobs, counts, uploads };
}

const finished = async (id: string) => {
  for (let i = 0; i < 600; i++) {
    const j = (await api('GET', `/v1/videos/${id}`)).json;
    if (['succeeded', 'failed', 'canceled'].includes(j.status)) return j;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`job ${id} did not finish`);
};

function expectRefused(r: { status: number; json: any; text: string }, field: string, status = 400): void {
  expect(r.status, r.text).toBe(status);
  expect(r.json.field, r.text).toBe(field);
  expect(r.json.message).toBeTruthy();
  // Never file bytes or server paths.
  expect(r.text).not.toContain('root:');
  expect(r.text).not.toContain(dir);
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-trust-'));
  models = path.join(dir, 'models');
  fs.mkdirSync(models);
  fs.writeFileSync(path.join(dir, 'shadow'), SECRET);
  // Entries a client must not be able to use: a link out of the directory and a FIFO.
  fs.symlinkSync(path.join(dir, 'shadow'), path.join(models, 'escape.safetensors'));
  fs.symlinkSync(dir, path.join(models, 'up'));
  execFileSync('mkfifo', [path.join(models, 'fifo.safetensors')]);
  cluster = await LocalCluster.start({
    auth: 'none', // the API without identities; test/e2e/auth.test.ts covers keys
    workers: 1,
    controllers: 1,
    name: 'trust',
    modelsDir: models,
    controllerEnv: { LONGSHOT_RESULTS_DIR: path.join(dir, 'results'), LONGSHOT_MAX_UPLOAD_BYTES: String(MAX_UPLOAD), LONGSHOT_WAIT_FOR_WORKERS_MS: '200' },
  });
  url = [...cluster.controllers.values()][0].url;
  redis = new Redis(cluster.redisUrl);
  queueConnection = redis.duplicate();
  queue = new Queue('render', { connection: queueConnection, prefix: queuePrefix() });
});

afterAll(async () => {
  await queue?.close();
  queueConnection?.disconnect();
  redis?.disconnect();
  await cluster?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('no server paths from clients', () => {
  it('refuses paths, traversal, links and FIFOs as models, and paths as embeddings, without bytes', async () => {
    const before = await state();
    const cases: [Record<string, unknown>, string][] = [
      [{ ...base, model: path.join(dir, 'shadow') }, 'model'],
      [{ ...base, model: '/etc/shadow' }, 'model'],
      [{ ...base, model: '../shadow' }, 'model'],
      [{ ...base, model: 'up/shadow' }, 'model'],
      [{ ...base, model: 'escape.safetensors' }, 'model'],
      [{ ...base, model: 'up' }, 'model'],
      // A FIFO answers at once (lstat, never opened): a blocked event loop would time this test out.
      [{ ...base, model: 'fifo.safetensors' }, 'model'],
      [{ ...base, model: 'no-such-model' }, 'model'],
      [{ ...base, prompt: undefined, textEmbeddings: path.join(dir, 'shadow') }, 'textEmbeddings'],
      [{ ...base, prompt: undefined, textEmbeddings: '/etc/shadow' }, 'textEmbeddings'],
      [{ ...base, prompt: undefined, textEmbeddingsId: '../../etc/shadow' }, 'textEmbeddingsId'],
      [{ ...base, prompt: undefined, textEmbeddingsId: '123e4567-e89b-42d3-a456-426614174000' }, 'textEmbeddingsId'],
    ];
    for (const [body, field] of cases) expectRefused(await api('POST', '/v1/videos', { body }), field);
    expect(await state()).toEqual(before);
    // The process still answers: the FIFO blocked nothing.
    expect((await api('GET', '/healthz')).status).toBe(200);
  });

  it('takes text embeddings as an upload: bad and oversized uploads are 4xx, a good one conditions a job', async () => {
    const before = await state();
    expectRefused(await api('POST', '/v1/embeddings', { raw: 'not a safetensors file', headers: { 'content-type': 'application/octet-stream' } }), 'body');
    expectRefused(await api('POST', '/v1/embeddings', { raw: Buffer.alloc(MAX_UPLOAD + 1), headers: { 'content-type': 'application/octet-stream' } }), 'body', 413);
    expectRefused(await api('POST', '/v1/embeddings', { raw: '', headers: { 'content-type': 'application/octet-stream' } }), 'body');
    expect(await state()).toEqual(before);

    const wrongDim = await api('POST', '/v1/embeddings', { raw: embeddingsFile(3, 7), headers: { 'content-type': 'application/octet-stream' } });
    expect(wrongDim.status).toBe(201);
    expectRefused(await api('POST', '/v1/videos', { body: { ...base, prompt: undefined, textEmbeddingsId: wrongDim.json.id } }), 'textEmbeddingsId');

    const up = await api('POST', '/v1/embeddings', { raw: embeddingsFile(), headers: { 'content-type': 'application/octet-stream' } });
    expect(up.status, up.text).toBe(201);
    expect(up.json.tensors).toEqual(['cond']);
    const sub = await api('POST', '/v1/videos', { body: { ...base, prompt: undefined, textEmbeddingsId: up.json.id } });
    expect(sub.status, sub.text).toBe(202);
    const done = await finished(sub.json.id);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    expect(done.spec.textEmbeddingsId).toBe(up.json.id);
    // Other conditioning, other video: the upload was used, not the prompt.
    const byPrompt = await finished((await api('POST', '/v1/videos', { body: base })).json.id);
    expect(byPrompt.result.latentSha256).not.toBe(done.result.latentSha256);

    // Input hygiene on a finished job: an inverted Range is 416, a bad Last-Event-ID is 400.
    const range = await api('GET', `/v1/videos/${done.id}/content`, { headers: { range: 'bytes=5-1' } });
    expect(range.status, range.text).toBe(416);
    expect(range.json.error).toBe('range_not_satisfiable');
    expect((await api('GET', `/v1/videos/${done.id}/content`, { headers: { range: 'bytes=0-9' } })).status).toBe(206);
    for (const bad of ['garbage', '99999999999999999999-0', '1-2-3', '']) {
      expectRefused(await api('GET', `/v1/videos/${done.id}/events`, { headers: { 'last-event-id': bad } }), 'Last-Event-ID');
    }
    const events = await api('GET', `/v1/videos/${done.id}/events`, { headers: { 'last-event-id': '0-0' } });
    expect(events.status).toBe(200);
    expect(events.text).toMatch(/event: succeeded/);
  });
});

describe('input hygiene', () => {
  it('refuses inherited field names, empty idempotency keys and invalid UTF-8, changing nothing', async () => {
    const before = await state();
    for (const name of ['constructor', 'toString', '__proto__', 'hasOwnProperty', 'valueOf']) {
      expectRefused(await api('POST', '/v1/videos', { raw: `{"prompt":"x","${name}":{"a":1}}`, headers: { 'content-type': 'application/json' } }), name);
    }
    for (const key of ['', ' ', 'k'.repeat(256), 'tab\there']) {
      expectRefused(await api('POST', '/v1/videos', { body: base, headers: { 'idempotency-key': key } }), 'Idempotency-Key');
    }
    const invalidUtf8 = Buffer.concat([Buffer.from('{"prompt":"'), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from('","frames":5}')]);
    expectRefused(await api('POST', '/v1/videos', { raw: invalidUtf8, headers: { 'content-type': 'application/json' } }), 'body');
    expect(await state()).toEqual(before);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/^longshot_http_rejected_total\{reason="invalid_request"\} [1-9]/m);
  });

  it('answers 250 generated malformed requests with 4xx only, and nothing changes', async () => {
    const before = await state();
    const rng = Rng.from('issue-13-fuzz');
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rng.uniform() * xs.length)];
    const notString = [null, true, -1e308, 0.5, 7, [], [1, 'x'], {}, { $gt: '' }];
    const notNumber = [null, false, '12', '', [], [3], {}, { n: 1 }, 'NaN'];
    const badString = ['', '../../etc/shadow', '/etc/shadow', '\u0000', '\ud800', 'x'.repeat(20_000), 'ddim', '12x'];
    const stringFields = ['prompt', 'negativePrompt', 'textEmbeddingsId', 'size', 'sampler', 'model'];
    const patterned = ['textEmbeddingsId', 'size', 'sampler', 'model'];
    const numberFields = ['seconds', 'frames', 'width', 'height', 'fps', 'steps', 'guidance', 'shift', 'seed', 'stages', 'block', 'context', 'priority'];
    const unknown = ['textEmbeddings', 'constructor', '__proto__', 'toString', 'colour', ''];
    /** One field of a valid body made invalid: a wrong JSON type, a string its pattern refuses, an unknown name. */
    const malformedField = (): [string, unknown] =>
      pick([
        (): [string, unknown] => [pick(stringFields), pick(notString)],
        (): [string, unknown] => [pick(numberFields), pick(notNumber)],
        (): [string, unknown] => [pick(patterned), pick(badString)],
        (): [string, unknown] => [pick(['prompt', 'negativePrompt']), 'x'.repeat(10_001 + Math.floor(rng.uniform() * 50_000))],
        (): [string, unknown] => [pick(['frames', 'steps', 'fps', 'priority', 'width']), pick([-7, 0, 1e15, 2.5])],
        (): [string, unknown] => [pick(unknown), pick([...notString, ...badString])],
      ])();
    const missing = '00000000-0000-0000-0000-000000000000';
    // A finished job (from the upload test) for the range and event kinds, so they reach the checks behind the lookup.
    const done: string = (await api('GET', '/v1/videos?status=succeeded&limit=1')).json.items[0]?.id ?? missing;
    const kinds = [
      // A valid body with one field replaced by a value of a random JSON type.
      () => {
        const [k, v] = malformedField();
        return api('POST', '/v1/videos', { body: { ...base, [k]: v } });
      },
      // Bodies that are not objects, or not JSON.
      () => api('POST', '/v1/videos', { raw: pick(['', '[', '"x"', '1', 'null', '{"a":', '{}}', '\u0000{}']), headers: { 'content-type': 'application/json' } }),
      () => api('POST', '/v1/videos', { raw: JSON.stringify(pick([...notString, ...badString])), headers: { 'content-type': pick(['application/json', 'text/plain', 'application/x-www-form-urlencoded']) } }),
      // Bad headers.
      () => api('POST', '/v1/videos', { body: { ...base, frames: 6 }, headers: { 'idempotency-key': pick(['', ' ', 'x'.repeat(300)]) } }),
      () => api('POST', '/v1/videos', { body: base, headers: { 'content-type': 'application/json; charset=latin-9' } }),
      // Bad queries, ids and ranges.
      () => api('GET', `/v1/videos?${pick(['limit=0', 'limit=101', 'limit=x', 'status=done', 'cursor=abc', 'cursor=-1', 'limit=1e3'])}`),
      () => api('GET', `/v1/videos/${pick([missing, 'x', '..%2F..%2Fetc', '%00'])}`),
      () => api('POST', `/v1/videos/${pick([missing, 'x'])}/cancel`),
      () => api('GET', `/v1/videos/${missing}/content`, { headers: { range: pick(['bytes=5-1', 'bytes=-', 'bytes=x-y', 'items=0-1']) } }),
      // Unsatisfiable ranges (a malformed one is ignored, as RFC 9110 says, and gets the whole file).
      () => api('GET', `/v1/videos/${done}/content`, { headers: { range: pick(['bytes=5-1', 'bytes=999999999-', 'bytes=-0', 'bytes=9-3,7-2']) } }),
      () => api('GET', `/v1/videos/${pick([missing, done])}/events`, { headers: { 'last-event-id': pick(['garbage', '1-', '-1', '0-0-0', '1234567890123456-0', '1-1x']) } }),
      () => api('GET', `/v1/videos/${missing}/blocks/${pick(['-1', 'x', '99999999999'])}/preview.jpg`),
    ];
    const statuses = new Map<number, number>();
    for (let i = 0; i < 250; i++) {
      const r = await kinds[i % kinds.length]();
      statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      expect(r.status >= 400 && r.status < 500, `request ${i}: ${r.status} ${r.text.slice(0, 300)}`).toBe(true);
      expect(r.text).not.toContain('root:');
    }
    console.log(`fuzz: 250 requests, statuses ${JSON.stringify(Object.fromEntries(statuses))}`);
    expect(await state()).toEqual(before);
  });
});
