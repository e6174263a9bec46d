import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Mp4Writer, previewJpeg, probeFrameCount, probeVideo, requireBinary } from '../src/index';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-media-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A moving gradient, so the encoder has real content. */
function frame(w: number, h: number, t: number): Uint8Array {
  const f = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = (y * w + x) * 3;
      f[o] = (x * 4 + t * 8) & 255;
      f[o + 1] = (y * 4) & 255;
      f[o + 2] = (t * 16) & 255;
    }
  }
  return f;
}

describe('requireBinary', () => {
  it('finds ffmpeg and names the Debian package when a binary is missing', () => {
    expect(path.isAbsolute(requireBinary('ffmpeg'))).toBe(true);
    expect(() => requireBinary('ffmpeg-does-not-exist')).toThrow(/'ffmpeg-does-not-exist' not found on PATH .*install the Debian package 'ffmpeg-does-not-exist'/);
    const saved = process.env.PATH;
    try {
      process.env.PATH = dir;
      expect(() => requireBinary('ffprobe-x')).toThrow(/Debian package/);
    } finally {
      process.env.PATH = saved;
    }
  });
});

describe('Mp4Writer', () => {
  it('writes an MP4 whose decoded frame count, size and rate match', async () => {
    const out = path.join(dir, 'clip.mp4');
    const w = new Mp4Writer(out, { width: 64, height: 48, fps: 16 });
    // Single frames and a multi-frame block in one call.
    for (let t = 0; t < 20; t++) await w.write(frame(64, 48, t));
    const block = new Uint8Array(64 * 48 * 3 * 5);
    for (let t = 0; t < 5; t++) block.set(frame(64, 48, 20 + t), t * 64 * 48 * 3);
    await w.write(block);
    expect(fs.existsSync(out)).toBe(false); // not under the final name until finished
    await w.finish();
    expect(w.frames).toBe(25);
    expect(await probeFrameCount(out)).toBe(25);
    expect(await probeVideo(out)).toEqual({ frames: 25, width: 64, height: 48, fps: 16 });
    expect(fs.readdirSync(dir).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('applies backpressure on large writes without losing frames', async () => {
    const out = path.join(dir, 'big.mp4');
    const w = new Mp4Writer(out, { width: 256, height: 256, fps: 16 });
    for (let t = 0; t < 49; t++) await w.write(frame(256, 256, t));
    await w.finish();
    expect(await probeFrameCount(out)).toBe(49);
  });

  it('validates size, fps and frame lengths', async () => {
    const out = path.join(dir, 'bad.mp4');
    expect(() => new Mp4Writer(out, { width: 63, height: 48, fps: 16 })).toThrow(/must be even .* got 63x48/);
    expect(() => new Mp4Writer(out, { width: 64, height: 48, fps: 0 })).toThrow(/fps must be a positive number/);
    const w = new Mp4Writer(out, { width: 64, height: 48, fps: 16 });
    await expect(w.write(new Uint8Array(100))).rejects.toThrow(/100 bytes is not a whole number of 64x48 rgb24 frames/);
    await w.abort();
    expect(fs.existsSync(out)).toBe(false);
    await expect(w.write(frame(64, 48, 0))).rejects.toThrow(/after finish\(\) or abort\(\)/);
  });

  it('rejects with ffmpeg stderr when encoding fails and leaves no file', async () => {
    const out = path.join(dir, 'fail.mp4');
    // An x264 preset that does not exist makes ffmpeg fail at startup.
    const w = new Mp4Writer(out, { width: 64, height: 48, fps: 16, preset: 'no-such-preset' });
    const err = await (async () => {
      try {
        for (let t = 0; t < 200; t++) await w.write(frame(64, 48, t));
        await w.finish();
      } catch (e) {
        return e as Error;
      }
      return null;
    })();
    expect(err).not.toBeNull();
    expect(err!.message).toMatch(/Mp4Writer .*fail\.mp4: .*ffmpeg exit code \d+\): .*preset/is);
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.readdirSync(dir).filter((f) => f.includes('fail.mp4'))).toEqual([]);
  });

  it('refuses to finish an empty video', async () => {
    const w = new Mp4Writer(path.join(dir, 'empty.mp4'), { width: 64, height: 48, fps: 16 });
    await expect(w.finish()).rejects.toThrow(/no frames were written/);
  });
});

describe('probe and preview', () => {
  it('probe errors name the file', async () => {
    await expect(probeVideo(path.join(dir, 'nope.mp4'))).rejects.toThrow(/nope\.mp4 does not exist/);
    const junk = path.join(dir, 'junk.mp4');
    fs.writeFileSync(junk, 'not a video');
    await expect(probeVideo(junk)).rejects.toThrow(/junk\.mp4/);
  });

  it('previewJpeg encodes one frame to JPEG', async () => {
    const jpg = await previewJpeg(frame(64, 48, 3), 64, 48);
    expect(jpg[0]).toBe(0xff);
    expect(jpg[1]).toBe(0xd8);
    expect(jpg[jpg.length - 2]).toBe(0xff);
    expect(jpg[jpg.length - 1]).toBe(0xd9);
    const p = path.join(dir, 'p.jpg');
    fs.writeFileSync(p, jpg);
    expect(await probeVideo(p)).toMatchObject({ frames: 1, width: 64, height: 48 });
    // Odd sizes are fine for a still.
    expect((await previewJpeg(frame(33, 17, 0), 33, 17)).length).toBeGreaterThan(100);
    await expect(previewJpeg(new Uint8Array(10), 64, 48)).rejects.toThrow(/need 9216/);
  });
});
