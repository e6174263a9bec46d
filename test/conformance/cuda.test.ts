/**
 * CUDA conformance: every op of OPS, a whole stage window forward, the umT5 encoder and the VAE
 * decoder on the CUDA backend against the CPU backend, for each device storage type.
 *
 * Error measure: max|cuda - cpu| / max(1e-6, max|cpu|) per output (as in ops.test.ts), bounded per
 * storage type: float32 storage differs from the CPU only by summation order and libm (1e-5);
 * bfloat16 (8-bit significand) and float16 (11-bit) round every stored value once, hence 1e-2 and
 * 5e-3. Op inputs are rounded to the storage type before both backends see them, so an op's error
 * is its own (output rounding and arithmetic). A stage window chains dozens of ops on raw float32
 * inputs, so its bounds are wider. The op cases are the shared table (libs/engine/check/cases.json)
 * that the native driver (deploy/gpu-check.sh) runs too.
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
import { OP_CASES, f32Inputs, roundToStorage } from '../reference/cases';
import { relError } from '../reference/error';
import { StorageEmulation } from '../reference/storage-emulation';
import { testWeights } from '../reference/weights';
import { expectSameChain, midStep, runChain, split } from './stage-cases';

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

/**
 * One op on `backend` over copies of `inputs`; in place writes into the copy of inputs[0]. The
 * inputs are first rounded to the storage type (except the slots the backend keeps in float32),
 * so CPU and CUDA see the same values and the error measures the kernels, not the upload rounding.
 */
function runOne(backend: Backend, op: OpName, inputs: (Float32Array | null)[], params: number[], inPlace: boolean, storage: CudaStorage): Float32Array {
  const keep = f32Inputs(op);
  const copies = inputs.map((x, i) => (x ? (keep.includes(i) ? Float32Array.from(x) : roundToStorage(x, storage)) : null));
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

  it('every op has test cases', () => {
    for (const op of OP_NAMES) expect(OP_CASES[op]?.length ?? 0, `no test case for op '${op}'`).toBeGreaterThan(0);
  });
});

describe.each(STORAGES)('CUDA ops vs CPU, %s storage', (storage) => {
  const tol = OP_TOLERANCE[storage];
  for (const op of OP_NAMES) {
    for (const c of OP_CASES[op]) {
      it.skipIf(!cudaUsable)(gpu(`${op}: ${c.label}`), () => {
        const cuda = cudaBackend({ storage });
        const inputs = c.inputs();
        expectClose(runOne(cuda, op, inputs, c.params, false, storage), runOne(cpu, op, inputs, c.params, false, storage), tol, `${op} ${c.label}`);
        if (OPS[op].inPlace) {
          expectClose(runOne(cuda, op, inputs, c.params, true, storage), runOne(cpu, op, inputs, c.params, true, storage), tol, `${op} ${c.label} in place`);
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
    // Weights changed in place must be followed by releaseDeviceCache(). A stale weight would be off
    // by its whole value; the new weights are not rounded to the storage first, so this chain of
    // ops (cfg_combine scales differences by up to 5) gets the wider bound of a graph on raw inputs.
    for (let i = 0; i < w.length; i++) w[i] = -w[i];
    releaseDeviceCache();
    const ref2 = await run(cpu);
    expectClose((await run(cuda)).out, ref2.out, STAGE_TOLERANCE[storage], 'after a weight update');
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
    const cuda = cudaBackend({ storage });
    const onCuda = make(cuda);
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
      cuda.releaseDeviceMemory?.(); // the stage's own cache stays on the device (resident)
      const a = onCuda.kvCache!;
      const b = onCpu.kvCache!;
      expect(a.block).toBe(step.block);
      a.k.forEach((k, i) => expectClose(k, b.k[i], tol, `round ${round}: cached K of layer ${i}`));
      a.v.forEach((v, i) => expectClose(v, b.v[i], tol, `round ${round}: cached V of layer ${i}`));
    }
  });
});

/**
 * A worker reuses the buffers its tensors arrive in and its forwards write (apps/worker
 * TensorBuffers): the host refills them between runs, so a device backend must never serve them
 * from a copy it kept. The same chain with fresh buffers on the same device is the reference.
 */
describe.each(STORAGES)('CUDA stage chain in reused buffers, %s storage', (storage) => {
  it.skipIf(!cudaUsable)(gpu('tiny, K = 3: inputs handed over, outputs in reused buffers, bit for bit as with fresh ones'), async () => {
    const config = getConfig('tiny');
    const block0 = midStep(config, { iteration: 6, block: 0, step: 5, timestep: 300, prefixFrames: 0 });
    const want = await runChain(config, split(config.layers, 3), undefined, [block0], {}, cudaBackend({ storage }));
    expectSameChain(await runChain(config, split(config.layers, 3), undefined, [block0], {}, cudaBackend({ storage }), true), want, config.layers);
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
    // The tiny seeded decoder amplifies rounding several times over (on an H200: bf16 0.26, f16
    // 0.011 against the CPU), so the bound is twice what the storage alone costs on the CPU, with
    // the stage bound as a floor.
    const emulated = (s: CudaStorage) => new VaeDecoder(config, seededVaeWeights(config, SEED), h, w).decode(new StorageEmulation(s as 'bf16' | 'f16'), latents.slice(), F);
    const cpuPass = await onePass(cpu);
    const bound = storage === 'f32' ? STAGE_TOLERANCE.f32 : Math.max(STAGE_TOLERANCE[storage], 2 * relError(await emulated(storage), cpuPass));
    expectClose(got, cpuPass, bound, 'VAE decode');
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
