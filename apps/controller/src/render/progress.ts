import type { Failover } from '@longshot/pipeline';
import type { JobPlan } from '@longshot/planner';
import { logger } from '@longshot/telemetry';
import { blockSteps, failovers } from '../metrics';
import type { VideoStore } from './video';

const log = logger('render');

/** The record and a `progress` event are written at most this often, and at each stitched block. */
export const PROGRESS_INTERVAL_MS = 250;

/** Block-steps applied once the head applied (iteration, block): the same count on any replica, resume or not. */
export function blockStepsThrough(plan: JobPlan, steps: number, iteration: number, block: number): number {
  const oldest = Math.max(0, iteration - steps + 1);
  const newest = Math.min(iteration, plan.blocks - 1);
  let done = oldest * steps;
  for (let b = oldest; b <= newest; b++) done += iteration - b + (b >= block ? 1 : 0);
  return Math.min(done, plan.blockSteps);
}

/**
 * Seconds left at the rate this run has applied block-steps since its first one (`startDone`:
 * the count just before it), to 0.1 s; null before there is a rate.
 */
export function etaSeconds(done: number, startDone: number | null, total: number, elapsedSeconds: number): number | null {
  const rate = elapsedSeconds > 0 && startDone !== null ? (done - startDone) / elapsedSeconds : 0;
  return rate > 0 ? Math.round(((total - done) / rate) * 10) / 10 : null;
}

/**
 * What a run reports while it goes: block-steps (the counter, the record's progress and ETA,
 * throttled `progress` events) and failovers (the counter and a `failover` event). Writes are
 * chained, never concurrent, and never fail the run.
 */
export class ProgressReporter {
  private done = 0;
  private readonly startedAt: number;
  private startDone: number | null = null;
  private last = 0;
  private pending: Promise<void> = Promise.resolve();

  constructor(
    private readonly id: string,
    private readonly plan: JobPlan,
    private readonly steps: number,
    private readonly jobs: Pick<VideoStore, 'update'>,
    /** Blocks stitched so far. */
    private readonly blocksDone: () => number,
    /** Called when the record left `running` (canceled from another replica whose message we missed). */
    private readonly onInactive: () => void,
    private readonly now: () => number = Date.now,
  ) {
    this.startedAt = now();
  }

  /** The head applied (iteration, block). */
  step(iteration: number, block: number): void {
    blockSteps.inc();
    this.done = Math.max(this.done, blockStepsThrough(this.plan, this.steps, iteration, block));
    this.startDone ??= this.done - 1;
    this.report(false);
  }

  /** A block was stitched: report now, whatever the throttle says. */
  blockStitched(): void {
    this.report(true);
  }

  /** The driver lost an attempt and starts another. Never rejects: a lost event must not fail a job that can go on. */
  async failover(f: Failover): Promise<void> {
    failovers.inc({ reason: f.reason });
    const lost = f.lost.map((w) => w.id);
    await this.jobs
      .update(this.id, { from: ['running'], event: { name: 'failover', data: { attempt: f.attempt, lost, reason: f.reason, error: f.error } } })
      .catch((err: unknown) => log.warn('recording a failover event failed', { job: this.id, err }));
  }

  /** Waits for the writes queued so far. */
  flush(): Promise<void> {
    return this.pending;
  }

  private report(force: boolean): void {
    const now = this.now();
    if (!force && now - this.last < PROGRESS_INTERVAL_MS) return;
    this.last = now;
    this.pending = this.pending.then(() => this.write()).catch((err: unknown) => log.warn('progress update failed', { job: this.id, err }));
  }

  private async write(): Promise<void> {
    const etaSecondsLeft = etaSeconds(this.done, this.startDone, this.plan.blockSteps, (this.now() - this.startedAt) / 1000);
    const progress = { blocksDone: this.blocksDone(), blocks: this.plan.blocks, blockStepsDone: this.done, blockSteps: this.plan.blockSteps, etaSeconds: etaSecondsLeft };
    const r = await this.jobs.update(this.id, { from: ['running'], fields: { progress: { blockStepsDone: this.done, etaSeconds: etaSecondsLeft } }, event: { name: 'progress', data: progress } });
    if (!r.changed) this.onInactive();
  }
}
