import type { Redis } from 'ioredis';
import { keys as defaultKeys, type KeySchema } from './keys';
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
  async put(prefix: string, key: string, value: Buffer | string, ttlSeconds: number): Promise<void> {
    const ms = ttlMillis(ttlSeconds);
    if (!key.startsWith(`${prefix}:`)) throw new Error(`key ${key} is not under job prefix ${prefix}`);
    const results = await this.redis.pipeline().eval(TRACK, 2, key, this.keys.jobKeysKey(prefix), ms).set(key, value, 'PX', ms).exec();
    const failed = results?.find(([err]) => err);
    if (!results || failed) throw failed?.[0] ?? new Error(`writing ${key}: Redis returned no reply`);
  }

  /**
   * Makes every key of the job expire `seconds` from now (the retention after a job ends), so
   * finished jobs do not accumulate in Redis. Returns how many value keys were set to expire.
   */
  async expireJob(prefix: string, seconds: number): Promise<number> {
    const ms = ttlMillis(seconds, 'retention seconds');
    return Number(await this.redis.eval(EXPIRE_TRACKED, 1, this.keys.jobKeysKey(prefix), ms));
  }
}
