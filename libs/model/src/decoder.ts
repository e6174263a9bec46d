/**
 * A small STAND-IN for Wan's 3D causal VAE decoder: it turns latents into something you can
 * look at (soft coloured blobs that move as the latents move) and, more importantly, has the
 * same shape contract and the same causal structure, so block-wise stitching is exercised for
 * real:
 *
 * - latents [C=16, F, H, W] -> frames [4(F-1)+1, 8H, 8W, 3]: latent frame 0 gives one frame,
 *   every later latent frame gives four, as Wan's VAE (4x temporal, 8x spatial).
 * - causal in time: frame t's output depends only on latent frames <= t. A feature cache (the
 *   last two frames' features and the previous mixed features) carries the past from block to
 *   block, so decoding block by block equals decoding the whole video bit for bit.
 *
 * Per latent frame: features f_t = tanh(M z_t) (fixed 16x16 mixing); causal temporal mixing
 * h_t = 0.6 f_t + 0.3 f_{t-1} + 0.1 f_{t-2} (the first frame replicates itself as its past,
 * like a replicate-padded causal conv); the four frames of latent frame t interpolate from
 * h_{t-1} to h_t; a hue wheel projects the C channels to RGB logits; logits are upsampled
 * bilinearly x8 and squashed with a sigmoid to [0, 255].
 */
import { createHash } from 'crypto';
import { Rng } from '@longshot/random';

export const TEMPORAL_FACTOR = 4;
export const SPATIAL_FACTOR = 8;

const MIX = [0.6, 0.3, 0.1] as const;
/** Logit gain: keeps typical outputs inside the sigmoid's soft range, not saturated. */
const COLOUR_GAIN = 1.6;

/** Decoder state after some latent frames: everything needed to continue causally. */
export interface DecoderCache {
  readonly latentChannels: number;
  readonly height: number;
  readonly width: number;
  /** Latent frames decoded so far (> 0: the next frame is not the video's first). */
  readonly latentFrames: number;
  /** f_{t-1}, [C, H, W]. */
  readonly feat1: Float32Array;
  /** f_{t-2}, [C, H, W]. */
  readonly feat2: Float32Array;
  /** h_{t-1}, the previous mixed features, [C, H, W]: start of the next interpolation. */
  readonly mixed: Float32Array;
}

export interface DecodeResult {
  /** [frames, 8H, 8W, 3] rgb24. */
  readonly rgb: Uint8Array;
  readonly frames: number;
  readonly cache: DecoderCache;
}

/** Video frames produced by `latentFrames` latent frames, starting at the video's start or not. */
export function videoFramesFor(latentFrames: number, atStart: boolean): number {
  if (latentFrames <= 0) return 0;
  return atStart ? TEMPORAL_FACTOR * (latentFrames - 1) + 1 : TEMPORAL_FACTOR * latentFrames;
}

/** Per-axis bilinear sampling for an x8 upsample (half-pixel centres, edge clamped). */
interface Axis {
  readonly i0: Int32Array;
  readonly i1: Int32Array;
  readonly w1: Float32Array;
}

function axis(n: number): Axis {
  const m = n * SPATIAL_FACTOR;
  const i0 = new Int32Array(m);
  const i1 = new Int32Array(m);
  const w1 = new Float32Array(m);
  for (let o = 0; o < m; o++) {
    const src = Math.min(Math.max((o + 0.5) / SPATIAL_FACTOR - 0.5, 0), n - 1);
    const a = Math.floor(src);
    i0[o] = a;
    i1[o] = Math.min(a + 1, n - 1);
    w1[o] = src - a;
  }
  return { i0, i1, w1 };
}

export class LatentDecoder {
  readonly latentChannels: number;
  private readonly mix: Float32Array;
  /** [3, C] hue-wheel projection. */
  private readonly colour: Float32Array;
  private readonly axes = new Map<number, Axis>();
  /** 0..255 for sigmoid(x), x in [-LUT_RANGE, LUT_RANGE], so the per-pixel work is a lookup. */
  private static readonly LUT_RANGE = 12;
  private static readonly LUT_STEPS = 1 << 14;
  private static sigmoidLut: Uint8Array | null = null;

  constructor(latentChannels = 16) {
    if (!Number.isInteger(latentChannels) || latentChannels < 1) throw new Error(`LatentDecoder: latentChannels must be a positive integer, got ${latentChannels}`);
    const C = latentChannels;
    this.latentChannels = C;
    // Identity plus a small seeded perturbation: each channel stays mostly itself (so a
    // channel's blob keeps its hue) while neighbouring channels bleed in a little.
    this.mix = Rng.from('decoder', 'mix', C).fillNormal(new Float32Array(C * C), 0.25 / Math.sqrt(C));
    for (let c = 0; c < C; c++) this.mix[c * C + c] += 1;
    this.colour = new Float32Array(3 * C);
    for (let c = 0; c < C; c++) {
      const hue = (2 * Math.PI * c) / C;
      for (let k = 0; k < 3; k++) this.colour[k * C + c] = (COLOUR_GAIN * Math.cos(hue - (2 * Math.PI * k) / 3)) / Math.sqrt(C / 4);
    }
  }

  /**
   * Decodes one temporal block. `cache` null means the block starts the video; otherwise pass
   * the cache from the previous block. The returned cache continues after this block.
   */
  decode(latentsBlock: Float32Array, frames: number, height: number, width: number, cache: DecoderCache | null): DecodeResult {
    const C = this.latentChannels;
    for (const [k, v] of [['frames', frames], ['height', height], ['width', width]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new Error(`LatentDecoder.decode: ${k} must be a positive integer, got ${v}`);
    }
    const HW = height * width;
    if (latentsBlock.length !== C * frames * HW) {
      throw new Error(`LatentDecoder.decode: latents have ${latentsBlock.length} values, expected [${C}, ${frames}, ${height}, ${width}] = ${C * frames * HW}`);
    }
    if (cache && (cache.latentChannels !== C || cache.height !== height || cache.width !== width)) {
      throw new Error(
        `LatentDecoder.decode: cache is for [${cache.latentChannels}, *, ${cache.height}, ${cache.width}] latents, block is [${C}, ${frames}, ${height}, ${width}]`,
      );
    }
    const atStart = !cache || cache.latentFrames === 0;
    const nOut = videoFramesFor(frames, atStart);
    const OH = height * SPATIAL_FACTOR;
    const OW = width * SPATIAL_FACTOR;
    const frameBytes = OH * OW * 3;
    const rgb = new Uint8Array(nOut * frameBytes);

    // Copies, so the caller's cache object stays valid (it may be retried or stored elsewhere).
    let feat1 = cache ? Float32Array.from(cache.feat1) : new Float32Array(C * HW);
    let feat2 = cache ? Float32Array.from(cache.feat2) : new Float32Array(C * HW);
    let mixed = cache ? Float32Array.from(cache.mixed) : new Float32Array(C * HW);
    let seen = cache ? cache.latentFrames : 0;

    const z = new Float32Array(C);
    let feat = new Float32Array(C * HW);
    let cur = new Float32Array(C * HW);
    const interp = new Float32Array(C * HW);
    const logits = new Float32Array(3 * HW);
    let outFrame = 0;

    for (let t = 0; t < frames; t++) {
      // f_t = tanh(M z_t), per latent pixel.
      for (let p = 0; p < HW; p++) {
        for (let k = 0; k < C; k++) z[k] = latentsBlock[(k * frames + t) * HW + p];
        for (let c = 0; c < C; c++) {
          let s = 0;
          const row = c * C;
          for (let k = 0; k < C; k++) s += this.mix[row + k] * z[k];
          feat[c * HW + p] = Math.tanh(s);
        }
      }
      if (seen === 0) {
        feat1.set(feat);
        feat2.set(feat);
      }
      for (let i = 0; i < C * HW; i++) cur[i] = MIX[0] * feat[i] + MIX[1] * feat1[i] + MIX[2] * feat2[i];

      if (seen === 0) {
        this.emit(cur, height, width, logits, rgb, outFrame++ * frameBytes);
      } else {
        for (let k = 1; k <= TEMPORAL_FACTOR; k++) {
          const a = k / TEMPORAL_FACTOR;
          for (let i = 0; i < C * HW; i++) interp[i] = mixed[i] + a * (cur[i] - mixed[i]);
          this.emit(interp, height, width, logits, rgb, outFrame++ * frameBytes);
        }
      }
      // Rotate buffers: f_{t-2} <- f_{t-1} <- f_t, h_{t-1} <- h_t.
      const oldFeat2 = feat2;
      feat2 = feat1;
      feat1 = feat;
      feat = oldFeat2;
      const oldMixed = mixed;
      mixed = cur;
      cur = oldMixed;
      seen++;
    }
    return {
      rgb,
      frames: nOut,
      cache: { latentChannels: C, height, width, latentFrames: seen, feat1, feat2, mixed },
    };
  }

  /** Features [C, H, W] -> one rgb24 frame [8H, 8W, 3] written at `offset`. */
  private emit(h: Float32Array, H: number, W: number, logits: Float32Array, out: Uint8Array, offset: number): void {
    const C = this.latentChannels;
    const HW = H * W;
    const col = this.colour;
    for (let p = 0; p < HW; p++) {
      let r = 0;
      let g = 0;
      let b = 0;
      for (let c = 0; c < C; c++) {
        const v = h[c * HW + p];
        r += col[c] * v;
        g += col[C + c] * v;
        b += col[2 * C + c] * v;
      }
      logits[p * 3] = r;
      logits[p * 3 + 1] = g;
      logits[p * 3 + 2] = b;
    }
    const ax = this.axisFor(W);
    const ay = this.axisFor(H);
    const OW = W * SPATIAL_FACTOR;
    const OH = H * SPATIAL_FACTOR;
    const lut = LatentDecoder.lut();
    const range = LatentDecoder.LUT_RANGE;
    const scale = LatentDecoder.LUT_STEPS / (2 * range);
    const maxIdx = LatentDecoder.LUT_STEPS;
    let o = offset;
    for (let oy = 0; oy < OH; oy++) {
      const r0 = ay.i0[oy] * W * 3;
      const r1 = ay.i1[oy] * W * 3;
      const wy = ay.w1[oy];
      for (let ox = 0; ox < OW; ox++) {
        const c0 = ax.i0[ox] * 3;
        const c1 = ax.i1[ox] * 3;
        const wx = ax.w1[ox];
        for (let k = 0; k < 3; k++) {
          const top = logits[r0 + c0 + k] + wx * (logits[r0 + c1 + k] - logits[r0 + c0 + k]);
          const bot = logits[r1 + c0 + k] + wx * (logits[r1 + c1 + k] - logits[r1 + c0 + k]);
          const v = top + wy * (bot - top);
          let idx = Math.round((v + range) * scale);
          if (idx < 0) idx = 0;
          else if (idx > maxIdx) idx = maxIdx;
          out[o++] = lut[idx];
        }
      }
    }
  }

  private axisFor(n: number): Axis {
    let a = this.axes.get(n);
    if (!a) {
      a = axis(n);
      this.axes.set(n, a);
    }
    return a;
  }

  private static lut(): Uint8Array {
    if (!LatentDecoder.sigmoidLut) {
      const n = LatentDecoder.LUT_STEPS;
      const range = LatentDecoder.LUT_RANGE;
      const lut = new Uint8Array(n + 1);
      for (let i = 0; i <= n; i++) {
        const x = (i / n) * 2 * range - range;
        lut[i] = Math.round(255 / (1 + Math.exp(-x)));
      }
      LatentDecoder.sigmoidLut = lut;
    }
    return LatentDecoder.sigmoidLut;
  }
}

// ---------------------------------------------------------------------------------------------
// Cache serialisation: little-endian header, three float32 planes, SHA-256 prefix over all of
// it, so a cache fetched from Redis that was truncated or mixed up fails loudly instead of
// producing a subtly wrong video.

const MAGIC = 0x4344534c; // 'LSDC' read as a little-endian u32
const VERSION = 1;
const HEADER_BYTES = 24;
const CHECKSUM_BYTES = 16;
const MAX_PLANE = 1 << 28;

function checksum(b: Buffer): Buffer {
  return createHash('sha256').update(b).digest().subarray(0, CHECKSUM_BYTES);
}

export function serializeCache(c: DecoderCache): Buffer {
  const n = c.latentChannels * c.height * c.width;
  if (c.feat1.length !== n || c.feat2.length !== n || c.mixed.length !== n) {
    throw new Error(`serializeCache: planes must have ${n} values ([${c.latentChannels}, ${c.height}, ${c.width}])`);
  }
  const body = Buffer.alloc(HEADER_BYTES + 3 * n * 4);
  body.writeUInt32LE(MAGIC, 0);
  body.writeUInt32LE(VERSION, 4);
  body.writeUInt32LE(c.latentChannels, 8);
  body.writeUInt32LE(c.height, 12);
  body.writeUInt32LE(c.width, 16);
  body.writeUInt32LE(c.latentFrames, 20);
  let o = HEADER_BYTES;
  for (const plane of [c.feat1, c.feat2, c.mixed]) {
    for (let i = 0; i < n; i++, o += 4) body.writeFloatLE(plane[i], o);
  }
  return Buffer.concat([body, checksum(body)]);
}

export function deserializeCache(b: Uint8Array): DecoderCache {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (buf.length < HEADER_BYTES + CHECKSUM_BYTES) throw new Error(`decoder cache: ${buf.length} bytes is too short to be a cache`);
  if (buf.readUInt32LE(0) !== MAGIC) throw new Error('decoder cache: bad magic (not a Longshot decoder cache)');
  const version = buf.readUInt32LE(4);
  if (version !== VERSION) throw new Error(`decoder cache: version ${version}, this build reads ${VERSION}`);
  const C = buf.readUInt32LE(8);
  const H = buf.readUInt32LE(12);
  const W = buf.readUInt32LE(16);
  const latentFrames = buf.readUInt32LE(20);
  const n = C * H * W;
  if (C < 1 || H < 1 || W < 1 || n > MAX_PLANE) throw new Error(`decoder cache: implausible dims [${C}, ${H}, ${W}]`);
  const expected = HEADER_BYTES + 3 * n * 4 + CHECKSUM_BYTES;
  if (buf.length !== expected) throw new Error(`decoder cache: ${buf.length} bytes, expected ${expected} for [${C}, ${H}, ${W}]`);
  const body = buf.subarray(0, expected - CHECKSUM_BYTES);
  if (!checksum(body).equals(buf.subarray(expected - CHECKSUM_BYTES))) throw new Error('decoder cache: checksum mismatch (corrupt or truncated)');
  const planes: Float32Array[] = [];
  let o = HEADER_BYTES;
  for (let k = 0; k < 3; k++) {
    const p = new Float32Array(n);
    for (let i = 0; i < n; i++, o += 4) p[i] = buf.readFloatLE(o);
    planes.push(p);
  }
  return { latentChannels: C, height: H, width: W, latentFrames, feat1: planes[0], feat2: planes[1], mixed: planes[2] };
}
