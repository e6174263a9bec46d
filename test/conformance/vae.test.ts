/**
 * VAE decoder conformance: the whole decoder on the engine (every SIMD level this CPU runs)
 * against the float64 reference of test/reference/vae.ts (channels-first, one latent frame per
 * call with the reference's feature cache and first-chunk rules), for the seeded tiny and small
 * configs; and block-wise decoding, bit for bit equal to one pass, for blocks of 1, 2 and 4 latent
 * frames. Error measure as in ops.test.ts: max|got - ref| / max|ref| <= 1e-4.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpuBackend, engineInfo, setSimd, type SimdLevel } from '@longshot/engine';
import { SEEDED_VAE, VaeDecoder, WAN21_VAE, seededVaeWeights, vaeCacheBytes, vaeDecoderTensorSpecs, vaeTemporalReceptiveField, vaeVideoFrames, type VaeConfig } from '@longshot/model';
import { Rng } from '@longshot/random';
import { relError } from '../reference/error';
import { referenceVaeDecode } from '../reference/vae';
import { perturbConstants } from '../reference/weights';

const TOLERANCE = 1e-4;
const SEED = 91;
const backend = cpuBackend();
const info = engineInfo();

/** Seeded weights with the norm gammas made random, so a gamma applied wrongly shows. */
const weightsOf = (c: VaeConfig) => perturbConstants(seededVaeWeights(c, SEED), vaeDecoderTensorSpecs(c), SEED);

/** Latents as the DiT leaves them: roughly unit normal, [z, frames, h, w]. */
const latentsOf = (c: VaeConfig, frames: number, h: number, w: number, label: string) => Rng.from('vae conformance', label).fillNormal(new Float32Array(c.zDim * frames * h * w), 1);

/** The reference's [3, T, H, W] as channels-last [T, H, W, 3], the engine's layout. */
function channelsLast(ref: { data: Float64Array; frames: number; height: number; width: number }): Float64Array {
  const { frames: T, height: H, width: W } = ref;
  const out = new Float64Array(T * H * W * 3);
  for (let c = 0; c < 3; c++) for (let t = 0; t < T; t++) for (let p = 0; p < H * W; p++) out[(t * H * W + p) * 3 + c] = ref.data[(c * T + t) * H * W + p];
  return out;
}

const bytes = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

interface DecodeCase {
  config: VaeConfig;
  frames: number;
  h: number;
  w: number;
}

const CASES: DecodeCase[] = [
  { config: SEEDED_VAE.tiny, frames: 3, h: 2, w: 3 },
  { config: SEEDED_VAE.small, frames: 2, h: 2, w: 2 },
];

describe.each(CASES.map((c) => [`${c.config.name} ${c.frames} latent frames ${c.h}x${c.w}`, c] as const))('VAE decode %s', (label, c) => {
  const weights = weightsOf(c.config);
  const latents = latentsOf(c.config, c.frames, c.h, c.w, label);
  const ref = referenceVaeDecode(c.config, weights, latents, c.frames, c.h, c.w);
  const expected = channelsLast(ref);

  it('the reference has the published shape: 1 + 4 (F - 1) frames, 8x the latent size, in [-1, 1]', () => {
    expect(ref.frames).toBe(vaeVideoFrames(c.config, c.frames));
    expect(ref.frames).toBe(1 + 4 * (c.frames - 1));
    expect([ref.height, ref.width]).toEqual([8 * c.h, 8 * c.w]);
    // A decoder whose output were all clamped would hide errors: most values are inside.
    const inside = expected.filter((v) => Math.abs(v) < 1).length;
    expect(inside / expected.length).toBeGreaterThan(0.5);
  });

  describe.each(info.simdAvailable)('simd %s', (level) => {
    const original = engineInfo().simd;
    beforeAll(() => setSimd(level as SimdLevel));
    afterAll(() => setSimd(original as SimdLevel));

    it('one pass matches the float64 reference', async () => {
      const dec = new VaeDecoder(c.config, weights, c.h, c.w);
      const got = await dec.decode(backend, latents, c.frames);
      const err = relError(got, expected);
      expect(err, `max rel error ${err.toExponential(3)}`).toBeLessThanOrEqual(TOLERANCE);
    });

    it('one latent frame per call, through the feature cache, matches the float64 reference', async () => {
      const dec = new VaeDecoder(c.config, weights, c.h, c.w);
      const frameSize = c.h * c.w;
      const parts: Float32Array[] = [];
      for (let f = 0; f < c.frames; f++) {
        const one = new Float32Array(c.config.zDim * frameSize);
        for (let ch = 0; ch < c.config.zDim; ch++) one.set(latents.subarray((ch * c.frames + f) * frameSize, (ch * c.frames + f + 1) * frameSize), ch * frameSize);
        parts.push(await dec.decode(backend, one, 1));
      }
      const got = new Float32Array(expected.length);
      parts.reduce((at, p) => (got.set(p, at), at + p.length), 0);
      const err = relError(got, expected);
      expect(err, `max rel error ${err.toExponential(3)}`).toBeLessThanOrEqual(TOLERANCE);
    });
  });
});

describe('VAE block-wise decoding', () => {
  const config = SEEDED_VAE.tiny;
  const weights = weightsOf(config);
  const [F, h, w] = [6, 2, 2];
  const latents = latentsOf(config, F, h, w, 'blocks');

  /** Latent frames [f0, f1) of [z, F, h, w]. */
  const slice = (f0: number, f1: number): Float32Array => {
    const out = new Float32Array(config.zDim * (f1 - f0) * h * w);
    for (let c = 0; c < config.zDim; c++) out.set(latents.subarray((c * F + f0) * h * w, (c * F + f1) * h * w), c * (f1 - f0) * h * w);
    return out;
  };

  async function decodeInBlocks(block: number): Promise<Float32Array> {
    const dec = new VaeDecoder(config, weights, h, w);
    const parts: Float32Array[] = [];
    for (let f0 = 0; f0 < F; f0 += block) {
      const f1 = Math.min(F, f0 + block);
      parts.push(await dec.decode(backend, slice(f0, f1), f1 - f0));
    }
    const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  it.each([1, 2, 4])('blocks of %i latent frames give the bits of one pass', async (block) => {
    const onePass = await new VaeDecoder(config, weights, h, w).decode(backend, latents, F);
    expect(onePass.length).toBe(vaeVideoFrames(config, F) * 8 * h * 8 * w * 3);
    const blocks = await decodeInBlocks(block);
    expect(bytes(blocks).equals(bytes(onePass)), `blocks of ${block} differ from one pass`).toBe(true);
  });

  it('the cache holds two frames of every causal convolution, as vaeCacheBytes says', () => {
    const dec = new VaeDecoder(config, weights, h, w);
    expect(dec.cacheBytes()).toBe(vaeCacheBytes(config, h, w));
  });

  it('a later block depends on the earlier ones only through the cache', async () => {
    // Changing latent frame 0 changes the frames decoded from the next block: the cache carries it.
    const dec = new VaeDecoder(config, weights, h, w);
    await dec.decode(backend, slice(0, 2), 2);
    const next = await dec.decode(backend, slice(2, 3), 1);
    const other = new VaeDecoder(config, weights, h, w);
    const first = slice(0, 2);
    for (let i = 0; i < first.length; i += 2 * h * w) first[i] += 1;
    await other.decode(backend, first, 2);
    const changed = await other.decode(backend, slice(2, 3), 1);
    expect(bytes(changed).equals(bytes(next))).toBe(false);
  });
});

describe('VAE temporal receptive field and cache rebuild', () => {
  const config = SEEDED_VAE.tiny;
  const weights = weightsOf(config);
  const field = vaeTemporalReceptiveField(config);
  // 1x1 latents: the cost is in the frames, not the pixels.
  const [F, h, w] = [field + 5, 1, 1];
  const latents = latentsOf(config, F, h, w, 'receptive field');
  const frameValues = 8 * h * 8 * w * 3;
  const slice = (f0: number, f1: number): Float32Array => {
    const out = new Float32Array(config.zDim * (f1 - f0) * h * w);
    for (let c = 0; c < config.zDim; c++) out.set(latents.subarray((c * F + f0) * h * w, (c * F + f1) * h * w), c * (f1 - f0) * h * w);
    return out;
  };

  it('is 39 latent frames for Wan2.1 and for every width of its architecture', () => {
    expect(vaeTemporalReceptiveField(WAN21_VAE)).toBe(39);
    expect(field).toBe(39);
  });

  it('rebuilding the cache from the receptive field gives the bits of an uninterrupted decode, and one frame less does not', async () => {
    const whole = await new VaeDecoder(config, weights, h, w).decode(backend, latents, F);
    const resume = F - 2; // the latent frame decoding resumes at
    const expected = whole.subarray(vaeVideoFrames(config, resume) * frameValues);
    const resumed = async (start: number): Promise<Float32Array> => {
      const dec = new VaeDecoder(config, weights, h, w, start);
      await dec.decode(backend, slice(start, resume), resume - start);
      return dec.decode(backend, slice(resume, F), F - resume);
    };
    const start = resume + 1 - field;
    expect(start).toBeGreaterThan(0);
    const rebuilt = await resumed(start);
    expect(rebuilt.length).toBe(expected.length);
    expect(bytes(rebuilt).equals(bytes(expected)), 'a cache rebuilt from the receptive field differs').toBe(true);
    const short = await resumed(start + 1);
    expect(bytes(short).equals(bytes(expected)), 'one latent frame less than the receptive field still matched: the field is overstated').toBe(false);
  });
});
