/**
 * Typed wrapper over the native addon (native/src, built by `npm run build:addon`). Everything
 * the model needs to run a graph goes through `Backend` (backend.ts) with nodes described by
 * `OPS` (ops.ts); the addon mirrors that table and is refused at load if the two disagree.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { Backend, BackendKind, CudaStorage, EngineInfo, RunOptions } from './backend';
import { OPS, OP_NAMES, type OpName, type OpNode } from './ops';
import type { NativeDataPlane } from './dataplane';
import { DEFAULT_ENGINE_SETTINGS, SIMD_LEVELS, type EngineSettings, type SimdLevel } from './settings';

export * from './ops';
export * from './backend';
export * from './dataplane';
export * from './settings';

interface NativeNode {
  op: number;
  inputs: (Float32Array | null)[];
  output: Float32Array;
  params: number[];
}

interface NativeOpSpec {
  name: string;
  inputs: string[];
  params: string[];
  inPlace: boolean;
}

interface NativeAddon {
  ops: NativeOpSpec[];
  run(backend: string, nodes: NativeNode[], options?: RunOptions): Promise<void>;
  supportsNode(backend: string, node: NativeNode): string | null;
  runSync(backend: string, nodes: NativeNode[], options?: RunOptions): void;
  info(): EngineInfo;
  hostCpu(): HostCpuSeconds;
  setSimd(level: string): void;
  setThreads(threads: number): void;
  initCuda(device: number, cacheMb: number): void;
  blasSgemm(m: number, n: number, k: number, a: Float32Array, w: Float32Array, c: Float32Array, threads: number): void;
  blasCore(): string;
  releaseDeviceCache(): void;
  forgetDeviceCopies(arrays: readonly Float32Array[]): void;
  cudaLastRun(): CudaRunStats;
  dataplane: NativeDataPlane;
}

/** Device-side time of the last CUDA graph run (CUDA events) and the bytes it moved. */
export interface CudaRunStats {
  uploadMs: number;
  computeMs: number;
  downloadMs: number;
  uploadBytes: number;
  downloadBytes: number;
  /** Device bytes held by the weight cache after the run. */
  cachedBytes: number;
}

const ADDON_PATH = path.resolve(__dirname, '..', 'build', 'Release', 'longshot_engine.node');

function loadAddon(): NativeAddon {
  if (!fs.existsSync(ADDON_PATH)) {
    throw new Error(`@longshot/engine: native addon not found at ${ADDON_PATH}; run \`npm run build:addon\` from the repository root`);
  }
  // A .node file can only be loaded through require; the path is resolved above.
  const addon = require(ADDON_PATH) as NativeAddon;
  checkOpTable(addon.ops);
  return addon;
}

/** The native op table must be OPS, in the same order, with the same slots and params. */
function checkOpTable(native: NativeOpSpec[]): void {
  const names = native.map((o) => o.name);
  if (names.join(',') !== OP_NAMES.join(',')) {
    throw new Error(
      `@longshot/engine: native op list [${names.join(', ')}] differs from OPS [${OP_NAMES.join(', ')}]; ` +
        'update native/src/ops.def and rebuild',
    );
  }
  for (const spec of native) {
    const ts = OPS[spec.name as OpName];
    if (spec.inputs.join(',') !== ts.inputs.join(',') || spec.params.join(',') !== ts.params.join(',') || spec.inPlace !== ts.inPlace) {
      throw new Error(`@longshot/engine: native op '${spec.name}' differs from OPS in inputs, params or inPlace; update native/src/ops.def`);
    }
  }
}

const loaded = loadAddon();
let cudaSettings: Pick<EngineSettings, 'cudaDevice' | 'cudaCacheMb'> | null = null;

/** The addon, with CUDA probed (once, on first use) with the settings configureEngine was given. */
function native(): NativeAddon {
  if (cudaSettings === null) {
    cudaSettings = { cudaDevice: DEFAULT_ENGINE_SETTINGS.cudaDevice, cudaCacheMb: DEFAULT_ENGINE_SETTINGS.cudaCacheMb };
    loaded.initCuda(cudaSettings.cudaDevice, cudaSettings.cudaCacheMb ?? -1);
  }
  return loaded;
}

/**
 * Applies the app's engine settings (from its config): call it at start-up, before the engine's
 * first use. Threads and SIMD can change later; the CUDA device and cache are fixed by the first
 * use, and asking for others then is an error.
 */
export function configureEngine(settings: EngineSettings): void {
  if (cudaSettings === null) {
    cudaSettings = { cudaDevice: settings.cudaDevice, cudaCacheMb: settings.cudaCacheMb };
    loaded.initCuda(settings.cudaDevice, settings.cudaCacheMb ?? -1);
  } else if (cudaSettings.cudaDevice !== settings.cudaDevice || cudaSettings.cudaCacheMb !== settings.cudaCacheMb) {
    throw new Error('configureEngine: the CUDA device and cache are set at the engine\'s first use; configure it before');
  }
  if (settings.threads !== null) setThreads(settings.threads);
  if (settings.simd !== null) {
    // A level the CPU cannot run is capped at the best it can (the kernels' results are the same family).
    const available = native().info().simdAvailable;
    const best = SIMD_LEVELS.filter((l) => available.includes(l)).at(-1) ?? 'scalar';
    setSimd(SIMD_LEVELS.indexOf(settings.simd) <= SIMD_LEVELS.indexOf(best) ? settings.simd : best);
  }
}
const OP_INDEX = new Map<OpName, number>(OP_NAMES.map((name, i) => [name, i]));

function toNative(nodes: readonly OpNode[]): NativeNode[] {
  return nodes.map((n, i) => {
    const op = OP_INDEX.get(n.op);
    if (op === undefined) throw new TypeError(`node ${i}: unknown op '${String(n.op)}'`);
    return { op, inputs: n.inputs, output: n.output, params: n.params };
  });
}

/**
 * Why `backend` cannot run `node` (a kernel's limit, say), or null when it can: asked of the
 * backend itself, as ggml's supports_op. `backend` is a registered backend's name, or 'cuda' for
 * the CUDA kernels' limits on a machine without a device. A malformed node throws, as run does.
 */
export function unsupportedReason(backend: string, node: OpNode): string | null {
  return native().supportsNode(backend, toNative([node])[0]);
}

class NativeBackend implements Backend {
  constructor(readonly name: string) {}

  supportsOp(node: OpNode): boolean {
    return unsupportedReason(this.name, node) === null;
  }

  run(nodes: readonly OpNode[], options?: RunOptions): Promise<void> {
    // Validation errors surface as a rejected promise, like failures during the run.
    try {
      return native().run(this.name, toNative(nodes), options);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  runSync(nodes: readonly OpNode[], options?: RunOptions): void {
    native().runSync(this.name, toNative(nodes), options);
  }

  releaseDeviceMemory(): void {
    if (this.name.startsWith('cuda')) releaseDeviceCache();
  }

  forget(arrays: readonly Float32Array[]): void {
    native().forgetDeviceCopies(arrays); // device copies are per process, whichever backend made them
  }
}

const cpu = new NativeBackend('cpu');

/** The addon's data plane (see dataplane.ts); used by @longshot/transport's adapter. */
/** The CUDA device the engine runs on (configureEngine's `cudaDevice`; default 0). */
export function configuredCudaDevice(): number {
  return (cudaSettings ?? DEFAULT_ENGINE_SETTINGS).cudaDevice;
}

export function nativeDataPlane(): NativeDataPlane {
  return loaded.dataplane;
}

/** The CPU backend (SIMD level and thread count: the best this CPU runs, one thread per core, unless configureEngine says otherwise). */
export function cpuBackend(): Backend {
  return cpu;
}

const CUDA_STORAGES: readonly CudaStorage[] = ['f32', 'bf16', 'f16'];
const cudaBackends = new Map<CudaStorage, NativeBackend>();

/** Whether the CUDA backend can run here (built with nvcc, and a driver and a capable GPU found). */
export function cudaUsable(): boolean {
  return native().info().backends.includes('cuda');
}

/**
 * The CUDA backend with weights and activations stored on the device as `storage` (float32
 * arithmetic throughout). Each `run` uploads what the graph reads, keeps intermediates on the
 * device and copies back what it writes; buffers a graph only reads are cached on the device
 * across runs (see `releaseDeviceCache`). Throws when no CUDA device is usable.
 */
export function cudaBackend(opts: { storage?: CudaStorage } = {}): Backend {
  const storage = opts.storage ?? 'f32';
  if (!CUDA_STORAGES.includes(storage)) throw new RangeError(`cudaBackend: storage must be one of ${CUDA_STORAGES.join(', ')}, got '${String(storage)}'`);
  if (!cudaUsable()) {
    const info = native().info();
    throw new Error(`@longshot/engine: the CUDA backend is not usable here: ${info.cudaUnavailable ?? 'unknown reason'}`);
  }
  let b = cudaBackends.get(storage);
  if (!b) {
    b = new NativeBackend(`cuda:${storage}`);
    cudaBackends.set(storage, b);
  }
  return b;
}

/**
 * The backend a worker is configured for: 'cpu'; 'cuda' (throws with the reason when no device is
 * usable); 'auto', CUDA when usable, else CPU. `storage` applies to CUDA only.
 */
export function createBackend(kind: BackendKind, opts: { storage?: CudaStorage } = {}): Backend {
  switch (kind) {
    case 'cpu':
      return cpu;
    case 'cuda':
      return cudaBackend(opts);
    case 'auto':
      return cudaUsable() ? cudaBackend(opts) : cpu;
    default:
      throw new RangeError(`createBackend: unknown backend kind '${String(kind)}' (cpu, cuda, auto)`);
  }
}

/**
 * Frees every device copy the CUDA backends cache of read-only buffers (weights) and lets go of
 * the JS buffers they pinned; outputs kept on the device (`RunOptions.resident`) are copied back to
 * their host arrays first. Call it after modifying, in place, a buffer that earlier graphs only
 * read, before reading a resident output on the host, or to return device memory. A no-op
 * without CUDA.
 */
export function releaseDeviceCache(): void {
  native().releaseDeviceCache();
}

/** Where the last CUDA graph run spent its time (all zeros without CUDA); for benchmarks. */
export function cudaLastRunStats(): CudaRunStats {
  return native().cudaLastRun();
}

export function engineInfo(): EngineInfo {
  return native().info();
}

/**
 * Host CPU seconds of this process by part (native/src/cpu_time.h): `jsThread`, the calling
 * thread's own time (call it on the JS thread) without the graphs it ran synchronously;
 * `kernels`, every compute graph run on any thread (the running thread and the pool threads);
 * `dataPlane`, the data plane's sending and receiving threads. Monotonic totals.
 */
export interface HostCpuSeconds {
  readonly jsThread: number;
  readonly kernels: number;
  readonly dataPlane: number;
}

export function hostCpuSeconds(): HostCpuSeconds {
  return native().hostCpu();
}

/**
 * What a backend's results depend on besides its inputs: the backend and storage type, and the
 * CPU kernels' SIMD level or the CUDA device. Equal strings mean bit-identical outputs; caches of
 * computed results (text embeddings) key on it.
 */
export function backendNumerics(backend: Backend): string {
  const info = native().info();
  // On CUDA the GEMM algorithms are pinned per process by cuBLASLt's heuristic (docs/cuda.md), which
  // depends on the device model, its multiprocessor count and the library version.
  return backend.name === 'cpu' ? `cpu:simd=${info.simd}` : `${backend.name}:device=${info.cudaDevice ?? 'unknown'}:sms=${info.cudaSms ?? 0}:gemm=${info.cudaGemm ?? 'unknown'}`;
}

/** The GPU a backend computes on (index, UUID and model, as the CUDA backend reports it); null on the CPU. */
export function backendDevice(backend: Backend): { index: number; uuid: string; name: string } | null {
  if (backend.name === 'cpu') return null;
  const info = native().info();
  if (info.cudaDevice === undefined) return null;
  return { index: info.cudaDeviceIndex ?? 0, uuid: info.cudaDeviceUuid ?? '', name: info.cudaDevice };
}

let buildId: string | null = null;
/** The engine build: a digest of the loaded native addon (a rebuild with other flags or compiler is another build). */
export function engineBuildId(): string {
  buildId ??= createHash('sha256').update(fs.readFileSync(ADDON_PATH)).digest('hex').slice(0, 12);
  return buildId;
}

/**
 * A worker's numerics identity: backend, storage dtype (f32 on the CPU), SIMD level or device,
 * and the engine build. Bit-identity of a job's output holds among workers with equal
 * fingerprints only, so a job is pinned to the fingerprint it started on.
 */
export function numericsFingerprint(backend: Backend): string {
  // CUDA backends carry their storage in the name (cuda:bf16); the CPU stores float32.
  const storage = backend.name === 'cpu' ? ':storage=f32' : '';
  return `${backendNumerics(backend)}${storage}:build=${engineBuildId()}`;
}

/** Selects the CPU kernels' SIMD level; throws a RangeError if this CPU cannot run it. */
export function setSimd(level: SimdLevel): void {
  loaded.setSimd(level);
}

/** Resizes the CPU thread pool (results are identical for any size; used by tests and benches). */
export function setThreads(threads: number): void {
  loaded.setThreads(threads);
}

/** OpenBLAS C[M, N] = A[M, K] . W[N, K]^T with `threads` threads: the benchmark baseline. */
export function blasSgemm(m: number, n: number, k: number, a: Float32Array, w: Float32Array, c: Float32Array, threads: number): void {
  loaded.blasSgemm(m, n, k, a, w, c, threads);
}

/** The kernels the OpenBLAS baseline runs (e.g. SkylakeX): its own pick, or this CPU's widest when it does not know the CPU. */
export function blasCore(): string {
  return loaded.blasCore();
}

/** Runs one op synchronously, allocating its output from `OPS[op].outputSize`. */
export function runOp(backend: Backend, op: OpName, inputs: (Float32Array | null)[], params: number[]): Float32Array {
  const output = new Float32Array(OPS[op].outputSize(params));
  backend.runSync([{ op, inputs, output, params }]);
  return output;
}
