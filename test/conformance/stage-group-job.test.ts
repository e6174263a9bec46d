/**
 * Whole jobs in process with stage groups (docs/parallelism.md): every block-step of a job (block
 * 0 without a prefix, finished neighbours as prefixes, successor caches within each iteration,
 * the sampler applying each velocity) through K stages of StageGroups gives the latents of K = 1
 * single stages, bit for bit: the acceptance matrix's layouts (2x2, 1x3 on a 6-head model, 3x1
 * with CFG parallel) and both options together.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { cpuBackend } from '@longshot/engine';
import { StageGroup, encodePrompt, getConfig, seededStageWeights, Stage, type ModelConfig, type StageLayout } from '@longshot/model';
import { BlockQueue, runLocalPipeline, type StageRunner } from '@longshot/pipeline';
import { normalizeSpec, partitionLayers, planJob, type JobSpec } from '@longshot/planner';
import { WAN_SCHEDULER_CONFIG } from '@longshot/sampler';

const backend = cpuBackend();
/** 'tiny' widened to 6 heads of 12, so three Ulysses members hold two heads each. */
const SIX_HEADS: ModelConfig = { ...getConfig('tiny'), name: 'tiny-6-heads', dim: 72, heads: 6, layers: 3 };
/** 5 blocks of 3 latent frames, context 2, 4 steps at 64x48: windows of 3 and 5 frames of 12 tokens. */
const SPEC: JobSpec = normalizeSpec({ prompt: 'a heron over a river', width: 64, height: 48, frames: 4 * (5 * 3 - 1) + 1, block: 3, context: 2, steps: 4, seed: 5, model: 'tiny' });

/** sha256 of every finished block's latents, in block order. */
async function latentSha(config: ModelConfig, stages: number, layout: StageLayout | null): Promise<string> {
  const text = { cond: encodePrompt(SPEC.prompt, config), uncond: encodePrompt('', config) };
  const runners: StageRunner[] = partitionLayers(config.layers, stages).map((range) => {
    const o = { config, range, weights: seededStageWeights(config, range, 0), backend, text, guidance: SPEC.guidance };
    return layout ? new StageGroup(o, layout) : new Stage(o);
  });
  const hash = createHash('sha256');
  await runLocalPipeline(new BlockQueue(SPEC, planJob(SPEC), { channels: config.latentChannels, scheduler: WAN_SCHEDULER_CONFIG }), runners, {
    onBlockFinished: (b) => void hash.update(Buffer.from(b.latents.buffer, b.latents.byteOffset, b.latents.byteLength)),
  });
  return hash.digest('hex');
}

describe('whole jobs through stage groups give the single-process latents', () => {
  const cases: { name: string; config: ModelConfig; stages: number; layout: StageLayout }[] = [
    { name: 'K=2 x U=2', config: getConfig('tiny'), stages: 2, layout: { ulysses: 2, cfgParallel: false } },
    { name: 'K=1 x U=3 (6 heads)', config: SIX_HEADS, stages: 1, layout: { ulysses: 3, cfgParallel: false } },
    { name: 'K=3 x CFG', config: getConfig('tiny'), stages: 3, layout: { ulysses: 1, cfgParallel: true } },
    { name: 'K=2 x U=3 x CFG (6 heads)', config: SIX_HEADS, stages: 2, layout: { ulysses: 3, cfgParallel: true } },
  ];
  const references = new Map<string, Promise<string>>();
  const reference = (config: ModelConfig) => {
    if (!references.has(config.name)) references.set(config.name, latentSha(config, 1, null));
    return references.get(config.name)!;
  };

  it.each(cases)('$name', async ({ config, stages, layout }) => {
    expect(await latentSha(config, stages, layout)).toBe(await reference(config));
  });

  it('a group of one member is the plain stage', async () => {
    expect(await latentSha(getConfig('tiny'), 2, { ulysses: 1, cfgParallel: false })).toBe(await reference(getConfig('tiny')));
  });

  it('a group refuses hidden states of the wrong size', async () => {
    const config = getConfig('tiny');
    const range = { l0: 2, l1: 4, head: false, tail: false };
    const group = new StageGroup({ config, range, weights: seededStageWeights(config, range, 0), backend, text: { cond: new Float32Array(config.textLen * config.textDim), uncond: new Float32Array(config.textLen * config.textDim) }, guidance: 5 }, { ulysses: 2, cfgParallel: false });
    const step = { iteration: 0, block: 0, step: 0, timestep: 999, prefixFrames: 0, ownFrames: 3, contextFrames: 2, height: 6, width: 8 };
    await expect(group.forward(step, new Float32Array(7))).rejects.toThrow(/input has 7 values, expected hidden states \[2, 36, 64\]/);
  });
});
