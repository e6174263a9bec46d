import type { RngState } from '@longshot/random';
import type { SamplerKind, SolverHistory } from '@longshot/sampler';

/**
 * The shape of a job's resumable state: what the head's block queue hands out at an iteration
 * boundary and takes back on a resume, and what the checkpoint store encodes. It lives here,
 * beside the job spec, because both the pipeline (which produces it) and the cache (which stores
 * it) depend on it and neither owns the other.
 */

/** Position in the coordinated noise (dualparal.md): the order rng and the previous draw. */
export interface NoiseState {
  readonly rng: RngState;
  /** Pool frame indices of the previous block's draw (empty before block 0). */
  readonly previous: readonly number[];
}

/** A queued block: latents [16, B, H, W] after `step` steps, and its solver's history. */
export interface BlockState {
  readonly index: number;
  readonly step: number;
  readonly latents: Float32Array;
  /** UniPC's per-block history (empty for Euler): each block is its own ODE solve. */
  readonly history: SolverHistory;
}

/**
 * Everything the head needs to resume a job at an iteration boundary (dualparal.md, "What stays
 * small"): the queued blocks with their solver histories, the noise pool position, and the
 * source of the next block's prefix (the block that left the queue most recently). The K/V
 * caches are rebuilt within an iteration, so they are not part of it.
 */
export interface QueueState {
  /** The iteration a resume starts at. */
  readonly iteration: number;
  /** The solver that produced the histories; a resume with another one is refused. */
  readonly sampler: SamplerKind;
  readonly blocks: readonly BlockState[];
  readonly noise: NoiseState;
  readonly finishedTail: { index: number; latents: Float32Array } | null;
}
