import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { assembleLatents, latentSha256 } from '@longshot/media';
import { videoFrameSha256 } from '@longshot/model';
import type { DecodedFrames } from '@longshot/pipeline';
import { normalizeSpec, planJob } from '@longshot/planner';
import { ResultStore } from '../src/repositories';
import { BlockStitcher, type StitchData } from '../src/render/stitcher';

// 3 blocks of one latent frame at 16x16; the decoder below makes 2 frames per block (ffmpeg's work kept small).
const spec = normalizeSpec({ prompt: 'x', frames: 9, width: 16, height: 16, block: 1, context: 0, steps: 2 });
const plan = planJob(spec);
const LATENT_CHANNELS = 2;
const FRAMES = 2;

/** The job data the stitcher reads and writes, in memory: frame digests and blocks' latents. */
function jobData(): StitchData & { digests: Map<number, string> } {
  const digests = new Map<number, string>();
  return {
    digests,
    block: async (_id, i) => Float32Array.from({ length: LATENT_CHANNELS * spec.block * plan.latentHeight * plan.latentWidth }, (_, k) => i + k / 1000),
    frameDigest: async (_id, i) => digests.get(i) ?? null,
    saveFrameDigest: async (_id, i, sha) => void digests.set(i, sha),
  };
}

/** Decodes block i to flat frames of grey level 40 * (i + 1), and logs what it decoded. */
function decoder(decoded: number[]) {
  return async (index: number): Promise<DecodedFrames> => {
    decoded.push(index);
    const rgb = new Uint8Array(FRAMES * spec.width * spec.height * 3).fill(40 * (index + 1));
    return { rgb, frames: FRAMES, width: spec.width, height: spec.height, sha256: createHash('sha256').update(rgb).digest('hex'), rebuiltLatentFrames: 0, worker: 'w-tail' };
  };
}

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});
function store(): ResultStore {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-stitch-'));
  dirs.push(dir);
  return new ResultStore(dir);
}

describe('BlockStitcher', () => {
  it('stitches blocks strictly in order into segments and previews, then joins the video with its digests', async () => {
    const results = store();
    const data = jobData();
    const events: number[] = [];
    const decoded: number[] = [];
    const stitcher = new BlockStitcher('job-a', spec, plan, data, results, { blockDone: async (_id, i) => (events.push(i), true) }, decoder(decoded));
    await stitcher.prepare();
    expect(stitcher.blocksDone).toBe(0);
    await expect(stitcher.add(1)).rejects.toThrow('stitching needs block 0 next, got block 1');
    for (let i = 0; i < plan.blocks; i++) await stitcher.add(i);
    expect(decoded).toEqual([0, 1, 2]);
    expect(events).toEqual([0, 1, 2]);
    const dir = results.job('job-a');
    for (let i = 0; i < plan.blocks; i++) {
      expect(dir.hasSegment(i)).toBe(true);
      expect(fs.readFileSync(dir.previewPath(i)).subarray(0, 2)).toEqual(Buffer.from([0xff, 0xd8])); // JPEG
    }
    const video = await stitcher.join(LATENT_CHANNELS);
    expect(dir.hasVideo()).toBe(true);
    expect(video.frameSha256).toBe(videoFrameSha256([0, 1, 2].map((i) => data.digests.get(i)!)));
    const latents = await Promise.all([0, 1, 2].map((i) => data.block('job-a', i)));
    expect(video.latentSha256).toBe(latentSha256(assembleLatents(latents as Float32Array[], LATENT_CHANNELS, spec.block, plan.latentHeight * plan.latentWidth)));
    stitcher.removeSegments();
    expect(dir.hasSegment(0)).toBe(false);
    expect(dir.hasVideo()).toBe(true);
  });

  it('a later run continues after the leading blocks with a segment and a digest, re-recording earlier blocks\' events without decoding', async () => {
    const results = store();
    const data = jobData();
    // An earlier run stitched block 0, and died between block 1's segment and its digest.
    const dir = results.job('job-b');
    fs.mkdirSync(dir.dir, { recursive: true });
    for (const i of [0, 1]) fs.writeFileSync(dir.segmentPath(i), 'an earlier run\'s segment');
    data.digests.set(0, 'a'.repeat(64));

    const events: number[] = [];
    const decoded: number[] = [];
    const again = new BlockStitcher('job-b', spec, plan, data, results, { blockDone: async (_id, i) => (events.push(i), true) }, decoder(decoded));
    await again.prepare();
    expect(again.blocksDone).toBe(1);
    for (let i = 0; i < plan.blocks; i++) await again.add(i);
    expect(decoded).toEqual([1, 2]);
    expect(events).toEqual([0, 1, 2]);
    expect(fs.readFileSync(dir.segmentPath(0), 'utf8')).toBe('an earlier run\'s segment');
    expect(fs.readFileSync(dir.segmentPath(1), 'utf8')).not.toBe('an earlier run\'s segment');
  });

  it('refuses frames of another size than the job\'s', async () => {
    const wrong = async (): Promise<DecodedFrames> => ({ rgb: new Uint8Array(8 * 8 * 3), frames: 1, width: 8, height: 8, sha256: '0'.repeat(64), rebuiltLatentFrames: 0, worker: 'w' });
    const stitcher = new BlockStitcher('job-c', spec, plan, jobData(), store(), { blockDone: async () => true }, wrong);
    await expect(stitcher.add(0)).rejects.toThrow('the VAE decoded 8x8 frames; the job is 16x16');
  });
});
