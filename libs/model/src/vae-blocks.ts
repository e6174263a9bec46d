/**
 * Decoding a job's latents block by block with the real VAE decoder (vae.ts), the one way every
 * execution mode does it: the worker's VAE_DECODER component, `render --in-process`, `decode`.
 * The feature cache is never persisted: a decoder that is not at the block asked for (a new
 * worker after a failure) rebuilds it by decoding the preceding latent frames within the
 * decoder's temporal receptive field again and dropping their frames (docs/vae.md).
 */
import { createHash } from 'node:crypto';
import type { Backend } from '@longshot/engine';
import { counter } from '@longshot/telemetry';
import { VaeDecoder, type VaeWeights } from './vae';
import { vaeSpatialFactor, vaeTemporalReceptiveField, vaeVideoFrames, type VaeConfig } from './vae-config';

/** Decode calls run in this process; the controller's stays 0 (it never decodes). */
export const vaeDecodes = counter({ name: 'longshot_vae_decodes_total', help: 'VAE decoder calls run in this process (one per block, plus cache rebuilds)' });

export interface BlockGeometry {
  /** Latent frames per block (B). */
  readonly block: number;
  readonly latentHeight: number;
  readonly latentWidth: number;
}

export interface DecodedBlock {
  /** [frames, height, width, 3] in [-1, 1]. */
  readonly frames: Float32Array;
  readonly count: number;
  readonly height: number;
  readonly width: number;
  /** SHA-256 (hex) of `frames` as float32 little-endian: the block's frame digest. */
  readonly sha256: string;
  /** Latent frames decoded again to rebuild the cache before this block (0: it was warm). */
  readonly rebuiltLatentFrames: number;
}

/** Latent frames [f0, f1) of a block [C, B, h, w], as [C, f1 - f0, h, w]. */
function sliceFrames(block: Float32Array, channels: number, B: number, frameSize: number, f0: number, f1: number): Float32Array {
  const n = f1 - f0;
  const out = new Float32Array(channels * n * frameSize);
  for (let c = 0; c < channels; c++) out.set(block.subarray((c * B + f0) * frameSize, (c * B + f1) * frameSize), c * n * frameSize);
  return out;
}

/**
 * One video's decoder, fed whole blocks in order. `decodeBlock(i)` with the decoder elsewhere
 * than block i's first latent frame starts a fresh decoder at max(0, iB - (field - 1)) and
 * decodes the latent frames up to block i first (read with `previous`); the result has the bits
 * of an uninterrupted decode either way.
 */
export class VaeBlockDecoder {
  private decoder: VaeDecoder | null = null;
  private readonly field: number;

  constructor(
    readonly config: VaeConfig,
    private readonly weights: VaeWeights,
    readonly geometry: BlockGeometry,
    private readonly backend: Backend,
  ) {
    const { block } = geometry;
    if (!Number.isInteger(block) || block < 1) throw new RangeError(`VAE block decoder: block must be a positive integer, got ${block}`);
    this.field = vaeTemporalReceptiveField(config);
  }

  /** The block the decoder's cache is ready for (a fresh decoder: 0). */
  get nextBlock(): number {
    return this.decoder ? this.decoder.latentFrames / this.geometry.block : 0;
  }

  async decodeBlock(index: number, latents: Float32Array, previous: (index: number) => Promise<Float32Array>): Promise<DecodedBlock> {
    const { block: B, latentHeight: h, latentWidth: w } = this.geometry;
    const z = this.config.zDim;
    const frameSize = h * w;
    if (!Number.isInteger(index) || index < 0) throw new RangeError(`VAE block decoder: block index must be a non-negative integer, got ${index}`);
    if (latents.length !== z * B * frameSize) throw new RangeError(`VAE block decoder: block ${index} has ${latents.length} latents, expected [${z}, ${B}, ${h}, ${w}]`);
    const start = index * B;
    let rebuilt = 0;
    if (!this.decoder || this.decoder.latentFrames !== start) {
      const from = Math.max(0, start - (this.field - 1));
      this.decoder = new VaeDecoder(this.config, this.weights, h, w, from);
      // Block by block (never the whole span at once: intermediates scale with the frames).
      for (let b = Math.floor(from / B); b < index; b++) {
        const f0 = Math.max(from - b * B, 0);
        const lat = await previous(b);
        if (lat.length !== latents.length) throw new RangeError(`VAE block decoder: block ${b} has ${lat.length} latents, expected ${latents.length}`);
        await this.decoder.decode(this.backend, f0 === 0 ? lat : sliceFrames(lat, z, B, frameSize, f0, B), B - f0);
        vaeDecodes.inc();
        rebuilt += B - f0;
      }
    }
    const shape = this.decoder.outputShape(B);
    const frames = await this.decoder.decode(this.backend, latents, B);
    vaeDecodes.inc();
    return { frames, count: shape.frames, height: shape.height, width: shape.width, sha256: frameDigest(frames), rebuiltLatentFrames: rebuilt };
  }
}

/** Video frames of block `index` of B latent frames each. */
export function blockVideoFrames(config: VaeConfig, B: number, index: number): number {
  return vaeVideoFrames(config, B, index === 0);
}

/** Pixel size of the video of a latent grid. */
export function vaeVideoSize(config: VaeConfig, latentHeight: number, latentWidth: number): { height: number; width: number } {
  const s = vaeSpatialFactor(config);
  return { height: latentHeight * s, width: latentWidth * s };
}

/** SHA-256 (hex) of float32 frames, little-endian. */
export function frameDigest(frames: Float32Array): string {
  if (new Uint8Array(Uint16Array.of(1).buffer)[0] !== 1) throw new Error('frameDigest assumes a little-endian host');
  return createHash('sha256').update(new Uint8Array(frames.buffer, frames.byteOffset, frames.byteLength)).digest('hex');
}

/**
 * A video's `frameSha256`: SHA-256 over its blocks' frame digests (32 bytes each, in order). A
 * hash list rather than one pass over all frames, so a run that resumes after a failure can
 * finish it from the digests of the blocks decoded before.
 */
export function videoFrameSha256(blockDigests: readonly string[]): string {
  const h = createHash('sha256');
  for (const d of blockDigests) {
    if (!/^[0-9a-f]{64}$/.test(d)) throw new Error(`frame digest ${JSON.stringify(d)} is not a SHA-256 hex digest`);
    h.update(Buffer.from(d, 'hex'));
  }
  return h.digest('hex');
}

/** [-1, 1] floats -> rgb24 bytes: round((x + 1) * 127.5), clamped. */
export function rgb24(frames: Float32Array): Uint8Array {
  const out = new Uint8Array(frames.length);
  for (let i = 0; i < frames.length; i++) {
    const v = Math.round((frames[i] + 1) * 127.5);
    out[i] = v < 0 ? 0 : v > 255 ? 255 : v;
  }
  return out;
}

/** A block decoder with a model's VAE (a pipeline directory's, else its seeded one). */
export function modelBlockDecoder(model: { readonly vae: VaeConfig; loadVae(): VaeWeights }, geometry: BlockGeometry, backend: Backend): VaeBlockDecoder {
  return new VaeBlockDecoder(model.vae, model.loadVae(), geometry, backend);
}
