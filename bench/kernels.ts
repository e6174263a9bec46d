/**
 * Kernel benchmark: GEMM (the `linear` op) on Wan2.1-1.3B-like shapes against OpenBLAS on the
 * same shapes and thread count, measured interleaved in one run so that both see the same
 * machine state; and fused attention. Each section is one key of the returned object, so other
 * sections (stage forward times) can be added beside these.
 */
import { blasCore, blasSgemm, cpuBackend, engineInfo, type OpNode } from '@longshot/engine';
import { benchStageForward, type StageForwardReport } from './stage-forward';
import { Rng } from '@longshot/random';

export interface GemmShape {
  m: number;
  k: number;
  n: number;
  ms: number;
  gflops: number;
  baselineMs: number;
  baselineGflops: number;
  ratio: number;
}

export interface KernelsReport {
  engine: { simd: string; threads: number };
  gemm: { gflops: number; baselineGflops: number; baseline: string; ratio: number; shapes: GemmShape[] };
  attention: {
    gflops: number;
    ms: number;
    shape: { batch: number; queries: number; keys: number; extraKeys: number; heads: number; headDim: number };
  };
  stageForward: StageForwardReport[];
  /** The head's UniPC combinations: one weighted_sum pass against the axpy chain it replaced. */
  samplerCombination: { elements: number; terms: number; ms: number; baselineMs: number; baseline: string; ratio: number; sameBits: boolean };
}

const REPS = 5;

/** Deterministic uniform values in [-1, 1). */
const random = (n: number, seed: number): Float32Array => Rng.from(seed).fillUniform(new Float32Array(n));

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function timeMs(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

// OpenBLAS worker threads busy-wait for ~0.1 s after a call before sleeping; on a small machine
// they would steal cores from whatever is measured next, so every measurement starts after this.
const SETTLE_MS = 250;
const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, SETTLE_MS));

async function benchGemm(threads: number): Promise<KernelsReport['gemm']> {
  const cpu = cpuBackend();
  // Tokens x (attention projections, FFN up, FFN down) of the 1.3B model.
  const dims: [number, number, number][] = [
    [2048, 1536, 1536],
    [2048, 1536, 8960],
    [2048, 8960, 1536],
  ];
  const shapes: GemmShape[] = [];
  let flopsTotal = 0;
  let msTotal = 0;
  let baselineMsTotal = 0;
  for (const [m, k, n] of dims) {
    const x = random(m * k, 1);
    const w = random(n * k, 2);
    const y = new Float32Array(m * n);
    const yBlas = new Float32Array(m * n);
    const node: OpNode = { op: 'linear', inputs: [x, w, null], output: y, params: [m, k, n] };
    const ours = (): number => timeMs(() => cpu.runSync([node]));
    const blas = (): number => timeMs(() => blasSgemm(m, n, k, x, w, yBlas, threads));
    ours();
    blas();
    const t: number[] = [];
    const tb: number[] = [];
    for (let r = 0; r < REPS; r++) {
      await settle();
      t.push(ours());
      await settle();
      tb.push(blas());
    }
    const flops = 2 * m * n * k;
    const ms = median(t);
    const baselineMs = median(tb);
    flopsTotal += flops;
    msTotal += ms;
    baselineMsTotal += baselineMs;
    shapes.push({
      m,
      k,
      n,
      ms,
      gflops: flops / ms / 1e6,
      baselineMs,
      baselineGflops: flops / baselineMs / 1e6,
      ratio: baselineMs / ms,
    });
  }
  const gflops = flopsTotal / msTotal / 1e6;
  const baselineGflops = flopsTotal / baselineMsTotal / 1e6;
  return { gflops, baselineGflops, baseline: `openblas (${blasCore()} kernels)`, ratio: gflops / baselineGflops, shapes };
}

async function benchAttention(): Promise<KernelsReport['attention']> {
  const shape = { batch: 1, queries: 2048, keys: 2048, extraKeys: 512, heads: 4, headDim: 128 };
  const { batch, queries, keys, extraKeys, heads, headDim } = shape;
  const row = heads * headDim;
  const q = random(batch * queries * row, 3);
  const k = random(batch * keys * row, 4);
  const v = random(batch * keys * row, 5);
  const ek = random(batch * extraKeys * row, 6);
  const ev = random(batch * extraKeys * row, 7);
  const out = new Float32Array(batch * queries * row);
  const node: OpNode = {
    op: 'attention',
    inputs: [q, k, v, ek, ev],
    output: out,
    params: [batch, queries, keys, extraKeys, heads, headDim],
  };
  const cpu = cpuBackend();
  cpu.runSync([node]);
  await settle();
  const t: number[] = [];
  for (let r = 0; r < REPS; r++) t.push(timeMs(() => cpu.runSync([node])));
  const ms = median(t);
  // Q.K^T and P.V: 2 multiply-adds per (query, key, dim).
  const flops = 4 * batch * heads * queries * (keys + extraKeys) * headDim;
  return { gflops: flops / ms / 1e6, ms, shape };
}

/**
 * A UniPC combination at Wan2.1's 832x480 (a block of 4 latent frames: 16 x 4 x 60 x 104 values),
 * order 2 with the corrector: base, two model outputs and x0. weighted_sum reads the four terms
 * and writes the result once; the axpy chain (0 + c0 t0, then + c_j t_j) makes four passes, each
 * reading and writing the result. Interleaved, median of 9.
 */
async function benchSamplerCombination(): Promise<KernelsReport['samplerCombination']> {
  const n = 16 * 4 * 60 * 104;
  const terms = [11, 12, 13, 14].map((seed) => random(n, seed));
  const coefs = [0.97, -0.12, 0.31, 0.02];
  const zeros = new Float32Array(n);
  const [fused, chain] = [new Float32Array(n), new Float32Array(n)];
  const fusedNode: OpNode = { op: 'weighted_sum', inputs: [...terms, null], output: fused, params: [n, ...coefs, 0] };
  const chainNodes: OpNode[] = terms.map((t, j) => ({ op: 'axpy', inputs: [j === 0 ? zeros : chain, t], output: chain, params: [n, coefs[j]] }));
  const cpu = cpuBackend();
  cpu.runSync([fusedNode]);
  cpu.runSync(chainNodes);
  const [t, tb]: number[][] = [[], []];
  for (let r = 0; r < 9; r++) {
    t.push(timeMs(() => cpu.runSync([fusedNode])));
    tb.push(timeMs(() => cpu.runSync(chainNodes)));
  }
  const sameBits = Buffer.from(fused.buffer).equals(Buffer.from(chain.buffer));
  const [ms, baselineMs] = [median(t), median(tb)];
  return { elements: n, terms: terms.length, ms, baselineMs, baseline: 'axpy chain', ratio: baselineMs / ms, sameBits };
}

export async function kernelsBench(opts: { json: boolean }): Promise<KernelsReport> {
  const info = engineInfo();
  const report: KernelsReport = {
    engine: { simd: info.simd, threads: info.threads },
    gemm: await benchGemm(info.threads),
    attention: await benchAttention(),
    stageForward: [await benchStageForward('tiny'), await benchStageForward('small')],
    samplerCombination: await benchSamplerCombination(),
  };
  if (!opts.json) {
    console.log(`kernels (${info.simd}, ${info.threads} threads)`);
    for (const s of report.gemm.shapes) {
      console.log(
        `  linear ${s.m}x${s.k}->${s.n}: ${s.gflops.toFixed(1)} GFLOP/s (${s.ms.toFixed(1)} ms), ` +
          `openblas ${s.baselineGflops.toFixed(1)} GFLOP/s, ratio ${s.ratio.toFixed(2)}`,
      );
    }
    console.log(`  gemm overall: ${report.gemm.gflops.toFixed(1)} GFLOP/s, ratio vs ${report.gemm.baseline} ${report.gemm.ratio.toFixed(2)}`);
    console.log(`  attention: ${report.attention.gflops.toFixed(1)} GFLOP/s (${report.attention.ms.toFixed(1)} ms)`);
    for (const s of report.stageForward) console.log(`  stage forward ${s.model} (${s.window.tokens} tokens, all layers): ${s.ms.toFixed(1)} ms, ${s.gflops.toFixed(1)} GFLOP/s`);
    const c = report.samplerCombination;
    console.log(`  sampler combination (${c.terms} terms of ${c.elements}): weighted_sum ${c.ms.toFixed(2)} ms, ${c.baseline} ${c.baselineMs.toFixed(2)} ms, ratio ${c.ratio.toFixed(2)}, same bits ${c.sameBits}`);
  }
  return report;
}
