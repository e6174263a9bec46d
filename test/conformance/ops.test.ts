/**
 * Op conformance, in the spirit of ggml's test-backend-ops: every op of OPS, on every SIMD level
 * this CPU can run, on fresh seeded random inputs of awkward shapes, against the float64
 * reference in test/reference/ops.ts.
 *
 * Error measure (per output): maxAbsErr / max(1e-6, max|ref|) <= 1e-4. Normalising by the
 * largest reference magnitude (rather than element-wise) keeps near-zero outputs (cancellations in
 * a dot product, silu of large negatives) from producing meaningless huge ratios, while still
 * catching any element that is off by more than float32 rounding warrants. The NMSE
 * (sum (a-b)^2 / sum ref^2, ggml's measure) is printed alongside on failure for diagnosis.
 *
 * Shapes deliberately include M = 1, sizes of 1, odd sizes and sizes that leave tails after 8- and
 * 16-wide vector loops, attention with and without extra (feature-cache) keys and with
 * queries != keys, rope with frameOffset > 0 and uneven frame/row/column splits, and in-place
 * runs for every op that allows them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OP_NAMES, OPS, cpuBackend, engineInfo, runOp, setSimd, setThreads, type OpName, type OpNode, type SimdLevel } from '@longshot/engine';
import { Rng } from '@longshot/random';
import { REFERENCE_OPS, referenceOp } from '../reference/ops';

const TOLERANCE = 1e-4;

type Inputs = (Float32Array | null)[];
interface OpCase {
  label: string;
  params: number[];
  /** Draws the inputs from `rng`; sizes follow the params. */
  inputs(rng: Rng): Inputs;
}

const normal = (rng: Rng, n: number, std = 1, mean = 0): Float32Array => {
  const a = rng.fillNormal(new Float32Array(n), std);
  if (mean !== 0) for (let i = 0; i < n; i++) a[i] += mean;
  return a;
};
const uniform = (rng: Rng, n: number, lo: number, hi: number): Float32Array => Float32Array.from({ length: n }, () => lo + (hi - lo) * rng.uniform());

function linearCase(rows: number, inF: number, outF: number, bias = true): OpCase {
  return {
    label: `${rows}x${inF} -> ${outF}${bias ? '' : ', no bias'}`,
    params: [rows, inF, outF],
    inputs: (r) => [normal(r, rows * inF), normal(r, outF * inF, 1 / Math.sqrt(inF)), bias ? normal(r, outF) : null],
  };
}

function layerNormCase(rows: number, dim: number, eps: number, weight: boolean, bias: boolean, mean = 0): OpCase {
  return {
    label: `${rows}x${dim} eps ${eps}${weight ? ' +weight' : ''}${bias ? ' +bias' : ''}${mean ? ` mean ${mean}` : ''}`,
    params: [rows, dim, eps],
    inputs: (r) => [normal(r, rows * dim, 1, mean), weight ? normal(r, dim, 0.3, 1) : null, bias ? normal(r, dim, 0.3) : null],
  };
}

function rmsNormCase(rows: number, dim: number, eps: number): OpCase {
  return { label: `${rows}x${dim} eps ${eps}`, params: [rows, dim, eps], inputs: (r) => [normal(r, rows * dim, 2), normal(r, dim, 0.3, 1)] };
}

function rowVectorCase(rows: number, dim: number, gate: 'gate' | 'no gate' | 'shift/scale'): OpCase {
  return {
    label: `${rows}x${dim}${gate === 'no gate' ? ', no gate' : ''}`,
    params: [rows, dim],
    inputs: (r) =>
      gate === 'shift/scale'
        ? [normal(r, rows * dim), normal(r, dim, 0.5), normal(r, dim, 0.5)]
        : [normal(r, rows * dim), normal(r, rows * dim), gate === 'gate' ? normal(r, dim) : null],
  };
}

function unaryCases(): OpCase[] {
  return [
    { label: 'n 1', params: [1], inputs: (r) => [normal(r, 1)] },
    { label: 'n 7', params: [7], inputs: (r) => [normal(r, 7, 2)] },
    { label: 'n 33', params: [33], inputs: (r) => [normal(r, 33, 3)] },
    { label: 'n 1000', params: [1000], inputs: (r) => [normal(r, 1000, 3)] },
    // Saturation and overflow of tanh/exp at the extremes.
    { label: 'n 65 in [-40, 40]', params: [65], inputs: (r) => [uniform(r, 65, -40, 40)] },
  ];
}

function ropeCase(b: number, f: number, h: number, w: number, heads: number, headDim: number, offset: number, theta = 10000): OpCase {
  return {
    label: `b${b} f${f} ${h}x${w} heads ${heads} hd ${headDim} offset ${offset} theta ${theta}`,
    params: [b, f, h, w, heads, headDim, offset, theta],
    inputs: (r) => [normal(r, b * f * h * w * heads * headDim)],
  };
}

function attentionCase(b: number, lq: number, lk: number, extra: number, heads: number, headDim: number, qkStd = 1): OpCase {
  const width = heads * headDim;
  return {
    label: `b${b} q${lq} k${lk} extra ${extra} heads ${heads} hd ${headDim}${qkStd !== 1 ? ` q/k std ${qkStd}` : ''}`,
    params: [b, lq, lk, extra, heads, headDim],
    inputs: (r) => [
      normal(r, b * lq * width, qkStd),
      normal(r, b * lk * width, qkStd),
      normal(r, b * lk * width),
      extra > 0 ? normal(r, b * extra * width, qkStd) : null,
      extra > 0 ? normal(r, b * extra * width) : null,
    ],
  };
}

function gridCase(c: number, f: number, h: number, w: number): OpCase {
  return { label: `${c}x${f}x${h}x${w}`, params: [c, f, h, w], inputs: (r) => [normal(r, c * f * h * w)] };
}

function biasedAttentionCase(b: number, lq: number, lk: number, heads: number, headDim: number, scale: number, maskedKeys = 0): OpCase {
  const width = heads * headDim;
  return {
    label: `b${b} q${lq} k${lk} heads ${heads} hd ${headDim} scale ${scale}${maskedKeys ? ` last ${maskedKeys} keys masked` : ''}`,
    params: [b, lq, lk, heads, headDim, scale],
    inputs: (r) => {
      const bias = normal(r, heads * lq * lk, 2);
      // A padding mask as T5 applies it: a huge negative bias on the masked keys.
      for (let row = 0; row < heads * lq; row++) for (let j = lk - maskedKeys; j < lk; j++) bias[row * lk + j] = -3.4e38;
      return [normal(r, b * lq * width), normal(r, b * lk * width), normal(r, b * lk * width), bias];
    },
  };
}

function embeddingCase(rows: number, vocab: number, dim: number): OpCase {
  return {
    label: `${rows} ids of ${vocab}, dim ${dim}`,
    params: [rows, vocab, dim],
    // First and last ids of the table, then random ones (repeats included).
    inputs: (r) => [normal(r, vocab * dim), Float32Array.from({ length: rows }, (_, i) => (i === 0 ? vocab - 1 : i === 1 ? 0 : Math.floor(r.uniform() * vocab)))],
  };
}

function positionBiasCase(lq: number, lk: number, heads: number, buckets: number, maxDistance: number): OpCase {
  return { label: `q${lq} k${lk} heads ${heads} buckets ${buckets} max ${maxDistance}`, params: [lq, lk, heads, buckets, maxDistance], inputs: (r) => [normal(r, buckets * heads)] };
}

/** causal_conv3d [frames, cacheFrames, height, width, in, out, kt, kh, kw]; a cache when cacheFrames > 0. */
function convCase(frames: number, cacheFrames: number, h: number, w: number, cin: number, cout: number, kt: number, kh: number, kw: number, bias = true): OpCase {
  return {
    label: `${frames}f +${cacheFrames} cached ${h}x${w} ${cin} -> ${cout} kernel ${kt}x${kh}x${kw}${bias ? '' : ', no bias'}`,
    params: [frames, cacheFrames, h, w, cin, cout, kt, kh, kw],
    inputs: (r) => [
      normal(r, frames * h * w * cin),
      normal(r, cout * cin * kt * kh * kw, 1 / Math.sqrt(cin * kt * kh * kw)),
      bias ? normal(r, cout) : null,
      cacheFrames > 0 ? normal(r, cacheFrames * h * w * cin) : null,
    ],
  };
}

/** Typed as a full Record so an op added to OPS without cases fails the type check too. */
const CASES: Record<OpName, OpCase[]> = {
  linear: [
    linearCase(1, 1, 1),
    linearCase(1, 17, 5),
    linearCase(7, 33, 19),
    linearCase(3, 129, 67, false),
    linearCase(16, 64, 48),
    linearCase(37, 256, 96),
    linearCase(1, 300, 1),
    linearCase(5, 8, 16, false),
  ],
  layer_norm: [
    layerNormCase(1, 1, 1e-6, true, true),
    layerNormCase(1, 7, 1e-6, true, true),
    layerNormCase(5, 33, 1e-6, false, false),
    layerNormCase(3, 64, 1e-5, true, false),
    layerNormCase(4, 257, 1e-6, false, true),
    // A non-zero mean catches a one-pass E[x^2] - E[x]^2 variance that cancels in float32.
    layerNormCase(6, 96, 1e-6, true, true, 10),
  ],
  rms_norm: [rmsNormCase(1, 1, 1e-6), rmsNormCase(5, 33, 1e-6), rmsNormCase(3, 64, 1e-5), rmsNormCase(4, 257, 1e-6), rmsNormCase(2, 1536, 1e-6)],
  modulate: [rowVectorCase(1, 1, 'shift/scale'), rowVectorCase(7, 33, 'shift/scale'), rowVectorCase(4, 64, 'shift/scale'), rowVectorCase(3, 130, 'shift/scale')],
  gated_add: [rowVectorCase(1, 1, 'gate'), rowVectorCase(7, 33, 'gate'), rowVectorCase(4, 64, 'no gate'), rowVectorCase(3, 130, 'gate'), rowVectorCase(5, 17, 'no gate')],
  gelu_tanh: unaryCases(),
  silu: unaryCases(),
  rope3d: [
    ropeCase(1, 1, 1, 1, 1, 12, 3),
    ropeCase(2, 3, 2, 3, 2, 32, 0),
    ropeCase(2, 2, 3, 2, 1, 34, 5), // 17 pairs: 7 frame / 5 row / 5 column
    ropeCase(1, 2, 2, 2, 3, 128, 7), // Wan's 44 / 42 / 42 dims
    ropeCase(1, 3, 1, 2, 2, 20, 2, 500),
    ropeCase(2, 1, 4, 4, 2, 64, 30),
  ],
  attention: [
    attentionCase(1, 1, 1, 0, 1, 8),
    attentionCase(2, 5, 7, 0, 2, 16),
    attentionCase(2, 9, 13, 6, 3, 12),
    attentionCase(1, 17, 4, 3, 2, 32), // more queries than keys, with extra keys
    attentionCase(2, 1, 33, 0, 1, 64), // a single query
    attentionCase(1, 24, 40, 8, 2, 128),
    attentionCase(2, 7, 5, 0, 2, 10),
    attentionCase(1, 6, 9, 4, 2, 16, 4), // large logits: the online softmax must subtract its max
    attentionCase(2, 40, 300, 20, 2, 32), // many keys: several tiles of any blocked kernel
  ],
  patchify: [gridCase(1, 1, 2, 2), gridCase(16, 3, 4, 6), gridCase(3, 2, 6, 2), gridCase(16, 2, 8, 10)],
  unpatchify: [gridCase(1, 1, 2, 2), gridCase(16, 3, 4, 6), gridCase(3, 2, 6, 2), gridCase(16, 2, 8, 10)],
  timestep_embedding: [
    { label: 'n 1 dim 256 t 999', params: [1, 256], inputs: () => [Float32Array.of(999)] },
    { label: 'n 5 dim 256 edge timesteps', params: [5, 256], inputs: () => [Float32Array.of(0, 1, 250.5, 999, 1000)] },
    { label: 'n 3 dim 6', params: [3, 6], inputs: (r) => [uniform(r, 3, 0, 1000)] },
    { label: 'n 2 dim 2', params: [2, 2], inputs: (r) => [uniform(r, 2, 0, 1000)] },
    { label: 'n 4 dim 34', params: [4, 34], inputs: (r) => [uniform(r, 4, 0, 1000)] },
  ],
  mul: [
    { label: 'n 1', params: [1], inputs: (r) => [normal(r, 1), normal(r, 1)] },
    { label: 'n 33', params: [33], inputs: (r) => [normal(r, 33, 2), normal(r, 33, 3)] },
    { label: 'n 4099', params: [4099], inputs: (r) => [normal(r, 4099), normal(r, 4099)] },
  ],
  embedding: [embeddingCase(1, 1, 1), embeddingCase(7, 50, 33), embeddingCase(20, 512, 64), embeddingCase(3, 9, 256)],
  relative_position_bias: [
    positionBiasCase(1, 1, 1, 32, 128),
    positionBiasCase(7, 5, 3, 32, 128),
    positionBiasCase(40, 300, 2, 32, 128), // distances past maxDistance on both sides
    positionBiasCase(150, 20, 4, 32, 128),
    positionBiasCase(30, 30, 2, 10, 12), // odd half (5), exact 2
    positionBiasCase(12, 64, 1, 4, 3),
  ],
  biased_attention: [
    biasedAttentionCase(1, 1, 1, 1, 8, 1),
    biasedAttentionCase(2, 5, 7, 2, 16, 0.25),
    biasedAttentionCase(1, 17, 70, 3, 32, 1), // several key tiles
    biasedAttentionCase(2, 70, 66, 2, 64, 1), // several query blocks, unscaled T5 logits
    biasedAttentionCase(1, 9, 13, 2, 16, 1, 4),
    biasedAttentionCase(2, 3, 5, 1, 10, 0.5, 1),
  ],
  cfg_combine: [
    { label: 'n 1 g 5', params: [1, 5], inputs: (r) => [normal(r, 2)] },
    { label: 'n 33 g 5', params: [33, 5], inputs: (r) => [normal(r, 66)] },
    { label: 'n 1000 g 1', params: [1000, 1], inputs: (r) => [normal(r, 2000)] },
    { label: 'n 17 g 0', params: [17, 0], inputs: (r) => [normal(r, 34)] },
    { label: 'n 40 g 7.5', params: [40, 7.5], inputs: (r) => [normal(r, 80)] },
  ],
  axpy: [
    { label: 'n 1 a -0.05', params: [1, -0.05], inputs: (r) => [normal(r, 1), normal(r, 1)] },
    { label: 'n 33 a 0.5', params: [33, 0.5], inputs: (r) => [normal(r, 33), normal(r, 33)] },
    { label: 'n 1000 a -1', params: [1000, -1], inputs: (r) => [normal(r, 1000), normal(r, 1000)] },
    { label: 'n 17 a 0', params: [17, 0], inputs: (r) => [normal(r, 17), normal(r, 17)] },
  ],
  causal_conv3d: [
    convCase(1, 0, 1, 1, 1, 1, 1, 1, 1),
    convCase(1, 0, 3, 4, 5, 7, 3, 3, 3), // the first chunk: two zero frames before it
    convCase(2, 1, 4, 3, 6, 5, 3, 3, 3), // one cached frame and one zero frame
    convCase(3, 2, 5, 4, 8, 9, 3, 3, 3, false), // a full cache
    convCase(2, 2, 3, 5, 4, 8, 3, 1, 1), // the temporal conv of upsample3d
    convCase(2, 0, 6, 5, 7, 3, 1, 3, 3), // a Conv2d (kernelT 1)
    convCase(3, 0, 4, 4, 33, 17, 1, 1, 1), // a per-pixel linear map (1x1x1)
    convCase(2, 2, 6, 7, 37, 40, 3, 3, 3), // k = 999: several KC slices, tails on both axes
    convCase(2, 1, 3, 30, 5, 6, 3, 3, 3), // rows wider than any register tile: the interior-panel path
  ],
  channel_rms_norm: [rmsNormCase(1, 1, 1e-12), rmsNormCase(5, 33, 1e-12), rmsNormCase(7, 96, 1e-12), rmsNormCase(3, 384, 1e-12), rmsNormCase(4, 3, 0.5)],
  upsample_nearest2x: [gridCase(1, 1, 1, 1), gridCase(2, 3, 4, 5), gridCase(3, 2, 3, 16)],
  transpose: [
    { label: '1x16x35 cells of 1 (latents to channels-last)', params: [1, 16, 35, 1], inputs: (r) => [normal(r, 16 * 35)] },
    { label: '3x12x2 cells of 5 (frame interleave)', params: [3, 12, 2, 5], inputs: (r) => [normal(r, 3 * 12 * 2 * 5)] },
    { label: '2x1x7 cells of 3', params: [2, 1, 7, 3], inputs: (r) => [normal(r, 2 * 7 * 3)] },
  ],
  update_frame_cache: [
    { label: 'keep 2 of 2 + 1 frames', params: [2, 1, 13], inputs: (r) => [normal(r, 26), normal(r, 13)] },
    { label: 'keep 2 of 2 + 4 frames', params: [2, 4, 9], inputs: (r) => [normal(r, 18), normal(r, 36)] },
    { label: 'keep 2 of 2 + 2 frames', params: [2, 2, 20000], inputs: (r) => [normal(r, 40000), normal(r, 40000)] },
    { label: 'keep 3 of 3 + 1 frames', params: [3, 1, 5], inputs: (r) => [normal(r, 15), normal(r, 5)] },
    { label: 'keep 2 of 2 + 0 frames', params: [2, 0, 7], inputs: (r) => [normal(r, 14), new Float32Array(0)] },
  ],
  clamp: [
    { label: 'n 1 [-1, 1]', params: [1, -1, 1], inputs: (r) => [normal(r, 1, 3)] },
    { label: 'n 1000 [-1, 1]', params: [1000, -1, 1], inputs: (r) => [normal(r, 1000, 2)] },
    { label: 'n 33 [0, 0.5]', params: [33, 0, 0.5], inputs: (r) => [normal(r, 33)] },
  ],
  copy_rows: [
    { label: '1x1x1 [0, 1)', params: [1, 1, 1, 0, 1], inputs: (r) => [normal(r, 1)] },
    { label: '2x10x7 [3, 7)', params: [2, 10, 7, 3, 4], inputs: (r) => [normal(r, 140)] },
    { label: '3x5x33 [0, 5)', params: [3, 5, 33, 0, 5], inputs: (r) => [normal(r, 495)] },
    { label: '2x8x16 [4, 8)', params: [2, 8, 16, 4, 4], inputs: (r) => [normal(r, 256)] },
    { label: '2x12x64 [6, 9)', params: [2, 12, 64, 6, 3], inputs: (r) => [normal(r, 1536)] },
  ],
};

interface Comparison {
  relErr: number;
  nmse: number;
}

/** maxAbsErr / max(1e-6, max|ref|), plus NMSE; NaN, Inf or a size mismatch count as Infinity. */
function compare(got: Float32Array, ref: Float64Array): Comparison {
  if (got.length !== ref.length) return { relErr: Infinity, nmse: Infinity };
  let maxDiff = 0;
  let maxRef = 0;
  let sumSq = 0;
  let sumRefSq = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(got[i] - ref[i]);
    if (!Number.isFinite(d)) return { relErr: Infinity, nmse: Infinity };
    maxDiff = Math.max(maxDiff, d);
    maxRef = Math.max(maxRef, Math.abs(ref[i]));
    sumSq += d * d;
    sumRefSq += ref[i] * ref[i];
  }
  return { relErr: maxDiff / Math.max(1e-6, maxRef), nmse: sumRefSq > 0 ? sumSq / sumRefSq : sumSq };
}

function expectClose(got: Float32Array, ref: Float64Array, what: string): void {
  const { relErr, nmse } = compare(got, ref);
  expect(relErr, `${what}: max rel error ${relErr.toExponential(3)} (NMSE ${nmse.toExponential(3)}), ${got.length} vs ${ref.length} elements`).toBeLessThanOrEqual(TOLERANCE);
}

const bytes = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** Seeds depend on the op and case only, so every SIMD level sees the same inputs. */
const caseRng = (op: OpName, c: OpCase): Rng => Rng.from('conformance', op, c.label);

const info = engineInfo();
const backend = cpuBackend();
/** Thread counts to compare against the default one (restored after each use). */
const OTHER_THREAD_COUNTS = [1, 3, 8].filter((t) => t !== info.threads);

describe('op table', () => {
  it.each(OP_NAMES)('%s has a reference, conformance cases and CPU support', (op) => {
    expect(REFERENCE_OPS[op], `no reference for ${op}`).toBeTypeOf('function');
    expect(CASES[op]?.length ?? 0, `no conformance cases for ${op}`).toBeGreaterThan(0);
    expect(backend.supportsOp(op), `cpu backend does not support ${op}`).toBe(true);
  });

  it('engine reports at least one SIMD level, including the one in use', () => {
    expect(info.simdAvailable.length).toBeGreaterThan(0);
    expect(info.simdAvailable).toContain(info.simd);
  });
});

describe.each(info.simdAvailable)('ops vs float64 reference, simd %s', (level) => {
  const original = engineInfo().simd;
  beforeAll(() => {
    setSimd(level as SimdLevel);
    expect(engineInfo().simd).toBe(level);
  });
  afterAll(() => setSimd(original as SimdLevel));

  describe.each(OP_NAMES)('%s', (op) => {
    it.each((CASES[op] ?? []).map((c) => [c.label, c] as const))('%s', (_label, c) => {
      const inputs = c.inputs(caseRng(op, c));
      const snapshot = inputs.map((t) => (t ? Float32Array.from(t) : null));
      const ref = referenceOp(op, inputs, c.params);

      const got = runOp(backend, op, inputs, c.params);
      expect(got.length).toBe(OPS[op].outputSize(c.params));
      expectClose(got, ref, `${op} ${c.label}`);
      // Inputs are read-only unless the op is explicitly asked to write in place.
      inputs.forEach((t, i) => {
        if (t) expect(bytes(t).equals(bytes(snapshot[i]!)), `${op} modified input ${OPS[op].inputs[i]}`).toBe(true);
      });

      // Deterministic: a second run gives the same bytes, and so does any thread count (ops.ts
      // promises reduction order independent of the partition).
      const again = runOp(backend, op, inputs, c.params);
      expect(bytes(again).equals(bytes(got)), `${op} differs between two runs`).toBe(true);
      for (const threads of OTHER_THREAD_COUNTS) {
        setThreads(threads);
        try {
          const other = runOp(backend, op, inputs, c.params);
          expect(bytes(other).equals(bytes(got)), `${op} differs with ${threads} threads vs ${info.threads}`).toBe(true);
        } finally {
          setThreads(info.threads);
        }
      }

      if (OPS[op].inPlace) {
        const x = Float32Array.from(inputs[0]!);
        const node: OpNode = { op, inputs: [x, ...inputs.slice(1)], output: x, params: c.params };
        backend.runSync([node]);
        expectClose(x, ref, `${op} ${c.label} in place`);
      }
    });
  });

  // run() (off the JS thread) and runSync() must agree bit for bit, on a graph whose nodes feed
  // each other, including an in-place node: linear -> gelu (in place) -> linear -> attention.
  it('run() and runSync() give identical bytes on a multi-node graph, matching the reference', async () => {
    const rng = Rng.from('conformance', 'graph');
    const [rows, d, f, heads] = [9, 24, 40, 2];
    const x = normal(rng, rows * d);
    const w1 = normal(rng, f * d, 1 / Math.sqrt(d));
    const b1 = normal(rng, f);
    const w2 = normal(rng, d * f, 1 / Math.sqrt(f));
    const build = (): { nodes: OpNode[]; out: Float32Array } => {
      const h = new Float32Array(rows * f);
      const y = new Float32Array(rows * d);
      const out = new Float32Array(rows * d);
      const nodes: OpNode[] = [
        { op: 'linear', inputs: [x, w1, b1], output: h, params: [rows, d, f] },
        { op: 'gelu_tanh', inputs: [h], output: h, params: [rows * f] },
        { op: 'linear', inputs: [h, w2, null], output: y, params: [rows, f, d] },
        { op: 'attention', inputs: [y, y, x, null, null], output: out, params: [1, rows, rows, 0, heads, d / heads] },
      ];
      return { nodes, out };
    };
    const sync = build();
    backend.runSync(sync.nodes);
    const async = build();
    await backend.run(async.nodes);
    expect(bytes(async.out).equals(bytes(sync.out)), 'run() and runSync() differ').toBe(true);

    const h = referenceOp('gelu_tanh', [referenceOp('linear', [x, w1, b1], [rows, d, f])], [rows * f]);
    const y = referenceOp('linear', [h, w2, null], [rows, f, d]);
    const ref = referenceOp('attention', [y, y, x, null, null], [1, rows, rows, 0, heads, d / heads]);
    expectClose(sync.out, ref, 'graph');
  });
});
