/**
 * A job's video as one MP4 segment per block, joined at the end without re-encoding. Segments
 * make stitching resumable: a replica taking a job over keeps what the previous one encoded
 * and only needs the decoder's feature cache (kept in Redis) to continue.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Mp4Writer, requireBinary } from './mp4';

export interface SegmentFormat {
  readonly width: number;
  readonly height: number;
  readonly fps: number;
}

/** One job's folder in the result store: seg-<n>.mp4, preview-<n>.jpg, and video.mp4 at the end. */
export class SegmentDir {
  constructor(readonly dir: string) {}

  segmentPath(index: number): string {
    return path.join(this.dir, `seg-${String(checkIndex(index)).padStart(6, '0')}.mp4`);
  }

  previewPath(index: number): string {
    return path.join(this.dir, `preview-${String(checkIndex(index)).padStart(6, '0')}.jpg`);
  }

  get videoPath(): string {
    return path.join(this.dir, 'video.mp4');
  }

  hasSegment(index: number): boolean {
    return fs.existsSync(this.segmentPath(index));
  }

  hasVideo(): boolean {
    return fs.existsSync(this.videoPath);
  }

  /** Encodes one block's frames (rgb24); the file appears whole or not at all (Mp4Writer renames into place). */
  async writeSegment(index: number, rgb: Uint8Array, format: SegmentFormat): Promise<void> {
    fs.mkdirSync(this.dir, { recursive: true });
    const writer = new Mp4Writer(this.segmentPath(index), format);
    try {
      await writer.write(rgb);
      await writer.finish();
    } catch (e) {
      await writer.abort();
      throw e;
    }
  }

  async writePreview(index: number, jpeg: Buffer): Promise<void> {
    fs.mkdirSync(this.dir, { recursive: true });
    const tmp = `${this.previewPath(index)}.tmp-${process.pid}`;
    await fs.promises.writeFile(tmp, jpeg);
    await fs.promises.rename(tmp, this.previewPath(index));
  }

  /**
   * Joins segments 0..count-1 into video.mp4 with ffmpeg's concat demuxer, stream copy (no
   * re-encode: every segment starts on a key frame with the same encoder settings).
   */
  async concat(count: number): Promise<string> {
    if (!Number.isSafeInteger(count) || count < 1) throw new Error(`concat: need at least one segment, got ${count}`);
    const missing = Array.from({ length: count }, (_, i) => i).filter((i) => !this.hasSegment(i));
    if (missing.length) throw new Error(`concat: segments ${missing.join(', ')} are missing in ${this.dir}`);
    const list = path.join(this.dir, `concat-${process.pid}.txt`);
    // Paths are ours (no quotes in them), relative to the list file as the demuxer resolves them.
    fs.writeFileSync(list, Array.from({ length: count }, (_, i) => `file '${path.basename(this.segmentPath(i))}'\n`).join(''));
    const tmp = path.join(this.dir, `.video.mp4.tmp-${process.pid}.mp4`);
    try {
      await run(requireBinary('ffmpeg'), ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'concat', '-safe', '0', '-i', list, '-c', 'copy', '-movflags', '+faststart', tmp]);
      fs.renameSync(tmp, this.videoPath);
    } finally {
      fs.rmSync(list, { force: true });
      fs.rmSync(tmp, { force: true });
    }
    return this.videoPath;
  }

  /** Removes the per-block segments once the video exists (previews stay for the UI). */
  removeSegments(count: number): void {
    for (let i = 0; i < count; i++) fs.rmSync(this.segmentPath(i), { force: true });
  }
}

/**
 * The job's latents [C, F, H, W] from its blocks [C, B, H, W] in block order: the layout the
 * single-process Stitcher fingerprints, so `latentSha256` of this equals its result.
 */
export function assembleLatents(blocks: readonly Float32Array[], latentChannels: number, block: number, frameSize: number): Float32Array {
  const F = blocks.length * block;
  const out = new Float32Array(latentChannels * F * frameSize);
  blocks.forEach((b, index) => {
    if (b.length !== latentChannels * block * frameSize) throw new RangeError(`block ${index} has ${b.length} latents, expected ${latentChannels * block * frameSize}`);
    for (let c = 0; c < latentChannels; c++) out.set(b.subarray(c * block * frameSize, (c + 1) * block * frameSize), (c * F + index * block) * frameSize);
  });
  return out;
}

/** Block `index` [C, B, H, W] of latents [C, F, H, W]: the inverse of assembleLatents. */
export function latentBlock(latents: Float32Array, latentChannels: number, block: number, frameSize: number, index: number): Float32Array {
  const F = latents.length / (latentChannels * frameSize);
  if (!Number.isInteger(F) || (index + 1) * block > F) throw new RangeError(`block ${index} of ${block} latent frames is outside latents of ${F} frames`);
  const out = new Float32Array(latentChannels * block * frameSize);
  for (let c = 0; c < latentChannels; c++) out.set(latents.subarray((c * F + index * block) * frameSize, (c * F + (index + 1) * block) * frameSize), c * block * frameSize);
  return out;
}

function checkIndex(index: number): number {
  if (!Number.isSafeInteger(index) || index < 0) throw new Error(`segment index must be a non-negative integer, got ${index}`);
  return index;
}

function run(bin: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(bin, args, { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (error, _stdout, stderr) => {
      if (error) reject(new Error(`${path.basename(bin)} ${args.join(' ')} failed: ${stderr.trim().slice(-2000) || error.message}`));
      else resolve();
    });
  });
}
