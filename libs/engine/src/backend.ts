import type { OpNode } from './ops';

/** How a graph's results are used after it runs. */
export interface RunOptions {
  /**
   * Outputs nobody reads after this run (a model's scratch buffers). A backend that computes away
   * from host memory may leave them stale rather than copy them back: the CUDA backend skips the
   * device-to-host copy of every region that lies wholly inside them. Reading one afterwards gives
   * unspecified values; using one as an input of a later run is fine only where that run writes it
   * first.
   */
  discard?: readonly Float32Array[];
  /**
   * Inputs the caller rewrote on the host since an earlier run read them (scratch it fills itself,
   * such as a stage group's exchanged tensors). A device backend never serves these from a copy it
   * kept: left out, a buffer that two runs read without writing looks like a weight to the CUDA
   * weight cache, which then keeps the first contents.
   */
  rewritten?: readonly Float32Array[];
  /**
   * Outputs that only later runs of this backend read (a stage's K/V cache): a device backend may
   * keep them on the device instead of copying them back, and serve those runs from there. Their
   * host contents are stale until `releaseDeviceMemory()`. The CUDA backend keeps each written
   * region that lies wholly inside them.
   */
  resident?: readonly Float32Array[];
}

/**
 * A compute backend (ggml-style): it says which ops it supports and runs a list of nodes in order.
 * The model builds node lists from `OPS`; it never knows which backend runs them.
 */
export interface Backend {
  readonly name: string;
  /** Whether this backend runs this node (op and params); see unsupportedReason for why not. */
  supportsOp(node: OpNode): boolean;
  /** Runs the nodes in order off the JS thread; resolves when the last output is written. */
  run(nodes: readonly OpNode[], options?: RunOptions): Promise<void>;
  /** Same, on the calling thread (tests, tiny graphs). */
  runSync(nodes: readonly OpNode[], options?: RunOptions): void;
  /**
   * Copies what this backend kept on a device (`RunOptions.resident`) back to host memory and
   * frees its device copies, weights included. Absent on a backend that computes in host memory.
   */
  releaseDeviceMemory?(): void;
  /**
   * Frees the device copies of these arrays (resident outputs, cached inputs) without copying
   * anything back: their owner will not read them again (a stage whose session ended). Absent on
   * a backend that computes in host memory.
   */
  forget?(arrays: readonly Float32Array[]): void;
}

/** Storage type of a CUDA backend's device tensors; arithmetic is float32 in all three. */
export type CudaStorage = 'f32' | 'bf16' | 'f16';

/** What `createBackend` accepts: a worker's configured backend. 'auto' is CUDA when usable. */
export type BackendKind = 'cpu' | 'cuda' | 'auto';

export interface EngineInfo {
  /** Usable backend kinds: always 'cpu'; 'cuda' only when a CUDA device can run the kernels. */
  backends: string[];
  /** Whether the addon was compiled with the CUDA backend (nvcc present at build time). */
  cudaBuilt: boolean;
  /** CUDA devices the driver reports (0 without a driver or GPU). */
  cudaDevices: number;
  /** Name of the device the CUDA backend uses, when usable. */
  cudaDevice?: string;
  /** Its index among the CUDA devices (LONGSHOT_CUDA_DEVICE), when usable. */
  cudaDeviceIndex?: number;
  /** Its UUID as nvidia-smi prints it ("GPU-xxxxxxxx-..."), when usable. */
  cudaDeviceUuid?: string;
  /** Its multiprocessor count, when usable (a MIG slice has fewer: cuBLAS heuristics differ). */
  cudaSms?: number;
  /** What runs `linear` on CUDA: `cublaslt-<version>` (pinned algorithms, docs/cuda.md) or `tiled`, when usable. */
  cudaGemm?: string;
  /** Whether `linear` runs on cuBLAS (false before the first CUDA run, or on the fallback GEMM). */
  cublas?: boolean;
  /** Why the CUDA backend is not usable, when it is not. */
  cudaUnavailable?: string;
  /** SIMD level in use for the CPU kernels: 'avx512' | 'avx2' | 'scalar'. */
  simd: string;
  /** SIMD levels this CPU can run. */
  simdAvailable: string[];
  threads: number;
}
