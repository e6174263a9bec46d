import { describe, expect, it } from 'vitest';
import type { JobPlan } from '@longshot/planner';
import { blockStepsThrough, etaSeconds, PROGRESS_INTERVAL_MS, ProgressReporter } from '../src/render/progress';

const planOf = (blocks: number, steps: number): JobPlan => ({ latentFrames: blocks * 2, latentHeight: 4, latentWidth: 4, blocks, iterations: blocks + steps - 1, blockSteps: blocks * steps });

/**
 * The DualParal schedule spelled out: at iteration i every block b with 0 <= i - b < steps gets
 * one step, the newest block first. Counts the steps up to and including (iteration, block).
 */
function simulated(blocks: number, steps: number, iteration: number, block: number): number {
  let n = 0;
  for (let i = 0; i <= iteration; i++) {
    for (let b = blocks - 1; b >= 0; b--) {
      if (i - b < 0 || i - b >= steps) continue;
      if (i === iteration && b < block) continue;
      n++;
    }
  }
  return n;
}

describe('blockStepsThrough', () => {
  it('counts the block-steps the schedule applied through (iteration, block), for every point of several plans', () => {
    for (const [blocks, steps] of [[1, 1], [1, 4], [3, 2], [5, 5], [8, 3], [2, 7]]) {
      const plan = planOf(blocks, steps);
      for (let i = 0; i < plan.iterations; i++) {
        for (let b = Math.max(0, i - steps + 1); b <= Math.min(i, blocks - 1); b++) {
          expect(blockStepsThrough(plan, steps, i, b), `${blocks}x${steps} at (${i}, ${b})`).toBe(simulated(blocks, steps, i, b));
        }
      }
      expect(blockStepsThrough(plan, steps, plan.iterations - 1, blocks - 1)).toBe(plan.blockSteps);
    }
  });
});

describe('etaSeconds', () => {
  it('is the remaining block-steps at this run\'s rate since its first, to 0.1 s', () => {
    // 10 steps in 4 s since the run's first (count 5 before it): 2.5 steps/s, 85 left -> 34 s.
    expect(etaSeconds(15, 5, 100, 4)).toBe(34);
    expect(etaSeconds(3, 0, 10, 1)).toBeCloseTo(2.3, 10);
  });

  it('is null before there is a rate', () => {
    expect(etaSeconds(5, null, 100, 4)).toBeNull();
    expect(etaSeconds(5, 5, 100, 4)).toBeNull();
    expect(etaSeconds(5, 4, 100, 0)).toBeNull();
  });
});

/** An in-memory record: the reporter's writes, and whether the job is still running. */
function recorder() {
  const writes: { fields?: unknown; event?: { name: string; data: unknown } }[] = [];
  const state = { running: true };
  const jobs = {
    update: async (_id: string, change: { fields?: unknown; event?: { name: string; data: unknown } }) => {
      writes.push(change);
      return { changed: state.running, previous: state.running ? ('running' as const) : ('canceled' as const) };
    },
  };
  return { writes, state, jobs };
}

describe('ProgressReporter', () => {
  it('writes progress at most every PROGRESS_INTERVAL_MS on steps, at once on a stitched block, with ETA and block counts', async () => {
    const r = recorder();
    let now = 1_000_000;
    let blocksDone = 0;
    const plan = planOf(4, 2); // 8 block-steps
    const p = new ProgressReporter('job-1', plan, 2, r.jobs, () => blocksDone, () => undefined, () => now);
    // Writes read the counts when they run: let each run before the next step.
    now += 1000;
    p.step(0, 0); // the run's first block-step: 1 done in 1 s
    await p.flush();
    now += PROGRESS_INTERVAL_MS - 150;
    p.step(1, 1); // within the interval: not written
    await p.flush();
    now += 400;
    p.step(1, 0);
    await p.flush();
    blocksDone = 1;
    p.blockStitched();
    await p.flush();
    expect(r.writes.map((w) => w.event?.data)).toEqual([
      { blocksDone: 0, blocks: 4, blockStepsDone: 1, blockSteps: 8, etaSeconds: 7 },
      // 3 block-steps in 1.5 s: 5 left at 2 a second.
      { blocksDone: 0, blocks: 4, blockStepsDone: 3, blockSteps: 8, etaSeconds: 2.5 },
      { blocksDone: 1, blocks: 4, blockStepsDone: 3, blockSteps: 8, etaSeconds: 2.5 },
    ]);
    expect(r.writes[0].fields).toEqual({ progress: { blockStepsDone: 1, etaSeconds: 7 } });
  });

  it('stops the run when the record left running (a cancel it did not hear), and records failovers', async () => {
    const r = recorder();
    let stopped = 0;
    const p = new ProgressReporter('job-2', planOf(2, 2), 2, r.jobs, () => 0, () => stopped++, () => 0);
    await p.failover({ attempt: 2, lost: [{ id: 'w-1', address: 'a:1', numerics: 'cpu' }], reason: 'heartbeat', error: 'gone' });
    expect(r.writes[0].event).toEqual({ name: 'failover', data: { attempt: 2, lost: ['w-1'], reason: 'heartbeat', error: 'gone' } });
    r.state.running = false;
    p.blockStitched();
    await p.flush();
    expect(stopped).toBe(1);
  });
});
