import type { Redis } from 'ioredis';
import { checkTenant } from './api-keys';
import { DEFAULT_KEYS as defaultKeys, type KeySchema } from './keys';

export type JobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'canceled';
export const JOB_STATUSES: readonly JobStatus[] = ['queued', 'running', 'succeeded', 'failed', 'canceled'];
export const TERMINAL_STATUSES: readonly JobStatus[] = ['succeeded', 'failed', 'canceled'];
export const isTerminal = (s: JobStatus): boolean => TERMINAL_STATUSES.includes(s);

export interface JobProgress {
  readonly blocksDone: number;
  readonly blocks: number;
  readonly blockStepsDone: number;
  readonly blockSteps: number;
  readonly etaSeconds: number | null;
}

/** Each stage as a group of `ulysses` x (cfgParallel ? 2 : 1) workers (libs/model StageLayout has the same shape). */
export interface JobLayout {
  readonly ulysses: number;
  readonly cfgParallel: boolean;
}

/** A job's durable record: what GET /v1/videos/:id shows, whichever replica answers. */
export interface JobRecord<Spec = unknown, Result = unknown> {
  readonly id: string;
  readonly status: JobStatus;
  readonly spec: Spec;
  /** The tenant whose API key submitted it: only that tenant (and operators) see it. */
  readonly tenant: string;
  readonly priority: number;
  readonly progress: JobProgress;
  /** Stages the job runs on; null until chosen (the planner picks K when the request left it open). */
  readonly stages: number | null;
  /** How each of the stages is split among a group of workers (docs/parallelism.md); null until chosen, with `stages`. */
  readonly layout: JobLayout | null;
  readonly workers: readonly string[];
  /** Runs started (a retry or a takeover by another replica is another run). */
  readonly attempts: number;
  readonly result: Result | null;
  readonly error: { readonly message: string } | null;
  /** Controller replica running it now (null when none). */
  readonly owner: string | null;
  /**
   * Numerics fingerprint of the workers the job started on (null until its first run has
   * workers): every later run, takeovers included, is pinned to it, so the output stays bit-identical.
   */
  readonly numerics: string | null;
  readonly createdAt: number;
  readonly startedAt: number | null;
  readonly finishedAt: number | null;
}

export interface JobEvent {
  /** Redis stream id: monotonic per job; SSE uses it as the event id (Last-Event-ID). */
  readonly id: string;
  readonly event: string;
  readonly data: unknown;
}

export interface JobStoreOptions {
  keys?: KeySchema;
  /** How long a finished job's record, events and idempotency key stay (default 7 days). */
  retentionMs?: number;
}

/*
 * Layout (all under one hash tag, so every script below also runs on a Redis Cluster):
 *   R:{jobs}:record:<id>        hash: one field per JobRecord field (JSON where not a plain string)
 *   R:{jobs}:events:<id>        stream: the job's events, in order (event, data)
 *   R:{jobs}:index              sorted set: job ids by creation time (listing)
 *   R:{jobs}:index:<tenant>     the same, one tenant's jobs only
 *   R:{jobs}:idempotency:<key>  "<jobId>\x1f<body hash>"
 *   R:{jobs}:queued             sorted set: ids of `queued` records by creation time (the reconciler's worklist)
 *   R:{jobs}:cancel             pub/sub channel: ids of jobs to stop wherever they run
 */

/** KEYS: record, index, idempotency (or ''), events, queued, tenant index. ARGV: id, createdAt, idem value, ttl ms, queued data, fields... */
const CREATE = `
if ARGV[3] ~= '' then
  local cur = redis.call('GET', KEYS[3])
  if cur then return {0, cur} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ''} end
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[4]))
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[4]))
redis.call('XADD', KEYS[4], '*', 'event', 'queued', 'data', ARGV[5])
return {1, ''}
`;

/*
 * The one way a record changes. KEYS: record, events, queued. ARGV: statuses it may change from
 * (",a,b,"), new status ('' keeps it), event name ('' for none), event data, retention ms
 * ('' keeps the record without expiry), then field/value pairs. A terminal record never changes
 * again and never gets another event, so a late progress update from a runner that has not yet
 * noticed a cancel cannot resurrect the job. Returns {changed, status before}.
 */
const UPDATE = `
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if not string.find(ARGV[1], ',' .. cur .. ',', 1, true) then return {0, cur} end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2])
  local id = redis.call('HGET', KEYS[1], 'id')
  if ARGV[2] == 'queued' then
    redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[1], 'createdAt'), id)
  else
    redis.call('ZREM', KEYS[3], id)
  end
end
if #ARGV > 5 then redis.call('HSET', KEYS[1], unpack(ARGV, 6)) end
if ARGV[3] ~= '' then redis.call('XADD', KEYS[2], '*', 'event', ARGV[3], 'data', ARGV[4]) end
if ARGV[5] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
return {1, cur}
`;

/*
 * A finished block, exactly once and in order, whichever replica stitched it. KEYS: record,
 * events. ARGV: block index, event data, blockStepsDone. Returns 1 when recorded.
 */
const BLOCK = `
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'blocksDone')) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'blocksDone', tonumber(ARGV[1]) + 1)
redis.call('XADD', KEYS[2], '*', 'event', 'block', 'data', ARGV[2])
return 1
`;

const ACTIVE = ',queued,running,';

/*
 * Deletes a finished job's record and events and drops it from the index and the queued list.
 * KEYS: record, events, index, queued, tenant index. ARGV: id, active statuses. Returns the status it had
 * ('' when there was no record); an active job is left as it is.
 */
const REMOVE = `
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
if string.find(ARGV[2], ',' .. cur .. ',', 1, true) then return cur end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
return cur
`;

export type JobFields<Spec, Result> = Partial<Omit<JobRecord<Spec, Result>, 'id' | 'status' | 'createdAt' | 'progress'>> & { progress?: Partial<JobProgress> };

export type CreateOutcome<Spec, Result> =
  | { readonly created: true; readonly record: JobRecord<Spec, Result> }
  | { readonly created: false; readonly existingId: string; readonly sameBody: boolean };

/** Job records, their event streams, idempotency keys and the cancel channel, in Redis. */
export class JobStore<Spec = unknown, Result = unknown> {
  private readonly keys: KeySchema;
  readonly retentionMs: number;

  constructor(
    private readonly redis: Redis,
    options: JobStoreOptions = {},
  ) {
    this.keys = options.keys ?? defaultKeys;
    this.retentionMs = options.retentionMs ?? 7 * 24 * 3600 * 1000;
    if (!Number.isSafeInteger(this.retentionMs) || this.retentionMs < 1) throw new Error(`job retention must be a positive number of ms, got ${this.retentionMs}`);
  }

  private key(kind: 'record' | 'events', id: string): string {
    this.keys.jobPrefix(id);
    return `${this.keys.root}:{jobs}:${kind}:${id}`;
  }

  /** Every job, or one tenant's. */
  private indexKey(tenant?: string): string {
    return tenant === undefined ? `${this.keys.root}:{jobs}:index` : `${this.keys.root}:{jobs}:index:${checkTenant(tenant)}`;
  }

  private queuedKey(): string {
    return `${this.keys.root}:{jobs}:queued`;
  }

  private idempotencyKey(key: string): string {
    return `${this.keys.root}:{jobs}:idempotency:${key}`;
  }

  get cancelChannel(): string {
    return `${this.keys.root}:{jobs}:cancel`;
  }

  /**
   * Stores a new queued job and its `queued` event. With an idempotency key (already hashed by
   * the caller) that was used before, stores nothing and names the earlier job instead.
   */
  async create(
    input: { id: string; tenant: string; spec: Spec; priority: number; stages: number | null; layout?: JobLayout | null; blocks: number; blockSteps: number },
    idempotency: { key: string; bodyHash: string } | null,
  ): Promise<CreateOutcome<Spec, Result>> {
    const now = Date.now();
    const record: JobRecord<Spec, Result> = {
      id: input.id,
      status: 'queued',
      spec: input.spec,
      tenant: input.tenant,
      priority: input.priority,
      progress: { blocksDone: 0, blocks: input.blocks, blockStepsDone: 0, blockSteps: input.blockSteps, etaSeconds: null },
      stages: input.stages,
      layout: input.layout ?? null,
      workers: [],
      attempts: 0,
      result: null,
      error: null,
      owner: null,
      numerics: null,
      createdAt: now,
      startedAt: null,
      finishedAt: null,
    };
    const idemValue = idempotency ? `${input.id}\u001f${idempotency.bodyHash}` : '';
    const [created, existing] = (await this.redis.eval(
      CREATE,
      6,
      this.key('record', input.id),
      this.indexKey(),
      idempotency ? this.idempotencyKey(idempotency.key) : this.idempotencyKey('-'),
      this.key('events', input.id),
      this.queuedKey(),
      this.indexKey(input.tenant),
      input.id,
      now,
      idemValue,
      this.retentionMs,
      JSON.stringify({ id: input.id }),
      ...encodeFields({ ...record }),
    )) as [number, string];
    if (created === 1) return { created: true, record };
    if (!existing) throw new Error(`job ${input.id} already exists`);
    const sep = existing.indexOf('\u001f');
    return { created: false, existingId: existing.slice(0, sep), sameBody: existing.slice(sep + 1) === idempotency?.bodyHash };
  }

  async get(id: string): Promise<JobRecord<Spec, Result> | null> {
    const h = await this.redis.hgetall(this.key('record', id));
    return Object.keys(h).length === 0 ? null : decodeRecord<Spec, Result>(h);
  }

  /**
   * Changes a job that is in one of `from`; with `event`, appends it in the same step. Returns
   * whether it changed and the status it had.
   */
  async update(
    id: string,
    change: { from?: readonly JobStatus[]; status?: JobStatus; fields?: JobFields<Spec, Result>; event?: { name: string; data: unknown } },
  ): Promise<{ changed: boolean; previous: JobStatus | null }> {
    const from = `,${(change.from ?? ['queued', 'running']).join(',')},`;
    const terminal = change.status !== undefined && isTerminal(change.status);
    const [changed, previous] = (await this.redis.eval(
      UPDATE,
      3,
      this.key('record', id),
      this.key('events', id),
      this.queuedKey(),
      from,
      change.status ?? '',
      change.event?.name ?? '',
      JSON.stringify(change.event?.data ?? {}),
      terminal ? this.retentionMs : '',
      ...encodeFields({ ...change.fields }),
    )) as [number, string];
    return { changed: changed === 1, previous: previous === '' ? null : (previous as JobStatus) };
  }

  /** Records block `index` as stitched and emits its event, only if it is the next one. */
  async blockDone(id: string, index: number, data: unknown): Promise<boolean> {
    return (await this.redis.eval(BLOCK, 2, this.key('record', id), this.key('events', id), index, JSON.stringify(data))) === 1;
  }

  /**
   * Ids of records that are `queued` and were created before `cutoffMs`, oldest first (at most
   * `limit`): the reconciler checks each has a queue entry. Ids whose record is gone (retention)
   * are dropped from the list as they are met.
   */
  async queuedBefore(cutoffMs: number, limit: number): Promise<string[]> {
    const ids = await this.redis.zrangebyscore(this.queuedKey(), '-inf', cutoffMs, 'LIMIT', 0, limit);
    if (ids.length === 0) return [];
    const multi = this.redis.multi();
    for (const id of ids) multi.hget(this.key('record', id), 'status');
    const statuses = ((await multi.exec()) ?? []).map((r) => r?.[1] as string | null);
    const stale = ids.filter((_, i) => statuses[i] !== 'queued');
    if (stale.length) await this.redis.zrem(this.queuedKey(), ...stale);
    return ids.filter((_, i) => statuses[i] === 'queued');
  }

  /** True while the job may still run (queued or running). */
  async isActive(id: string): Promise<boolean> {
    const s = await this.redis.hget(this.key('record', id), 'status');
    return s !== null && ACTIVE.includes(`,${s},`);
  }

  /**
   * Events after `after` ('0' for all). With `blockMs`, waits that long for new ones: pass a
   * connection of its own (`reader`), as a blocking read holds the connection.
   */
  async events(id: string, after: string, options: { blockMs?: number; count?: number; reader?: Redis } = {}): Promise<JobEvent[]> {
    const r = options.reader ?? this.redis;
    const key = this.key('events', id);
    const count = options.count ?? 500;
    const reply =
      options.blockMs !== undefined
        ? await r.xread('COUNT', count, 'BLOCK', options.blockMs, 'STREAMS', key, after)
        : await r.xread('COUNT', count, 'STREAMS', key, after);
    if (!reply) return [];
    return reply[0][1].map(decodeEvent);
  }

  /**
   * New events of several jobs in one read: for each [id, after], the events after `after`.
   * With `blockMs`, waits that long for any; pass a connection of its own (`reader`). One such
   * read serves every SSE client of a replica.
   */
  async eventsOf(cursors: readonly (readonly [string, string])[], options: { blockMs?: number; count?: number; reader?: Redis } = {}): Promise<Map<string, JobEvent[]>> {
    const out = new Map<string, JobEvent[]>();
    if (cursors.length === 0) return out;
    const r = options.reader ?? this.redis;
    const idOf = new Map(cursors.map(([id]) => [this.key('events', id), id]));
    const args = ['COUNT', options.count ?? 500, ...(options.blockMs !== undefined ? ['BLOCK', options.blockMs] : []), 'STREAMS', ...cursors.map(([id]) => this.key('events', id)), ...cursors.map(([, after]) => after)];
    const reply = (await r.call('XREAD', ...args)) as [string, [string, string[]][]][] | null;
    for (const [key, entries] of reply ?? []) out.set(idOf.get(key)!, entries.map(decodeEvent));
    return out;
  }

  /** Jobs (of `tenant`, or all), newest first; `cursor` is what the previous page returned (null at the end). */
  async list(options: { status?: JobStatus; tenant?: string; limit: number; cursor?: string }): Promise<{ items: JobRecord<Spec, Result>[]; cursor: string | null }> {
    const index = this.indexKey(options.tenant);
    let offset = options.cursor ? Number(options.cursor) : 0;
    if (!Number.isSafeInteger(offset) || offset < 0) throw new Error(`bad cursor ${options.cursor}`);
    const items: JobRecord<Spec, Result>[] = [];
    const page = Math.max(options.limit, 50);
    for (;;) {
      const ids = await this.redis.zrevrange(index, offset, offset + page - 1);
      if (ids.length === 0) return { items, cursor: null };
      const multi = this.redis.multi();
      for (const id of ids) multi.hgetall(this.key('record', id));
      const replies = (await multi.exec()) ?? [];
      const gone: string[] = [];
      for (let i = 0; i < ids.length; i++) {
        offset++;
        const h = replies[i]?.[1] as Record<string, string> | undefined;
        if (!h || Object.keys(h).length === 0) {
          gone.push(ids[i]);
          continue;
        }
        const rec = decodeRecord<Spec, Result>(h);
        if (options.status && rec.status !== options.status) continue;
        items.push(rec);
        if (items.length === options.limit) {
          if (gone.length) await this.redis.zrem(index, ...gone);
          return { items, cursor: String(offset - gone.length) };
        }
      }
      // Records past their retention: drop them from the index as we meet them.
      if (gone.length) {
        await this.redis.zrem(index, ...gone);
        offset -= gone.length;
      }
    }
  }

  /**
   * Deletes a finished job's record and events (queued and running jobs are kept). Returns the
   * status it had, null when there is no such job: deleted unless that status is active.
   */
  async remove(id: string): Promise<JobStatus | null> {
    const tenant = await this.redis.hget(this.key('record', id), 'tenant');
    const tenantIndex = tenant ? this.indexKey(tenant) : `${this.indexKey()}:-`;
    const status = (await this.redis.eval(REMOVE, 5, this.key('record', id), this.key('events', id), this.indexKey(), this.queuedKey(), tenantIndex, id, ACTIVE)) as string;
    return status === '' ? null : (status as JobStatus);
  }

  /** Asks whichever replica runs `id` to stop it. */
  async publishCancel(id: string): Promise<void> {
    await this.redis.publish(this.cancelChannel, id);
  }
}

function decodeEvent([eventId, f]: [string, string[]]): JobEvent {
  const m = new Map<string, string>();
  for (let i = 0; i + 1 < f.length; i += 2) m.set(f[i], f[i + 1]);
  return { id: eventId, event: m.get('event') ?? 'message', data: JSON.parse(m.get('data') ?? 'null') as unknown };
}

/** Orders two stream ids ("ms-seq"): negative, 0 or positive. */
export function compareEventIds(a: string, b: string): number {
  const [am, as = '0'] = a.split('-');
  const [bm, bs = '0'] = b.split('-');
  const d = BigInt(am) - BigInt(bm) || BigInt(as) - BigInt(bs);
  return d < 0n ? -1 : d > 0n ? 1 : 0;
}

const JSON_FIELDS = new Set(['spec', 'layout', 'workers', 'result', 'error']);

function encodeFields(fields: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    if (k === 'progress') {
      for (const [pk, pv] of Object.entries(v as Record<string, unknown>)) if (pv !== undefined) out.push(pk, pv === null ? '' : String(pv));
    } else if (JSON_FIELDS.has(k)) out.push(k, JSON.stringify(v));
    else out.push(k, v === null ? '' : String(v));
  }
  return out;
}

function decodeRecord<Spec, Result>(h: Record<string, string>): JobRecord<Spec, Result> {
  const num = (k: string): number => Number(h[k] ?? 0);
  const nnum = (k: string): number | null => (h[k] === undefined || h[k] === '' ? null : Number(h[k]));
  const json = <T>(k: string, fallback: T): T => (h[k] === undefined ? fallback : (JSON.parse(h[k]) as T));
  return {
    id: h.id,
    status: h.status as JobStatus,
    spec: json<Spec>('spec', null as Spec),
    tenant: h.tenant ?? '',
    priority: num('priority'),
    progress: { blocksDone: num('blocksDone'), blocks: num('blocks'), blockStepsDone: num('blockStepsDone'), blockSteps: num('blockSteps'), etaSeconds: nnum('etaSeconds') },
    stages: nnum('stages'),
    layout: json<JobLayout | null>('layout', null),
    workers: json<string[]>('workers', []),
    attempts: num('attempts'),
    result: json<Result | null>('result', null),
    error: json<{ message: string } | null>('error', null),
    owner: h.owner ? h.owner : null,
    numerics: h.numerics ? h.numerics : null,
    createdAt: num('createdAt'),
    startedAt: nnum('startedAt'),
    finishedAt: nnum('finishedAt'),
  };
}
