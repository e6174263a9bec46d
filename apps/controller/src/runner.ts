import { Inject, Injectable, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { WorkerLeases, WorkerRegistry } from '@longshot/cache';
import { logger } from '@longshot/telemetry';
import type { ControllerConfig } from './config';
import { JOB_NAMES, QUEUE_NAME, queuePrefix, type JobName } from './queue';
import { RenderRun, type RenderJobData, type VideoStore } from './render';
import type { ModelCatalog } from '@longshot/model';
import type { JobDataRepository, ResultStore, UploadRepository } from './repositories';
import { CONFIG, JOB_DATA, JOBS, LEASES, MODELS, REDIS, REDIS_SUBSCRIBER, REGISTRY, RESULTS, UPLOADS } from './tokens';

const log = logger('runner');

type Handler = (job: Job<RenderJobData>, token: string) => Promise<void>;

/**
 * The BullMQ worker inside the controller: takes jobs from `render` (BullMQ's lock makes a job
 * run on one replica at a time; a replica that dies loses its lock and another takes the job
 * over after the lock expires), stops runs on cancel messages from any replica, and on shutdown
 * hands running jobs back to the queue.
 */
@Injectable()
export class RunnerService implements OnApplicationBootstrap, OnApplicationShutdown {
  private worker: Worker<RenderJobData> | null = null;
  private readonly runs = new Map<string, RenderRun>();
  /** The one table of job handlers; checked against JOB_NAMES at start-up. */
  private readonly handlers: Record<JobName, Handler> = {
    render: (job, token) => this.render(job, token),
  };

  constructor(
    @Inject(CONFIG) private readonly config: ControllerConfig,
    @Inject(REDIS) private readonly redis: Redis,
    @Inject(REDIS_SUBSCRIBER) private readonly subscriber: Redis,
    @Inject(JOBS) private readonly jobs: VideoStore,
    @Inject(LEASES) private readonly leases: WorkerLeases,
    @Inject(REGISTRY) private readonly registry: WorkerRegistry,
    @Inject(JOB_DATA) private readonly data: JobDataRepository,
    @Inject(RESULTS) private readonly results: ResultStore,
    @Inject(MODELS) private readonly models: ModelCatalog,
    @Inject(UPLOADS) private readonly uploads: UploadRepository,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    const missing = JOB_NAMES.filter((n) => typeof this.handlers[n] !== 'function');
    if (missing.length) throw new Error(`no handler for job kinds: ${missing.join(', ')}`);
    await this.subscriber.subscribe(this.jobs.cancelChannel);
    this.subscriber.on('message', (channel: string, id: string) => {
      if (channel === this.jobs.cancelChannel) this.runs.get(id)?.stop('cancel');
    });
    this.worker = new Worker<RenderJobData>(QUEUE_NAME, (job, token) => this.dispatch(job, token), {
      connection: this.redis.duplicate({ maxRetriesPerRequest: null }),
      prefix: queuePrefix(this.config.keys),
      concurrency: this.config.concurrency,
      lockDuration: this.config.lockMs,
      stalledInterval: this.config.stalledIntervalMs,
      maxStalledCount: this.config.maxStalledCount,
      autorun: false,
    });
    this.worker.on('error', (err) => log.error('queue worker error', { err }));
    void this.worker.run();
  }

  /** Jobs this replica runs now. */
  get running(): string[] {
    return [...this.runs.keys()];
  }

  private async dispatch(job: Job<RenderJobData>, token: string | undefined): Promise<void> {
    const handler = (this.handlers as Record<string, Handler | undefined>)[job.name];
    if (!handler) throw new UnrecoverableError(`unknown job kind ${job.name}`);
    if (!token) throw new Error('BullMQ gave no lock token');
    await handler(job, token);
  }

  private async render(job: Job<RenderJobData>, token: string): Promise<void> {
    const run = new RenderRun({ config: this.config, jobs: this.jobs, leases: this.leases, registry: this.registry, data: this.data, results: this.results, models: this.models, uploads: this.uploads }, job, token);
    this.runs.set(run.id, run);
    try {
      await run.execute();
    } finally {
      this.runs.delete(run.id);
    }
  }

  /** SIGTERM: stop taking jobs, stop the running ones and hand them back (they resume elsewhere). */
  async onApplicationShutdown(): Promise<void> {
    const closing = this.worker?.close();
    for (const run of this.runs.values()) run.stop('shutdown');
    await closing;
    await this.subscriber.quit().catch(() => undefined);
  }
}
