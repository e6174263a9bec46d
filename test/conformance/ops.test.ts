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
 * The cases come from the one table shared with the CUDA suite and the native driver
 * (libs/engine/check/cases.json, loaded by test/reference/cases.ts). Shapes deliberately include
 * M = 1, sizes of 1, odd sizes and sizes that leave tails after 8- and 16-wide vector loops,
 * attention with and without extra (feature-cache) keys and with queries != keys, rope with
 * frameOffset > 0 and uneven frame/row/column splits, and in-place runs for every op that allows
 * them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OP_NAMES, OPS, cpuBackend, engineInfo, runOp, setSimd, setThreads, type OpNode, type SimdLevel, unsupportedReason } from '@longshot/engine';
import { Rng } from '@longshot/random';
import { OP_CASES } from '../reference/cases';
import { REFERENCE_OPS, referenceOp } from '../reference/ops';

const TOLERANCE = 1e-4;

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
const normal = (rng: Rng, n: number, std = 1): Float32Array => rng.fillNormal(new Float32Array(n), std);

const info = engineInfo();
const backend = cpuBackend();
/** Thread counts to compare against the default one (restored after each use). */
const OTHER_THREAD_COUNTS = [1, 3, 8].filter((t) => t !== info.threads);

describe('op table', () => {
  it.each(OP_NAMES)('%s has a reference, conformance cases and CPU support', (op) => {
    expect(REFERENCE_OPS[op], `no reference for ${op}`).toBeTypeOf('function');
    expect(OP_CASES[op]?.length ?? 0, `no conformance cases for ${op}`).toBeGreaterThan(0);
    // The CPU backend is the reference: it runs every case of the table.
    for (const c of OP_CASES[op]) {
      const node = { op, inputs: c.inputs(), output: new Float32Array(OPS[op].outputSize(c.params)), params: c.params };
      expect(unsupportedReason(backend.name, node), `${op} ${c.label}`).toBeNull();
      expect(backend.supportsOp(node)).toBe(true);
    }
  });

  it('the CUDA kernels refuse up front what they cannot run, saying why (asked without a device)', () => {
    const attention = (headDim: number, heads = 2) => {
      const n = 3 * heads * headDim;
      return { op: 'attention' as const, inputs: [new Float32Array(n), new Float32Array(n), new Float32Array(n), null, null], output: new Float32Array(n), params: [1, 3, 3, 0, heads, headDim] };
    };
    expect(unsupportedReason('cuda', attention(128))).toBeNull();
    expect(unsupportedReason('cuda', attention(512))).toBeNull();
    expect(unsupportedReason('cuda', attention(1024))).toMatch(/head dim 1024 is above the attention kernel's 512/);
    expect(unsupportedReason('cuda', attention(16, 70_000))).toMatch(/grid limit/);
    // The CPU backend runs them all.
    expect(unsupportedReason('cpu', attention(1024))).toBeNull();
    // A malformed node is an error, not an answer.
    expect(() => unsupportedReason('cuda', { ...attention(128), params: [1, 3, 3, 0, 2] })).toThrow(/params/);
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
    // Inputs depend on the op and case only, so every SIMD level sees the same ones.
    it.each((OP_CASES[op] ?? []).map((c) => [c.label, c] as const))('%s', (_label, c) => {
      const inputs = c.inputs();
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

  // The sampler replaced its axpy chains with weighted_sum: the latents keep their bits only if
  // each element goes through the same fused multiply-adds, signed zeros and NaN payloads included.
  it('weighted_sum gives the bits of the axpy chain it fuses, signed zeros and NaNs included', () => {
    const rng = Rng.from('conformance', 'weighted-sum-chain');
    const n = 1037;
    const terms = Array.from({ length: 5 }, () => normal(rng, n));
    // Products of -0, +0 and signed zeros meeting in the sum; an infinity and a NaN payload.
    terms[0].set([-0, 0, -0, 1e-30, -1e30]);
    terms[1].set([0, -0, -0, -1e-30, 1e30]);
    new Uint32Array(terms[2].buffer)[7] = 0x7fc01234;
    terms[3][9] = -Infinity;
    const zeros = new Float32Array(n);
    for (const coefs of [[0.97, -0.12, 0.31, 0.02, -1.5], [-1, 1, 0, -0, 3e-8], [2, -2, 0.5, 1e20, -1e-20]]) {
      for (const present of [[0, 1, 2, 3, 4], [0, 2, 4], [0]]) {
        const chain = new Float32Array(n);
        const nodes: OpNode[] = present.map((j, k) =>
          k === 0 ? { op: 'axpy', inputs: [zeros, terms[j]], output: chain, params: [n, coefs[j]] } : { op: 'axpy', inputs: [chain, terms[j]], output: chain, params: [n, coefs[j]] },
        );
        backend.runSync(nodes);
        // The first present term must sit in slot 0 (t0 is required); the others keep their slots.
        const slots = [terms[present[0]], ...[1, 2, 3, 4].map((j) => (present.includes(j) && j !== present[0] ? terms[j] : null))];
        const fused = runOp(backend, 'weighted_sum', slots, [n, coefs[present[0]], ...[1, 2, 3, 4].map((j) => coefs[j])]);
        expect(bytes(fused).equals(bytes(chain)), `coefficients ${coefs}, slots ${present}`).toBe(true);
      }
    }
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
