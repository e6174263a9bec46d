import { describe, expect, it } from 'vitest';
import { blockSchedule, iterationCount, normalizeSpec, partitionLayers, planJob, prerequisites, SpecError } from '@longshot/planner';

describe('block schedule', () => {
  it('takes nb + T - 1 iterations, block b at step i - b, newest first, queue never above min(nb, T)', () => {
    for (const [nb, T] of [[1, 1], [5, 3], [3, 5], [8, 8]]) {
      const s = blockSchedule(nb, T);
      expect(s.length).toBe(iterationCount(nb, T));
      const stepsTaken = new Array(nb).fill(0);
      const finished: number[] = [];
      for (const it of s) {
        expect(it.blockSteps.length).toBeLessThanOrEqual(Math.min(nb, T));
        const blocks = it.blockSteps.map((x) => x.block);
        expect(blocks).toEqual([...blocks].sort((a, b) => b - a));
        for (const { block, step } of it.blockSteps) {
          expect(step).toBe(it.index - block);
          expect(stepsTaken[block]).toBe(step);
          stepsTaken[block]++;
        }
        if (it.finished !== null) finished.push(it.finished);
      }
      expect(stepsTaken).toEqual(new Array(nb).fill(T));
      expect(finished).toEqual(Array.from({ length: nb }, (_, i) => i));
    }
  });

  it('names the strict-ordering prerequisites of a block-step', () => {
    expect(prerequisites(3, 5, 8, 4)).toEqual([{ block: 3, step: 1 }, { block: 2, step: 2 }]);
    expect(prerequisites(0, 1, 8, 4)).toEqual([{ block: 0, step: 0 }]);
    expect(prerequisites(2, 2, 8, 4)).toEqual([{ block: 1, step: 0 }]); // block 2 is new in iteration 2
    expect(prerequisites(0, 0, 8, 4)).toEqual([]);
  });
});

describe('layer partition', () => {
  it('covers every layer once, contiguously, extra layers in the middle', () => {
    for (const layers of [1, 6, 8, 30, 40]) {
      for (let k = 1; k <= layers; k++) {
        const r = partitionLayers(layers, k);
        expect(r.length).toBe(k);
        expect(r[0].l0).toBe(0);
        expect(r[k - 1].l1).toBe(layers);
        r.forEach((x, i) => {
          if (i > 0) expect(x.l0).toBe(r[i - 1].l1);
          expect(x.l1 - x.l0).toBeGreaterThanOrEqual(Math.floor(layers / k));
          expect(x.l1 - x.l0).toBeLessThanOrEqual(Math.ceil(layers / k));
          expect(x.head).toBe(i === 0);
          expect(x.tail).toBe(i === k - 1);
        });
      }
    }
    expect(partitionLayers(30, 4).map((r) => r.l1 - r.l0)).toEqual([7, 8, 8, 7]);
    expect(() => partitionLayers(6, 7)).toThrow(/stages/);
  });
});

describe('job spec', () => {
  it('rounds seconds up to whole blocks and derives the plan', () => {
    const s = normalizeSpec({ prompt: 'a boat', seconds: 2, fps: 16, block: 4 });
    expect((s.frames - 1) % 4).toBe(0);
    const p = planJob(s);
    expect(p.latentFrames % s.block).toBe(0);
    expect(s.frames).toBeGreaterThanOrEqual(2 * 16);
    expect(p.iterations).toBe(p.blocks + s.steps - 1);
  });

  it('samples with UniPC at the model scheduler\'s shift unless told otherwise', () => {
    expect(normalizeSpec({ prompt: 'x' })).toMatchObject({ sampler: 'unipc', shift: null });
    expect(normalizeSpec({ prompt: 'x', sampler: 'euler', shift: 5 })).toMatchObject({ sampler: 'euler', shift: 5 });
  });

  it('names the field of a bad request', () => {
    const bad: [object, string][] = [
      [{}, 'prompt'],
      [{ prompt: 'x', frames: 10 }, 'frames'],
      [{ prompt: 'x', frames: -3 }, 'frames'],
      [{ prompt: 'x', frames: 21, block: 4 }, 'frames'],
      [{ prompt: 'x', width: 100 }, 'width'],
      [{ prompt: 'x', steps: 0 }, 'steps'],
      [{ prompt: 'x', context: 5, block: 4 }, 'context'],
      [{ prompt: 'x', seed: 1.5 }, 'seed'],
      [{ prompt: 'x', guidance: 'high' }, 'guidance'],
      [{ prompt: 7 }, 'prompt'],
      [{ prompt: 'x', frames: 17, seconds: 1 }, 'frames'],
      [{ prompt: 'x', sampler: 'ddim' }, 'sampler'],
      [{ prompt: 'x', shift: 0 }, 'shift'],
    ];
    for (const [req, field] of bad) {
      let err: unknown;
      try {
        normalizeSpec(req);
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(req)).toBeInstanceOf(SpecError);
      expect((err as SpecError).field).toBe(field);
    }
  });
});
