/**
 * Wan2.1's VAE decoder (diffusers `AutoencoderKLWan`, the `vae/` of a pipeline directory):
 * configuration, layer plan and tensor names. Pure data, no I/O; the graph builder is ./vae and
 * the architecture, cache rules and figures are in docs/vae.md.
 *
 * Decoder plan for base width d and multipliers m (Wan2.1: d 96, m [1, 2, 4, 4]):
 *   post_quant_conv 1x1x1 (z -> z); conv_in 3x3x3 (z -> d*m[-1]); mid block: residual block,
 *   single-head spatial attention, residual block; one up block per multiplier, widths
 *   d * reverse(m), each num_res_blocks + 1 residual blocks and, except the last, a resampler
 *   ('upsample3d' where temperal_downsample reversed says so, else 'upsample2d') that halves the
 *   width (so every block after the first starts at half its predecessor's width); RMS norm,
 *   SiLU, conv_out 3x3x3 to RGB.
 */
import type { TensorSpec } from './config';

export interface VaeConfig {
  readonly name: string;
  /** Decoder base width (`decoder_base_dim`, else `base_dim`). */
  readonly baseDim: number;
  readonly zDim: number;
  readonly dimMult: readonly number[];
  readonly numResBlocks: number;
  /** Per encoder stage; the decoder upsamples in time where the reversed list is true. */
  readonly temporalDownsample: readonly boolean[];
  /** Per-channel statistics the pipeline un-normalises latents with: z * std + mean. */
  readonly latentsMean: readonly number[];
  readonly latentsStd: readonly number[];
}

/** F.normalize's eps, used by every RMS norm of the VAE. */
export const VAE_NORM_EPS = 1e-12;
/** Frames each causal 3x3x3 / 3x1x1 convolution keeps of its input (diffusers' CACHE_T). */
export const VAE_CACHE_FRAMES = 2;

const WAN21_LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921];
const WAN21_LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916];

/** Wan2.1's VAE (diffusers' AutoencoderKLWan defaults). */
export const WAN21_VAE: VaeConfig = {
  name: 'wan2.1-vae',
  baseDim: 96,
  zDim: 16,
  dimMult: [1, 2, 4, 4],
  numResBlocks: 2,
  temporalDownsample: [false, true, true],
  latentsMean: WAN21_LATENTS_MEAN,
  latentsStd: WAN21_LATENTS_STD,
};

/** Seeded VAEs of the small DiT configs: Wan2.1's architecture at small widths. */
export const SEEDED_VAE: Readonly<Record<string, VaeConfig>> = {
  tiny: { ...WAN21_VAE, name: 'vae-tiny', baseDim: 4 },
  small: { ...WAN21_VAE, name: 'vae-small', baseDim: 8 },
};

export type UpsampleMode = 'upsample3d' | 'upsample2d';

export interface VaeResidualBlockPlan {
  readonly prefix: string;
  readonly inDim: number;
  readonly outDim: number;
}

export interface VaeUpBlockPlan {
  readonly prefix: string;
  readonly resnets: readonly VaeResidualBlockPlan[];
  readonly upsample: UpsampleMode | null;
  /** Width of the block (its resnets' output, the resampler's input). */
  readonly dim: number;
}

export interface VaeDecoderPlan {
  readonly zDim: number;
  /** Width of conv_in's output and the mid block. */
  readonly midDim: number;
  readonly mid: readonly [VaeResidualBlockPlan, VaeResidualBlockPlan];
  readonly upBlocks: readonly VaeUpBlockPlan[];
  /** Width of the head (norm_out, conv_out's input). */
  readonly outDim: number;
}

export function validateVaeConfig(c: VaeConfig): VaeConfig {
  const positive = (v: number) => Number.isInteger(v) && v >= 1;
  if (!positive(c.baseDim)) throw new RangeError(`VAE config ${c.name}: baseDim must be a positive integer, got ${c.baseDim}`);
  if (!positive(c.zDim)) throw new RangeError(`VAE config ${c.name}: zDim must be a positive integer, got ${c.zDim}`);
  if (!positive(c.numResBlocks)) throw new RangeError(`VAE config ${c.name}: numResBlocks must be a positive integer, got ${c.numResBlocks}`);
  if (c.dimMult.length < 1 || !c.dimMult.every(positive)) throw new RangeError(`VAE config ${c.name}: dimMult must be positive integers, got [${c.dimMult.join(', ')}]`);
  if (c.temporalDownsample.length !== c.dimMult.length - 1) {
    throw new RangeError(`VAE config ${c.name}: temporalDownsample needs ${c.dimMult.length - 1} entries (one per resampling stage), got ${c.temporalDownsample.length}`);
  }
  if (c.latentsMean.length !== c.zDim || c.latentsStd.length !== c.zDim) {
    throw new RangeError(`VAE config ${c.name}: latentsMean and latentsStd need ${c.zDim} values each, got ${c.latentsMean.length} and ${c.latentsStd.length}`);
  }
  if (!c.latentsStd.every((s) => Number.isFinite(s) && s > 0) || !c.latentsMean.every(Number.isFinite)) {
    throw new RangeError(`VAE config ${c.name}: latentsStd must be positive and latentsMean finite`);
  }
  for (const m of c.dimMult) {
    if ((c.baseDim * m) % 2 !== 0) throw new RangeError(`VAE config ${c.name}: width ${c.baseDim * m} must be even (the resamplers halve it)`);
  }
  return c;
}

/** The decoder's layers, widths and tensor prefixes (diffusers' WanDecoder3d for Wan2.1). */
export function vaeDecoderPlan(c: VaeConfig): VaeDecoderPlan {
  validateVaeConfig(c);
  const reversed = [...c.dimMult].reverse();
  const dims = [c.baseDim * c.dimMult[c.dimMult.length - 1], ...reversed.map((m) => c.baseDim * m)];
  const temporalUpsample = [...c.temporalDownsample].reverse();
  const res = (prefix: string, inDim: number, outDim: number): VaeResidualBlockPlan => ({ prefix, inDim, outDim });
  const upBlocks: VaeUpBlockPlan[] = [];
  for (let i = 0; i < dims.length - 1; i++) {
    // Every block after the first receives its predecessor's resampler output: half its width.
    let inDim = i > 0 ? dims[i] / 2 : dims[i];
    const outDim = dims[i + 1];
    const resnets: VaeResidualBlockPlan[] = [];
    for (let j = 0; j < c.numResBlocks + 1; j++) {
      resnets.push(res(`decoder.up_blocks.${i}.resnets.${j}`, inDim, outDim));
      inDim = outDim;
    }
    const last = i === c.dimMult.length - 1;
    upBlocks.push({ prefix: `decoder.up_blocks.${i}`, resnets, upsample: last ? null : temporalUpsample[i] ? 'upsample3d' : 'upsample2d', dim: outDim });
  }
  return {
    zDim: c.zDim,
    midDim: dims[0],
    mid: [res('decoder.mid_block.resnets.0', dims[0], dims[0]), res('decoder.mid_block.resnets.1', dims[0], dims[0])],
    upBlocks,
    outDim: dims[dims.length - 1],
  };
}

/** Pixels per latent pixel along each axis: every resampler doubles height and width (Wan2.1: 8). */
export function vaeSpatialFactor(c: VaeConfig): number {
  return 2 ** (c.dimMult.length - 1);
}

/** Video frames from `latentFrames` latent frames: the first gives 1, each later one 2^(temporal upsamplings). */
export function vaeVideoFrames(c: VaeConfig, latentFrames: number, includesFirst = true): number {
  const factor = 2 ** c.temporalDownsample.filter(Boolean).length;
  if (latentFrames <= 0) return 0;
  return includesFirst ? 1 + factor * (latentFrames - 1) : factor * latentFrames;
}

/**
 * For each output frame of decoding `latentFrames` latent frames from the video's start, the
 * earliest latent frame it depends on, derived from the plan: a causal conv with a temporal
 * kernel of 3 makes frame t depend on frames t - 2 .. t of its input; an upsample3d passes the
 * first frame and maps frame t >= 1 through its temporal conv (over frames 1, 2, ... only) to two
 * frames; everything else works frame by frame.
 */
export function vaeEarliestDependencies(c: VaeConfig, latentFrames: number): number[] {
  const plan = vaeDecoderPlan(c);
  const causal = (s: readonly number[]) => s.map((_, t) => Math.min(...s.slice(Math.max(0, t - 2), t + 1)));
  const twoConvs = (s: readonly number[]) => causal(causal(s));
  let seq = Array.from({ length: latentFrames }, (_, i) => i);
  seq = causal(seq); // conv_in
  seq = twoConvs(twoConvs(seq)); // mid block: two residual blocks (attention is per frame)
  for (const block of plan.upBlocks) {
    for (let j = 0; j < block.resnets.length; j++) seq = twoConvs(seq);
    if (block.upsample === 'upsample3d' && seq.length > 0) seq = [seq[0], ...causal(seq.slice(1)).flatMap((v) => [v, v])];
  }
  return causal(seq); // conv_out
}

/** The latent frame output frame `frame` belongs to (frame 0: latent 0; then `factor` frames each). */
function latentOfFrame(c: VaeConfig, frame: number): number {
  const factor = vaeVideoFrames(c, 2) - 1;
  return frame === 0 ? 0 : Math.ceil(frame / factor);
}

/**
 * The decoder's temporal receptive field in latent frames: an output frame of latent frame e
 * depends on latent frames e - (field - 1) .. e and on nothing earlier (Wan2.1: 39).
 */
export function vaeTemporalReceptiveField(c: VaeConfig): number {
  // Long enough that the first frame's special rules no longer reach the last frames.
  const deps = vaeEarliestDependencies(c, 128);
  let lag = 0;
  deps.forEach((earliest, frame) => (lag = Math.max(lag, latentOfFrame(c, frame) - earliest)));
  return lag + 1;
}

/**
 * Floating-point operations (2 per multiply-add) of decoding `latentFrames` latent frames of
 * `latentHeight` x `latentWidth` (including the video's first when `includesFirst`): the
 * convolutions and the mid block's attention; norms and activations are left out (< 1%).
 */
export function vaeDecodeFlops(c: VaeConfig, latentHeight: number, latentWidth: number, latentFrames: number, includesFirst = true): number {
  const plan = vaeDecoderPlan(c);
  let frames = latentFrames;
  let pixels = latentHeight * latentWidth;
  let flops = 0;
  const conv = (cin: number, cout: number, taps: number, f = frames) => (flops += 2 * f * pixels * cin * cout * taps);
  const resnet = (inDim: number, outDim: number) => {
    conv(inDim, outDim, 27);
    conv(outDim, outDim, 27);
    if (inDim !== outDim) conv(inDim, outDim, 1);
  };
  conv(c.zDim, c.zDim, 1);
  conv(c.zDim, plan.midDim, 27);
  resnet(plan.midDim, plan.midDim);
  conv(plan.midDim, 3 * plan.midDim, 1);
  flops += 2 * 2 * frames * pixels * pixels * plan.midDim; // scores and weighted sum, one head
  conv(plan.midDim, plan.midDim, 1);
  resnet(plan.midDim, plan.midDim);
  for (const block of plan.upBlocks) {
    for (const r of block.resnets) resnet(r.inDim, r.outDim);
    if (block.upsample === 'upsample3d') {
      const doubled = frames - (includesFirst ? 1 : 0);
      conv(block.dim, 2 * block.dim, 3, doubled);
      frames += doubled;
    }
    if (block.upsample) {
      pixels *= 4;
      conv(block.dim, block.dim / 2, 9);
    }
  }
  conv(plan.outDim, 3, 27);
  return flops;
}

/**
 * What decoding costs per latent frame of a `latentHeight` x `latentWidth` grid, as the planner's
 * cost model takes it (libs/planner `DecoderShape`): the FLOPs of the video's first latent frame
 * and of each later one, and the bytes of their video frames as rgb24 (what the decoding worker
 * streams to the controller). Wan2.1 at 832x480: 4.35 / 13.55 TFLOP, 1.2 / 4.8 MB.
 */
export function vaeDecodeCost(c: VaeConfig, latentHeight: number, latentWidth: number): { firstFrameFlops: number; frameFlops: number; firstFrameBytes: number; frameBytes: number } {
  const frameBytes = latentHeight * latentWidth * vaeSpatialFactor(c) ** 2 * 3;
  return {
    firstFrameFlops: vaeDecodeFlops(c, latentHeight, latentWidth, 1),
    frameFlops: vaeDecodeFlops(c, latentHeight, latentWidth, 1, false),
    firstFrameBytes: vaeVideoFrames(c, 1) * frameBytes,
    frameBytes: vaeVideoFrames(c, 1, false) * frameBytes,
  };
}

/**
 * Every tensor the decoder reads, with diffusers' names and PyTorch shapes: post_quant_conv and
 * decoder.*. (A checkpoint also holds the encoder and quant_conv, which decoding never reads.)
 */
export function vaeDecoderTensorSpecs(c: VaeConfig): TensorSpec[] {
  const plan = vaeDecoderPlan(c);
  const specs: TensorSpec[] = [];
  const conv = (name: string, out: number, inn: number, kernel: readonly number[]) => {
    const fanIn = inn * kernel.reduce((a, b) => a * b, 1);
    specs.push({ name: `${name}.weight`, shape: [out, inn, ...kernel], init: 'normal', fanIn }, { name: `${name}.bias`, shape: [out], init: 'normal', fanIn: fanIn * 16 });
  };
  const gamma = (name: string, dim: number, images: boolean) => specs.push({ name: `${name}.gamma`, shape: images ? [dim, 1, 1] : [dim, 1, 1, 1], init: 'ones' });
  const resnet = (r: VaeResidualBlockPlan) => {
    gamma(`${r.prefix}.norm1`, r.inDim, false);
    conv(`${r.prefix}.conv1`, r.outDim, r.inDim, [3, 3, 3]);
    gamma(`${r.prefix}.norm2`, r.outDim, false);
    conv(`${r.prefix}.conv2`, r.outDim, r.outDim, [3, 3, 3]);
    if (r.inDim !== r.outDim) conv(`${r.prefix}.conv_shortcut`, r.outDim, r.inDim, [1, 1, 1]);
  };
  conv('post_quant_conv', c.zDim, c.zDim, [1, 1, 1]);
  conv('decoder.conv_in', plan.midDim, c.zDim, [3, 3, 3]);
  resnet(plan.mid[0]);
  const attn = 'decoder.mid_block.attentions.0';
  gamma(`${attn}.norm`, plan.midDim, true);
  conv(`${attn}.to_qkv`, 3 * plan.midDim, plan.midDim, [1, 1]);
  conv(`${attn}.proj`, plan.midDim, plan.midDim, [1, 1]);
  resnet(plan.mid[1]);
  for (const block of plan.upBlocks) {
    block.resnets.forEach(resnet);
    if (block.upsample) {
      conv(`${block.prefix}.upsamplers.0.resample.1`, block.dim / 2, block.dim, [3, 3]);
      if (block.upsample === 'upsample3d') conv(`${block.prefix}.upsamplers.0.time_conv`, 2 * block.dim, block.dim, [3, 1, 1]);
    }
  }
  gamma('decoder.norm_out', plan.outDim, false);
  conv('decoder.conv_out', 3, plan.outDim, [3, 3, 3]);
  return specs;
}

/** Tensors of a VAE checkpoint that decoding does not read (the encoder side). */
export function isVaeEncoderTensor(name: string): boolean {
  return name.startsWith('encoder.') || name.startsWith('quant_conv.');
}
