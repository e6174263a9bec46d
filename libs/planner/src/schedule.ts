/**
 * The DualParal block schedule (dualparal.md, "The block queue"): in iteration i, block i joins
 * the queue (while blocks remain), every queued block advances one step newest to oldest, and the
 * oldest leaves once it has taken all T steps. Block b is at step i - b in iteration i.
 */
export interface BlockStepRef {
  readonly block: number;
  /** Step index this block-step takes (0-based; the block moves from sigma_step to sigma_step+1). */
  readonly step: number;
}

export interface Iteration {
  readonly index: number;
  /** Block that joins the queue at the start of this iteration, if any. */
  readonly added: number | null;
  /** Block-steps in processing order: newest block first. */
  readonly blockSteps: readonly BlockStepRef[];
  /** Block that leaves the queue, finished, at the end of this iteration. */
  readonly finished: number | null;
}

export function iterationCount(blocks: number, steps: number): number {
  return blocks + steps - 1;
}

export function iteration(index: number, blocks: number, steps: number): Iteration {
  checkCounts(blocks, steps);
  if (!Number.isInteger(index) || index < 0 || index >= iterationCount(blocks, steps)) {
    throw new RangeError(`iteration ${index} is outside 0..${iterationCount(blocks, steps) - 1}`);
  }
  const newest = Math.min(index, blocks - 1);
  const oldest = Math.max(0, index - steps + 1);
  const blockSteps: BlockStepRef[] = [];
  for (let b = newest; b >= oldest; b--) blockSteps.push({ block: b, step: index - b });
  return {
    index,
    added: index < blocks ? index : null,
    blockSteps,
    finished: index - oldest === steps - 1 ? oldest : null,
  };
}

export function blockSchedule(blocks: number, steps: number): Iteration[] {
  return Array.from({ length: iterationCount(blocks, steps) }, (_, i) => iteration(i, blocks, steps));
}

/**
 * Longshot's strict ordering rule: the head may start block b in iteration i only after the
 * results of (b, i-1) and (b-1, i-1) are applied. Returns those prerequisites (those that exist).
 */
export function prerequisites(block: number, iterationIndex: number, blocks: number, steps: number): BlockStepRef[] {
  if (iterationIndex === 0) return [];
  const prev = iteration(iterationIndex - 1, blocks, steps);
  const wanted = new Set([block, block - 1]);
  return prev.blockSteps.filter((s) => wanted.has(s.block));
}

function checkCounts(blocks: number, steps: number): void {
  if (!Number.isInteger(blocks) || blocks < 1) throw new RangeError(`blocks must be a positive integer, got ${blocks}`);
  if (!Number.isInteger(steps) || steps < 1) throw new RangeError(`steps must be a positive integer, got ${steps}`);
}
