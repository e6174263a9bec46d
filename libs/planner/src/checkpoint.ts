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

/**
 * What a stored tensor of a block is (checkpoints store each tensor once, as it is computed):
 * `latents` after `step` steps (step 0: the initial noise), the `x0` prediction of step `step`,
 * and the `sample` step `step` started from as UniC corrected it (UniPC's last sample afterwards).
 */
export type PieceKind = 'latents' | 'x0' | 'sample';
export const PIECE_KINDS: readonly PieceKind[] = ['latents', 'x0', 'sample'];

/** One stored tensor of a block: which block, what it is, and the step it belongs to. */
export interface PieceId {
  readonly block: number;
  readonly kind: PieceKind;
  readonly step: number;
}

/** Which stored piece holds each tensor of a block's state (mirrors BlockState). */
export interface BlockPieces {
  readonly latents: PieceId;
  readonly modelOutputs: readonly PieceId[];
  readonly lastSample: PieceId | null;
}

/**
 * The pieces a block's state at `step` is made of when every step ran UniC (UniPC from its second
 * step on): latents at `step`, the last `outputs` x0 predictions, the sample of the step before.
 * What a state that names no pieces is taken to be made of (tests, tools).
 */
export function canonicalPieces(block: number, step: number, outputs: number, lastSample: boolean): BlockPieces {
  return {
    latents: { block, kind: 'latents', step },
    modelOutputs: Array.from({ length: outputs }, (_, j) => ({ block, kind: 'x0', step: step - outputs + j })),
    lastSample: lastSample ? { block, kind: 'sample', step: step - 1 } : null,
  };
}

/** A queued block: latents [16, B, H, W] after `step` steps, and its solver's history. */
export interface BlockState {
  readonly index: number;
  readonly step: number;
  readonly latents: Float32Array;
  /** UniPC's per-block history (empty for Euler): each block is its own ODE solve. */
  readonly history: SolverHistory;
  /** The stored pieces these tensors were read from (a resume); absent when none are stored. */
  readonly pieces?: BlockPieces;
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

/**
 * A checkpoint as the head commits it at an iteration boundary: the QueueState without its
 * tensors, each named by the piece that holds it (written when it was computed), and the
 * previous block's prefix source named by its index (the finished block, stored on its own).
 */
export interface CheckpointManifest {
  readonly iteration: number;
  readonly sampler: SamplerKind;
  readonly blocks: readonly { readonly index: number; readonly step: number; readonly lowerOrderNums: number; readonly lastOrder: number; readonly pieces: BlockPieces }[];
  readonly noise: NoiseState;
  readonly finishedTail: number | null;
}
