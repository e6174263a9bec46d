import { describe, expect, it } from 'vitest';
import { BlockQueue, CommitSchedule, formatCommitCadence, parseCommitCadence, type IssuedStep } from '@longshot/pipeline';
import { normalizeSpec, planJob, type PieceId } from '@longshot/planner';
import { WAN_SCHEDULER_CONFIG } from '@longshot/sampler';

describe('--checkpoint-every: N iterations or T seconds', () => {
  it('parses counts and durations, and names the flag in every refusal', () => {
    expect(parseCommitCadence('1', '--checkpoint-every')).toEqual({ iterations: 1 });
    expect(parseCommitCadence(' 12 ', '--checkpoint-every')).toEqual({ iterations: 12 });
    expect(parseCommitCadence('30s', '--checkpoint-every')).toEqual({ seconds: 30 });
    expect(parseCommitCadence('0.25s', '--checkpoint-every')).toEqual({ seconds: 0.25 });
    expect(formatCommitCadence({ seconds: 30 })).toBe('30s');
    expect(formatCommitCadence({ iterations: 3 })).toBe('3');
    for (const bad of ['0', '0s', '-1', '1.5', '3m', 's', '', '1e3', '2000000', '90000s']) {
      expect(() => parseCommitCadence(bad, '--checkpoint-every'), bad).toThrow(/^--checkpoint-every: /);
    }
  });
});

describe('CommitSchedule', () => {
  it('by iterations: the multiples of N and the last iteration, whatever the start', () => {
    const s = new CommitSchedule({ iterations: 3 }, 10, 0);
    expect([...Array(10).keys()].map((i) => s.commitAfter(i))).toEqual([3, 3, 3, 6, 6, 6, 9, 9, 9, 10]);
    const resumed = new CommitSchedule({ iterations: 3 }, 10, 6);
    expect([6, 7, 8, 9].map((i) => resumed.commitAfter(i))).toEqual([9, 9, 9, 10]);
    expect(() => resumed.commitAfter(5)).toThrow(/iteration 5 outside 6\.\.9/);
    expect(() => resumed.commitAfter(10)).toThrow(/outside/);
  });

  it('by seconds: every boundary until the pace is known, then about T seconds apart at the measured pace', () => {
    const s = new CommitSchedule({ seconds: 10 }, 100, 0);
    expect(s.commitAfter(0)).toBe(1);
    expect(s.commitAfter(1)).toBe(2); // nothing measured yet: one iteration
    s.completed(0, 102, 100); // 2 s per iteration
    expect(s.stride()).toBe(5);
    expect(s.commitAfter(1)).toBe(2); // already scheduled: never moves
    expect(s.commitAfter(2)).toBe(7);
    expect(s.commitAfter(6)).toBe(7);
    s.completed(1, 104, 100);
    s.completed(2, 106, 100);
    s.completed(3, 120, 100); // iterations slowed: 20 s over 4, 5 s each
    expect(s.stride()).toBe(2);
    expect(s.commitAfter(7)).toBe(9);
    expect(s.commitAfter(9)).toBe(11);
    s.completed(10, 122, 100); // 22 s over 11
    expect(s.stride()).toBe(5);
    expect(s.commitAfter(99)).toBe(100); // the schedule walks on, and ends at the last iteration
    expect(s.commitAfter(11)).toBe(16);
  });

  it('by seconds: a resumed session starts its schedule at the boundary it resumes from', () => {
    const s = new CommitSchedule({ seconds: 1 }, 20, 12);
    expect(s.commitAfter(12)).toBe(13);
    s.completed(12, 50.25, 50); // 0.25 s per iteration
    expect(s.commitAfter(13)).toBe(17);
    expect(() => new CommitSchedule({ seconds: 1 }, 20, 21)).toThrow(/start 21 outside 0\.\.20/);
  });

  it('a head storing only what the next commit can name has every piece of every committed manifest, while the pace changes under it', () => {
    const spec = normalizeSpec({ prompt: 'x', frames: 4 * (24 - 1) + 1, block: 4, context: 2, steps: 6, width: 32, height: 32, seed: 7 });
    const plan = planJob(spec);
    const ownSize = 16 * spec.block * plan.latentHeight * plan.latentWidth;
    const velocity = (s: IssuedStep) => {
      const v = new Float32Array(ownSize);
      for (let i = 0; i < ownSize; i++) v[i] = s.window[s.window.length - ownSize + i] * 0.5 + 0.01;
      return v;
    };
    const name = (p: PieceId) => `${p.block}:${p.kind}:${p.step}`;
    for (const sampler of ['unipc', 'euler'] as const) {
      const q = new BlockQueue({ ...spec, sampler }, plan, { channels: 16, scheduler: WAN_SCHEDULER_CONFIG, storesPieces: true });
      const schedule = new CommitSchedule({ seconds: 3 }, plan.iterations, 0);
      const stored = new Set<string>();
      let [skipped, commits, clock] = [0, 0, 0];
      const flight: IssuedStep[] = [];
      while (!q.done) {
        for (let x = flight.length < 4 ? q.issue() : null; x; x = flight.length < 4 ? q.issue() : null) flight.push(x);
        const step = flight.shift()!;
        const r = q.apply(step.step.iteration, step.step.block, velocity(step));
        if (step.step.iteration >= schedule.commitAfter(step.step.iteration) - q.pieceLifetime) for (const p of r.pieces) stored.add(name(p.id));
        else skipped += r.pieces.length;
        if (r.completedIteration === null) continue;
        // Iterations take 0.4 s, then 1.5 s from the sixth on, then 0.2 s.
        clock += r.completedIteration < 6 ? 0.4 : r.completedIteration < 14 ? 1.5 : 0.2;
        schedule.completed(r.completedIteration, clock, 0);
        const boundary = r.completedIteration + 1;
        if (schedule.commitAfter(r.completedIteration) === boundary) {
          commits++;
          for (const b of q.manifest().blocks) {
            for (const id of [b.pieces.latents, ...b.pieces.modelOutputs, ...(b.pieces.lastSample ? [b.pieces.lastSample] : [])]) {
              expect(stored.has(name(id)), `${sampler}: ${name(id)} named at boundary ${boundary} was not stored`).toBe(true);
            }
          }
        }
        q.piecesStored(r.completedIteration);
      }
      // The cadence did thin the writes out, and the job still committed more than its end.
      expect(skipped, sampler).toBeGreaterThan(0);
      expect(commits, sampler).toBeGreaterThan(2);
      expect(commits, sampler).toBeLessThan(plan.iterations);
    }
  });
});
