/**
 * Wan2.1's VAE decoder on the engine: graph builder, the causal feature cache, seeded weights.
 * Architecture and names: ./vae-config; derivation, cache rules and figures: docs/vae.md.
 *
 * Activations are channels-last, [frames, height, width, channels], so a frame is one contiguous
 * block: the causal convolutions read their cached frames as a separate input, and slicing a call
 * into frames is a subarray.
 *
 * The feature cache. diffusers decodes one latent frame per call and keeps, for every causal
 * convolution with a temporal kernel of 3, the last two frames of its input (CACHE_T); the first
 * call pads with two zero frames, the second with one zero frame before the one cached frame.
 * That is exactly a causal convolution over the whole sequence with two zero frames in front, so
 * here every such cache starts as two zero frames and is updated with `update_frame_cache` after
 * its convolution, whatever the number of frames per call. The one exception is the temporal
 * convolution of each 'upsample3d' resampler: the video's first latent frame skips it and stays
 * one frame ('Rep' in the reference), so its cache only starts at the next frame, which again
 * sees two zero frames. Every op computes a frame's values in an order fixed by the shapes, so
 * decoding block by block gives the bits of decoding in one pass.
 */
import { OPS, type Backend, type OpName, type OpNode } from '@longshot/engine';
import { seededTensor } from './weights';
import { VAE_CACHE_FRAMES, VAE_NORM_EPS, vaeDecoderPlan, vaeDecoderTensorSpecs, vaeSpatialFactor, vaeVideoFrames, type VaeConfig, type VaeDecoderPlan, type VaeResidualBlockPlan } from './vae-config';

/** The decoder's tensors by diffusers name (vaeDecoderTensorSpecs). */
export type VaeWeights = ReadonlyMap<string, Float32Array>;

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Throws unless `weights` holds every decoder tensor with its shape's element count. */
export function checkVaeWeights(config: VaeConfig, weights: VaeWeights): void {
  const problems: string[] = [];
  for (const spec of vaeDecoderTensorSpecs(config)) {
    const t = weights.get(spec.name);
    if (!t) problems.push(`missing ${spec.name}`);
    else if (t.length !== numel(spec.shape)) problems.push(`${spec.name} has ${t.length} values, expected [${spec.shape.join(', ')}]`);
  }
  if (problems.length > 0) {
    throw new Error(`VAE weights for ${config.name}: ${problems.slice(0, 8).join('; ')}${problems.length > 8 ? `; and ${problems.length - 8} more` : ''}`);
  }
}

/** Every decoder tensor drawn from `seed` (norm gammas are ones, as a fresh model has them). */
export function seededVaeWeights(config: VaeConfig, seed: number): Map<string, Float32Array> {
  const m = new Map<string, Float32Array>();
  for (const spec of vaeDecoderTensorSpecs(config)) m.set(spec.name, seededTensor(spec, seed));
  return m;
}

/** A channels-last activation: [frames, height, width, channels]. */
interface Activation {
  readonly data: Float32Array;
  readonly frames: number;
  readonly height: number;
  readonly width: number;
  readonly channels: number;
}

/**
 * Buffers of one decode call, reused once their last reader is in the node list: nodes run in
 * order, so a buffer handed out again is only written after every earlier node has read it.
 */
class BufferPool {
  private readonly free: Float32Array[] = [];
  private readonly base = new Map<Float32Array, Float32Array>();

  take(n: number): Float32Array {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      if (this.free[i].length >= n && (best < 0 || this.free[i].length < this.free[best].length)) best = i;
    }
    const buffer = best >= 0 ? this.free.splice(best, 1)[0] : new Float32Array(n);
    const view = buffer.subarray(0, n);
    this.base.set(view, buffer);
    return view;
  }

  release(view: Float32Array): void {
    const buffer = this.base.get(view);
    if (!buffer) throw new Error('VAE graph: released a buffer the pool did not hand out');
    this.base.delete(view);
    this.free.push(buffer);
  }
}

/** Sizes of the decoder's activations for latents of `height` x `width`. */
function levelSize(plan: VaeDecoderPlan, blockIndex: number, latentHeight: number, latentWidth: number): { height: number; width: number } {
  let scale = 1;
  for (let i = 0; i < blockIndex; i++) if (plan.upBlocks[i].upsample) scale *= 2;
  return { height: latentHeight * scale, width: latentWidth * scale };
}

/** One causal convolution's cache: its name (the conv's tensor prefix) and shape [2, h, w, channels]. */
export interface VaeCacheSpec {
  readonly name: string;
  readonly height: number;
  readonly width: number;
  readonly channels: number;
}

/** Every cache the decoder keeps for latents of `latentHeight` x `latentWidth`, in graph order. */
export function vaeCacheSpecs(config: VaeConfig, latentHeight: number, latentWidth: number): VaeCacheSpec[] {
  const plan = vaeDecoderPlan(config);
  const specs: VaeCacheSpec[] = [];
  const add = (name: string, size: { height: number; width: number }, channels: number) => specs.push({ name, ...size, channels });
  const resnet = (r: VaeResidualBlockPlan, size: { height: number; width: number }) => {
    add(`${r.prefix}.conv1`, size, r.inDim);
    add(`${r.prefix}.conv2`, size, r.outDim);
  };
  const latent = { height: latentHeight, width: latentWidth };
  add('decoder.conv_in', latent, plan.zDim);
  plan.mid.forEach((r) => resnet(r, latent));
  plan.upBlocks.forEach((block, i) => {
    const size = levelSize(plan, i, latentHeight, latentWidth);
    block.resnets.forEach((r) => resnet(r, size));
    if (block.upsample === 'upsample3d') add(`${block.prefix}.upsamplers.0.time_conv`, size, block.dim);
  });
  add('decoder.conv_out', levelSize(plan, plan.upBlocks.length, latentHeight, latentWidth), plan.outDim);
  return specs;
}

/** Bytes of every cache tensor (float32) once the decoder has run past its first latent frames. */
export function vaeCacheBytes(config: VaeConfig, latentHeight: number, latentWidth: number): number {
  return vaeCacheSpecs(config, latentHeight, latentWidth).reduce((n, s) => n + VAE_CACHE_FRAMES * s.height * s.width * s.channels * 4, 0);
}

/**
 * A decoder for one video: its weights, its latent size and its feature cache. `decodeNodes`
 * builds the graph of the next latent frames; the caches it reads and updates are this object's,
 * so calls must run in order, each graph to completion before the next is built.
 */
export class VaeDecoder {
  readonly plan: VaeDecoderPlan;
  /** The un-normalisation z * std + mean folded into post_quant_conv (computed in float64). */
  private readonly postQuantWeight: Float32Array;
  private readonly postQuantBias: Float32Array;
  private readonly caches = new Map<string, Float32Array>();
  private decodedLatentFrames = 0;

  /**
   * `startLatentFrame` > 0 starts with an empty (zero) cache at that latent frame of the video,
   * not at its start. This is how the cache is rebuilt: to resume at latent frame r, decode
   * latent frames s = max(0, r + 1 - vaeTemporalReceptiveField(config)) .. r - 1 with a decoder
   * started at s and drop their frames; from then on every frame has the bits of an uninterrupted
   * decode (docs/vae.md).
   */
  constructor(
    readonly config: VaeConfig,
    private readonly weights: VaeWeights,
    readonly latentHeight: number,
    readonly latentWidth: number,
    startLatentFrame = 0,
  ) {
    if (!Number.isInteger(startLatentFrame) || startLatentFrame < 0) throw new RangeError(`VAE decoder: startLatentFrame must be a non-negative integer, got ${startLatentFrame}`);
    this.decodedLatentFrames = startLatentFrame;
    if (!Number.isInteger(latentHeight) || latentHeight < 1 || !Number.isInteger(latentWidth) || latentWidth < 1) {
      throw new RangeError(`VAE decoder: latent size ${latentHeight}x${latentWidth} must be positive integers`);
    }
    checkVaeWeights(config, weights);
    this.plan = vaeDecoderPlan(config);
    const z = config.zDim;
    const w = this.weight('post_quant_conv.weight');
    const b = this.weight('post_quant_conv.bias');
    this.postQuantWeight = new Float32Array(z * z);
    this.postQuantBias = new Float32Array(z);
    for (let o = 0; o < z; o++) {
      let bias = b[o];
      for (let i = 0; i < z; i++) {
        this.postQuantWeight[o * z + i] = w[o * z + i] * config.latentsStd[i];
        bias += w[o * z + i] * config.latentsMean[i];
      }
      this.postQuantBias[o] = bias;
    }
    for (const spec of vaeCacheSpecs(config, latentHeight, latentWidth)) {
      this.caches.set(spec.name, new Float32Array(VAE_CACHE_FRAMES * spec.height * spec.width * spec.channels));
    }
  }

  /** The latent frame the next call starts at. */
  get latentFrames(): number {
    return this.decodedLatentFrames;
  }

  /** Bytes held by the feature cache (every cached tensor, float32). */
  cacheBytes(): number {
    let n = 0;
    for (const c of this.caches.values()) n += c.byteLength;
    return n;
  }

  /** Output frames, height and width of decoding `latentFrames` more frames now. */
  outputShape(latentFrames: number): { frames: number; height: number; width: number } {
    return {
      frames: vaeVideoFrames(this.config, latentFrames, this.decodedLatentFrames === 0),
      height: this.latentHeight * vaeSpatialFactor(this.config),
      width: this.latentWidth * vaeSpatialFactor(this.config),
    };
  }

  /**
   * The graph decoding the next `frames` latent frames, `latents` [zDim, frames, h, w] as the
   * DiT produces them (normalised), into `output` [outFrames, 8h, 8w, 3] in [-1, 1]. Advances
   * the decoder's position when called: run the nodes before building the next call's.
   */
  decodeNodes(latents: Float32Array, frames: number, output: Float32Array): OpNode[] {
    const { zDim } = this.config;
    const h = this.latentHeight;
    const w = this.latentWidth;
    if (!Number.isInteger(frames) || frames < 1) throw new RangeError(`VAE decoder: frames must be a positive integer, got ${frames}`);
    if (latents.length !== zDim * frames * h * w) throw new RangeError(`VAE decoder: latents have ${latents.length} values, expected [${zDim}, ${frames}, ${h}, ${w}]`);
    const shape = this.outputShape(frames);
    if (output.length !== shape.frames * shape.height * shape.width * 3) {
      throw new RangeError(`VAE decoder: output has ${output.length} values, expected [${shape.frames}, ${shape.height}, ${shape.width}, 3]`);
    }
    const g = new ChunkGraph(this, new BufferPool(), this.decodedLatentFrames === 0);
    const nodes = g.decoder(latents, frames, output);
    this.decodedLatentFrames += frames;
    return nodes;
  }

  /**
   * Decodes the next latent frames on `backend` (see decodeNodes). On CUDA, `latents` is an input
   * the device may keep a copy of (docs/cuda.md): pass a fresh array per call, or call
   * releaseDeviceCache() before refilling one in place.
   */
  async decode(backend: Backend, latents: Float32Array, frames: number): Promise<Float32Array> {
    const shape = this.outputShape(frames);
    const output = new Float32Array(shape.frames * shape.height * shape.width * 3);
    await backend.run(this.decodeNodes(latents, frames, output));
    return output;
  }

  /** @internal the graph builder's access to tensors. */
  weight(name: string): Float32Array {
    const t = this.weights.get(name);
    if (!t) throw new Error(`VAE weights: no tensor ${name}`);
    return t;
  }

  /** @internal */
  cache(name: string): Float32Array {
    const c = this.caches.get(name);
    if (!c) throw new Error(`VAE decoder: no cache for ${name}`);
    return c;
  }

  /** @internal */
  foldedPostQuant(): { weight: Float32Array; bias: Float32Array } {
    return { weight: this.postQuantWeight, bias: this.postQuantBias };
  }
}

/** The nodes of one decode call. */
class ChunkGraph {
  readonly nodes: OpNode[] = [];

  constructor(
    private readonly dec: VaeDecoder,
    private readonly pool: BufferPool,
    /** This call starts at the video's first latent frame (which skips the temporal upsampling). */
    private readonly first: boolean,
  ) {}

  private node(op: OpName, inputs: (Float32Array | null)[], params: number[], output: Float32Array): void {
    const need = (OPS[op].outputSize as (p: readonly number[]) => number)(params);
    if (output.length !== need) throw new Error(`VAE graph: ${op} output has ${output.length} values, needs ${need}`);
    this.nodes.push({ op, inputs, output, params });
  }

  private like(x: Activation, channels = x.channels, frames = x.frames, scale = 1): Activation {
    const height = x.height * scale;
    const width = x.width * scale;
    return { data: this.pool.take(frames * height * width * channels), frames, height, width, channels };
  }

  /**
   * Convolution `name` (weight [out, in, kernel...]) over x; a temporal kernel of 3 reads and then
   * updates the conv's cache. Returns a new activation; x is left to the caller.
   */
  private conv(x: Activation, name: string, outChannels: number, kernel: readonly [number, number, number], weight?: Float32Array, bias?: Float32Array): Activation {
    const [kt, kh, kw] = kernel;
    const y = this.like(x, outChannels);
    const cache = kt > 1 ? this.dec.cache(name) : null;
    const cacheFrames = kt > 1 ? VAE_CACHE_FRAMES : 0;
    if (kt > 1 && kt - 1 !== VAE_CACHE_FRAMES) throw new Error(`VAE graph: ${name} has a temporal kernel of ${kt}; the cache holds ${VAE_CACHE_FRAMES} frames`);
    this.node(
      'causal_conv3d',
      [x.data, weight ?? this.dec.weight(`${name}.weight`), bias ?? this.dec.weight(`${name}.bias`), cache],
      [x.frames, cacheFrames, x.height, x.width, x.channels, outChannels, kt, kh, kw],
      y.data,
    );
    if (cache) this.node('update_frame_cache', [cache, x.data], [VAE_CACHE_FRAMES, x.frames, x.height * x.width * x.channels], cache);
    return y;
  }

  /** RMS norm over channels with `gamma`, then SiLU when asked, into `out` (may be x itself). */
  private norm(x: Activation, gamma: string, out: Activation, silu: boolean): void {
    const rows = x.frames * x.height * x.width;
    this.node('channel_rms_norm', [x.data, this.dec.weight(gamma)], [rows, x.channels, VAE_NORM_EPS], out.data);
    if (silu) this.node('silu', [out.data], [rows * x.channels], out.data);
  }

  private release(x: Activation): void {
    this.pool.release(x.data);
  }

  /** WanResidualBlock: shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))). Consumes x. */
  private residual(x: Activation, r: VaeResidualBlockPlan): Activation {
    const shortcut = r.inDim !== r.outDim ? this.conv(x, `${r.prefix}.conv_shortcut`, r.outDim, [1, 1, 1]) : x;
    const a = this.like(x);
    this.norm(x, `${r.prefix}.norm1.gamma`, a, true);
    const c1 = this.conv(a, `${r.prefix}.conv1`, r.outDim, [3, 3, 3]);
    this.release(a);
    this.norm(c1, `${r.prefix}.norm2.gamma`, c1, true);
    const c2 = this.conv(c1, `${r.prefix}.conv2`, r.outDim, [3, 3, 3]);
    this.release(c1);
    this.node('gated_add', [c2.data, shortcut.data, null], [c2.frames * c2.height * c2.width, c2.channels], c2.data);
    this.release(shortcut);
    if (shortcut !== x) this.release(x);
    return c2;
  }

  /** WanAttentionBlock: x + proj(attention(q, k, v)) per frame over its pixels, one head. Consumes x. */
  private attention(x: Activation, prefix: string): Activation {
    const c = x.channels;
    const n = this.like(x);
    this.norm(x, `${prefix}.norm.gamma`, n, false);
    const qkvWeight = this.dec.weight(`${prefix}.to_qkv.weight`);
    const qkvBias = this.dec.weight(`${prefix}.to_qkv.bias`);
    // to_qkv's output channels are q, then k, then v: three 1x1 convolutions on weight row slices.
    const [q, k, v] = [0, 1, 2].map((i) => this.conv(n, `${prefix}.to_qkv`, c, [1, 1, 1], qkvWeight.subarray(i * c * c, (i + 1) * c * c), qkvBias.subarray(i * c, (i + 1) * c)));
    this.release(n);
    const o = this.like(x);
    const pixels = x.height * x.width;
    this.node('attention', [q.data, k.data, v.data, null, null], [x.frames, pixels, pixels, 0, 1, c], o.data);
    [q, k, v].forEach((t) => this.release(t));
    const p = this.conv(o, `${prefix}.proj`, c, [1, 1, 1]);
    this.release(o);
    this.node('gated_add', [p.data, x.data, null], [pixels * x.frames, c], p.data);
    this.release(x);
    return p;
  }

  /**
   * WanResample upsample3d / upsample2d. upsample3d first doubles the frames with its causal
   * temporal conv (2C channels -> frames 2t, 2t + 1), except the video's first frame, which passes
   * as it is; both then upsample x2 (nearest) and apply a 3x3 conv to C/2 channels. Consumes x.
   */
  private upsample(x: Activation, prefix: string, mode: 'upsample3d' | 'upsample2d'): Activation {
    const c = x.channels;
    const frameSize = x.height * x.width * c;
    if (mode === 'upsample3d') {
      const skip = this.first ? 1 : 0;
      const doubled = x.frames - skip;
      const y = this.like(x, c, skip + 2 * doubled);
      if (skip) this.node('copy_rows', [x.data], [1, x.frames, frameSize, 0, 1], y.data.subarray(0, frameSize));
      if (doubled > 0) {
        const rest: Activation = { ...x, data: x.data.subarray(skip * frameSize), frames: doubled };
        const t = this.conv(rest, `${prefix}.time_conv`, 2 * c, [3, 1, 1]);
        this.node('transpose', [t.data], [doubled, x.height * x.width, 2, c], y.data.subarray(skip * frameSize));
        this.release(t);
      }
      this.release(x);
      x = y;
    }
    const up = this.like(x, c, x.frames, 2);
    this.node('upsample_nearest2x', [x.data], [x.frames, x.height, x.width, c], up.data);
    this.release(x);
    const out = this.conv(up, `${prefix}.resample.1`, c / 2, [1, 3, 3]);
    this.release(up);
    return out;
  }

  decoder(latents: Float32Array, frames: number, output: Float32Array): OpNode[] {
    const { zDim } = this.dec.config;
    const plan = this.dec.plan;
    const h = this.dec.latentHeight;
    const w = this.dec.latentWidth;
    // [z, frames, h, w] -> channels-last, then post_quant_conv with the un-normalisation folded in.
    const z: Activation = { data: this.pool.take(frames * h * w * zDim), frames, height: h, width: w, channels: zDim };
    this.node('transpose', [latents], [1, zDim, frames * h * w, 1], z.data);
    const folded = this.dec.foldedPostQuant();
    const zq = this.conv(z, 'post_quant_conv', zDim, [1, 1, 1], folded.weight, folded.bias);
    this.release(z);
    let x = this.conv(zq, 'decoder.conv_in', plan.midDim, [3, 3, 3]);
    this.release(zq);
    x = this.residual(x, plan.mid[0]);
    x = this.attention(x, 'decoder.mid_block.attentions.0');
    x = this.residual(x, plan.mid[1]);
    for (const block of plan.upBlocks) {
      for (const r of block.resnets) x = this.residual(x, r);
      if (block.upsample) x = this.upsample(x, `${block.prefix}.upsamplers.0`, block.upsample);
    }
    this.norm(x, 'decoder.norm_out.gamma', x, true);
    const rgb = this.conv(x, 'decoder.conv_out', 3, [3, 3, 3]);
    this.release(x);
    this.node('clamp', [rgb.data], [rgb.data.length, -1, 1], output);
    this.release(rgb);
    return this.nodes;
  }
}
