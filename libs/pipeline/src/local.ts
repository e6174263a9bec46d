import type { StageRunner } from './emulation';
import type { BlockQueue, FinishedBlock } from './queue';

export interface PipelineEvents {
  /** After each block-step's velocity is applied. */
  onBlockStep?(info: { iteration: number; block: number; step: number }): void;
  /** When a block leaves the queue with its final latents, in block order. */
  onBlockFinished?(block: FinishedBlock): void | Promise<void>;
  /** At each iteration boundary, when a checkpoint could be taken. */
  onIterationEnd?(iteration: number): void | Promise<void>;
}

/**
 * Runs the block queue through K stage objects chained in this process (Stage, or a StageGroup
 * of members), one block-step at a time in the schedule's order. The distributed pipeline keeps
 * that order on every stage, which is why both give bit-identical latents.
 */
export async function runLocalPipeline(queue: BlockQueue, stages: readonly StageRunner[], events: PipelineEvents = {}): Promise<void> {
  if (stages.length === 0) throw new Error('a pipeline needs at least one stage');
  if (!stages[0].range.head || !stages[stages.length - 1].range.tail) throw new Error('the first stage must be the head and the last the tail');
  for (let issued = queue.issue(); issued; issued = queue.issue()) {
    const { step, window } = issued;
    let x = await stages[0].forward(step, window);
    for (const stage of stages.slice(1)) x = await stage.forward(step, x);
    const applied = queue.apply(step.iteration, step.block, x);
    events.onBlockStep?.({ iteration: step.iteration, block: step.block, step: step.step });
    if (applied.finished) await events.onBlockFinished?.(applied.finished);
    if (applied.completedIteration !== null) await events.onIterationEnd?.(applied.completedIteration);
  }
  if (!queue.done) throw new Error('the block queue stalled before the job finished');
}
