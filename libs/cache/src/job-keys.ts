import type { Redis } from 'ioredis';
import { DEFAULT_KEYS as defaultKeys, type KeySchema } from './keys';
import { ttlMillis } from './codec';

/**
 * Records a key in the job's key set and keeps the set alive at least as long as its
 * longest-lived member, so `expireJob` can always find every key. The value itself is written
 * beside this script with a plain SET: passing tens of MB through a script's arguments costs Redis
 * three times the SET (a checkpoint holds every queued block's latents). The job's keys share a
 * hash slot (see keys.ts), so this runs on a cluster as well.
 */
const TRACK = `
redis.call('SADD', KEYS[2], KEYS[1])
local ttl = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
`;

/**
 * The fenced commit of a value staged by a plain SET: moves it in place (RENAME: O(1), the bytes
 * never pass through the script) and tracks the key, only while the job's run key names ARGV[2];
 * otherwise drops the staged value. KEYS: key, job key set, run key, staged key. ARGV: ttl ms, run.
 */
const COMMIT_FENCED = `
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  redis.call('DEL', KEYS[4])
  return 0
end
redis.call('RENAME', KEYS[4], KEYS[1])
redis.call('SADD', KEYS[2], KEYS[1])
local ttl = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
`;

/** A write of a run that no longer owns the job (another run took it over): nothing was written. */
export class FencedWriteError extends Error {
  constructor(
    readonly key: string,
    readonly run: string,
  ) {
    super(`write to ${key} refused: run ${run} no longer owns the job (taken over by another run)`);
  }
}

/**
 * Sets one expiry on every tracked key of a job, and on the set itself. Keys already gone are
 * dropped from the set. Atomic, so a key written concurrently is either expired here or written
 * afterwards with its own TTL, never left without one.
 */
const EXPIRE_TRACKED = `
local members = redis.call('SMEMBERS', KEYS[1])
local n = 0
for _, k in ipairs(members) do
  if redis.call('PEXPIRE', k, ARGV[1]) == 1 then n = n + 1 else redis.call('SREM', KEYS[1], k) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
`;

/** The per-job key set: the one way job-scoped values are written, and how a finished job's keys are retired. */
export class JobKeyspace {
  constructor(
    private readonly redis: Redis,
    readonly keys: KeySchema = defaultKeys,
  ) {}

  /**
   * Writes `value` at `key` (a key under `prefix`) with a TTL and tracks the key, in one round
   * trip. Tracking comes first: a key is never written untracked, and if the SET fails the set
   * merely names a missing key, which `expireJob` drops. The value carries its own TTL either way.
   */
  async put(prefix: string, key: string, value: Buffer | string, ttlSeconds: number, run?: string): Promise<void> {
    const ms = ttlMillis(ttlSeconds);
    if (!key.startsWith(`${prefix}:`)) throw new Error(`key ${key} is not under job prefix ${prefix}`);
    if (run !== undefined) return this.putFenced(prefix, key, value, ms, run);
    const results = await this.redis.pipeline().eval(TRACK, 2, key, this.keys.jobKeysKey(prefix), ms).set(key, value, 'PX', ms).exec();
    const failed = results?.find(([err]) => err);
    if (!results || failed) throw failed?.[0] ?? new Error(`writing ${key}: Redis returned no reply`);
  }

  /**
   * The fenced write: a plain SET of the value to a run-specific staging key, then the tiny
   * COMMIT_FENCED script, pipelined (one round trip). Throws FencedWriteError when `run` is not
   * the job's current run (see `claimRun`); the job's value is then untouched.
   */
  private async putFenced(prefix: string, key: string, value: Buffer | string, ms: number, run: string): Promise<void> {
    const staged = this.keys.stagingKey(prefix, key, run);
    const results = await this.redis.pipeline().set(staged, value, 'PX', ms).eval(COMMIT_FENCED, 4, key, this.keys.jobKeysKey(prefix), this.keys.runKey(prefix), staged, ms, run).exec();
    const failed = results?.find(([err]) => err);
    if (!results || failed) throw failed?.[0] ?? new Error(`writing ${key}: Redis returned no reply`);
    if (Number(results[1][1]) !== 1) throw new FencedWriteError(key, run);
  }

  /**
   * Makes `run` the job's current run: from now on only its fenced writes land. A driver claims
   * the job once it holds the workers' leases, before it opens sessions; the key is tracked, so it
   * expires with the job's other keys.
   */
  async claimRun(prefix: string, run: string, ttlSeconds: number): Promise<void> {
    await this.put(prefix, this.keys.runKey(prefix), run, ttlSeconds);
  }

  /** The job's current run, or null when none has claimed it. */
  currentRun(prefix: string): Promise<string | null> {
    return this.redis.get(this.keys.runKey(prefix));
  }

  /**
   * Makes every key of the job expire `seconds` from now (the retention after a job ends), so
   * finished jobs do not accumulate in Redis. Returns how many value keys were set to expire.
   */
  async expireJob(prefix: string, seconds: number): Promise<number> {
    const ms = ttlMillis(seconds, 'retention seconds');
    return Number(await this.redis.eval(EXPIRE_TRACKED, 1, this.keys.jobKeysKey(prefix), ms));
  }

  /** Deletes every key of the job and the set itself (a deleted job): an expiry of 0 ms is a deletion. */
  async deleteJob(prefix: string): Promise<number> {
    return Number(await this.redis.eval(EXPIRE_TRACKED, 1, this.keys.jobKeysKey(prefix), 0));
  }
}
