/**
 * Stage forward time: one block-step (window of prefix C + own B latent frames, classifier-free
 * guidance batch of 2, a cached successor K/V) through a stage holding every layer of a small
 * config, with the effective GFLOP/s from the planner's cost model.
 */
import { cpuBackend } from '@longshot/engine';
import { encodePrompt, getConfig, seededStageWeights, Stage, type BlockStep } from '@longshot/model';
import { stageFlops } from '@longshot/planner';
import { Rng } from '@longshot/random';

export interface StageForwardReport {
  model: string;
  window: { prefixFrames: number; ownFrames: number; successorFrames: number; latentHeight: number; latentWidth: number; tokens: number };
  ms: number;
  gflops: number;
}

export async function benchStageForward(model: string, reps = 3): Promise<StageForwardReport> {
  const config = getConfig(model);
  const range = { l0: 0, l1: config.layers, head: true, tail: true };
  const stage = new Stage({
    config,
    range,
    weights: seededStageWeights(config, range, 0),
    backend: cpuBackend(),
    text: { cond: encodePrompt('a benchmark', config), uncond: encodePrompt('', config) },
    guidance: 5,
  });
  const [B, C, H, W] = [4, 2, 32, 32];
  const step = (iteration: number, block: number): BlockStep => ({ iteration, block, step: 0, timestep: 900, prefixFrames: C, ownFrames: B, contextFrames: C, height: H, width: W });
  const window = Rng.from('bench', model).fillNormal(new Float32Array(config.latentChannels * (B + C) * H * W));
  await stage.forward(step(0, 2), window); // warm-up; leaves the successor cache block 1 uses
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    await stage.forward(step(r + 1, 2), window); // newer neighbour of block 1 in the same iteration
    const t0 = performance.now();
    await stage.forward(step(r + 1, 1), window);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const ms = times[times.length >> 1];
  const tokensPerFrame = (H / 2) * (W / 2);
  const flops = stageFlops(config, config.layers, { tokensPerFrame, prefixFrames: C, ownFrames: B, successorFrames: C }, true, true);
  return {
    model,
    window: { prefixFrames: C, ownFrames: B, successorFrames: C, latentHeight: H, latentWidth: W, tokens: (B + C) * tokensPerFrame },
    ms,
    gflops: flops / ms / 1e6,
  };
}
