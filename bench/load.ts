/**
 * `npm run bench -- load [--json]`: a bounded load test of the API (not a timed test).
 * Submits LOAD_SUBMISSIONS (200) requests at once, every Idempotency-Key used twice with the same
 * body, opens LOAD_SSE_CLIENTS (500) SSE streams over the jobs, and checks: 0 lost (every job
 * finishes and every stream gets its terminal event), 0 duplicated (one job per key), and the
 * Redis client count stays bounded however many SSE clients there are (one shared reader).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Redis } from 'ioredis';
import { LocalCluster } from '../apps/cli/src/local-cluster';

const int = (name: string, fallback: number): number => {
  const v = Number(process.env[name] ?? fallback);
  if (!Number.isSafeInteger(v) || v < 1) throw new Error(`${name} must be a positive integer`);
  return v;
};

export async function loadBench(opts: { json: boolean }): Promise<object> {
  const submissions = int('LOAD_SUBMISSIONS', 200);
  const sseClients = int('LOAD_SSE_CLIENTS', 500);
  const keys = Math.ceil(submissions / 2);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-load-'));
  const cluster = await LocalCluster.start({ workers: 2, controllers: 1, auth: 'none', name: 'load', controllerEnv: { LONGSHOT_RESULTS_DIR: path.join(dir, 'results'), LONGSHOT_WAIT_FOR_WORKERS_MS: '200' } });
  const redis = new Redis(cluster.redisUrl);
  const base = [...cluster.controllers.values()][0].url;
  try {
    const clientsBefore = await redisClients(redis);
    const t0 = Date.now();
    const body = (k: number) => ({ prompt: `load ${k}`, size: '64x64', frames: 5, block: 2, context: 1, steps: 2, model: 'tiny', seed: k, stages: 1 });
    const replies = await Promise.all(
      Array.from({ length: submissions }, async (_, i) => {
        const k = i % keys;
        const res = await fetch(`${base}/v1/videos`, { method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': `load-${k}` }, body: JSON.stringify(body(k)) });
        return { k, status: res.status, id: ((await res.json()) as { id?: string }).id };
      }),
    );
    const submitSeconds = (Date.now() - t0) / 1000;
    const statuses: Record<string, number> = {};
    for (const r of replies) statuses[r.status] = (statuses[r.status] ?? 0) + 1;
    const idsByKey = new Map<number, Set<string>>();
    for (const r of replies) if (r.id) (idsByKey.get(r.k) ?? idsByKey.set(r.k, new Set()).get(r.k)!).add(r.id);
    const duplicated = [...idsByKey.values()].reduce((n, s) => n + s.size - 1, 0);
    const ids = [...new Set(replies.map((r) => r.id).filter((id): id is string => !!id))];

    // SSE clients spread over the jobs; each reads until its terminal event.
    let peakClients = 0;
    let open = 0;
    const streams = Array.from({ length: sseClients }, (_, i) => sseTerminal(`${base}/v1/videos/${ids[i % ids.length]}/events`, () => open++));
    const sampler = setInterval(() => void redisClients(redis).then((n) => (peakClients = Math.max(peakClients, n)), () => undefined), 200);
    const terminals = await Promise.all(streams);
    clearInterval(sampler);
    peakClients = Math.max(peakClients, await redisClients(redis));
    const finals = await Promise.all(ids.map(async (id) => ((await (await fetch(`${base}/v1/videos/${id}`)).json()) as { status: string }).status));
    const report = {
      submissions,
      idempotencyKeys: keys,
      statuses,
      jobs: ids.length,
      duplicated,
      lost: ids.length - finals.filter((s) => s === 'succeeded').length + (keys - idsByKey.size),
      sseClients,
      sseOpened: open,
      sseWithoutTerminalEvent: terminals.filter((t) => !t).length,
      redisClientsBefore: clientsBefore,
      redisClientsPeak: peakClients,
      submitSeconds,
      totalSeconds: (Date.now() - t0) / 1000,
    };
    if (!opts.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return report;
  } finally {
    redis.disconnect();
    await cluster.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function redisClients(redis: Redis): Promise<number> {
  return String(await redis.client('LIST')).trim().split('\n').length;
}

/** Whether the stream ended with succeeded | failed | canceled. */
async function sseTerminal(url: string, opened: () => void): Promise<boolean> {
  const res = await fetch(url);
  if (res.status !== 200) return false;
  opened();
  const text = await res.text();
  return /event: (succeeded|failed|canceled)\n/.test(text);
}
