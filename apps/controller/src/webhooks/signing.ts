import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Webhook signatures (Standard-Webhooks-like): HMAC-SHA256 over "<id>.<timestamp>.<body>" with the
 * tenant's secret, sent as `Longshot-Webhook-Signature: v1=<hex>`. The id and the Unix timestamp
 * (seconds) are signed too, so a receiver can drop replays and stale deliveries.
 */

export const WEBHOOK_HEADERS = { id: 'Longshot-Webhook-Id', timestamp: 'Longshot-Webhook-Timestamp', signature: 'Longshot-Webhook-Signature' } as const;

/** The signature header value of one delivery attempt. */
export function webhookSignature(secret: string, id: string, timestamp: number, body: string): string {
  return `v1=${createHmac('sha256', secret).update(`${id}.${timestamp}.${body}`).digest('hex')}`;
}

/**
 * Whether `header` (one or more space-separated `v1=<hex>`; several during a secret rotation)
 * holds the signature of this id, timestamp and body, and the timestamp is within `toleranceSeconds`.
 */
export function verifyWebhookSignature(secret: string, header: string, id: string, timestamp: string, body: string, options: { toleranceSeconds?: number; nowSeconds?: number } = {}): boolean {
  const ts = Number(timestamp);
  const now = options.nowSeconds ?? Math.floor(Date.now() / 1000);
  if (!/^\d{1,12}$/.test(timestamp) || Math.abs(now - ts) > (options.toleranceSeconds ?? 300)) return false;
  const expected = Buffer.from(webhookSignature(secret, id, ts, body));
  return header.split(' ').some((candidate) => {
    const got = Buffer.from(candidate);
    return got.length === expected.length && timingSafeEqual(got, expected);
  });
}

/**
 * The signing secret of a tenant. There are no tenants yet: every job is tenant '' and signed with
 * the controller's one secret (LONGSHOT_WEBHOOK_SECRET); per-tenant secrets replace this lookup.
 */
export interface WebhookSecrets {
  secretFor(tenant: string): string | null;
}

/** The tenant of every job until API keys bring tenants. */
export const NO_TENANT = '';

export const singleSecret = (secret: string | null): WebhookSecrets => ({ secretFor: () => secret });
