import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Webhook signatures (Standard-Webhooks-like): HMAC-SHA256 over "<id>.<timestamp>.<body>" with the
 * job's tenant's secret (tenant-secrets.ts), sent as `Longshot-Webhook-Signature: v1=<hex>` (two,
 * space-separated, while a rotated-out secret is in its grace period). The id and the Unix timestamp
 * (seconds) are signed too, so a receiver can drop replays and stale deliveries.
 */

export const WEBHOOK_HEADERS = { id: 'Longshot-Webhook-Id', timestamp: 'Longshot-Webhook-Timestamp', signature: 'Longshot-Webhook-Signature' } as const;

/** One signature of a delivery attempt. */
export function webhookSignature(secret: string, id: string, timestamp: number, body: string): string {
  return `v1=${createHmac('sha256', secret).update(`${id}.${timestamp}.${body}`).digest('hex')}`;
}

/** The signature header value: one signature per secret (two during a rotation's grace period), space-separated. */
export function webhookSignatures(secrets: readonly string[], id: string, timestamp: number, body: string): string {
  return secrets.map((secret) => webhookSignature(secret, id, timestamp, body)).join(' ');
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
