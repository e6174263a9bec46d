import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { rgb24, videoFrameSha256, type VaeBlockDecoder } from '@longshot/model';
import { Mp4Writer } from './mp4';
import { latentBlock } from './segments';

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
 * Turns finished blocks, taken strictly in order, into the MP4 in this process (`render
 * --in-process`, `decode`, test references): each block is decoded by the real VAE decoder with
 * its feature cache carried over from the previous one, and encoded as it arrives. It also
 * assembles the final latents [16, F, H, W] and the block frame digests for the fingerprints.
 */
export class Stitcher {
  private readonly writer: Mp4Writer;
  private readonly latents: Float32Array;
  private readonly latentFrames: number;
  private readonly frameSize: number;
  private readonly digests: string[] = [];
  private next = 0;
  private framesWritten = 0;

  constructor(
    readonly out: string,
    private readonly g: StitchGeometry,
    private readonly decoder: VaeBlockDecoder,
  ) {
    this.latentFrames = g.block * g.blocks;
    this.frameSize = (g.height / 8) * (g.width / 8);
    this.latents = new Float32Array(g.latentChannels * this.latentFrames * this.frameSize);
    fs.mkdirSync(path.dirname(out), { recursive: true });
    this.writer = new Mp4Writer(out, { width: g.width, height: g.height, fps: g.fps });
  }

  /** Blocks done so far. */
  get blocksDone(): number {
    return this.next;
  }

  /**
   * Decodes and encodes block `index`, which must be the next one; returns its frames as rgb24
   * and as the decoder gave them (`values`, [frames, H, W, 3] in [-1, 1], what `sha256` digests).
   */
  async add(index: number, block: Float32Array): Promise<{ rgb: Uint8Array; values: Float32Array; frames: number; sha256: string }> {
    if (index !== this.next) throw new Error(`stitching needs block ${this.next} next, got block ${index}`);
    const B = this.g.block;
    const fs = this.frameSize;
    if (block.length !== this.g.latentChannels * B * fs) throw new RangeError(`block ${index} has ${block.length} latents, expected ${this.g.latentChannels * B * fs}`);
    for (let c = 0; c < this.g.latentChannels; c++) {
      this.latents.set(block.subarray(c * B * fs, (c + 1) * B * fs), (c * this.latentFrames + index * B) * fs);
    }
    const decoded = await this.decoder.decodeBlock(index, block, (b) => Promise.resolve(latentBlock(this.latents, this.g.latentChannels, B, fs, b)));
    if (decoded.width !== this.g.width || decoded.height !== this.g.height) throw new Error(`the VAE decodes ${decoded.width}x${decoded.height} frames; the job is ${this.g.width}x${this.g.height}`);
    const rgb = rgb24(decoded.frames);
    this.framesWritten += decoded.count;
    this.digests.push(decoded.sha256);
    await this.writer.write(rgb);
    this.next++;
    return { rgb, values: decoded.frames, frames: decoded.count, sha256: decoded.sha256 };
  }

  /** Closes the MP4 and returns the fingerprints of the final latents and of the decoded frames. */
  async finish(): Promise<{ latentSha256: string; frameSha256: string; frames: number }> {
    if (this.next !== this.g.blocks) throw new Error(`only ${this.next} of ${this.g.blocks} blocks were stitched`);
    if (this.framesWritten !== this.g.frames) throw new Error(`decoded ${this.framesWritten} frames, the job has ${this.g.frames}`);
    await this.writer.finish();
    return { latentSha256: latentSha256(this.latents), frameSha256: videoFrameSha256(this.digests), frames: this.framesWritten };
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
