import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpuBackend } from '@longshot/engine';
import { modelBlockDecoder, resolveModel, rgb24, videoFrameSha256 } from '@longshot/model';
import { Rng } from '@longshot/random';
import { assembleLatents, latentSha256, probeVideo, SegmentDir, Stitcher } from '../src';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-segments-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const C = 16;
const B = 2;
const H = 4;
const W = 6;
const blocks = Array.from({ length: 3 }, (_, i) => Rng.from('segments-test', i).fillNormal(new Float32Array(C * B * H * W)));
const geometry = { frames: 4 * (3 * B - 1) + 1, fps: 8, width: W * 8, height: H * 8, block: B, blocks: 3, latentChannels: C };
const vae = () => modelBlockDecoder(resolveModel('tiny'), { block: B, latentHeight: H, latentWidth: W }, cpuBackend());

describe('SegmentDir', () => {
  it('joins per-block segments into the same frames and fingerprint as the one-pass Stitcher', async () => {
    const whole = new Stitcher(path.join(dir, 'whole.mp4'), geometry, vae());
    for (const [i, b] of blocks.entries()) await whole.add(i, b);
    const reference = await whole.finish();

    const segs = new SegmentDir(path.join(dir, 'job'));
    const digests: string[] = [];
    for (const [i, b] of blocks.entries()) {
      // A fresh decoder for every block, as a new decoding worker after a failure: it rebuilds the cache.
      const decoded = await vae().decodeBlock(i, b, (j) => Promise.resolve(blocks[j]));
      expect(decoded.rebuiltLatentFrames).toBe(i * B);
      digests.push(decoded.sha256);
      await segs.writeSegment(i, rgb24(decoded.frames), { width: W * 8, height: H * 8, fps: 8 });
    }
    expect(videoFrameSha256(digests)).toBe(reference.frameSha256);
    expect(segs.hasSegment(2)).toBe(true);
    const out = await segs.concat(3);
    const info = await probeVideo(out);
    expect(info.frames).toBe(geometry.frames);
    expect(info.width).toBe(W * 8);
    expect(latentSha256(assembleLatents(blocks, C, B, H * W))).toBe(reference.latentSha256);
    segs.removeSegments(3);
    expect(segs.hasSegment(0)).toBe(false);
    expect(segs.hasVideo()).toBe(true);
  });

  it('refuses to join when a segment is missing', async () => {
    const segs = new SegmentDir(path.join(dir, 'gap'));
    await expect(segs.concat(2)).rejects.toThrow(/segments 0, 1 are missing/);
  });
});
