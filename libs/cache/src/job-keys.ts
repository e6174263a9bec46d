import type { Redis } from 'ioredis';
import { DEFAULT_KEYS as defaultKeys, type KeySchema } from './keys';
import { ttlMillis } from './codec';
import { setFromMemory } from './set-from-memory';

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

/**
 * COMMIT_FENCED for a manifest and the keys it names. KEYS: manifest, job key set, run key,
 * staged manifest, ARGV[3] kept keys, dropped keys. ARGV: ttl ms, run, kept count. Returns 1,
 * 0 (fenced off) or -i (kept key i, counting from 1, is missing).
 */
const COMMIT_MANIFEST = `
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  redis.call('DEL', KEYS[4])
  return 0
end
local kept = tonumber(ARGV[3])
for i = 5, 4 + kept do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('DEL', KEYS[4])
    return -(i - 4)
  end
end
local ttl = tonumber(ARGV[1])
redis.call('RENAME', KEYS[4], KEYS[1])
redis.call('SADD', KEYS[2], KEYS[1])
for i = 5, 4 + kept do redis.call('PEXPIRE', KEYS[i], ttl) end
for i = 5 + kept, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[2], KEYS[i])
end
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
`;

/** Deletes KEYS[2..] and removes them from the job key set KEYS[1]. */
const DELETE_TRACKED = `
for i = 2, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[1], KEYS[i])
end
return 1
`;

/**
 * Lifetime of the keys a job run writes once and reads for as long as it runs (its run claim, its
 * text embeddings): a week, whatever the job's length; the job's end shortens it to the retention
 * with its other keys (`expireJob`).
 */
export const JOB_RUN_TTL_SECONDS = 7 * 86400;

/** A manifest whose named key is gone (expired, evicted, deleted): it was not committed. */
export class MissingKeyError extends Error {
  constructor(
    readonly key: string,
    readonly manifest: string,
  ) {
    super(`checkpoint ${manifest} not written: the piece it names at ${key} is missing from Redis`);
    this.name = 'MissingKeyError';
  }
}

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
   * The two commands are sent back to back on the connection, not as a pipeline: a pipeline
   * would copy the value (megabytes for tensors) once more to concatenate the commands.
   */
  async put(prefix: string, key: string, value: Buffer | string, ttlSeconds: number, run?: string): Promise<void> {
    const ms = ttlMillis(ttlSeconds);
    if (!key.startsWith(`${prefix}:`)) throw new Error(`key ${key} is not under job prefix ${prefix}`);
    if (run !== undefined) return this.putFenced(prefix, key, value, ms, run);
    await Promise.all([this.redis.eval(TRACK, 2, key, this.keys.jobKeysKey(prefix), ms), this.set(key, value, ms)]);
  }

  /** A plain SET with a TTL; a Buffer goes to the socket from its own memory (set-from-memory.ts). */
  private set(key: string, value: Buffer | string, ms: number): Promise<unknown> {
    return typeof value === 'string' ? this.redis.set(key, value, 'PX', ms) : setFromMemory(this.redis, key, value, ms);
  }

  /**
   * The fenced write: a plain SET of the value to a run-specific staging key, then the tiny
   * COMMIT_FENCED script, back to back (one round trip). Throws FencedWriteError when `run` is
   * not the job's current run (see `claimRun`); the job's value is then untouched.
   */
  private async putFenced(prefix: string, key: string, value: Buffer | string, ms: number, run: string): Promise<void> {
    const staged = this.keys.stagingKey(prefix, key, run);
    const [, committed] = await Promise.all([this.set(staged, value, ms), this.redis.eval(COMMIT_FENCED, 4, key, this.keys.jobKeysKey(prefix), this.keys.runKey(prefix), staged, ms, run)]);
    if (Number(committed) !== 1) throw new FencedWriteError(key, run);
  }

  /**
   * A fenced write of a checkpoint manifest (`key`) that names other keys of the job (its
   * pieces): committed only while `run` owns the job and every key of `keep` exists; then the
   * kept keys get the TTL again and every key of `drop` (pieces no manifest names any more) is
   * deleted and untracked, in the same script. Throws FencedWriteError when superseded, and an
   * error naming the first missing kept key; either way nothing changed.
   */
  async commitManifest(prefix: string, key: string, value: Buffer, ttlSeconds: number, run: string, keep: readonly string[], drop: readonly string[]): Promise<void> {
    const ms = ttlMillis(ttlSeconds);
    for (const k of [key, ...keep, ...drop]) if (!k.startsWith(`${prefix}:`)) throw new Error(`key ${k} is not under job prefix ${prefix}`);
    const staged = this.keys.stagingKey(prefix, key, run);
    const keys = [key, this.keys.jobKeysKey(prefix), this.keys.runKey(prefix), staged, ...keep, ...drop];
    const [, reply] = await Promise.all([this.set(staged, value, ms), this.redis.eval(COMMIT_MANIFEST, keys.length, ...keys, ms, run, keep.length)]);
    const result = Number(reply);
    if (result === 0) throw new FencedWriteError(key, run);
    if (result < 0) throw new MissingKeyError(keep[-result - 1], key);
  }

  /** Deletes keys of the job and drops them from its key set, in one script. */
  async deleteKeys(prefix: string, keys: readonly string[]): Promise<void> {
    if (keys.length === 0) return;
    for (const k of keys) if (!k.startsWith(`${prefix}:`)) throw new Error(`key ${k} is not under job prefix ${prefix}`);
    await this.redis.eval(DELETE_TRACKED, keys.length + 1, this.keys.jobKeysKey(prefix), ...keys);
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
