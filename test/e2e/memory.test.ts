import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobPrefix } from '@longshot/cache';
import { Stitcher } from '@longshot/media';
import { cpuBackend } from '@longshot/engine';
import { modelBlockDecoder, resolveModel } from '@longshot/model';
import { runDistributedJob } from '@longshot/pipeline';
import { normalizeSpec, planJob } from '@longshot/planner';
import { LocalCluster } from '../../apps/cli/src/local-cluster';

/**
 * Worker memory must not grow with the length of a job. Lifetime peak RSS is the wrong measure
 * (it counts garbage not yet collected and allocator slack, so it moves with timing and a leak of
 * a whole block per block hides in its noise); the workers run with --memory-probe instead and
 * report their retained memory (V8 heap in use + external buffers, after a forced GC) after every
 * block. In steady state (the head's queue full, before it drains) that series must be flat: a
 * least-squares slope per block that is a small fraction of one block's latents, the smallest
 * thing a per-block leak would keep.
 *
 * Runs alone, after the rest of the suite (see test/vitest.config.ts).
 */
const MiB = 2 ** 20;
/** Slope bound: 1/8 of one block's latents per block (a leaked block gives 1 or more). */
const SLOPE_FRACTION = 1 / 8;
/** Generous absolute guards on the retained bytes of one worker. */
const MAX_RETAINED = 512 * MiB;
const MAX_STEADY_GROWTH = 16 * MiB;

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-memory-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Least-squares slope of y over x = 0, 1, 2, ... */
function slope(y: readonly number[]): number {
  const n = y.length;
  const mx = (n - 1) / 2;
  const my = y.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (i - mx) * (y[i] - my);
    den += (i - mx) ** 2;
  }
  return num / den;
}

describe('worker memory', () => {
  it('retains nothing per block over a long job', { timeout: 300_000 }, async () => {
    const cluster = await LocalCluster.start({ workers: 2, name: 'mem', memoryProbe: true });
    const redis = new Redis(cluster.redisUrl);
    try {
      const run = async (latentFrames: number, id: string) => {
        const spec = normalizeSpec({ prompt: 'a lighthouse', model: 'tiny', width: 128, height: 128, block: 2, context: 1, steps: 4, stages: 2, seed: 3, frames: 4 * (latentFrames - 1) + 1 });
        const plan = planJob(spec);
        const stitcher = new Stitcher(path.join(dir, `${id}.mp4`), { frames: spec.frames, fps: spec.fps, width: spec.width, height: spec.height, block: spec.block, blocks: plan.blocks, latentChannels: 16 }, modelBlockDecoder(resolveModel('tiny'), { block: spec.block, latentHeight: plan.latentHeight, latentWidth: plan.latentWidth }, cpuBackend()));
        const result = await runDistributedJob(
          { jobId: id, spec, keyPrefix: jobPrefix(id), text: null },
          { ...cluster.driver(redis, id), onBlock: async (i, l) => void (await stitcher.add(i, l)) },
        );
        await stitcher.finish();
        return { spec, plan, result };
      };
      // The same job first brings both workers to their steady state (JIT, pools, connections).
      await run(320, 'mem-warmup');
      const { spec, plan, result } = await run(320, 'mem-long');
      const blockBytes = 16 * spec.block * plan.latentHeight * plan.latentWidth * 4;
      expect(result.workers.length).toBe(2);
      for (const worker of result.workers) {
        const samples = result.retainedBytes[worker];
        // One sample per block on every stage.
        expect(samples.length).toBe(plan.blocks);
        // Steady state: the queue holds `steps` blocks from block `steps` on, and drains over the last `steps`.
        const steady = samples.slice(2 * spec.steps, plan.blocks - spec.steps);
        const perBlock = slope(steady);
        const growth = steady[steady.length - 1] - steady[0];
        console.log(
          `${worker}: ${steady.length} steady blocks, retained ${(steady[0] / MiB).toFixed(2)} -> ${(steady[steady.length - 1] / MiB).toFixed(2)} MiB, ` +
            `slope ${perBlock.toFixed(0)} B/block = ${(perBlock / blockBytes).toFixed(4)} of a block's ${blockBytes} B`,
        );
        expect(steady.length).toBeGreaterThanOrEqual(100);
        expect(perBlock).toBeLessThan(SLOPE_FRACTION * blockBytes);
        expect(Math.max(...samples)).toBeLessThan(MAX_RETAINED);
        expect(growth).toBeLessThan(MAX_STEADY_GROWTH);
      }
    } finally {
      redis.disconnect();
      await cluster.stop();
    }
  });
});
