import { randomUUID } from 'node:crypto';
import type { LeaseHolder, WorkerInfo, WorkerLeases, WorkerRegistry } from '@longshot/cache';
import type { Logger } from '@longshot/telemetry';
import type { DriverWorker, WorkerSource } from './driver';
import { placeByTopology } from './placement';

export interface LeasedWorkersOptions {
  readonly leases: WorkerLeases;
  readonly registry: Pick<WorkerRegistry, 'list' | 'isAlive'>;
  readonly holder: LeaseHolder;
  readonly model: string;
  readonly leaseMs: number;
  /** How long `pick` waits for replacements during a failover. */
  readonly waitMs: number;
  readonly signal?: AbortSignal;
  /** Called when a lease was lost (expired or taken over): the run must stop. */
  onLost?(workers: string[]): void;
  readonly log?: Logger;
}

/**
 * What a worker is available for: 'leased' to a job run, 'full' (unleased, but its granted
 * sessions, e.g. a superseded run's still closing, fill its capacity), or 'free'.
 */
export function workerState(w: Pick<WorkerInfo, 'sessions' | 'capacity'>, leased: boolean): 'leased' | 'full' | 'free' {
  return leased ? 'leased' : w.sessions >= w.capacity ? 'full' : 'free';
}

/**
 * Workers that serve `model` (and, when given, compute with the `numerics` fingerprint) and are
 * not full, least busy first (a worker's capacity is not shared between jobs).
 */
export function candidates(workers: readonly WorkerInfo[], model: string, exclude: ReadonlySet<string> = new Set(), numerics: string | null = null): string[] {
  return workers
    .filter((w) => !exclude.has(w.id) && w.sessions < w.capacity && (w.models.includes('*') || w.models.includes(model)) && (numerics === null || w.numerics === numerics))
    .sort((a, b) => a.sessions - b.sessions || a.id.localeCompare(b.id))
    .map((w) => w.id);
}

/**
 * The driver's WorkerSource for one job run, on leases: `pick` leases workers (all or none, all of
 * one numerics fingerprint), `release` drops them, and a timer renews every held lease at a third
 * of its lifetime. A run that finds a lease gone has been superseded (or stalled past the TTL)
 * and is told to stop, so two runs never drive the same worker. Workers open sessions only for
 * the run that holds their lease (see the session grant), so every driver goes through here.
 */
export class LeasedWorkers implements WorkerSource {
  private readonly held = new Set<string>();
  private readonly info = new Map<string, WorkerInfo>();
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(private readonly o: LeasedWorkersOptions) {}

  get run(): string {
    return this.o.holder.run;
  }

  /**
   * Leases `count` free workers now, or returns null (nothing held) when too few are free. With
   * `numerics`, only workers of that fingerprint; without, the first fingerprint (in order of
   * the least busy workers) that has `count` free.
   */
  async tryLease(count: number, exclude: ReadonlySet<string> = new Set(), numerics: string | null = null): Promise<DriverWorker[] | null> {
    const live = await this.o.registry.list();
    for (const w of live) this.info.set(w.id, w);
    const groups = numerics !== null ? [numerics] : [...new Set(candidates(live, this.o.model, exclude).map((id) => this.info.get(id)!.numerics))];
    for (const group of groups) {
      const ids = await this.o.leases.acquire(this.o.holder, placeByTopology(candidates(live, this.o.model, exclude, group), this.info, count), count, this.o.leaseMs);
      if (!ids) continue;
      for (const id of ids) this.held.add(id);
      this.timer ??= setInterval(() => void this.renew(), Math.max(100, Math.floor(this.o.leaseMs / 3)));
      this.timer.unref();
      return ids.map((id) => {
        const w = this.info.get(id)!;
        return { id, address: w.address, numerics: group, ...(w.dataPlane ? { dataPlane: w.dataPlane } : {}), ...(w.topology ? { topology: w.topology } : {}) };
      });
    }
    return null;
  }

  /** The workers leased before the driver started are handed out first. */
  private reserved: DriverWorker[] | null = null;
  reserve(workers: DriverWorker[]): void {
    this.reserved = workers;
  }

  async pick(count: number, exclude: ReadonlySet<string>, numerics: string | null = null): Promise<DriverWorker[]> {
    const r = this.reserved;
    this.reserved = null;
    if (r && r.length === count && r.every((w) => !exclude.has(w.id) && this.held.has(w.id) && (numerics === null || w.numerics === numerics))) return r;
    if (r) await this.release(r.map((w) => w.id));
    const deadline = Date.now() + this.o.waitMs;
    for (;;) {
      this.o.signal?.throwIfAborted();
      const got = await this.tryLease(count, exclude, numerics);
      if (got) return got;
      if (Date.now() > deadline) throw new Error(`no ${count} free workers for model ${this.o.model}${numerics ? ` with numerics ${numerics}` : ''} within ${this.o.waitMs} ms`);
      await new Promise((res) => setTimeout(res, 250));
    }
  }

  alive(id: string): Promise<boolean> {
    return this.o.registry.isAlive(id);
  }

  async release(ids: readonly string[]): Promise<void> {
    const mine = ids.filter((id) => this.held.has(id));
    for (const id of mine) this.held.delete(id);
    if (this.held.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
    }
    await this.o.leases.release(this.o.holder, mine);
  }

  get workers(): string[] {
    return [...this.held];
  }

  /** Stops renewing and releases whatever is still held (every way a run ends goes through here). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.release([...this.held]);
  }

  private renewing = false;
  private async renew(): Promise<void> {
    if (this.renewing || this.closed || this.held.size === 0) return;
    this.renewing = true;
    try {
      const lost = await this.o.leases.renew(this.o.holder, [...this.held], this.o.leaseMs);
      if (lost.length && !this.closed) {
        for (const id of lost) this.held.delete(id);
        this.o.log?.warn('lost worker leases; stopping this run', { job: this.o.holder.job, workers: lost });
        this.o.onLost?.(lost);
      }
    } catch (err) {
      // A Redis blip: the next tick retries well within the TTL.
      this.o.log?.warn('renewing worker leases failed', { job: this.o.holder.job, err });
    } finally {
      this.renewing = false;
    }
  }
}

/**
 * An embedded driver's workers (tests, benches, scripts without a controller): registered
 * workers leased for `job` under a fresh run id, no waiting for the queue.
 */
export function registryWorkers(o: { registry: Pick<WorkerRegistry, 'list' | 'isAlive'>; leases: WorkerLeases; job: string; model?: string; waitMs?: number; leaseMs?: number }): LeasedWorkers {
  return new LeasedWorkers({ registry: o.registry, leases: o.leases, holder: { job: o.job, run: `embedded/${randomUUID()}` }, model: o.model ?? '*', leaseMs: o.leaseMs ?? 15_000, waitMs: o.waitMs ?? 30_000 });
}
