import { describe, expect, it } from 'vitest';
import { getConfig, seededVaeConfig, vaeDecodeFlops, WAN21_VAE } from '@longshot/model';
import { describeLayout, getProfile, jobTiming, layoutWorkers, normalizeSpec, placementLinks, planJob, predictPipelineSeconds, type PipelineLayout } from '@longshot/planner';
import { chooseLayout, chooseStages, pickStages, predictJobSeconds } from '../src/planning';

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
          const K = chooseStages(spec480p(model), config, seededVaeConfig(config), free, profile);
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
      expect(chooseStages(spec480p(model), getConfig(model), seededVaeConfig(getConfig(model)), 1, 'h100-nvlink')).toBe(1);
      expect(chooseStages(spec480p(model), getConfig(model), seededVaeConfig(getConfig(model)), 2, 'h100-nvlink')).toBe(2);
      expect(chooseStages(spec480p(model), getConfig(model), seededVaeConfig(getConfig(model)), 8, 'h100-nvlink')).toBeGreaterThanOrEqual(4);
    }
    // Between pods (100 GbE) too, once the job is large enough.
    expect(chooseStages(spec480p('wan2.1-t2v-14b'), getConfig('wan2.1-t2v-14b'), seededVaeConfig(getConfig('wan2.1-t2v-14b')), 8, 'h100-100gbe')).toBeGreaterThan(1);
  });

  it('keeps fewer stages where the links cost more than the compute they spread', () => {
    const tiny = getConfig('tiny');
    const fast = chooseStages(spec480p('tiny'), tiny, seededVaeConfig(tiny), 64, 'h100-nvlink');
    const slow = chooseStages(spec480p('tiny'), tiny, seededVaeConfig(tiny), 64, 'h100-100gbe');
    expect(slow).toBeLessThan(fast);
    // A frame of 16x16 pixels is one token's worth of work per layer: every hop costs more than it saves.
    expect(chooseStages(normalizeSpec({ prompt: 'x', width: 16, height: 16, seconds: 1 }), tiny, seededVaeConfig(tiny), 64, 'h100-100gbe')).toBe(1);
  });

  it('prices each K on the links of the workers it would lease, not the profile\'s one link', () => {
    const tiny = getConfig('tiny');
    const s = spec480p('tiny');
    const vae = seededVaeConfig(tiny);
    const L = getProfile('h100-100gbe').links;
    const all = (link: typeof L.nvlink) => (K: number) => (K === 1 ? [] : Array(K).fill(link));
    // Leased in one NVLink domain, the 100 GbE profile chooses as the NVLink profile does, and the other way round.
    expect(chooseStages(s, tiny, vae, 64, 'h100-100gbe', all(L.nvlink))).toBe(chooseStages(s, tiny, vae, 64, 'h100-nvlink'));
    expect(chooseStages(s, tiny, vae, 64, 'h100-nvlink', all(L.network))).toBe(chooseStages(s, tiny, vae, 64, 'h100-100gbe'));
    // Nodes of 8 GPUs, each its own NVLink domain, 100 GbE between them: in between.
    const nodes = (K: number) => placementLinks(Array.from({ length: K }, (_, k) => ({ host: `n${k >> 3}`, nvlinkDomain: `n${k >> 3}`, gpu: `GPU-${k}`, nicBytesPerSecond: 12.5e9 })), L);
    const mixed = chooseStages(s, tiny, vae, 64, 'h100-100gbe', nodes);
    expect(mixed).toBeGreaterThanOrEqual(chooseStages(s, tiny, vae, 64, 'h100-100gbe'));
    expect(mixed).toBeLessThanOrEqual(chooseStages(s, tiny, vae, 64, 'h100-nvlink'));
  });

  it('is deterministic and rejects an unknown hardware profile', () => {
    const s = spec480p('small');
    expect(chooseStages(s, getConfig('small'), seededVaeConfig(getConfig('small')), 8, 'h100-100gbe')).toBe(chooseStages(s, getConfig('small'), seededVaeConfig(getConfig('small')), 8, 'h100-100gbe'));
    expect(() => chooseStages(s, getConfig('small'), seededVaeConfig(getConfig('small')), 8, 'no-such-gpu')).toThrow(/no-such-gpu/);
  });
});

describe('the decoder in the plan (decoding on the tail, docs/vae.md)', () => {
  const wan = getConfig('wan2.1-t2v-1.3b');
  const spec = (steps: number) => normalizeSpec({ prompt: 'x', seconds: 5, width: 832, height: 480, steps, model: 'wan2.1-t2v-1.3b' });
  /** The prediction as it was before the decoder joined the cost model. */
  const withoutDecoding = (s: ReturnType<typeof spec>, K: number, profile: string) => predictPipelineSeconds(jobTiming(s, wan, K, getProfile(profile), undefined, { blocks: 256, steps: 64 }));

  it('makes the predicted job longer: by all of decoding 24 latent frames at 832x480 with K = 1, by less with K > 1', () => {
    const s = spec(20);
    const profile = getProfile('h100-100gbe');
    expect(planJob(s).latentFrames).toBe(24);
    const decoding = vaeDecodeFlops(WAN21_VAE, 60, 104, 24) / profile.flopsPerSecond; // 316 TFLOP, 0.71 s
    const lastSend = (16 * 832 * 480 * 3) / profile.controllerLinkBytesPerSecond;
    expect(predictJobSeconds(s, wan, WAN21_VAE, 1, 'h100-100gbe') - withoutDecoding(s, 1, 'h100-100gbe')).toBeCloseTo(decoding + lastSend, 6);
    const added4 = predictJobSeconds(s, wan, WAN21_VAE, 4, 'h100-100gbe') - withoutDecoding(s, 4, 'h100-100gbe');
    expect(added4).toBeGreaterThan(0);
    expect(added4).toBeLessThan(decoding);
  });

  it('changes the chosen K where decoding is a large share of the work (few steps), both ways', () => {
    const before = (s: ReturnType<typeof spec>, free: number, profile: string) => pickStages(Math.min(free, wan.layers), (K) => withoutDecoding(s, K, profile));
    // One step: decoding a block (54 TFLOP) is about a block-step; K = 1 would decode between
    // block-steps, a second stage takes half the layers off the decoding tail.
    expect(before(spec(1), 2, 'h100-100gbe')).toBe(1);
    expect(chooseStages(spec(1), wan, WAN21_VAE, 2, 'h100-100gbe')).toBe(2);
    // Four steps on 8 free workers: with the decoder's serial share an 8th stage no longer gains 10%.
    expect(before(spec(4), 8, 'rtx4090-pcie')).toBe(8);
    expect(chooseStages(spec(4), wan, WAN21_VAE, 8, 'rtx4090-pcie')).toBe(7);
    // Twenty steps: decoding is a few percent of the job; K stays.
    for (const free of [2, 4, 8]) expect(chooseStages(spec(20), wan, WAN21_VAE, free, 'h100-100gbe')).toBe(before(spec(20), free, 'h100-100gbe'));
  });
});

describe('chooseLayout (K, U and CFG parallel when a job leaves stages open)', () => {
  const spec720p = (model: string) => normalizeSpec({ prompt: 'x', seconds: 5, width: 1280, height: 720, model });

  it('stays within the free workers, the layers and the heads, and honours the fields the request fixed', () => {
    for (const model of MODELS) {
      const config = getConfig(model);
      const vae = seededVaeConfig(config);
      for (const free of [1, 2, 3, 4, 8, 16]) {
        for (const fixed of [{}, { cfgParallel: true }, { cfgParallel: false }, { ulysses: 2 }, { ulysses: 1, cfgParallel: false }]) {
          const l = chooseLayout(spec480p(model), config, vae, free, 'h100-nvlink', { fixed });
          const what = `${model} ${free} ${JSON.stringify(fixed)}: ${describeLayout(l)}`;
          expect(l, what).toMatchObject(fixed);
          expect(l.stages, what).toBeLessThanOrEqual(config.layers);
          expect(l.ulysses, what).toBeLessThanOrEqual(config.heads);
          // Too few free workers for the fixed group: one stage of it (the job waits for its workers).
          const group = (fixed.ulysses ?? 1) * (fixed.cfgParallel ? 2 : 1);
          if (group > free) expect(l, what).toEqual({ stages: 1, ulysses: fixed.ulysses ?? 1, cfgParallel: fixed.cfgParallel ?? false });
          else expect(layoutWorkers(l), what).toBeLessThanOrEqual(free);
        }
      }
    }
  });

  it('spends workers on groups where the cost model says they beat more stages: a real model at 720p', () => {
    for (const model of ['wan2.1-t2v-1.3b', 'wan2.1-t2v-14b']) {
      const config = getConfig(model);
      const vae = seededVaeConfig(config);
      const s = spec720p(model);
      expect(chooseLayout(s, config, vae, 1, 'h100-nvlink')).toEqual({ stages: 1, ulysses: 1, cfgParallel: false });
      for (const free of [4, 8, 16]) {
        const l = chooseLayout(s, config, vae, free, 'h100-nvlink');
        const K = chooseStages(s, config, vae, free, 'h100-nvlink');
        expect(l.ulysses > 1 || l.cfgParallel, `${model} ${free}: ${describeLayout(l)}`).toBe(true);
        // At least MIN_GAIN faster than the best stages-only choice, or it would not use more workers than K.
        expect(predictJobSeconds(s, config, vae, l, 'h100-nvlink')).toBeLessThan(predictJobSeconds(s, config, vae, K, 'h100-nvlink'));
      }
    }
    // With one worker per stage fixed, it is chooseStages' K.
    const wan = getConfig('wan2.1-t2v-14b');
    expect(chooseLayout(spec720p('wan2.1-t2v-14b'), wan, WAN21_VAE, 8, 'h100-nvlink', { fixed: { ulysses: 1, cfgParallel: false } }).stages).toBe(chooseStages(spec720p('wan2.1-t2v-14b'), wan, WAN21_VAE, 8, 'h100-nvlink'));
  });

  it("prices each layout on the links between its stages' rank-0 workers, as leasing would place them", () => {
    const tiny = getConfig('tiny');
    const vae = seededVaeConfig(tiny);
    const L = getProfile('h100-100gbe').links;
    const seen: PipelineLayout[] = [];
    const network = (l: PipelineLayout) => {
      seen.push(l);
      return l.stages === 1 ? [] : Array(l.stages).fill(L.network);
    };
    let differs = false;
    for (const s of [spec480p('tiny'), spec720p('tiny')]) {
      for (const free of [2, 4, 8, 16]) {
        // Stages a network apart under the NVLink profile choose as the 100 GbE profile does.
        const onNetwork = chooseLayout(s, tiny, vae, free, 'h100-nvlink', { linksFor: network });
        expect(onNetwork, `${free}`).toEqual(chooseLayout(s, tiny, vae, free, 'h100-100gbe'));
        differs ||= describeLayout(onNetwork) !== describeLayout(chooseLayout(s, tiny, vae, free, 'h100-nvlink'));
      }
    }
    expect(differs).toBe(true);
    expect(seen.some((l) => l.ulysses > 1 && l.cfgParallel)).toBe(true);
  });
});
