import { Inject, Injectable, type OnApplicationShutdown } from '@nestjs/common';
import { Queue, type JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import { DEFAULT_KEYS, type KeySchema } from '@longshot/cache';
import { CONFIG, REDIS } from './tokens';
import type { ControllerConfig } from './config';
import type { RenderJobData } from './render';

/** Every job kind the controller runs; the runner checks at start-up that each has a handler. */
export const JOB_NAMES = ['render'] as const;
export type JobName = (typeof JOB_NAMES)[number];

export const QUEUE_NAME = 'render';
/**
 * BullMQ's keys under our root, so tenants sharing a Redis (LONGSHOT_KEY_ROOT) stay apart. The
 * braces are a Redis Cluster hash tag: every key of the queue (BullMQ's Lua scripts touch many at
 * once) hashes to one slot, as a cluster requires (docs/operations.md "Redis Cluster"). Before
 * this, the prefix was `<root>:bull`; docs/operations.md says how to upgrade.
 */
export const queuePrefix = (keys: KeySchema = DEFAULT_KEYS): string => `${keys.root}:{bull}`;

/** The BullMQ queue `render`: the only place jobs are enqueued or removed. */
@Injectable()
export class RenderQueue implements OnApplicationShutdown {
  readonly queue: Queue<RenderJobData>;

  constructor(@Inject(CONFIG) config: ControllerConfig, @Inject(REDIS) redis: Redis) {
    const age = config.retentionSeconds;
    const defaultJobOptions: JobsOptions = {
      attempts: config.attempts,
      backoff: { type: 'exponential', delay: config.backoffMs },
      // The job record (JobStore) is the durable history; BullMQ's copies only need to live long
      // enough to debug, and bounded so Redis does not grow with every job ever run.
      removeOnComplete: { age, count: config.keepCompletedJobs },
      removeOnFail: { age, count: config.keepCompletedJobs },
    };
    this.queue = new Queue<RenderJobData>(QUEUE_NAME, { connection: redis.duplicate({ maxRetriesPerRequest: null }), prefix: queuePrefix(config.keys), defaultJobOptions });
  }

  async enqueue(name: JobName, id: string, priority: number): Promise<void> {
    await this.queue.add(name, { id }, { jobId: id, priority });
  }

  /** Whether BullMQ holds a job with this id (in any state). */
  async has(id: string): Promise<boolean> {
    return (await this.queue.getJobState(id)) !== 'unknown';
  }

  /** Removes a job that is waiting or delayed; false when it is running (locked) or gone. */
  async remove(id: string): Promise<boolean> {
    try {
      return (await this.queue.remove(id)) === 1;
    } catch {
      return false;
    }
  }

  counts(): Promise<Record<string, number>> {
    return this.queue.getJobCounts('waiting', 'prioritized', 'delayed', 'active', 'completed', 'failed', 'paused');
  }

  async ready(): Promise<boolean> {
    // A round trip through the queue's own connection and scripts.
    await this.queue.getJobCounts('waiting');
    return true;
  }

  async onApplicationShutdown(): Promise<void> {
    await this.queue.close();
  }
}
