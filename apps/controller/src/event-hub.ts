import { Inject, Injectable, type OnApplicationShutdown } from '@nestjs/common';
import type { Redis } from 'ioredis';
import type { JobEvent } from '@longshot/cache';
import { logger } from '@longshot/telemetry';
import { redisUnavailable } from './metrics';
import type { VideoStore } from './render';
import { JOBS, REDIS, REDIS_EVENTS } from './tokens';

const log = logger('events');
/** Longest one shared read blocks; a new job to follow interrupts it (CLIENT UNBLOCK) sooner. */
const BLOCK_MS = 5000;

type Listener = (events: JobEvent[]) => void;

/**
 * Live job events for every SSE client of this replica from ONE Redis connection: a single
 * blocking XREAD over the streams of all jobs someone follows, fanned out to their listeners.
 * 1,000 SSE clients cost one Redis client, not 1,000.
 */
@Injectable()
export class EventHub implements OnApplicationShutdown {
  private readonly follows = new Map<string, { cursor: string; listeners: Set<Listener> }>();
  private loop: Promise<void> | null = null;
  private closed = false;
  private wake: (() => void) | null = null;
  private reading = false;
  private readerId: number | null = null;

  constructor(
    @Inject(JOBS) private readonly jobs: VideoStore,
    @Inject(REDIS) private readonly redis: Redis,
    @Inject(REDIS_EVENTS) private readonly reader: Redis,
  ) {
    const learnId = (): void => {
      this.reader.client('ID').then((id) => (this.readerId = Number(id)), () => (this.readerId = null));
    };
    this.reader.on('ready', learnId);
    if (this.reader.status === 'ready') learnId();
  }

  /** Calls `listener` with the events of job `id` after `after` as they come; returns the unsubscribe. */
  subscribe(id: string, after: string, listener: Listener): () => void {
    let f = this.follows.get(id);
    if (!f) {
      f = { cursor: after, listeners: new Set() };
      this.follows.set(id, f);
      this.interrupt();
    }
    f.listeners.add(listener);
    this.loop ??= this.run();
    return () => {
      const cur = this.follows.get(id);
      if (!cur) return;
      cur.listeners.delete(listener);
      if (cur.listeners.size === 0) this.follows.delete(id);
    };
  }

  /** Jobs followed now (a gauge and tests). */
  get followed(): number {
    return this.follows.size;
  }

  /** Makes the shared read start over with the current set of streams. */
  private interrupt(): void {
    this.wake?.();
    if (this.reading && this.readerId !== null) this.redis.client('UNBLOCK', this.readerId).catch(() => undefined);
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      if (this.follows.size === 0) {
        await new Promise<void>((r) => (this.wake = r));
        this.wake = null;
        continue;
      }
      const cursors = [...this.follows.entries()].map(([id, f]) => [id, f.cursor] as const);
      try {
        this.reading = true;
        const got = await this.jobs.eventsOf(cursors, { blockMs: BLOCK_MS, reader: this.reader });
        this.reading = false;
        for (const [id, events] of got) {
          const f = this.follows.get(id);
          if (!f || events.length === 0) continue;
          f.cursor = events[events.length - 1].id;
          for (const l of [...f.listeners]) l(events);
        }
      } catch (err) {
        this.reading = false;
        if (this.closed) break;
        redisUnavailable.inc({ where: 'sse' });
        log.warn('reading job events failed; retrying', { err });
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  async onApplicationShutdown(): Promise<void> {
    this.closed = true;
    this.wake?.();
    this.reader.disconnect();
    await this.loop?.catch(() => undefined);
  }
}
