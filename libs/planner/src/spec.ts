import { SAMPLER_KINDS, type SamplerKind } from '@longshot/sampler';

/**
 * A job's spec and its derived plan. Validation names the offending field so the CLI can say
 * which flag is wrong and the REST API can answer 400 with it; a job is a pure function of the
 * normalised spec.
 */
export interface JobRequest {
  prompt?: string;
  /** What the video should not show: the uncond side of classifier-free guidance ("" when absent). */
  negativePrompt?: string;
  /** Path of a safetensors file with `cond` (and optionally `uncond`) text embeddings. */
  textEmbeddings?: string;
  seconds?: number;
  frames?: number;
  fps?: number;
  width?: number;
  height?: number;
  steps?: number;
  guidance?: number;
  /** Overrides the model scheduler's flow_shift. */
  shift?: number;
  /** 'unipc' (the default, what Wan ships) or 'euler'. */
  sampler?: string;
  /** Latent frames per block (B). */
  block?: number;
  /** Context frames shared with each neighbour block (C). */
  context?: number;
  stages?: number;
  seed?: number;
  /** A model config name or a safetensors file. */
  model?: string;
}

export interface JobSpec {
  readonly prompt: string;
  readonly negativePrompt: string;
  readonly textEmbeddings: string | null;
  readonly frames: number;
  readonly fps: number;
  readonly width: number;
  readonly height: number;
  readonly steps: number;
  readonly guidance: number;
  /** The schedule shift, or null for the model scheduler's flow_shift. */
  readonly shift: number | null;
  readonly sampler: SamplerKind;
  readonly block: number;
  readonly context: number;
  readonly stages: number;
  readonly seed: number;
  readonly model: string;
}

export interface JobPlan {
  readonly latentFrames: number;
  readonly latentHeight: number;
  readonly latentWidth: number;
  readonly blocks: number;
  readonly iterations: number;
  readonly blockSteps: number;
}

export interface SpecLimits {
  readonly maxFrames: number;
  readonly maxPixels: number;
  readonly maxSteps: number;
}

export const DEFAULT_LIMITS: SpecLimits = { maxFrames: 4097, maxPixels: 1280 * 720, maxSteps: 1000 };

export const SPEC_DEFAULTS = {
  fps: 16,
  width: 256,
  height: 256,
  steps: 20,
  guidance: 5.0,
  sampler: 'unipc' as SamplerKind,
  block: 4,
  context: 2,
  stages: 1,
  seed: 0,
  model: 'tiny',
  seconds: 3,
} as const;

export class SpecError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = 'SpecError';
  }
}

export function latentFramesOf(frames: number): number {
  return (frames - 1) / 4 + 1;
}

export function framesOf(latentFrames: number): number {
  return 4 * (latentFrames - 1) + 1;
}

/**
 * Fills defaults and checks every field. `seconds` is rounded up to whole blocks (a duration is
 * approximate); an explicit `frames` must already fit the latent and block grid, and the error
 * says which counts would.
 */
export function normalizeSpec(req: JobRequest, limits: SpecLimits = DEFAULT_LIMITS): JobSpec {
  const int = (field: keyof JobRequest, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    if (typeof v !== 'number' || !Number.isInteger(v)) throw new SpecError(field, `must be an integer, got ${show(v)}`);
    if (v < min || v > max) throw new SpecError(field, `must be in ${min}..${max}, got ${v}`);
    return v;
  };
  const num = (field: keyof JobRequest, v: unknown, min: number, max: number): number => {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new SpecError(field, `must be a number, got ${show(v)}`);
    if (v < min || v > max) throw new SpecError(field, `must be in ${min}..${max}, got ${v}`);
    return v;
  };

  if (req.prompt !== undefined && typeof req.prompt !== 'string') throw new SpecError('prompt', `must be a string, got ${show(req.prompt)}`);
  if (req.textEmbeddings !== undefined && (typeof req.textEmbeddings !== 'string' || req.textEmbeddings === '')) {
    throw new SpecError('textEmbeddings', 'must be a non-empty reference (a file for the CLI, an upload id for the API)');
  }
  const prompt = req.prompt ?? '';
  if (prompt.trim() === '' && !req.textEmbeddings) throw new SpecError('prompt', 'is required (or give text embeddings)');
  if (prompt.length > 10_000) throw new SpecError('prompt', `is ${prompt.length} characters; at most 10000`);
  const negativePrompt = req.negativePrompt ?? '';
  if (typeof negativePrompt !== 'string') throw new SpecError('negativePrompt', `must be a string, got ${show(negativePrompt)}`);
  if (negativePrompt.length > 10_000) throw new SpecError('negativePrompt', `is ${negativePrompt.length} characters; at most 10000`);

  const fps = int('fps', req.fps ?? SPEC_DEFAULTS.fps, 1, 120);
  const width = int('width', req.width ?? SPEC_DEFAULTS.width, 16, 8192);
  const height = int('height', req.height ?? SPEC_DEFAULTS.height, 16, 8192);
  if (width % 16 !== 0) throw new SpecError('width', `must be a multiple of 16 (8x VAE, 2x patch), got ${width}`);
  if (height % 16 !== 0) throw new SpecError('height', `must be a multiple of 16 (8x VAE, 2x patch), got ${height}`);
  if (width * height > limits.maxPixels) throw new SpecError('width', `${width}x${height} exceeds the configured limit of ${limits.maxPixels} pixels`);
  const steps = int('steps', req.steps ?? SPEC_DEFAULTS.steps, 1, limits.maxSteps);
  const guidance = num('guidance', req.guidance ?? SPEC_DEFAULTS.guidance, 0, 100);
  const shift = req.shift === undefined || req.shift === null ? null : num('shift', req.shift, 0.01, 100);
  const sampler = req.sampler ?? SPEC_DEFAULTS.sampler;
  if (!SAMPLER_KINDS.includes(sampler as SamplerKind)) throw new SpecError('sampler', `must be one of ${SAMPLER_KINDS.join(', ')}, got ${show(sampler)}`);
  const block = int('block', req.block ?? SPEC_DEFAULTS.block, 1, 1024);
  const context = int('context', req.context ?? SPEC_DEFAULTS.context, 0, block);
  const stages = int('stages', req.stages ?? SPEC_DEFAULTS.stages, 1, 1024);
  const seed = int('seed', req.seed ?? SPEC_DEFAULTS.seed, 0, 0xffffffff);
  const model = req.model ?? SPEC_DEFAULTS.model;
  if (typeof model !== 'string' || model === '') throw new SpecError('model', `must be a model name or file, got ${show(model)}`);

  let frames: number;
  if (req.frames !== undefined) {
    if (req.seconds !== undefined) throw new SpecError('frames', 'give frames or seconds, not both');
    frames = int('frames', req.frames, 1, limits.maxFrames);
    if ((frames - 1) % 4 !== 0) throw new SpecError('frames', `must be 4n+1 (the VAE's 4x temporal compression), got ${frames}; try ${nearestFrames(frames, block, limits.maxFrames)}`);
    const lf = latentFramesOf(frames);
    if (lf % block !== 0) {
      throw new SpecError('frames', `${frames} frames are ${lf} latent frames, not a whole number of blocks of ${block}; try ${nearestFrames(frames, block, limits.maxFrames)}`);
    }
  } else {
    const seconds = num('seconds', req.seconds ?? SPEC_DEFAULTS.seconds, 0.01, 3600);
    const lf = Math.ceil((seconds * fps) / 4) + 1;
    frames = framesOf(Math.ceil(lf / block) * block);
    if (frames > limits.maxFrames) throw new SpecError('seconds', `${seconds} s at ${fps} fps is ${frames} frames, over the limit of ${limits.maxFrames}`);
  }

  return { prompt, negativePrompt, textEmbeddings: req.textEmbeddings ?? null, frames, fps, width, height, steps, guidance, shift, sampler: sampler as SamplerKind, block, context, stages, seed, model };
}

/**
 * The valid frame counts next to `frames` for blocks of `block` latent frames: 4 * (k * block - 1)
 * + 1 for whole k >= 1 (13, 29, 45, 61, ... with block 4), as 'A or B' (or one count at the ends).
 */
export function nearestFrames(frames: number, block: number, maxFrames = DEFAULT_LIMITS.maxFrames): string {
  const latent = (frames - 1) / 4 + 1;
  const below = framesOf(Math.max(1, Math.floor(latent / block)) * block);
  const above = framesOf(Math.max(1, Math.ceil(latent / block)) * block);
  return [...new Set([below, above])].filter((f) => f <= maxFrames).join(' or ') || String(below);
}

export function planJob(spec: JobSpec): JobPlan {
  const latentFrames = latentFramesOf(spec.frames);
  const blocks = latentFrames / spec.block;
  const iterations = blocks + spec.steps - 1;
  return {
    latentFrames,
    latentHeight: spec.height / 8,
    latentWidth: spec.width / 8,
    blocks,
    iterations,
    blockSteps: blocks * spec.steps,
  };
}

function show(v: unknown): string {
  return v === undefined ? 'nothing' : JSON.stringify(v) ?? String(v);
}
