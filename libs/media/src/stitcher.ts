import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LatentDecoder, type DecoderCache } from '@longshot/model';
import { Mp4Writer } from './mp4';

export interface StitchGeometry {
  readonly frames: number;
  readonly fps: number;
  readonly width: number;
  readonly height: number;
  /** Latent frames per block (B). */
  readonly block: number;
  readonly blocks: number;
  readonly latentChannels: number;
}

/**
 * Turns finished blocks, taken strictly in order, into the MP4: each block is decoded with the
 * decoder's causal feature cache carried over from the previous one and encoded as it arrives.
 * It also assembles the final latents [16, F, H, W] for the job's fingerprint.
 */
export class Stitcher {
  private readonly decoder: LatentDecoder;
  private readonly writer: Mp4Writer;
  private readonly latents: Float32Array;
  private readonly latentFrames: number;
  private readonly frameSize: number;
  private cache: DecoderCache | null = null;
  private next = 0;
  private framesWritten = 0;

  constructor(
    readonly out: string,
    private readonly g: StitchGeometry,
  ) {
    this.latentFrames = g.block * g.blocks;
    this.frameSize = (g.height / 8) * (g.width / 8);
    this.latents = new Float32Array(g.latentChannels * this.latentFrames * this.frameSize);
    this.decoder = new LatentDecoder(g.latentChannels);
    fs.mkdirSync(path.dirname(out), { recursive: true });
    this.writer = new Mp4Writer(out, { width: g.width, height: g.height, fps: g.fps });
  }

  /** Blocks done so far. */
  get blocksDone(): number {
    return this.next;
  }

  /** Decodes and encodes block `index`, which must be the next one; returns its frames (rgb24). */
  async add(index: number, block: Float32Array): Promise<{ rgb: Uint8Array; frames: number }> {
    if (index !== this.next) throw new Error(`stitching needs block ${this.next} next, got block ${index}`);
    const B = this.g.block;
    const fs = this.frameSize;
    if (block.length !== this.g.latentChannels * B * fs) throw new RangeError(`block ${index} has ${block.length} latents, expected ${this.g.latentChannels * B * fs}`);
    for (let c = 0; c < this.g.latentChannels; c++) {
      this.latents.set(block.subarray(c * B * fs, (c + 1) * B * fs), (c * this.latentFrames + index * B) * fs);
    }
    const decoded = this.decoder.decode(block, B, this.g.height / 8, this.g.width / 8, this.cache);
    this.cache = decoded.cache;
    this.framesWritten += decoded.frames;
    await this.writer.write(decoded.rgb);
    this.next++;
    return { rgb: decoded.rgb, frames: decoded.frames };
  }

  /** Closes the MP4 and returns the fingerprint of the final latents. */
  async finish(): Promise<{ latentSha256: string; frames: number }> {
    if (this.next !== this.g.blocks) throw new Error(`only ${this.next} of ${this.g.blocks} blocks were stitched`);
    if (this.framesWritten !== this.g.frames) throw new Error(`decoded ${this.framesWritten} frames, the job has ${this.g.frames}`);
    await this.writer.finish();
    return { latentSha256: latentSha256(this.latents), frames: this.framesWritten };
  }

  abort(): Promise<void> {
    return this.writer.abort();
  }
}

/** SHA-256 of float32 little-endian values: a job's fingerprint in every execution mode. */
export function latentSha256(latents: Float32Array): string {
  if (new Uint8Array(Uint16Array.of(1).buffer)[0] !== 1) throw new Error('latentSha256 assumes a little-endian host');
  return createHash('sha256').update(Buffer.from(latents.buffer, latents.byteOffset, latents.byteLength)).digest('hex');
}
