import type { Redis } from 'ioredis';
import { checkTenant } from './api-keys';
import { DEFAULT_KEYS as defaultKeys, type KeySchema } from './keys';

/**
 * Where a tenant's webhook signing secret stands: its generation (0 until the first rotation) and
 * when it was last rotated (null: never). The secret itself is derived from the controller's master
 * key and these (docs/api.md "Webhooks"); Redis never holds a secret.
 */
export interface WebhookSecretGeneration {
  readonly generation: number;
  /** Unix ms of the last rotation; null before the first. */
  readonly rotatedAt: number | null;
}

/**
 * The generations of the tenants' webhook signing secrets in Redis, one hash per tenant:
 *
 *   R:{webhooks}:secret:<tenant>   generation, rotatedAt (ms)
 *
 * A tenant without one is at generation 0. Kept for good (no TTL): it is a few bytes per tenant
 * that ever rotated, and losing it would bring an old secret back.
 */
export class WebhookSecretGenerations {
  constructor(
    private readonly redis: Redis,
    private readonly keys: KeySchema = defaultKeys,
  ) {}

  async get(tenant: string): Promise<WebhookSecretGeneration> {
    const [generation, rotatedAt] = await this.redis.hmget(this.keys.webhookSecretKey(checkTenant(tenant)), 'generation', 'rotatedAt');
    return { generation: generation === null ? 0 : Number(generation), rotatedAt: rotatedAt === null ? null : Number(rotatedAt) };
  }

  /** Moves the tenant to its next generation, rotated at `now` (atomic: concurrent rotations each get their own). */
  async rotate(tenant: string, now: number): Promise<WebhookSecretGeneration> {
    const key = this.keys.webhookSecretKey(checkTenant(tenant));
    const replies = await this.redis.multi().hincrby(key, 'generation', 1).hset(key, 'rotatedAt', String(now)).exec();
    const [err, generation] = replies?.[0] ?? [new Error('the rotation transaction was aborted'), null];
    if (err) throw err;
    return { generation: Number(generation), rotatedAt: now };
  }
}
