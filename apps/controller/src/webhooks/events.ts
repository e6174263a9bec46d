import type { JobEvent } from '@longshot/cache';

/** Every event a job's stream carries (docs/api.md, Events): what SSE sends and webhooks may select. */
export const JOB_EVENT_NAMES = ['queued', 'started', 'progress', 'block', 'failover', 'retrying', 'succeeded', 'failed', 'canceled'] as const;
export type JobEventName = (typeof JOB_EVENT_NAMES)[number];

/** Without `webhookEvents`: every event but `progress` (up to 4 a second). */
export const DEFAULT_WEBHOOK_EVENTS: readonly JobEventName[] = JOB_EVENT_NAMES.filter((e) => e !== 'progress');

/** What a webhook receives for one job event: the same id and body on every attempt. */
export interface WebhookPayload {
  /** `<jobId>:<stream id>`: stable per job and event, so a receiver can drop repeats. */
  readonly id: string;
  readonly type: string;
  readonly jobId: string;
  /** When the event happened (the stream id's milliseconds). */
  readonly createdAt: string;
  readonly data: unknown;
}

export function webhookPayload(jobId: string, event: JobEvent): { id: string; body: string } {
  const id = `${jobId}:${event.id}`;
  const payload: WebhookPayload = { id, type: event.event, jobId, createdAt: new Date(Number(event.id.split('-')[0])).toISOString(), data: event.data };
  return { id, body: JSON.stringify(payload) };
}
