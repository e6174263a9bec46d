/**
 * CUDA conformance: every op of OPS, a whole stage window forward, the umT5 encoder and the VAE
 * decoder on the CUDA backend against the CPU backend, for each device storage type.
 *
 * Error measure: max|cuda - cpu| / max(1e-6, max|cpu|) per output (as in ops.test.ts), bounded per
 * storage type: float32 storage differs from the CPU only by summation order and libm (1e-5);
 * bfloat16 (8-bit significand) and float16 (11-bit) round every stored input, intermediate and
 * output once, hence 1e-2 and 5e-3. A stage window chains dozens of ops, so its bounds are wider.
 *
 * On a machine without a usable CUDA device the GPU cases are reported as skipped, with the
 * reason in their names; the build/selection checks below run everywhere.
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  OP_NAMES,
  OPS,
  type Backend,
  type CudaStorage,
  type OpName,
  type OpNode,
  cpuBackend,
  createBackend,
  cudaBackend,
  engineInfo,
  releaseDeviceCache,
} from '@longshot/engine';
import { SEEDED_UMT5, SEEDED_VAE, Stage, VaeDecoder, encodeText, getConfig, seededUmt5Weights, seededVaeWeights, type BlockStep, type StageRange } from '@longshot/model';
import { Rng } from '@longshot/random';
import { relError } from '../reference/error';
import { testWeights } from '../reference/weights';

const info = engineInfo();
const cudaUsable = info.backends.includes('cuda');
const SKIPPED = '(skipped: no CUDA device)';
/** GPU-only test names carry the skip reason when there is no device, so the report says why. */
const gpu = (name: string): string => (cudaUsable ? name : `${name} ${SKIPPED}`);

const STORAGES: readonly CudaStorage[] = ['f32', 'bf16', 'f16'];
const OP_TOLERANCE: Record<CudaStorage, number> = { f32: 1e-5, bf16: 1e-2, f16: 5e-3 };
const STAGE_TOLERANCE: Record<CudaStorage, number> = { f32: 1e-4, bf16: 5e-2, f16: 1e-2 };

const cpu = cpuBackend();
const normal = (rng: Rng, n: number, std = 1, mean = 0): Float32Array => {
  const a = rng.fillNormal(new Float32Array(n), std);
  if (mean !== 0) for (let i = 0; i < n; i++) a[i] += mean;
  return a;
};


function expectClose(got: Float32Array, ref: Float32Array, tol: number, what: string): void {
  const err = relError(got, ref);
  expect(err, `${what}: max rel error ${err.toExponential(3)} > ${tol}`).toBeLessThanOrEqual(tol);
}

// ---- op cases ------------------------------------------------------------------------------------

interface OpCase {
  label: string;
  params: number[];
  inputs(rng: Rng): (Float32Array | null)[];
}

/** Typed as a full Record so a new op without a case fails to compile, and the test below fails too. */
const CASES: Record<OpName, OpCase[]> = {
  linear: [
    { label: '37x70 -> 45 +bias', params: [37, 70, 45], inputs: (r) => [normal(r, 37 * 70), normal(r, 45 * 70, 1 / Math.sqrt(70)), normal(r, 45)] },
    { label: '1x256 -> 96 no bias', params: [1, 256, 96], inputs: (r) => [normal(r, 256), normal(r, 96 * 256, 1 / 16), null] },
    { label: '130x33 -> 17', params: [130, 33, 17], inputs: (r) => [normal(r, 130 * 33), normal(r, 17 * 33, 0.2), normal(r, 17)] },
  ],
  layer_norm: [
    { label: '19x300 affine', params: [19, 300, 1e-6], inputs: (r) => [normal(r, 19 * 300, 1, 3), normal(r, 300, 0.3, 1), normal(r, 300, 0.3)] },
    { label: '4x64 plain', params: [4, 64, 1e-5], inputs: (r) => [normal(r, 4 * 64), null, null] },
  ],
  rms_norm: [{ label: '23x130', params: [23, 130, 1e-6], inputs: (r) => [normal(r, 23 * 130, 2), normal(r, 130, 0.3, 1)] }],
  modulate: [{ label: '21x65', params: [21, 65], inputs: (r) => [normal(r, 21 * 65), normal(r, 65, 0.5), normal(r, 65, 0.5)] }],
  gated_add: [
    { label: '17x40 gate', params: [17, 40], inputs: (r) => [normal(r, 17 * 40), normal(r, 17 * 40), normal(r, 40)] },
    { label: '5x33 no gate', params: [5, 33], inputs: (r) => [normal(r, 5 * 33), normal(r, 5 * 33), null] },
  ],
  gelu_tanh: [{ label: 'n=1031', params: [1031], inputs: (r) => [normal(r, 1031, 3)] }],
  silu: [{ label: 'n=999', params: [999], inputs: (r) => [normal(r, 999, 4)] }],
  rope3d: [
    // [batch, frames, height, width, heads, headDim, frameOffset, theta]
    { label: 'b2 3x2x4 h3 d28 offset 5', params: [2, 3, 2, 4, 3, 28, 5, 10000], inputs: (r) => [normal(r, 2 * 3 * 2 * 4 * 3 * 28)] },
    { label: 'b1 2x4x6 h2 d128', params: [1, 2, 4, 6, 2, 128, 0, 10000], inputs: (r) => [normal(r, 2 * 4 * 6 * 2 * 128)] },
  ],
  attention: [
    // [batch, queries, keys, extraKeys, heads, headDim]
    {
      label: 'b2 q45 k70 +extra 33, h3 d40',
      params: [2, 45, 70, 33, 3, 40],
      inputs: (r) => [normal(r, 2 * 45 * 120), normal(r, 2 * 70 * 120), normal(r, 2 * 70 * 120), normal(r, 2 * 33 * 120), normal(r, 2 * 33 * 120)],
    },
    // The VAE's single-head spatial attention: head dim 384 (the 16-column-per-lane kernel).
    { label: 'b2 q40 k40, h1 d384', params: [2, 40, 40, 0, 1, 384], inputs: (r) => [normal(r, 2 * 40 * 384, 0.1), normal(r, 2 * 40 * 384, 0.1), normal(r, 2 * 40 * 384), null, null] },
    { label: 'b1 q65 k16, h2 d128', params: [1, 65, 16, 0, 2, 128], inputs: (r) => [normal(r, 65 * 256), normal(r, 16 * 256), normal(r, 16 * 256), null, null] },
    { label: 'b1 q7 only extra 9, h1 d12', params: [1, 7, 0, 9, 1, 12], inputs: (r) => [normal(r, 7 * 12), new Float32Array(0), new Float32Array(0), normal(r, 9 * 12), normal(r, 9 * 12)] },
  ],
  patchify: [{ label: '5ch 3x6x4', params: [5, 3, 6, 4], inputs: (r) => [normal(r, 5 * 3 * 6 * 4)] }],
  unpatchify: [{ label: '5ch 3x6x4', params: [5, 3, 6, 4], inputs: (r) => [normal(r, 5 * 3 * 6 * 4)] }],
  timestep_embedding: [
    { label: 'n3 dim 256', params: [3, 256], inputs: () => [Float32Array.of(999, 620, 1.5)] },
    { label: 'n1 dim 33', params: [1, 33], inputs: () => [Float32Array.of(411)] },
  ],
  cfg_combine: [{ label: 'n=777 g=5', params: [777, 5], inputs: (r) => [normal(r, 2 * 777)] }],
  axpy: [{ label: 'n=777 a=-0.03', params: [777, -0.03], inputs: (r) => [normal(r, 777), normal(r, 777)] }],
  copy_rows: [{ label: 'b2 rows 9 cols 13 from 3 count 4', params: [2, 9, 13, 3, 4], inputs: (r) => [normal(r, 2 * 9 * 13)] }],
  mul: [{ label: 'n=1031', params: [1031], inputs: (r) => [normal(r, 1031, 2), normal(r, 1031)] }],
  embedding: [
    // Ids above 2048 (not exact in float16) and above 256 (not exact in bfloat16): kept float32.
    { label: '6 ids of 5000, dim 40', params: [6, 5000, 40], inputs: (r) => [normal(r, 5000 * 40), Float32Array.of(4999, 0, 2049, 257, 3001, 2049)] },
  ],
  relative_position_bias: [
    // [queries, keys, heads, buckets, maxDistance]: distances past maxDistance on both sides.
    { label: 'q40 k300 h3 32 buckets max 128', params: [40, 300, 3, 32, 128], inputs: (r) => [normal(r, 32 * 3)] },
    { label: 'q30 k30 h2 10 buckets max 12', params: [30, 30, 2, 10, 12], inputs: (r) => [normal(r, 10 * 2)] },
  ],
  biased_attention: [
    // [batch, queries, keys, heads, headDim, scale]
    {
      label: 'b2 q45 k70 h3 d64 unscaled',
      params: [2, 45, 70, 3, 64, 1],
      inputs: (r) => [normal(r, 2 * 45 * 192), normal(r, 2 * 70 * 192), normal(r, 2 * 70 * 192), normal(r, 3 * 45 * 70, 2)],
    },
    { label: 'b1 q7 k9 h2 d12 scale 0.3', params: [1, 7, 9, 2, 12, 0.3], inputs: (r) => [normal(r, 7 * 24), normal(r, 9 * 24), normal(r, 9 * 24), normal(r, 2 * 7 * 9)] },
  ],
  causal_conv3d: [
    // [frames, cacheFrames, height, width, in, out, kernelT, kernelH, kernelW]
    {
      label: '2f +1 cached 5x6 13 -> 20 kernel 3x3x3',
      params: [2, 1, 5, 6, 13, 20, 3, 3, 3],
      inputs: (r) => [normal(r, 2 * 30 * 13), normal(r, 20 * 13 * 27, 1 / Math.sqrt(13 * 27)), normal(r, 20), normal(r, 30 * 13)],
    },
    { label: '3f 4x4 9 -> 18 kernel 3x1x1 no cache', params: [3, 0, 4, 4, 9, 18, 3, 1, 1], inputs: (r) => [normal(r, 3 * 16 * 9), normal(r, 18 * 9 * 3, 0.2), null, null] },
    { label: '1f 7x5 6 -> 3 conv2d', params: [1, 0, 7, 5, 6, 3, 1, 3, 3], inputs: (r) => [normal(r, 35 * 6), normal(r, 3 * 6 * 9, 0.15), normal(r, 3), null] },
  ],
  channel_rms_norm: [{ label: '37x96', params: [37, 96, 1e-12], inputs: (r) => [normal(r, 37 * 96, 2), normal(r, 96, 0.3, 1)] }],
  upsample_nearest2x: [{ label: '2f 3x5x7', params: [2, 3, 5, 7], inputs: (r) => [normal(r, 2 * 3 * 5 * 7)] }],
  transpose: [{ label: '3x12x2 cells of 5', params: [3, 12, 2, 5], inputs: (r) => [normal(r, 3 * 12 * 2 * 5)] }],
  update_frame_cache: [
    { label: 'keep 2 of 2 + 1', params: [2, 1, 33], inputs: (r) => [normal(r, 66), normal(r, 33)] },
    { label: 'keep 2 of 2 + 4', params: [2, 4, 10], inputs: (r) => [normal(r, 20), normal(r, 40)] },
  ],
  clamp: [{ label: 'n=999 [-1, 1]', params: [999, -1, 1], inputs: (r) => [normal(r, 999, 2)] }],
};

function runOne(backend: Backend, op: OpName, inputs: (Float32Array | null)[], params: number[], inPlace: boolean): Float32Array {
  const copies = inputs.map((x) => (x ? Float32Array.from(x) : null));
  const output = inPlace ? copies[0]! : new Float32Array(OPS[op].outputSize(params as never));
  backend.runSync([{ op, inputs: copies, output, params }]);
  return output;
}

describe('CUDA backend on this machine', () => {
  it('the addon loads, reports its CUDA build and lists cuda only when usable', () => {
    const script = path.resolve(__dirname, '../../libs/engine/native/cuda_config.js');
    const nvccBuild = execFileSync(process.execPath, [script, 'enabled'], { encoding: 'utf8' }).trim() === '1';
    if (nvccBuild) expect(info.cudaBuilt, 'nvcc is present (and LONGSHOT_CUDA is not 0), so the addon should be built with CUDA').toBe(true);
    expect(info.cudaDevices).toBeGreaterThanOrEqual(0);
    if (cudaUsable) {
      expect(info.backends).toEqual(['cpu', 'cuda']);
      expect(info.cudaDevice).toBeTruthy();
    } else {
      expect(info.backends).toEqual(['cpu']);
      expect(info.cudaUnavailable).toBeTruthy();
    }
  });

  it('createBackend picks the configured backend; cuda without a device throws a clear error', () => {
    expect(createBackend('cpu')).toBe(cpu);
    if (cudaUsable) {
      expect(createBackend('auto').name).toBe('cuda:f32');
      expect(createBackend('cuda', { storage: 'bf16' }).name).toBe('cuda:bf16');
    } else {
      expect(createBackend('auto')).toBe(cpu);
      expect(() => createBackend('cuda')).toThrow(/CUDA backend is not usable here: .+/);
      expect(() => cudaBackend({ storage: 'bf16' })).toThrow(/CUDA backend is not usable here/);
      releaseDeviceCache(); // a no-op, but callable, without CUDA
    }
    expect(() => createBackend('tpu' as never)).toThrow(/unknown backend kind 'tpu'/);
  });

  it('every op has CUDA test cases', () => {
    for (const op of OP_NAMES) expect(CASES[op]?.length ?? 0, `no CUDA test case for op '${op}'`).toBeGreaterThan(0);
  });
});

describe.each(STORAGES)('CUDA ops vs CPU, %s storage', (storage) => {
  const tol = OP_TOLERANCE[storage];
  for (const op of OP_NAMES) {
    for (const c of CASES[op]) {
      it.skipIf(!cudaUsable)(gpu(`${op}: ${c.label}`), () => {
        const cuda = cudaBackend({ storage });
        const inputs = c.inputs(Rng.from(7, 'cuda', op, c.label));
        expectClose(runOne(cuda, op, inputs, c.params, false), runOne(cpu, op, inputs, c.params, false), tol, `${op} ${c.label}`);
        if (OPS[op].inPlace) {
          expectClose(runOne(cuda, op, inputs, c.params, true), runOne(cpu, op, inputs, c.params, true), tol, `${op} ${c.label} in place`);
        }
      });
    }
  }

  it.skipIf(!cudaUsable)(gpu('a graph of aliased views, run twice (device weight cache), then a weight changed after releaseDeviceCache'), async () => {
    const cuda = cudaBackend({ storage });
    const rng = Rng.from(11, 'graph', storage);
    const rows = 24;
    const dim = 48;
    const w = normal(rng, dim * dim, 1 / Math.sqrt(dim));
    const table = normal(rng, 3 * dim, 0.5);
    const xin = normal(rng, rows * dim);
    // Two linears into the halves of one buffer, in-place ops over the whole, row vectors that are
    // subarrays of one table, and an output read back through a subarray.
    const graph = (): { nodes: OpNode[]; out: Float32Array; both: Float32Array } => {
      const both = new Float32Array(2 * rows * dim);
      const out = new Float32Array(rows * dim);
      const nodes: OpNode[] = [
        { op: 'linear', inputs: [xin, w, table.subarray(0, dim)], output: both.subarray(0, rows * dim), params: [rows, dim, dim] },
        { op: 'linear', inputs: [xin, w, null], output: both.subarray(rows * dim), params: [rows, dim, dim] },
        { op: 'silu', inputs: [both], output: both, params: [both.length] },
        { op: 'modulate', inputs: [both, table.subarray(dim, 2 * dim), table.subarray(2 * dim)], output: both, params: [2 * rows, dim] },
        { op: 'cfg_combine', inputs: [both], output: out, params: [rows * dim, 3] },
      ];
      return { nodes, out, both };
    };
    const run = async (backend: Backend) => {
      const g = graph();
      await backend.run(g.nodes);
      return g;
    };
    const ref1 = await run(cpu);
    for (let i = 0; i < 3; i++) {
      const got = await run(cuda);
      expectClose(got.out, ref1.out, tol, `run ${i}: out`);
      expectClose(got.both, ref1.both, tol, `run ${i}: intermediate`);
    }
    // Weights changed in place must be followed by releaseDeviceCache().
    for (let i = 0; i < w.length; i++) w[i] = -w[i];
    releaseDeviceCache();
    const ref2 = await run(cpu);
    expectClose((await run(cuda)).out, ref2.out, tol, 'after a weight update');
  });
});

// ---- stage window --------------------------------------------------------------------------------

const SEED = 1234;
const GUIDANCE = 5;

describe.each(STORAGES)('CUDA stage window vs CPU, %s storage', (storage) => {
  it.skipIf(!cudaUsable)(gpu('tiny: head+tail stage, prefix window, injected successor K/V, two consecutive forwards'), async () => {
    const tol = STAGE_TOLERANCE[storage];
    const config = getConfig('tiny');
    const range: StageRange = { l0: 0, l1: config.layers, head: true, tail: true };
    const rng = Rng.from(SEED, 'cuda stage');
    const text = { cond: normal(rng, config.textLen * config.textDim), uncond: normal(rng, config.textLen * config.textDim) };
    const weights = testWeights(config, range, SEED);
    const step: BlockStep = { iteration: 4, block: 1, step: 3, timestep: 620, prefixFrames: 2, ownFrames: 3, contextFrames: 2, height: 4, width: 6 };
    const hw = (step.height / 2) * (step.width / 2);
    const input = normal(rng, config.latentChannels * (step.prefixFrames + step.ownFrames) * step.height * step.width);
    const kvSize = 2 * step.contextFrames * hw * config.dim;
    const successor = {
      k: Array.from({ length: config.layers }, () => normal(rng, kvSize)),
      v: Array.from({ length: config.layers }, () => normal(rng, kvSize)),
    };

    const make = (backend: Backend) => {
      const stage = new Stage({ config, range, weights, backend, text, guidance: GUIDANCE });
      stage.kvCache = { iteration: step.iteration, block: step.block + 1, k: successor.k, v: successor.v };
      return stage;
    };
    const onCpu = make(cpu);
    const onCuda = make(cudaBackend({ storage }));
    // Twice: the second forward runs with weights (and the cross-attention K/V) served from the
    // device cache, and must give the same answer.
    for (const round of [0, 1]) {
      if (round === 1) {
        onCpu.kvCache = { iteration: step.iteration, block: step.block + 1, k: successor.k, v: successor.v };
        onCuda.kvCache = { iteration: step.iteration, block: step.block + 1, k: successor.k, v: successor.v };
      }
      const want = await onCpu.forward(step, input);
      const got = await onCuda.forward(step, input);
      expectClose(got, want, tol, `round ${round}: velocity`);
      const a = onCuda.kvCache!;
      const b = onCpu.kvCache!;
      expect(a.block).toBe(step.block);
      a.k.forEach((k, i) => expectClose(k, b.k[i], tol, `round ${round}: cached K of layer ${i}`));
      a.v.forEach((v, i) => expectClose(v, b.v[i], tol, `round ${round}: cached V of layer ${i}`));
    }
  });
});

// ---- umT5 encoder ----------------------------------------------------------------------------------

describe.each(STORAGES)('CUDA umT5 encoder vs CPU, %s storage', (storage) => {
  it.skipIf(!cudaUsable)(gpu('small: 13 of 48 tokens, ids above the float16/bfloat16 integer range'), async () => {
    const config = { ...SEEDED_UMT5.small, vocabSize: 3000 };
    const weights = seededUmt5Weights(config, SEED);
    const rng = Rng.from(SEED, 'cuda umt5');
    const ids = Array.from({ length: 13 }, (_, i) => (i === 12 ? 1 : 2049 + Math.floor(rng.uniform() * 900)));
    const run = (backend: Backend) => encodeText({ config, weights, ids, textLen: 48, backend });
    expectClose(await run(cudaBackend({ storage })), await run(cpu), STAGE_TOLERANCE[storage], 'umT5 encoder');
  });
});

// ---- VAE decoder -----------------------------------------------------------------------------------

describe.each(STORAGES)('CUDA VAE decoder vs CPU, %s storage', (storage) => {
  it.skipIf(!cudaUsable)(gpu('tiny: 3 latent frames of 2x3 in one pass, and block by block with the same bits'), async () => {
    const config = SEEDED_VAE.tiny;
    const weights = seededVaeWeights(config, SEED);
    const [F, h, w] = [3, 2, 3];
    const latents = normal(Rng.from(SEED, 'cuda vae'), config.zDim * F * h * w);
    const cuda = cudaBackend({ storage });
    const onePass = (backend: Backend) => new VaeDecoder(config, weights, h, w).decode(backend, latents, F);
    const got = await onePass(cuda);
    expectClose(got, await onePass(cpu), STAGE_TOLERANCE[storage], 'VAE decode');
    // One latent frame per graph, the feature cache going through host memory between them.
    const dec = new VaeDecoder(config, weights, h, w);
    const parts: Float32Array[] = [];
    for (let f = 0; f < F; f++) {
      const one = new Float32Array(config.zDim * h * w);
      for (let c = 0; c < config.zDim; c++) one.set(latents.subarray((c * F + f) * h * w, (c * F + f + 1) * h * w), c * h * w);
      parts.push(await dec.decode(cuda, one, 1));
    }
    const blocks = new Float32Array(got.length);
    parts.reduce((at, p) => (blocks.set(p, at), at + p.length), 0);
    expect(Buffer.from(blocks.buffer).equals(Buffer.from(got.buffer)), 'block-wise CUDA decode differs from one pass').toBe(true);
  });
});
