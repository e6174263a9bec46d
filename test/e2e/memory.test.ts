import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockStore, jobPrefix, WorkerRegistry } from '@longshot/cache';
import { Stitcher } from '@longshot/media';
import { registryWorkers, runDistributedJob } from '@longshot/pipeline';
import { normalizeSpec, planJob } from '@longshot/planner';
import { LocalCluster } from '../../apps/cli/src/local-cluster';

// Runs alone, after the rest of the suite (see test/vitest.config.ts): peak memory is a property
// of the worker, not of whatever else the machine is doing.
let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-memory-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Peak RSS of each worker of a fresh 2-stage cluster after a warm-up job and then a job of `latentFrames`. */
async function peakRss(latentFrames: number, name: string): Promise<number[]> {
  const cluster = await LocalCluster.start({ workers: 2, name });
  const redis = new Redis(cluster.redisUrl);
  try {
    let rss: number[] = [];
    // The same warm-up on both clusters brings each worker to its steady state (JIT, heap sizes)
    // first; what must not happen afterwards is growth with the number of frames.
    for (const [frames, id] of [[48, `${name}-warmup`], [latentFrames, name]] as const) {
      const s = normalizeSpec({ prompt: 'a lighthouse', model: 'tiny', width: 128, height: 128, block: 2, context: 1, steps: 4, stages: 2, seed: 3, frames: 4 * (frames - 1) + 1 });
      const stitcher = new Stitcher(path.join(dir, `${id}.mp4`), { frames: s.frames, fps: s.fps, width: s.width, height: s.height, block: s.block, blocks: planJob(s).blocks, latentChannels: 16 });
      const run = await runDistributedJob(
        { jobId: id, spec: s, keyPrefix: jobPrefix(id), text: null },
        { blocks: new BlockStore(redis), workers: registryWorkers(new WorkerRegistry(redis)), onBlock: async (i, l) => void (await stitcher.add(i, l)) },
      );
      await stitcher.finish();
      rss = run.workers.map((w) => run.maxRssBytes[w]);
    }
    return rss;
  } finally {
    redis.disconnect();
    await cluster.stop();
  }
}

describe('worker memory', () => {
  it('stays flat for a job four times as long', { timeout: 300_000 }, async () => {
    const short = await peakRss(192, 'mem-short');
    const long = await peakRss(768, 'mem-long');
    const worst = Math.max(...long.map((l, i) => l / short[i]));
    console.log(`worker peak RSS (head, tail), 192 latent frames: ${short.map((b) => (b / 2 ** 20).toFixed(1)).join(', ')} MiB; 768 latent frames: ${long.map((b) => (b / 2 ** 20).toFixed(1)).join(', ')} MiB; worst ratio ${worst.toFixed(3)}`);
    expect(short.length).toBe(2);
    expect(worst).toBeLessThanOrEqual(1.05);
  });
});
