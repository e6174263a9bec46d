import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { DEFAULT_KEYS as defaultKeys, type KeySchema } from './keys';

/**
 * A job's webhook and how far its delivery got. The job's event stream (JobStore) is the log;
 * this is the outbox's cursor into it: every event after `cursor` is still owed to the receiver.
 */
export interface WebhookSubscription {
  readonly jobId: string;
  readonly url: string;
  /** Event names to deliver; the others are skipped. */
  readonly events: readonly string[];
  /** Stream id of the last event dealt with (delivered, skipped or given up); '0' before the first. */
  readonly cursor: string;
  /** Failed attempts at the first selected event after the cursor. */
  readonly attempts: number;
  readonly createdAt: number;
}

/** A subscription claimed by one delivery loop; `token` fences its writes (settle, finish). */
export interface WebhookClaim {
  readonly subscription: WebhookSubscription;
  readonly token: string;
}

/*
 * KEYS: due. ARGV: now, limit, hold-until, the job key prefix, claim token. Takes the due
 * subscriptions, pushes each one's due time to hold-until (if this claimer dies, another takes it
 * then) and stamps the claim; drops ids whose hash is gone. Returns id, hash fields, id, ...
 * The job keys are built from ARGV: they share the {webhooks} hash tag, so one slot on a cluster.
 */
const CLAIM = `
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[4] .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    redis.call('HSET', key, 'claim', ARGV[5])
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', key)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
`;

/*
 * KEYS: due, job. ARGV: claim token, job id, cursor, attempts, due at ('' = finished: delete).
 * Only the claim holder may write; a claim that expired and was taken over returns 0.
 */
const SETTLE = `
if redis.call('HGET', KEYS[2], 'claim') ~= ARGV[1] then return 0 end
if ARGV[5] == '' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 1
end
redis.call('HSET', KEYS[2], 'cursor', ARGV[3], 'attempts', ARGV[4], 'claim', '')
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[2])
return 1
`;

/**
 * The durable webhook outbox in Redis: which jobs have a webhook, how far each one's delivery got,
 * and when it is next due. Any replica's delivery loop claims due jobs for a while; a claim that is
 * not settled in time (the replica died) falls due again and another loop resumes from the cursor.
 * An event is passed (the cursor moves) only once it was delivered or given up.
 */
export class WebhookOutbox {
  private readonly keys: KeySchema;

  constructor(
    private readonly redis: Redis,
    keys: KeySchema = defaultKeys,
  ) {
    this.keys = keys;
  }

  /** Registers a job's webhook, due now, from the start of its event stream. */
  async subscribe(jobId: string, hook: { url: string; events: readonly string[] }): Promise<void> {
    const now = Date.now();
    await this.redis
      .multi()
      .hset(this.keys.webhookKey(jobId), { jobId, url: hook.url, events: hook.events.join(','), cursor: '0', attempts: '0', createdAt: String(now), claim: '' })
      .zadd(this.keys.webhooksDueKey(), now, jobId)
      .exec();
  }

  /** Drops a job's webhook (a submit that did not create its job). */
  async unsubscribe(jobId: string): Promise<void> {
    await this.redis.multi().del(this.keys.webhookKey(jobId)).zrem(this.keys.webhooksDueKey(), jobId).exec();
  }

  async get(jobId: string): Promise<WebhookSubscription | null> {
    const h = await this.redis.hgetall(this.keys.webhookKey(jobId));
    return Object.keys(h).length === 0 ? null : decode(h);
  }

  /** Claims up to `limit` due subscriptions until `holdMs` from now. */
  async claimDue(limit: number, holdMs: number): Promise<WebhookClaim[]> {
    const now = Date.now();
    const token = randomUUID();
    const prefix = this.keys.webhookKey('-').slice(0, -1);
    const reply = (await this.redis.eval(CLAIM, 1, this.keys.webhooksDueKey(), now, limit, now + holdMs, prefix, token)) as (string | string[])[];
    const out: WebhookClaim[] = [];
    for (let i = 0; i + 1 < reply.length; i += 2) {
      const fields = reply[i + 1] as string[];
      const h: Record<string, string> = {};
      for (let j = 0; j + 1 < fields.length; j += 2) h[fields[j]] = fields[j + 1];
      out.push({ subscription: decode(h), token });
    }
    return out;
  }

  /** Records progress and when the job is next due; false when the claim was lost to another loop. */
  async settle(claim: WebhookClaim, next: { cursor: string; attempts: number; dueAt: number }): Promise<boolean> {
    const { jobId } = claim.subscription;
    return (await this.redis.eval(SETTLE, 2, this.keys.webhooksDueKey(), this.keys.webhookKey(jobId), claim.token, jobId, next.cursor, next.attempts, next.dueAt)) === 1;
  }

  /** Removes a subscription that has nothing more to deliver; false when the claim was lost. */
  async finish(claim: WebhookClaim): Promise<boolean> {
    const { jobId } = claim.subscription;
    return (await this.redis.eval(SETTLE, 2, this.keys.webhooksDueKey(), this.keys.webhookKey(jobId), claim.token, jobId, '', '', '')) === 1;
  }

  /** Jobs whose webhook still has events to deliver (or may get more). */
  pending(): Promise<number> {
    return this.redis.zcard(this.keys.webhooksDueKey());
  }
}

function decode(h: Record<string, string>): WebhookSubscription {
  return {
    jobId: h.jobId,
    url: h.url,
    events: h.events ? h.events.split(',') : [],
    cursor: h.cursor || '0',
    attempts: Number(h.attempts ?? 0),
    createdAt: Number(h.createdAt ?? 0),
  };
}
