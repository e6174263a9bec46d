/**
 * umT5 encoder conformance: one encoder layer and the whole encoder on the engine (every SIMD level
 * this CPU runs) against the float64 reference of test/reference/umt5.ts, for the seeded tiny and
 * small configs, with padding (length < textLen, the reference masking padded keys over all
 * textLen rows as the published model does) and without. Error measure as in ops.test.ts:
 * max|got - ref| / max|ref| <= 1e-4.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPS, cpuBackend, engineInfo, runOp, setSimd, type SimdLevel } from '@longshot/engine';
import {
  SEEDED_UMT5,
  checkUmt5Weights,
  encodeText,
  promptLength,
  seededUmt5Weights,
  umt5LayerNodes,
  umt5TensorSpecs,
  type Umt5Config,
} from '@longshot/model';
import { Rng } from '@longshot/random';
import { relError } from '../reference/error';
import { relativePositionBucket } from '../reference/ops';
import { referenceUmt5Encode, referenceUmt5Layer } from '../reference/umt5';
import { perturbConstants } from '../reference/weights';

const TOLERANCE = 1e-4;
const SEED = 77;
const backend = cpuBackend();
const info = engineInfo();

const weightsOf = (c: Umt5Config) => perturbConstants(seededUmt5Weights(c, SEED), umt5TensorSpecs(c), SEED);
const referenceCache = new Map<string, Float64Array>();

function expectClose(got: Float32Array, ref: Float64Array, what: string): void {
  const err = relError(got, ref);
  expect(err, `${what}: max rel error ${err.toExponential(3)}`).toBeLessThanOrEqual(TOLERANCE);
}

interface EncoderCase {
  config: string;
  textLen: number;
  length: number;
}

// Padded and all-length prompts; tiny at Wan's 512 rows, and tiny with 160 tokens so the engine
// itself meets distances past maxDistance (128).
const ENCODER_CASES: EncoderCase[] = [
  { config: 'tiny', textLen: 512, length: 20 },
  { config: 'tiny', textLen: 160, length: 160 },
  { config: 'small', textLen: 48, length: 13 },
  { config: 'small', textLen: 40, length: 40 },
];

/** Token ids as a tokenizer returns them: `length` ids ending with EOS (1), then pad (0). */
function prompt(c: Umt5Config, textLen: number, length: number, rng: Rng): { ids: Int32Array; mask: Int32Array } {
  const ids = new Int32Array(textLen);
  const mask = new Int32Array(textLen);
  for (let i = 0; i < length; i++) {
    ids[i] = i === length - 1 ? 1 : 2 + Math.floor(rng.uniform() * (c.vocabSize - 2));
    mask[i] = 1;
  }
  return { ids, mask };
}

describe('relative position buckets', () => {
  it('match the published bidirectional bucket function (values from its float32 evaluation)', () => {
    // Computed with the reference formula on float32 tensors (numpy), 32 buckets, max distance 128.
    const rel = [0, -1, 1, -7, -8, 7, 8, -12, -16, -32, -64, -127, -128, -500, 16, 64, 127, 128, 511];
    const want = [0, 1, 17, 7, 8, 23, 24, 9, 10, 12, 14, 15, 15, 15, 26, 30, 31, 31, 31];
    expect(rel.map((r) => relativePositionBucket(r, 32, 128))).toEqual(want);
  });
});

describe.each(info.simdAvailable)('umT5 on the engine vs float64 reference, simd %s', (level) => {
  const original = info.simd;
  beforeAll(() => setSimd(level as SimdLevel));
  afterAll(() => setSimd(original as SimdLevel));

  it.each(['tiny', 'small'])('%s: one encoder layer (layer 1, 37 tokens)', (name) => {
    const c = SEEDED_UMT5[name];
    const w = weightsOf(c);
    const rows = 37;
    const x = Rng.from(SEED, 'umt5 layer', name).fillNormal(new Float32Array(rows * c.dModel), 3);
    const ref = referenceCache.get(`${name} layer`) ?? referenceUmt5Layer(c, w, 1, Float64Array.from(x), rows);
    referenceCache.set(`${name} layer`, ref);
    const got = Float32Array.from(x);
    backend.runSync(umt5LayerNodes(c, w, 1, got, rows));
    expectClose(got, ref, `${name} layer 1`);
  });

  it.each(ENCODER_CASES.map((e) => [`${e.config}: ${e.length} of ${e.textLen} tokens`, e] as const))('whole encoder, %s', async (_label, e) => {
    const c = SEEDED_UMT5[e.config];
    const w = weightsOf(c);
    const { ids, mask } = prompt(c, e.textLen, e.length, Rng.from(SEED, 'umt5 prompt', e.config, e.length));
    const key = `${e.config} ${e.textLen} ${e.length}`;
    // The reference does not depend on the SIMD level: computed once per case.
    const ref = referenceCache.get(key) ?? referenceUmt5Encode(c, w, ids, mask);
    referenceCache.set(key, ref);
    const got = await encodeText({ config: c, weights: w, ids, mask, textLen: e.textLen, backend });
    expect(got.length).toBe(e.textLen * c.dModel);
    expectClose(got, ref, `${e.config} encoder`);
    // Wan's layout: the prompt's rows, then exact zeros.
    expect(got.subarray(e.length * c.dModel).every((v) => v === 0)).toBe(true);
    expect(got.subarray(0, e.length * c.dModel).some((v) => v !== 0)).toBe(true);
  });
});

describe('umT5 encoder inputs', () => {
  const c = SEEDED_UMT5.tiny;
  const w = seededUmt5Weights(c, SEED);

  it('seeded weights cover every tensor, are deterministic and differ by seed', () => {
    checkUmt5Weights(c, w);
    expect(seededUmt5Weights(c, SEED).get('shared.weight')).toEqual(w.get('shared.weight'));
    expect(seededUmt5Weights(c, SEED + 1).get('shared.weight')).not.toEqual(w.get('shared.weight'));
    const missing = new Map(w);
    missing.delete('encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight');
    expect(() => checkUmt5Weights(c, missing)).toThrow(/missing encoder\.block\.1\.layer\.0\.SelfAttention\.relative_attention_bias\.weight/);
  });

  it('length comes from the mask or is given, and is checked', () => {
    const ids = Int32Array.of(5, 6, 1, 0, 0);
    expect(promptLength({ ids, mask: [1, 1, 1, 0, 0], textLen: 8 })).toBe(3);
    expect(promptLength({ ids, length: 2, textLen: 8 })).toBe(2);
    expect(promptLength({ ids, textLen: 8 })).toBe(5);
    expect(() => promptLength({ ids, mask: [1, 0, 1, 0, 0], textLen: 8 })).toThrow(/ones followed by zeros/);
    expect(() => promptLength({ ids, mask: [1, 1, 1, 0, 0], length: 2, textLen: 8 })).toThrow(/disagrees/);
    expect(() => promptLength({ ids, textLen: 4 })).toThrow(/exceed textLen 4/);
  });

  it('the same tokens give the same rows whatever the padding; an empty prompt gives zeros', async () => {
    const a = await encodeText({ config: c, weights: w, ids: [7, 9, 1], textLen: 16, backend });
    const b = await encodeText({ config: c, weights: w, ids: [7, 9, 1, 0, 0, 0, 0], mask: [1, 1, 1, 0, 0, 0, 0], textLen: 16, backend });
    expect(b).toEqual(a);
    expect((await encodeText({ config: c, weights: w, ids: [], textLen: 4, backend })).every((v) => v === 0)).toBe(true);
  });

  it('rejects ids outside the vocabulary, in encodeText and in the engine op', async () => {
    await expect(encodeText({ config: c, weights: w, ids: [3, c.vocabSize], textLen: 4, backend })).rejects.toThrow(/ids\[1\] = 512 is not a token id/);
    const table = new Float32Array(4 * 2);
    expect(() => runOp(backend, 'embedding', [table, Float32Array.of(1, 4)], [2, 4, 2])).toThrow(/ids\[1\] = 4.* is not a token id in \[0, 4\)/);
    expect(() => runOp(backend, 'embedding', [table, Float32Array.of(1.5)], [1, 4, 2])).toThrow(/not a token id/);
    expect(OPS.embedding.inputs).toEqual(['table', 'ids']);
  });
});
