import type { Redis } from 'ioredis';
import { DEFAULT_KEYS as defaultKeys, type KeySchema } from './keys';

/**
 * Who holds a worker: the job it serves and one run of that job (a controller replica's attempt).
 * Stored as the lease key's value; renew and release compare the whole value, so a run that lost
 * its lease (expired, or taken over) can never extend or drop the new holder's.
 */
export interface LeaseHolder {
  readonly job: string;
  /** Unique per run: a takeover of the same job gets a new one. */
  readonly run: string;
}

export interface WorkerLease {
  readonly worker: string;
  readonly holder: LeaseHolder;
  /** Milliseconds until the lease expires unless renewed. */
  readonly ttlMs: number;
}

/** Lease keys live in the registry's hash slot, so one script can check registration and lease together. */
export function leaseKey(schema: KeySchema, workerId: string): string {
  schema.workerKey(workerId);
  return `${schema.root}:{registry}:lease:${workerId}`;
}

const SEP = '\u001f';
const encodeHolder = (h: LeaseHolder): string => `${h.job}${SEP}${h.run}`;
function decodeHolder(v: string): LeaseHolder | null {
  const i = v.indexOf(SEP);
  return i < 0 ? null : { job: v.slice(0, i), run: v.slice(i + 1) };
}

/*
 * KEYS: worker key, lease key, for each candidate in preference order. ARGV: holder, job prefix
 * (holder's job + separator), ttl ms, count. A candidate is leasable when its registration exists
 * (it heartbeats) and it has no lease, or a lease of the same job: a run taking a job over from a
 * dead replica inherits that job's workers instead of waiting for the old leases to expire.
 * All or nothing: either `count` leases are written or none.
 */
const ACQUIRE = `
local want = tonumber(ARGV[4])
local picked = {}
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local cur = redis.call('GET', KEYS[i + 1])
    if (not cur) or string.sub(cur, 1, string.len(ARGV[2])) == ARGV[2] then
      picked[#picked + 1] = i
      if #picked == want then break end
    end
  end
end
if #picked < want then return {} end
local out = {}
for _, i in ipairs(picked) do
  redis.call('SET', KEYS[i + 1], ARGV[1], 'PX', ARGV[3])
  out[#out + 1] = (i + 1) / 2
end
return out
`;

/** KEYS: lease keys. ARGV: holder, ttl ms. Extends the ones still held by `holder`; returns the (1-based) positions of the others. */
const RENEW = `
local lost = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
  else
    lost[#lost + 1] = i
  end
end
return lost
`;

/** KEYS: lease keys. ARGV: holder. Deletes the ones `holder` still holds; returns how many. */
const RELEASE = `
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    redis.call('DEL', k)
    n = n + 1
  end
end
return n
`;

/**
 * Exclusive, expiring leases on workers. A worker is leased whole to one job run (even if its
 * capacity allows more sessions): stages of different jobs would otherwise compete for one
 * process's cores and memory, and a lease then means "this worker is busy" for planning.
 */
export class WorkerLeases {
  private readonly keys: KeySchema;

  constructor(
    private readonly redis: Redis,
    options: { keys?: KeySchema } = {},
  ) {
    this.keys = options.keys ?? defaultKeys;
  }

  /**
   * Leases `count` of `candidates` (tried in the given order) for `holder`, all or none, with a
   * TTL. Returns the leased ids, or null when fewer than `count` are registered and free.
   */
  async acquire(holder: LeaseHolder, candidates: readonly string[], count: number, ttlMs: number): Promise<string[] | null> {
    checkCount(count);
    checkTtl(ttlMs);
    const ids = [...new Set(candidates)];
    if (ids.length < count) return null;
    const keyList = ids.flatMap((id) => [this.keys.workerKey(id), leaseKey(this.keys, id)]);
    const value = encodeHolder(checkHolder(holder));
    const got = (await this.redis.eval(ACQUIRE, keyList.length, ...keyList, value, `${holder.job}${SEP}`, ttlMs, count)) as number[];
    return got.length === count ? got.map((i) => ids[i - 1]) : null;
  }

  /** Extends `holder`'s leases on `workers`; returns the ids it no longer holds (expired or taken). */
  async renew(holder: LeaseHolder, workers: readonly string[], ttlMs: number): Promise<string[]> {
    checkTtl(ttlMs);
    if (workers.length === 0) return [];
    const value = encodeHolder(checkHolder(holder));
    const lost = (await this.redis.eval(RENEW, workers.length, ...workers.map((id) => leaseKey(this.keys, id)), value, ttlMs)) as number[];
    return lost.map((i) => workers[i - 1]);
  }

  /** Drops `holder`'s leases on `workers` (those it still holds); returns how many were dropped. */
  async release(holder: LeaseHolder, workers: readonly string[]): Promise<number> {
    if (workers.length === 0) return 0;
    const value = encodeHolder(checkHolder(holder));
    return Number(await this.redis.eval(RELEASE, workers.length, ...workers.map((id) => leaseKey(this.keys, id)), value));
  }

  /** Current leases of `workers` (absent ones are free). */
  async leases(workers: readonly string[]): Promise<WorkerLease[]> {
    if (workers.length === 0) return [];
    const pipeline = this.redis.multi();
    for (const id of workers) pipeline.get(leaseKey(this.keys, id)).pttl(leaseKey(this.keys, id));
    const replies = (await pipeline.exec()) ?? [];
    const out: WorkerLease[] = [];
    workers.forEach((worker, i) => {
      const value = replies[2 * i]?.[1] as string | null;
      const ttl = Number(replies[2 * i + 1]?.[1]);
      const holder = value === null ? null : decodeHolder(value);
      if (holder) out.push({ worker, holder, ttlMs: ttl });
    });
    return out;
  }
}

function checkCount(count: number): void {
  if (!Number.isSafeInteger(count) || count < 1) throw new Error(`lease count must be a positive integer, got ${count}`);
}

function checkTtl(ttlMs: number): void {
  if (!Number.isSafeInteger(ttlMs) || ttlMs < 1) throw new Error(`lease ttlMs must be a positive integer, got ${ttlMs}`);
}

function checkHolder(h: LeaseHolder): LeaseHolder {
  for (const [k, v] of Object.entries(h)) {
    if (typeof v !== 'string' || v === '' || v.includes(SEP)) throw new Error(`lease holder ${k} must be a non-empty string without \\u001f`);
  }
  return h;
}
