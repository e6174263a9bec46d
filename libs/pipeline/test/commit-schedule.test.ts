import { describe, expect, it } from 'vitest';
import { BlockQueue, CommitSchedule, formatCommitCadence, parseCommitCadence, type IssuedStep } from '@longshot/pipeline';
import { normalizeSpec, planJob, type PieceId, type QueueState } from '@longshot/planner';
import { WAN_SCHEDULER_CONFIG } from '@longshot/sampler';
import { standInVelocity as velocity } from './stand-in-velocity';

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
    const s = new CommitSchedule({ iterations: 3 }, 10, 0, 0);
    expect([...Array(10).keys()].map((i) => s.commitAfter(i))).toEqual([3, 3, 3, 6, 6, 6, 9, 9, 9, 10]);
    const resumed = new CommitSchedule({ iterations: 3 }, 10, 6, 0);
    expect([6, 7, 8, 9].map((i) => resumed.commitAfter(i))).toEqual([9, 9, 9, 10]);
    expect(() => resumed.commitAfter(5)).toThrow(/iteration 5 outside 6\.\.9/);
    expect(() => resumed.commitAfter(10)).toThrow(/outside/);
  });

  it('by seconds: every boundary until the pace is known, then about T seconds apart at the measured pace', () => {
    const s = new CommitSchedule({ seconds: 10 }, 100, 0, 100);
    expect(s.commitAfter(0)).toBe(1);
    expect(s.commitAfter(1)).toBe(2); // nothing measured yet: one iteration
    s.completed(0, 102); // 2 s per iteration
    expect(s.stride()).toBe(5);
    expect(s.commitAfter(1)).toBe(2); // already scheduled: never moves
    expect(s.commitAfter(2)).toBe(7);
    expect(s.commitAfter(6)).toBe(7);
    s.completed(1, 104);
    s.completed(2, 106);
    s.completed(3, 120); // iterations slowed: 20 s over 4, 5 s each
    expect(s.stride()).toBe(2);
    expect(s.commitAfter(7)).toBe(9);
    expect(s.commitAfter(9)).toBe(11);
    s.completed(10, 122); // 22 s over 11
    expect(s.stride()).toBe(5);
    expect(s.commitAfter(99)).toBe(100); // the schedule walks on, and ends at the last iteration
    expect(s.commitAfter(11)).toBe(16);
  });

  it('by seconds: a resumed session starts its schedule at the boundary it resumes from', () => {
    const s = new CommitSchedule({ seconds: 1 }, 20, 12, 50);
    expect(s.commitAfter(12)).toBe(13);
    s.completed(12, 50.25); // 0.25 s per iteration
    expect(s.commitAfter(13)).toBe(17);
    expect(() => new CommitSchedule({ seconds: 1 }, 20, 21, 0)).toThrow(/start 21 outside 0\.\.20/);
  });

  it('a head storing only what the next commit can name resumes from every committed boundary to the same latents, while the pace changes under it', () => {
    const spec = normalizeSpec({ prompt: 'x', frames: 4 * (24 - 1) + 1, block: 4, context: 2, steps: 6, width: 32, height: 32, seed: 7 });
    const plan = planJob(spec);
    /** Runs `q` to the end, 4 block-steps in flight; `onApplied` sees every result. */
    const runQueue = (q: BlockQueue, onApplied: (step: IssuedStep, r: ReturnType<BlockQueue['apply']>, finished: ReadonlyMap<number, Float32Array>) => void = () => undefined): Map<number, Float32Array> => {
      const finished = new Map<number, Float32Array>();
      const flight: IssuedStep[] = [];
      while (!q.done) {
        for (let x = flight.length < 4 ? q.issue() : null; x; x = flight.length < 4 ? q.issue() : null) flight.push(x);
        const step = flight.shift()!;
        const r = q.apply(step.step.iteration, step.step.block, velocity(step));
        if (r.finished) finished.set(r.finished.index, r.finished.latents.slice());
        onApplied(step, r, finished);
      }
      return finished;
    };
    const name = (p: PieceId) => `${p.block}:${p.kind}:${p.step}`;
    for (const sampler of ['unipc', 'euler'] as const) {
      const s = { ...spec, sampler };
      const options = { channels: 16, scheduler: WAN_SCHEDULER_CONFIG };
      const whole = runQueue(new BlockQueue(s, plan, options));
      const q = new BlockQueue(s, plan, { ...options, storesPieces: true });
      const schedule = new CommitSchedule({ seconds: 3 }, plan.iterations, 0, 0);
      // The head's store: what it kept of each piece it did not skip, as Redis would hold it.
      const stored = new Map<string, Float32Array>();
      const commits: QueueState[] = [];
      let [skipped, clock] = [0, 0];
      const finished = runQueue(q, (step, r, finishedSoFar) => {
        if (step.step.iteration >= schedule.commitAfter(step.step.iteration) - q.pieceLifetime) for (const p of r.pieces) stored.set(name(p.id), p.values.slice());
        else skipped += r.pieces.length;
        if (r.completedIteration === null) return;
        // Iterations take 0.4 s, then 1.5 s from the sixth on, then 0.2 s.
        clock += r.completedIteration < 6 ? 0.4 : r.completedIteration < 14 ? 1.5 : 0.2;
        schedule.completed(r.completedIteration, clock);
        if (schedule.commitAfter(r.completedIteration) === r.completedIteration + 1) {
          const m = q.manifest();
          const get = (p: PieceId): Float32Array => {
            const v = stored.get(name(p));
            if (!v) throw new Error(`${sampler}: ${name(p)} named at boundary ${m.iteration} was not stored`);
            return v;
          };
          commits.push({
            iteration: m.iteration,
            sampler: m.sampler,
            noise: m.noise,
            blocks: m.blocks.map((b) => ({ index: b.index, step: b.step, latents: get(b.pieces.latents), history: { modelOutputs: b.pieces.modelOutputs.map(get), lastSample: b.pieces.lastSample && get(b.pieces.lastSample), lowerOrderNums: b.lowerOrderNums, lastOrder: b.lastOrder }, pieces: b.pieces })),
            finishedTail: m.finishedTail === null ? null : { index: m.finishedTail, latents: finishedSoFar.get(m.finishedTail)! },
          });
        }
        q.piecesStored(r.completedIteration);
      });
      expect([...finished.keys()]).toEqual([...whole.keys()]);
      // The cadence did thin the writes out, and the job committed more than its end.
      expect(skipped, sampler).toBeGreaterThan(0);
      expect(commits.length, sampler).toBeGreaterThan(2);
      expect(commits.length, sampler).toBeLessThan(plan.iterations);
      for (const state of commits) {
        if (state.iteration === plan.iterations) continue;
        const resumed = runQueue(new BlockQueue(s, plan, { ...options, state }));
        for (const [index, latents] of resumed) expect(latents, `${sampler}: block ${index} resumed from boundary ${state.iteration}`).toEqual(whole.get(index));
        expect(resumed.size, `${sampler}: blocks finished after boundary ${state.iteration}`).toBeGreaterThan(0);
      }
    }
  });
});
