import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { request, waitFor } from './http';

/**
 * LONGSHOT_KEY_ROOT end to end: the libraries read no environment, so the root reaches every
 * store through the apps' configs (controller, worker, the CLI's local cluster). A job run under
 * another root must leave no key under the default one.
 */
const ROOT = 'e2e-root';
let dir: string;
let cluster: LocalCluster;
let redis: Redis;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-key-root-'));
  cluster = await LocalCluster.start({
    workers: 2,
    controllers: 1,
    name: 'keyroot',
    env: { LONGSHOT_KEY_ROOT: ROOT },
    controllerEnv: { LONGSHOT_KEY_ROOT: ROOT, LONGSHOT_RESULTS_DIR: path.join(dir, 'results') },
  });
  redis = new Redis(cluster.redisUrl);
});

afterAll(async () => {
  redis?.disconnect();
  await cluster?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('LONGSHOT_KEY_ROOT', () => {
  it('keeps every key of the API keys, queue, registry, leases, records and pipeline data under the configured root', async () => {
    const url = [...cluster.controllers.values()][0].url;
    // The operator key the cluster made (under ROOT) is the one the controller accepts.
    const auth = { authorization: `Bearer ${cluster.apiKey}` };
    const body = { prompt: 'a lighthouse', size: '64x64', frames: 13, block: 2, context: 1, steps: 4, model: 'tiny', seed: 3, stages: 2 };
    const submitted = await request(url, 'POST', '/v1/videos', { body, headers: auth });
    expect(submitted.status, submitted.text).toBe(202);
    const id = submitted.json.id as string;
    const done = await waitFor(
      `${id} to finish`,
      async () => {
        const j = (await request(url, 'GET', `/v1/videos/${id}`, { headers: auth })).json;
        return ['succeeded', 'failed', 'canceled'].includes(j.status) ? j : null;
      },
      150_000,
    );
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    const all = await redis.keys('*');
    expect(all.filter((k) => !k.startsWith(`${ROOT}:`))).toEqual([]);
    for (const part of ['{apikeys}', '{bull}', '{registry}', `job:{${id}}`]) expect(all.some((k) => k.startsWith(`${ROOT}:${part}`)), part).toBe(true);
  });
});
