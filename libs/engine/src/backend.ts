import type { OpName, OpNode } from './ops';

/**
 * A compute backend (ggml-style): it says which ops it supports and runs a list of nodes in order.
 * The model builds node lists from `OPS`; it never knows which backend runs them.
 */
export interface Backend {
  readonly name: string;
  supportsOp(op: OpName): boolean;
  /** Runs the nodes in order off the JS thread; resolves when the last output is written. */
  run(nodes: readonly OpNode[]): Promise<void>;
  /** Same, on the calling thread (tests, tiny graphs). */
  runSync(nodes: readonly OpNode[]): void;
}

export interface EngineInfo {
  backends: string[];
  /** SIMD level in use for the CPU kernels: 'avx512' | 'avx2' | 'scalar'. */
  simd: string;
  /** SIMD levels this CPU can run. */
  simdAvailable: string[];
  threads: number;
}
