import { describe, expect, it } from 'vitest';
import { Rng } from '@longshot/random';
import { DecoderCache, LatentDecoder, deserializeCache, serializeCache, videoFramesFor } from '../src/decoder';

const C = 16;

/** Latents [C, F, H, W] and a slice of frames [f0, f1) in the same layout. */
function latents(F: number, H: number, W: number, key = 'lat'): Float32Array {
  return Rng.from('decoder-test', key).fillNormal(new Float32Array(C * F * H * W));
}
function sliceFrames(z: Float32Array, F: number, H: number, W: number, f0: number, f1: number): Float32Array {
  const HW = H * W;
  const out = new Float32Array(C * (f1 - f0) * HW);
  for (let c = 0; c < C; c++) out.set(z.subarray((c * F + f0) * HW, (c * F + f1) * HW), c * (f1 - f0) * HW);
  return out;
}

describe('LatentDecoder', () => {
  it('maps [16, F, H, W] to 4(F-1)+1 frames of 8H x 8W x 3', () => {
    const d = new LatentDecoder();
    const r = d.decode(latents(3, 4, 6), 3, 4, 6, null);
    expect(r.frames).toBe(9);
    expect(r.rgb.length).toBe(9 * 32 * 48 * 3);
    expect(r.cache.latentFrames).toBe(3);
    expect(videoFramesFor(21, true)).toBe(81);
    expect(videoFramesFor(5, false)).toBe(20);
  });

  it('decoding block by block equals decoding the whole video, bit for bit', () => {
    const F = 11;
    const H = 5;
    const W = 7;
    const z = latents(F, H, W);
    const d = new LatentDecoder();
    const whole = d.decode(z, F, H, W, null);
    for (const cuts of [[0, 1, 11], [0, 3, 4, 8, 11], [0, 2, 5, 6, 7, 11]]) {
      const parts: Uint8Array[] = [];
      let cache: DecoderCache | null = null;
      for (let i = 0; i + 1 < cuts.length; i++) {
        // Through bytes, as the cache travels through Redis between blocks.
        const r = new LatentDecoder().decode(sliceFrames(z, F, H, W, cuts[i], cuts[i + 1]), cuts[i + 1] - cuts[i], H, W, cache);
        expect(r.frames).toBe(videoFramesFor(cuts[i + 1] - cuts[i], i === 0));
        parts.push(r.rgb);
        cache = deserializeCache(serializeCache(r.cache));
      }
      expect(Buffer.concat(parts).equals(Buffer.from(whole.rgb))).toBe(true);
      expect(serializeCache(cache!).equals(serializeCache(whole.cache))).toBe(true);
    }
  });

  it('is causal: later latents do not change earlier frames', () => {
    const F = 6;
    const z = latents(F, 3, 3);
    const z2 = z.slice();
    for (let c = 0; c < C; c++) z2[(c * F + 4) * 9 + 4] += 3; // perturb latent frame 4
    const d = new LatentDecoder();
    const a = d.decode(z, F, 3, 3, null).rgb;
    const b = d.decode(z2, F, 3, 3, null).rgb;
    const frameBytes = 24 * 24 * 3;
    const firstAffected = 1 + 4 * 3; // frames of latent 0..3
    expect(Buffer.from(a.subarray(0, firstAffected * frameBytes)).equals(Buffer.from(b.subarray(0, firstAffected * frameBytes)))).toBe(true);
    expect(Buffer.from(a.subarray(firstAffected * frameBytes)).equals(Buffer.from(b.subarray(firstAffected * frameBytes)))).toBe(false);
  });

  it('produces smooth, varied colour rather than flat or saturated output', () => {
    const r = new LatentDecoder().decode(latents(2, 8, 8), 2, 8, 8, null);
    let min = 255;
    let max = 0;
    let sat = 0;
    for (const v of r.rgb) {
      min = Math.min(min, v);
      max = Math.max(max, v);
      if (v === 0 || v === 255) sat++;
    }
    expect(max - min).toBeGreaterThan(100);
    expect(sat / r.rgb.length).toBeLessThan(0.05);
    // Neighbouring pixels differ little: x8 bilinear upsampling of the logits. White-noise
    // latents are the worst case (real latents are spatially correlated).
    const W = 64;
    let jump = 0;
    for (let x = 0; x + 1 < W; x++) for (let k = 0; k < 3; k++) jump = Math.max(jump, Math.abs(r.rgb[x * 3 + k] - r.rgb[(x + 1) * 3 + k]));
    expect(jump).toBeLessThan(48);
  });

  it('decodes a 3 s 256x256 video quickly', () => {
    const F = 13; // 49 frames at 16 fps
    const z = latents(F, 32, 32);
    const d = new LatentDecoder();
    const t0 = performance.now();
    const r = d.decode(z, F, 32, 32, null);
    const ms = performance.now() - t0;
    expect(r.frames).toBe(49);
    expect(ms).toBeLessThan(2000);
  });

  it('validates inputs and cache compatibility', () => {
    const d = new LatentDecoder();
    expect(() => d.decode(new Float32Array(10), 1, 2, 2, null)).toThrow(/latents have 10 values, expected \[16, 1, 2, 2\] = 64/);
    expect(() => d.decode(new Float32Array(0), 0, 2, 2, null)).toThrow(/frames must be a positive integer/);
    const { cache } = d.decode(latents(1, 2, 2), 1, 2, 2, null);
    expect(() => d.decode(latents(1, 3, 2), 1, 3, 2, cache)).toThrow(/cache is for \[16, \*, 2, 2\] latents, block is \[16, 1, 3, 2\]/);
    expect(() => new LatentDecoder(8).decode(latents(1, 2, 2).subarray(0, 32), 1, 2, 2, cache)).toThrow(/cache is for \[16/);
  });
});

describe('decoder cache serialisation', () => {
  const d = new LatentDecoder();
  const { cache } = d.decode(latents(3, 4, 5), 3, 4, 5, null);

  it('round-trips exactly', () => {
    const b = serializeCache(cache);
    const c = deserializeCache(b);
    expect(c.latentFrames).toBe(3);
    expect([c.latentChannels, c.height, c.width]).toEqual([16, 4, 5]);
    expect(c.feat1).toEqual(cache.feat1);
    expect(c.feat2).toEqual(cache.feat2);
    expect(c.mixed).toEqual(cache.mixed);
    // Also from a Uint8Array view at an offset (as a Redis client may hand it back).
    const padded = new Uint8Array(b.length + 3);
    padded.set(b, 3);
    expect(serializeCache(deserializeCache(padded.subarray(3))).equals(b)).toBe(true);
  });

  it('rejects corrupt, truncated and foreign bytes', () => {
    const b = serializeCache(cache);
    const flipped = Buffer.from(b);
    flipped[100] ^= 1;
    expect(() => deserializeCache(flipped)).toThrow(/checksum mismatch/);
    expect(() => deserializeCache(b.subarray(0, b.length - 4))).toThrow(/bytes, expected/);
    expect(() => deserializeCache(Buffer.alloc(64))).toThrow(/bad magic/);
    expect(() => deserializeCache(Buffer.alloc(4))).toThrow(/too short/);
    const v2 = Buffer.from(b);
    v2.writeUInt32LE(2, 4);
    expect(() => deserializeCache(v2)).toThrow(/version 2/);
  });
});
