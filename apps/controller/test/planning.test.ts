import { describe, expect, it } from 'vitest';
import { getConfig } from '@longshot/model';
import { normalizeSpec } from '@longshot/planner';
import { chooseStages } from '../src/planning';

const MODELS = ['tiny', 'small', 'wan2.1-t2v-1.3b', 'wan2.1-t2v-14b'];
const PROFILES = ['h100-nvlink', 'h100-100gbe', 'rtx4090-pcie'];
const FREE = [1, 2, 3, 4, 6, 8, 16, 64];
const spec480p = (model: string) => normalizeSpec({ prompt: 'x', seconds: 5, width: 832, height: 480, model });

describe('chooseStages (K when a job leaves --stages open)', () => {
  it('stays within the free workers and the layer count, and more free workers never lower K', () => {
    for (const model of MODELS) {
      const config = getConfig(model);
      for (const profile of PROFILES) {
        let previous = 1;
        for (const free of FREE) {
          const K = chooseStages(spec480p(model), config, free, profile);
          expect(Number.isInteger(K), `${model} ${profile} ${free}`).toBe(true);
          expect(K).toBeGreaterThanOrEqual(1);
          expect(K, `${model} ${profile} ${free}`).toBeLessThanOrEqual(Math.min(free, config.layers));
          expect(K, `${model} ${profile} ${free}`).toBeGreaterThanOrEqual(previous);
          previous = K;
        }
      }
    }
  });

  it('uses the free workers when the cost model says they help: a real model at 480p splits', () => {
    for (const model of ['wan2.1-t2v-1.3b', 'wan2.1-t2v-14b']) {
      expect(chooseStages(spec480p(model), getConfig(model), 1, 'h100-nvlink')).toBe(1);
      expect(chooseStages(spec480p(model), getConfig(model), 2, 'h100-nvlink')).toBe(2);
      expect(chooseStages(spec480p(model), getConfig(model), 8, 'h100-nvlink')).toBeGreaterThanOrEqual(4);
    }
    // Between pods (100 GbE) too, once the job is large enough.
    expect(chooseStages(spec480p('wan2.1-t2v-14b'), getConfig('wan2.1-t2v-14b'), 8, 'h100-100gbe')).toBeGreaterThan(1);
  });

  it('keeps fewer stages where the links cost more than the compute they spread', () => {
    const tiny = getConfig('tiny');
    const fast = chooseStages(spec480p('tiny'), tiny, 64, 'h100-nvlink');
    const slow = chooseStages(spec480p('tiny'), tiny, 64, 'h100-100gbe');
    expect(slow).toBeLessThan(fast);
    // A frame of 16x16 pixels is one token's worth of work per layer: every hop costs more than it saves.
    expect(chooseStages(normalizeSpec({ prompt: 'x', width: 16, height: 16, seconds: 1 }), tiny, 64, 'h100-100gbe')).toBe(1);
  });

  it('is deterministic and rejects an unknown hardware profile', () => {
    const s = spec480p('small');
    expect(chooseStages(s, getConfig('small'), 8, 'h100-100gbe')).toBe(chooseStages(s, getConfig('small'), 8, 'h100-100gbe'));
    expect(() => chooseStages(s, getConfig('small'), 8, 'no-such-gpu')).toThrow(/no-such-gpu/);
  });
});
