import { describe, expect, it } from 'vitest';

import { backendDevice, blasCore, blasSgemm, createBackend, cpuBackend, engineInfo, hostCpuSeconds, runOp, setSimd, setThreads, type OpNode, type SimdLevel } from '../src/index';
import { Rng } from '@longshot/random';

/** Deterministic uniform values in [-1, 1). */
const random = (n: number, seed: number): Float32Array => Rng.from(seed).fillUniform(new Float32Array(n));

/**
 * Largest error of a float32 GEMM against float64, relative to sum |x w| + |b| of each output
 * (the scale a float32 accumulation error is proportional to, cancellation or not).
 */
function linearError(got: Float32Array, x: Float32Array, w: Float32Array, b: Float32Array | null, m: number, k: number, n: number): number {
  let worst = 0;
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = b ? b[j] : 0;
      let mag = b ? Math.abs(b[j]) : 0;
      for (let kk = 0; kk < k; kk++) {
        s += x[i * k + kk] * w[j * k + kk];
        mag += Math.abs(x[i * k + kk] * w[j * k + kk]);
      }
      worst = Math.max(worst, Math.abs(got[i * n + j] - s) / Math.max(mag, 1e-30));
    }
  return worst;
}

/** Bitwise equality (toEqual on large typed arrays is slow and treats -0 and 0 alike). */
function sameBits(a: Float32Array[], b: Float32Array[]): boolean {
  return a.length === b.length && a.every((x, i) => Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(b[i].buffer, b[i].byteOffset, b[i].byteLength)));
}

const cpu = cpuBackend();
const levels = engineInfo().simdAvailable as SimdLevel[];

describe('engine addon', () => {
  it('loads with the op list of ops.ts', () => {
    const info = engineInfo();
    expect(info.backends).toContain('cpu');
    expect(levels).toContain('scalar');
    expect(info.simdAvailable).toContain(info.simd);
    expect(info.threads).toBeGreaterThan(0);
  });

  it('reports the GPU a backend computes on: none on the CPU; index, UUID and model on CUDA', () => {
    expect(backendDevice(cpu)).toBeNull();
    const info = engineInfo();
    if (info.backends.includes('cuda')) {
      const device = backendDevice(createBackend('cuda'));
      expect(device).toEqual({ index: info.cudaDeviceIndex, uuid: info.cudaDeviceUuid, name: info.cudaDevice });
      expect(device!.uuid).toMatch(/^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    } else {
      // Not usable (no driver or device here): nothing to report, and the reason says why.
      expect([info.cudaDevice, info.cudaDeviceIndex, info.cudaDeviceUuid]).toEqual([undefined, undefined, undefined]);
      expect(info.cudaUnavailable).toMatch(/CUDA/);
    }
  });

  it('names the node, op and slot in validation errors', () => {
    const x = new Float32Array(6);
    const out = new Float32Array(6);
    const ok: OpNode = { op: 'silu', inputs: [x], output: out, params: [6] };
    expect(() => cpu.runSync([ok, { op: 'linear', inputs: [x, null, null], output: out, params: [2, 3, 2] }])).toThrow(
      /node 1 \(linear\): input 'weight' \(slot 1\) must not be null/,
    );
    expect(() => cpu.runSync([{ op: 'linear', inputs: [x, new Float32Array(5), null], output: out, params: [2, 3, 2] }])).toThrow(
      RangeError,
    );
    expect(() => cpu.runSync([{ op: 'linear', inputs: [x, new Float32Array(5), null], output: out, params: [2, 3, 2] }])).toThrow(
      /node 0 \(linear\): input 'weight' \(slot 1\) has 5 elements, needs 6/,
    );
    expect(() => cpu.runSync([{ op: 'silu', inputs: [x], output: new Float32Array(2), params: [6] }])).toThrow(/node 0 \(silu\): output has 2/);
    expect(() => cpu.runSync([{ op: 'silu', inputs: [x], output: out, params: [2.5] }])).toThrow(/param 'n' must be a non-negative integer/);
    expect(() => cpu.runSync([{ op: 'silu', inputs: [x], output: out, params: [-1] }])).toThrow(RangeError);
    expect(() => cpu.runSync([{ op: 'silu', inputs: [x, x], output: out, params: [6] }])).toThrow(/node 0 \(silu\): expected 1 inputs, got 2/);
    expect(() => cpu.runSync([{ op: 'nope' as never, inputs: [x], output: out, params: [6] }])).toThrow(TypeError);
    expect(() => cpu.runSync([{ op: 'linear', inputs: [x, x, null], output: x, params: [2, 3, 2] }])).toThrow(
      /node 0 \(linear\): output overlaps input 'x' \(slot 0\)/,
    );
    expect(() =>
      cpu.runSync([{ op: 'attention', inputs: [x, x, x, null, null], output: out, params: [1, 1, 1, 1, 1, 6] }]),
    ).toThrow(/node 0 \(attention\): input 'extraK' \(slot 3\) is null/);
    return expect(cpu.run([{ op: 'silu', inputs: [x], output: out, params: [7] }])).rejects.toThrow(/node 0 \(silu\): input 'x'/);
  });

  it('rejects a patchify window its sources cannot give', () => {
    // [channels, frames, height, width, prefixFrames, prefixLength]: 2 own frames of 2x2x2 after the last prefix frames.
    const latents = new Float32Array(2 * 2 * 2 * 2);
    const prefix = new Float32Array(2 * 3 * 2 * 2);
    const patchify = (params: number[], from: Float32Array | null = prefix, out = new Float32Array(2 * 4 * 2 * 2)) => () => cpu.runSync([{ op: 'patchify', inputs: [latents, from], output: out, params }]);
    expect(patchify([2, 2, 2, 2, 2, 3])).not.toThrow();
    expect(patchify([2, 2, 2, 2, 0, 0], null, new Float32Array(2 * 2 * 2 * 2))).not.toThrow();
    expect(patchify([2, 2, 2, 2, 2, 3], null)).toThrow(/node 0 \(patchify\): input 'prefix' \(slot 1\) is null but prefixFrames is 2/);
    expect(patchify([2, 2, 2, 2, 3, 2])).toThrow(/param 'prefixFrames' exceeds 'prefixLength'/);
    expect(patchify([2, 2, 2, 2, 2, 4])).toThrow(/input 'prefix' \(slot 1\) has 24 elements, needs 32/);
    expect(patchify([2, 2, 2, 2, 2, 3], prefix, new Float32Array(2 * 3 * 2 * 2))).toThrow(/output has 24 elements, needs 32/);
  });

  it('rejects the shapes the umT5 ops cannot take', () => {
    const t = new Float32Array(64);
    const out = new Float32Array(64);
    const bias = (params: number[]) => () => cpu.runSync([{ op: 'relative_position_bias', inputs: [t], output: out, params }]);
    expect(bias([2, 2, 1, 2, 8])).toThrow(/node 0 \(relative_position_bias\): param 'buckets' must be at least 4/);
    expect(bias([2, 2, 1, 32, 8])).toThrow(/param 'maxDistance' must exceed buckets \/ 4/);
    expect(() => bias([2, 2, 1, 32, 9])()).not.toThrow();
    expect(() => cpu.runSync([{ op: 'biased_attention', inputs: [t, t, t, t], output: out, params: [1, 2, 0, 1, 4, 1] }])).toThrow(
      /node 0 \(biased_attention\): param 'keys' is 0/,
    );
    expect(() => cpu.runSync([{ op: 'biased_attention', inputs: [t, t, t, new Float32Array(3)], output: out, params: [1, 2, 2, 1, 4, 1] }])).toThrow(
      /input 'bias' \(slot 3\) has 3 elements, needs 4/,
    );
    expect(() => cpu.runSync([{ op: 'embedding', inputs: [t, Float32Array.of(-1)], output: out, params: [1, 8, 8] }])).toThrow(/ids\[0\] = -1.* is not a token id in \[0, 8\)/);
    expect(() => cpu.runSync([{ op: 'embedding', inputs: [t, Float32Array.of(NaN)], output: out, params: [1, 8, 8] }])).toThrow(/is not a token id/);
  });

  it('rejects the shapes the VAE ops cannot take', () => {
    const t = new Float32Array(4096);
    const out = new Float32Array(4096);
    // [frames, cacheFrames, height, width, in, out, kernelT, kernelH, kernelW]
    const conv = (params: number[], cache: Float32Array | null = t) => () => cpu.runSync([{ op: 'causal_conv3d', inputs: [t, t, null, cache], output: out, params }]);
    expect(() => conv([1, 2, 4, 4, 2, 2, 3, 3, 3])()).not.toThrow();
    expect(conv([1, 3, 4, 4, 2, 2, 3, 3, 3])).toThrow(/node 0 \(causal_conv3d\): param 'cacheFrames' exceeds kernelT - 1/);
    expect(conv([1, 0, 4, 4, 2, 2, 3, 2, 3])).toThrow(/param 'kernelH' must be odd/);
    expect(conv([1, 0, 4, 4, 2, 2, 0, 3, 3])).toThrow(/param 'kernelT' must be at least 1/);
    expect(conv([1, 2, 4, 4, 2, 2, 3, 3, 3], null)).toThrow(/input 'cache' \(slot 3\) is null but cacheFrames is 2/);
    expect(conv([1, 2, 40, 40, 2, 2, 3, 3, 3])).toThrow(/input 'x' \(slot 0\) has 4096 elements, needs 3200|input 'cache' \(slot 3\) has 4096 elements, needs 6400/);
    expect(() => cpu.runSync([{ op: 'clamp', inputs: [t], output: t, params: [8, 1, -1] }])).toThrow(/node 0 \(clamp\): param 'lo \(float\)' exceeds 'hi'/);
    // update_frame_cache may write over its cache, but only from the same element.
    expect(() => cpu.runSync([{ op: 'update_frame_cache', inputs: [t.subarray(0, 8), t.subarray(8, 12)], output: t.subarray(0, 8), params: [2, 1, 4] }])).not.toThrow();
    expect(() => cpu.runSync([{ op: 'update_frame_cache', inputs: [t.subarray(0, 8), t.subarray(8, 12)], output: t.subarray(4, 12), params: [2, 1, 4] }])).toThrow(
      /output overlaps input 'cache'/,
    );
  });

  it('run() resolves with the result of runSync()', async () => {
    const [m, k, n] = [37, 64, 50];
    const x = random(m * k, 1);
    const w = random(n * k, 2);
    const b = random(n, 3);
    const h = new Float32Array(m * n);
    const outAsync = new Float32Array(m * n);
    const nodes = (out: Float32Array): OpNode[] => [
      { op: 'linear', inputs: [x, w, b], output: h, params: [m, k, n] },
      { op: 'gelu_tanh', inputs: [h], output: h, params: [m * n] },
      { op: 'layer_norm', inputs: [h, null, null], output: out, params: [m, n, 1e-6] },
    ];
    await Promise.all([cpu.run(nodes(outAsync)), cpu.run(nodes(new Float32Array(m * n)))]);
    const outSync = new Float32Array(m * n);
    cpu.runSync(nodes(outSync));
    expect(sameBits([outAsync], [outSync])).toBe(true);
  });

  it('takes run hints and forgets device copies (the CPU computes in host memory) and refuses malformed ones', async () => {
    const x = random(64, 10);
    const h = new Float32Array(64);
    const out = new Float32Array(64);
    const nodes: OpNode[] = [
      { op: 'gelu_tanh', inputs: [x], output: h, params: [64] },
      { op: 'silu', inputs: [h], output: out, params: [64] },
    ];
    const want = new Float32Array(64);
    cpu.runSync([nodes[0], { ...nodes[1], output: want }]);
    await cpu.run(nodes, { discard: [h], rewritten: [x] });
    expect(sameBits([out], [want])).toBe(true);
    expect(() => cpu.runSync(nodes, { discard: [new Float64Array(4) as unknown as Float32Array] })).toThrow('discard[0] must be a Float32Array');
    expect(() => cpu.runSync(nodes, { rewritten: h as unknown as Float32Array[] })).toThrow('rewritten must be an array of Float32Array');
    await cpu.run(nodes, { resident: [h, out] });
    expect(sameBits([out], [want])).toBe(true);
    cpu.forget?.([h, out]);
    expect(() => cpu.forget?.([new Uint8Array(4) as unknown as Float32Array])).toThrow('arrays[0] must be a Float32Array');
  });

  it('gives bit-identical results for 1 and 2 threads', () => {
    const [m, k, n] = [301, 200, 130];
    const x = random(m * k, 4);
    const w = random(n * k, 5);
    const b = random(n, 6);
    const q = random(2 * 70 * 2 * 48, 7);
    const kv = random(2 * 90 * 2 * 48, 8);
    const ex = random(2 * 5 * 2 * 48, 9);
    const outputs = (threads: number): Float32Array[] => {
      setThreads(threads);
      return [
        runOp(cpu, 'linear', [x, w, b], [m, k, n]),
        runOp(cpu, 'linear', [x.subarray(0, 3 * k), w, b], [3, k, n]),
        runOp(cpu, 'attention', [q, kv, kv, ex, ex], [2, 70, 90, 5, 2, 48]),
        runOp(cpu, 'layer_norm', [x, null, null], [m, k, 1e-6]),
        runOp(cpu, 'silu', [x], [x.length]),
      ];
    };
    try {
      for (const level of levels) {
        setSimd(level);
        const two = outputs(2);
        expect(sameBits(outputs(1), two), `${level}: 1 vs 2 threads`).toBe(true);
        expect(sameBits(outputs(3), two), `${level}: 3 vs 2 threads`).toBe(true);
      }
    } finally {
      setThreads(engineInfo().threads);
      setSimd(levels[levels.length - 1]);
    }
  });

  it('matches a float64 GEMM on odd shapes at every SIMD level', () => {
    const shapes: [number, number, number][] = [
      [1, 1, 1],
      [1, 29, 13],
      [7, 13, 29],
      [4, 100, 33],
      [5, 257, 31],
      [13, 300, 65],
      [50, 513, 47],
      [97, 64, 129],
    ];
    try {
      for (const level of levels) {
        setSimd(level);
        for (const [m, k, n] of shapes) {
          const x = random(m * k, m);
          const w = random(n * k, n + 1);
          const b = random(n, k);
          for (const bias of [b, null]) {
            const got = runOp(cpu, 'linear', [x, w, bias], [m, k, n]);
            const err = linearError(got, x, w, bias, m, k, n);
            expect(err, `${level} ${m}x${k}x${n} bias=${bias !== null}`).toBeLessThan(1e-5);
          }
        }
      }
    } finally {
      setSimd(levels[levels.length - 1]);
    }
  });
});

describe('the OpenBLAS baseline of the benchmarks', () => {
  it("runs this CPU's widest kernels, not OpenBLAS's fallback for a CPU it does not know", () => {
    // Set before OpenBLAS loads (its constructor reads it) unless OPENBLAS_CORETYPE says otherwise.
    const want = process.env.OPENBLAS_CORETYPE ?? (engineInfo().simdAvailable.includes('avx512') ? 'SkylakeX' : engineInfo().simdAvailable.includes('avx2') ? 'Haswell' : null);
    const core = blasCore();
    if (want !== null) expect(core.toLowerCase()).toBe(want.toLowerCase());
    else expect(core).not.toBe('');
  });

  it('computes C = A . W^T', () => {
    const [m, n, k] = [3, 5, 7];
    const a = Float32Array.from({ length: m * k }, (_, i) => (i % 5) - 2);
    const w = Float32Array.from({ length: n * k }, (_, i) => (i % 3) - 1);
    const c = new Float32Array(m * n);
    blasSgemm(m, n, k, a, w, c, 1);
    const want = Array.from({ length: m * n }, (_, i) => {
      let sum = 0;
      for (let j = 0; j < k; j++) sum += a[Math.floor(i / n) * k + j] * w[(i % n) * k + j];
      return sum;
    });
    expect(Array.from(c)).toEqual(want);
  });
});

describe('host CPU accounting (hostCpuSeconds)', () => {
  // A GEMM of 1.07 GFLOP: at least 3 ms of CPU even at this machine's peak (2 cores x 32 FLOP/cycle x 5 GHz).
  const [m, k, n] = [512, 1024, 1024];
  const x = random(m * k, 1);
  const w = random(n * k, 2);
  const out = new Float32Array(m * n);
  const gemm: OpNode = { op: 'linear', inputs: [x, w, null], output: out, params: [m, k, n] };

  it('counts graph runs as kernels, off the JS thread\'s own time even when it ran them itself', async () => {
    const t0 = hostCpuSeconds();
    cpu.runSync([gemm]);
    const t1 = hostCpuSeconds();
    await cpu.run([gemm]);
    const t2 = hostCpuSeconds();
    const syncKernels = t1.kernels - t0.kernels;
    expect(syncKernels).toBeGreaterThan(0.001);
    expect(t2.kernels - t1.kernels).toBeGreaterThan(0.001);
    // The synchronous run was on this thread, yet its time is not the JS thread's.
    expect(t1.jsThread - t0.jsThread).toBeLessThan(syncKernels / 2);
    expect(t2.dataPlane).toBe(t0.dataPlane);
  });

  it('counts the JS thread\'s own work', () => {
    const t0 = hostCpuSeconds();
    let spin = 0;
    for (let i = 0; i < 1e8; i++) spin += Math.sqrt(i);
    const t1 = hostCpuSeconds();
    expect(spin).toBeGreaterThan(0);
    expect(t1.jsThread - t0.jsThread).toBeGreaterThan(0.001);
    expect(t1.kernels).toBe(t0.kernels);
  });
});
