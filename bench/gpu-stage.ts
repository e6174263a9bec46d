/**
 * The one home of the GPU stage benchmark's shapes: one middle stage (8 of the 30 layers) of
 * wan2.1-t2v-1.3b at 480p (latent 60x104 -> 30x52 = 1560 tokens per frame), a window of C = 2
 * prefix + B = 4 own frames = 9360 tokens, the CFG batch of 2, the successor's C = 2 cached frames
 * as extra K/V rows, bfloat16 storage. Used by `npm run bench -- gpu` (bench/gpu.ts, through
 * Node), by the stage fixture the native driver times (test/native/stage-fixture.ts ->
 * libs/engine/check/stage-wan2.1-t2v-1.3b.json, run by deploy/gpu-check.sh), and, through
 * `pytorchArgs`, by bench/gpu_pytorch.py in both.
 */
import type { BlockStep, ModelConfig, StageRange } from '@longshot/model';

export const GPU_STAGE = {
  model: 'wan2.1-t2v-1.3b',
  layers: 8,
  latentHeight: 60,
  latentWidth: 104,
  ownFrames: 4,
  contextFrames: 2,
  timestep: 900,
  guidance: 5,
  storage: 'bf16',
  /** The second run is the one that caches the weights on the device. */
  warmup: 2,
  reps: 3,
} as const;

export const GPU_STAGE_RANGE: StageRange = { l0: 0, l1: GPU_STAGE.layers, head: false, tail: false };

export function gpuStageStep(iteration: number): BlockStep {
  return {
    iteration,
    block: 1,
    step: 0,
    timestep: GPU_STAGE.timestep,
    prefixFrames: GPU_STAGE.contextFrames,
    ownFrames: GPU_STAGE.ownFrames,
    contextFrames: GPU_STAGE.contextFrames,
    height: GPU_STAGE.latentHeight,
    width: GPU_STAGE.latentWidth,
  };
}

/** Tokens of the window, per frame, and the successor's extra K/V rows. */
export function gpuStageShape(): { tokens: number; tokensPerFrame: number; frames: number; extraKeys: number; layers: number; cfgBatch: number; storage: string } {
  const hw = (GPU_STAGE.latentHeight / 2) * (GPU_STAGE.latentWidth / 2);
  const frames = GPU_STAGE.contextFrames + GPU_STAGE.ownFrames;
  return { tokens: frames * hw, tokensPerFrame: hw, frames, extraKeys: GPU_STAGE.contextFrames * hw, layers: GPU_STAGE.layers, cfgBatch: 2, storage: GPU_STAGE.storage };
}

/** The argument bench/gpu_pytorch.py takes (as JSON in argv[1]). */
export function pytorchArgs(config: ModelConfig): Record<string, number> {
  return {
    dim: config.dim,
    ffnDim: config.ffnDim,
    heads: config.heads,
    layers: GPU_STAGE.layers,
    eps: config.eps,
    freqDim: config.freqDim,
    ropeTheta: config.ropeTheta,
    textLen: config.textLen,
    frames: GPU_STAGE.contextFrames + GPU_STAGE.ownFrames,
    prefixFrames: GPU_STAGE.contextFrames,
    contextFrames: GPU_STAGE.contextFrames,
    latentHeight: GPU_STAGE.latentHeight,
    latentWidth: GPU_STAGE.latentWidth,
    timestep: GPU_STAGE.timestep,
    warmup: GPU_STAGE.warmup,
    reps: GPU_STAGE.reps,
  };
}
