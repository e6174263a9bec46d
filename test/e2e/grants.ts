import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { jobPrefix, WorkerLeases } from '@longshot/cache';
import { signGrant, type GrantKey } from '@longshot/transport';

/**
 * For tests that call a worker directly, as a driver would: leases `worker` to `job` under a
 * fresh run and signs a session grant for it. `release` drops the lease again.
 */
export async function leaseAndGrant(
  redis: Redis,
  key: GrantKey,
  worker: string,
  g: { job: string; stage?: number; layerBegin?: number; layerEnd?: number; keyPrefix?: string; run?: string; ttlMs?: number },
): Promise<{ grant: string; run: string; release(): Promise<void> }> {
  const leases = new WorkerLeases(redis);
  const holder = { job: g.job, run: g.run ?? `test/${randomUUID()}` };
  const got = await leases.acquire(holder, [worker], 1, 60_000);
  if (!got) throw new Error(`could not lease ${worker} for ${g.job}`);
  const grant = signGrant(
    { job: g.job, run: holder.run, stage: g.stage ?? -1, layerBegin: g.layerBegin ?? 0, layerEnd: g.layerEnd ?? 0, keyPrefix: g.keyPrefix ?? jobPrefix(g.job), expiresAt: Date.now() + (g.ttlMs ?? 60_000) },
    key,
  );
  return { grant, run: holder.run, release: async () => void (await leases.release(holder, [worker])) };
}
