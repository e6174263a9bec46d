import { Inject, Injectable, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { isRedisUnavailable } from '@longshot/cache';
import { logger } from '@longshot/telemetry';
import type { ControllerConfig } from './config';
import { jobsReenqueued, redisUnavailable } from './metrics';
import { RenderQueue } from './queue';
import type { VideoStore } from './render';
import { CONFIG, JOBS } from './tokens';

const log = logger('reconciler');
/** Records checked per pass; the rest wait for the next one. */
const BATCH = 500;

/**
 * Puts back into the queue every record that says `queued` but has no BullMQ job: a submit that
 * crashed (or lost Redis) between writing the record and enqueueing it. Enqueueing uses the job
 * id as BullMQ's id, so a replica racing a slow submit, or another replica's reconciler, adds
 * nothing twice.
 */
@Injectable()
export class ReconcilerService implements OnApplicationBootstrap, OnApplicationShutdown {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;

  constructor(
    @Inject(CONFIG) private readonly config: ControllerConfig,
    @Inject(JOBS) private readonly jobs: VideoStore,
    @Inject(RenderQueue) private readonly queue: RenderQueue,
  ) {}

  onApplicationBootstrap(): void {
    this.timer = setInterval(() => {
      this.running ??= this.pass()
        .then(() => undefined)
        .catch((err: unknown) => {
          if (isRedisUnavailable(err)) redisUnavailable.inc({ where: 'reconciler' });
          log.warn('reconcile pass failed; the next one retries', { err });
        })
        .finally(() => (this.running = null));
    }, this.config.reconcileIntervalMs);
    this.timer.unref();
  }

  /** One pass; returns the ids it enqueued again. */
  async pass(): Promise<string[]> {
    const ids = await this.jobs.queuedBefore(Date.now() - this.config.reconcileGraceMs, BATCH);
    const enqueued: string[] = [];
    for (const id of ids) {
      if (await this.queue.has(id)) continue;
      const rec = await this.jobs.get(id);
      if (rec?.status !== 'queued') continue;
      await this.queue.enqueue('render', id, rec.priority);
      jobsReenqueued.inc();
      enqueued.push(id);
      log.warn('re-enqueued a queued job that had no queue entry', { job: id });
    }
    return enqueued;
  }

  async onApplicationShutdown(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.running;
  }
}
