import { DelayedError, UnrecoverableError, WaitingError } from 'bullmq';
import { ModelNameError } from '@longshot/model';
import { PERMANENT_GRPC_CODES } from '@longshot/pipeline';
import { SpecError } from '@longshot/planner';
import { isNoSpace } from '../repositories';

/**
 * What a render run does when it cannot go on: which errors are permanent, how long it waits,
 * what a takeover or a shutdown means. Pure decisions; RenderRun carries them out.
 */

/** BullMQ's failedReason of a canceled job. */
export const CANCELED_REASON = 'canceled';

/** Thrown from a canceled job's processor: BullMQ moves it to failed (reason `canceled`), no retry. */
export const canceledInQueue = (): UnrecoverableError => new UnrecoverableError(CANCELED_REASON);

/** Why a run was stopped from outside the pipeline. */
export class StopRun extends Error {
  constructor(readonly why: 'cancel' | 'shutdown' | 'lease-lost' | 'stitch', cause?: unknown) {
    super(why === 'stitch' ? `stitching failed: ${(cause as Error)?.message ?? cause}` : `run stopped: ${why}`);
    if (cause !== undefined) this.cause = cause;
  }
}

/**
 * Resolving the job's model or text embeddings failed: a SpecError or ModelNameError was checked
 * at submit, so the model changed or the upload expired since, and retrying cannot help. Anything
 * else (a Redis blip) is retried.
 */
export function isPermanentSpecFailure(e: unknown): e is SpecError | ModelNameError {
  return e instanceof SpecError || e instanceof ModelNameError;
}

/** What a job that found too few free workers does: fail once it waited `deadlineMs`, else wait in the queue. */
export type WorkersWait = { readonly kind: 'deadline' } | { readonly kind: 'wait'; readonly since: number; readonly retryAt: number };

export function waitForWorkers(waitingSince: number | undefined, now: number, limits: { readonly deadlineMs: number; readonly retryMs: number }): WorkersWait {
  const since = waitingSince ?? now;
  if (now - since >= limits.deadlineMs) return { kind: 'deadline' };
  // Back to the queue (delayed, same priority, no attempt used) rather than holding a runner slot while waiting.
  return { kind: 'wait', since, retryAt: now + limits.retryMs };
}

/**
 * How an ended-early run settles:
 *  requeued   the run already put the job back (DelayedError, WaitingError): pass it on;
 *  cancel     the record says canceled: drop the partial files, BullMQ fails it as `canceled`;
 *  hand-back  shutdown: back to the queue, no attempt used; the next run resumes from the checkpoint;
 *  takeover   the run lost its leases (it stalled past them): another run holds the job's workers, let it be;
 *  fail       final: a full results store (a retry would fill it again), an unrecoverable error, or the last attempt;
 *  retry      BullMQ retries it with backoff.
 */
export type Settlement =
  | { readonly kind: 'requeued' }
  | { readonly kind: 'cancel' }
  | { readonly kind: 'hand-back' }
  | { readonly kind: 'takeover'; readonly error: Error }
  | { readonly kind: 'fail'; readonly error: Error; readonly noSpace: boolean }
  | { readonly kind: 'retry'; readonly error: Error };

/**
 * `error`: what the run threw; `stopReason`: its abort signal's reason (a StopRun when something
 * outside the pipeline stopped it); `attemptsMade`/`attempts`: BullMQ's counts for the job.
 */
export function settle(error: unknown, stopReason: unknown, attempts: { readonly made: number; readonly allowed: number }): Settlement {
  if (error instanceof DelayedError || error instanceof WaitingError) return { kind: 'requeued' };
  const stop = stopReason instanceof StopRun ? stopReason : error instanceof StopRun ? error : null;
  if (stop?.why === 'cancel') return { kind: 'cancel' };
  if (stop?.why === 'shutdown') return { kind: 'hand-back' };
  const err = stop?.why === 'stitch' ? stop : error instanceof Error ? error : new Error(String(error));
  if (stop?.why === 'lease-lost') return { kind: 'takeover', error: err };
  const noSpace = isNoSpace(stop?.cause ?? error);
  if (noSpace || err instanceof UnrecoverableError || attempts.made + 1 >= attempts.allowed) return { kind: 'fail', error: err, noSpace };
  return { kind: 'retry', error: err };
}

/** Tries of one block's decode before the stitch fails (each after the decoding worker failed). */
export const DECODE_TRIES = 5;
/** How long a failed decode waits for the driver to replace the decoding worker before trying again. */
export const DECODE_RETRY_WAIT_MS = 10_000;

/** Whether a decode that failed with `error` on try `attempt` (from 1) is tried again: not for a permanent gRPC code, nor after the last try. */
export function retriesDecode(error: unknown, attempt: number): boolean {
  const code = (error as { code?: number } | null)?.code;
  return !(code !== undefined && PERMANENT_GRPC_CODES.has(code)) && attempt < DECODE_TRIES;
}
