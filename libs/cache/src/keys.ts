/**
 * The one Redis key schema. Every key Longshot writes is built here, so a deployment can share a
 * Redis with other tenants (a different root) and an operator can find any key's owner by name.
 *
 * Layout under root R (default `longshot`):
 *   R:{registry}:workers            set of registered worker ids
 *   R:{registry}:worker:<id>        one worker's info (JSON, expires without heartbeats)
 *   R:{registry}:last-seen:<id>     the same info, kept for a while after a worker is lost (metrics discovery)
 *   R:job:{<jobId>}                 a job's prefix; never a key itself
 *   R:job:{<jobId>}:checkpoint      the head's checkpoint manifest at the last iteration boundary
 *   R:job:{<jobId>}:piece:<run>:<block>:<kind>:<step>  one tensor of a queued block, stored by run <run> (checkpoints.ts)
 *   R:job:{<jobId>}:block:<n>       finished block latents
 *   R:job:{<jobId>}:frames:<i>      block i's decoded-frame digest (SHA-256, 32 bytes)
 *   R:job:{<jobId>}:keys            set of the job's keys (so they can all be expired together)
 *   R:job:{<jobId>}:run             the job's current run (fencing: writes of other runs are refused)
 *   R:job:{<jobId>}:<key>~<run>     a fenced value on its way to <key> (exists for one round trip)
 *   R:text-embedding:<hash>         cached text encoder output
 *   R:upload:<tenant>:<id>          bytes a client of <tenant> uploaded (POST /v1/embeddings), with a TTL
 *   R:{webhooks}:due                sorted set: jobs with a webhook, by when their next delivery is due
 *   R:{webhooks}:job:<jobId>        a job's webhook (url, events) and delivery state (cursor, attempts, claim)
 *   R:{webhooks}:secret:<tenant>    the generation of a tenant's webhook signing secret and when it was rotated (never the secret)
 *   R:{apikeys}:...                 API keys (api-keys.ts: hashes only, never a secret)
 *   R:{ratelimit}:<tenant>          a tenant's request token bucket (api-keys.ts)
 *
 * Braces are Redis Cluster hash tags: all of a job's keys hash to one slot, as do the registry's,
 * which lets the stores update several keys in one MULTI or script on a cluster too.
 */

export const DEFAULT_KEY_ROOT = 'longshot';

/** Control characters, whitespace, and the hash-tag braces (an id with a brace would move its keys' slot). */
const FORBIDDEN = /[\s\p{Cc}{}]/u;

function checkId(kind: string, id: unknown): string {
  if (typeof id !== 'string' || id.length === 0) throw new Error(`${kind} must be a non-empty string, got ${JSON.stringify(id)}`);
  if (id.length > 256) throw new Error(`${kind} is ${id.length} characters long, at most 256 are allowed`);
  if (FORBIDDEN.test(id)) throw new Error(`${kind} ${JSON.stringify(id)} contains whitespace, a control character or a brace`);
  return id;
}

export class KeySchema {
  readonly root: string;

  constructor(root: string = DEFAULT_KEY_ROOT) {
    this.root = checkId('key root', root);
    if (root.includes(':')) throw new Error(`key root ${JSON.stringify(root)} must not contain ':'`);
  }

  workerKey(id: string): string {
    return `${this.root}:{registry}:worker:${checkId('worker id', id)}`;
  }

  /** A worker's last registration, outliving it so a crashed worker stays visible (WorkerRegistry.lost). */
  workerLastSeenKey(id: string): string {
    return `${this.root}:{registry}:last-seen:${checkId('worker id', id)}`;
  }

  workersIndexKey(): string {
    return `${this.root}:{registry}:workers`;
  }

  jobPrefix(jobId: string): string {
    return `${this.root}:job:{${checkId('job id', jobId)}}`;
  }

  checkpointKey(prefix: string): string {
    return `${this.checkPrefix(prefix)}:checkpoint`;
  }

  /** One stored tensor of a queued block (a checkpoint piece), written by `run`. */
  pieceKey(prefix: string, run: string, piece: { block: number; kind: string; step: number }): string {
    for (const [name, v] of [['block', piece.block], ['step', piece.step]] as const) {
      if (!Number.isSafeInteger(v) || v < 0) throw new Error(`piece ${name} must be a non-negative integer, got ${v}`);
    }
    if (!/^[a-z0-9]+$/.test(piece.kind)) throw new Error(`piece kind ${JSON.stringify(piece.kind)} must be lower-case letters and digits`);
    return `${this.checkPrefix(prefix)}:piece:${checkId('run id', run)}:${piece.block}:${piece.kind}:${piece.step}`;
  }

  blockKey(prefix: string, index: number): string {
    if (!Number.isSafeInteger(index) || index < 0) throw new Error(`block index must be a non-negative integer, got ${index}`);
    return `${this.checkPrefix(prefix)}:block:${index}`;
  }

  /** The job's text embeddings, stored once by its driver for every stage to read (JobTextStore). */
  jobTextKey(prefix: string): string {
    return `${this.checkPrefix(prefix)}:text`;
  }

  frameDigestKey(prefix: string, index: number): string {
    if (!Number.isSafeInteger(index) || index < 0) throw new Error(`block index must be a non-negative integer, got ${index}`);
    return `${this.checkPrefix(prefix)}:frames:${index}`;
  }

  /** The set that tracks every key written under a job prefix (see `expireJob`). */
  jobKeysKey(prefix: string): string {
    return `${this.checkPrefix(prefix)}:keys`;
  }

  textEmbeddingKey(hash: string): string {
    return `${this.root}:text-embedding:${checkId('text embedding hash', hash)}`;
  }

  uploadKey(tenant: string, id: string): string {
    return `${this.root}:upload:${checkId('tenant', tenant)}:${checkId('upload id', id)}`;
  }

  /** The webhook outbox's worklist: job ids by the time their next delivery is due (WebhookOutbox). */
  webhooksDueKey(): string {
    return `${this.root}:{webhooks}:due`;
  }

  /** A job's webhook subscription and delivery state; same hash tag as the worklist. */
  webhookKey(jobId: string): string {
    return `${this.root}:{webhooks}:job:${checkId('job id', jobId)}`;
  }

  /** A tenant's webhook secret generation (WebhookSecretGenerations); the secret itself is derived, never stored. */
  webhookSecretKey(tenant: string): string {
    return `${this.root}:{webhooks}:secret:${checkId('tenant', tenant)}`;
  }

  /** The job's current run: fenced writes of any other run are dropped (see JobKeyspace.put). */
  runKey(prefix: string): string {
    return `${this.checkPrefix(prefix)}:run`;
  }

  /** Where a fenced write of `run` stages `key`'s value before the fence check moves it in place. */
  stagingKey(prefix: string, key: string, run: string): string {
    if (!key.startsWith(`${this.checkPrefix(prefix)}:`)) throw new Error(`key ${key} is not under job prefix ${prefix}`);
    return `${key}~${checkId('run id', run)}`;
  }

  /** The job id inside a prefix made by `jobPrefix`. */
  jobIdOf(prefix: string): string {
    const head = `${this.root}:job:{`;
    if (!prefix.startsWith(head) || !prefix.endsWith('}')) {
      throw new Error(`${JSON.stringify(prefix)} is not a job prefix under root ${JSON.stringify(this.root)} (expected ${head}<jobId>}; build it with jobPrefix)`);
    }
    return checkId('job id', prefix.slice(head.length, -1));
  }

  /** Catches a raw job id (or another root's prefix) passed where a prefix is expected. */
  private checkPrefix(prefix: string): string {
    this.jobIdOf(prefix);
    return prefix;
  }
}

/**
 * The schema under the default root. Stores use it unless given one: apps build theirs from their
 * config (LONGSHOT_KEY_ROOT, keySchemaOf) and pass it to every store, so tenants sharing one
 * Redis stay apart. The helpers below are the default root's (tests, benches).
 */
export const DEFAULT_KEYS = new KeySchema(DEFAULT_KEY_ROOT);

/** The schema for a configured root; a bad one is an error naming where it came from (e.g. LONGSHOT_KEY_ROOT). */
export function keySchemaOf(root: string | undefined, name: string): KeySchema {
  try {
    return new KeySchema(root || DEFAULT_KEY_ROOT);
  } catch (e) {
    throw new Error(`${name}: ${(e as Error).message}`);
  }
}

export const workerKey = (id: string): string => DEFAULT_KEYS.workerKey(id);
export const workersIndexKey = (): string => DEFAULT_KEYS.workersIndexKey();
export const jobPrefix = (jobId: string): string => DEFAULT_KEYS.jobPrefix(jobId);
export const checkpointKey = (prefix: string): string => DEFAULT_KEYS.checkpointKey(prefix);
export const blockKey = (prefix: string, index: number): string => DEFAULT_KEYS.blockKey(prefix, index);
export const frameDigestKey = (prefix: string, index: number): string => DEFAULT_KEYS.frameDigestKey(prefix, index);
export const jobKeysKey = (prefix: string): string => DEFAULT_KEYS.jobKeysKey(prefix);
export const textEmbeddingKey = (hash: string): string => DEFAULT_KEYS.textEmbeddingKey(hash);
