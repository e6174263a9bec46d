import { createHash } from 'node:crypto';
import { Inject, Injectable, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { isRedisUnavailable, isTerminal, type JobEvent, type WebhookClaim, type WebhookOutbox, type WebhookSubscription } from '@longshot/cache';
import { logger } from '@longshot/telemetry';
import type { ControllerConfig } from '../config';
import { redisUnavailable, webhookAttemptDuration, webhookDeliveries } from '../metrics';
import type { VideoStore } from '../render';
import { CONFIG, JOBS, WEBHOOK_OUTBOX, WEBHOOK_SENDER } from '../tokens';
import { webhookPayload } from './events';
import type { AttemptResult, WebhookSender } from './sender';
import { WEBHOOK_HEADERS, webhookSignatures } from './signing';
import { TenantSecretService } from './tenant-secrets';

const log = logger('webhooks');
/** Events one look at a job reads. */
const READ_COUNT = 100;
/** A subscription whose job record still does not exist this long after it was made: a submit that died in between. */
const ORPHAN_GRACE_MS = 60_000;

/**
 * The wait before attempt `attempt + 1` of event `eventId`: `baseMs` doubled per failed attempt up
 * to `capMs`, times a jitter in [0.8, 1.2) drawn from the event id and attempt (so receivers see
 * retries spread out, and the same event always waits the same).
 */
export function retryDelayMs(eventId: string, attempt: number, baseMs: number, capMs: number): number {
  const jitter = createHash('sha256').update(`${eventId}#${attempt}`).digest().readUInt32BE(0) / 2 ** 32;
  return Math.round(Math.min(capMs, baseMs * 2 ** (attempt - 1)) * (0.8 + 0.4 * jitter));
}

/**
 * Delivers every job's selected events to its webhook, in order, at least once, from any replica:
 * claims due jobs in the outbox, sends the first selected event after the job's cursor (signed,
 * to an address vetted now), and moves the cursor past it only after a 2xx (or once its attempts
 * are used up). A failed attempt is retried with exponential back-off; later events of that job
 * wait for it. A replica that dies mid-attempt leaves its claim to expire, and any replica resumes.
 */
@Injectable()
export class WebhookDispatcher implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly inflight = new Set<Promise<void>>();
  private loop: Promise<void> | null = null;
  private closed = false;
  private wake: (() => void) | null = null;

  constructor(
    @Inject(CONFIG) private readonly config: ControllerConfig,
    @Inject(JOBS) private readonly jobs: VideoStore,
    @Inject(WEBHOOK_OUTBOX) private readonly outbox: WebhookOutbox,
    @Inject(WEBHOOK_SENDER) private readonly sender: WebhookSender,
    @Inject(TenantSecretService) private readonly secrets: TenantSecretService,
  ) {}

  onApplicationBootstrap(): void {
    this.loop = this.run();
  }

  async onApplicationShutdown(): Promise<void> {
    this.closed = true;
    this.wake?.();
    await this.loop;
    await Promise.all(this.inflight);
  }

  private async run(): Promise<void> {
    const w = this.config.webhooks;
    // Long enough for one look at a job: two Redis reads, one attempt (its deadline covers DNS
    // too), the settle. A replica that dies holds its jobs this long.
    const holdMs = w.timeoutMs * 2 + 1000;
    while (!this.closed) {
      const free = w.concurrency - this.inflight.size;
      let claimed: WebhookClaim[] = [];
      if (free > 0) {
        try {
          claimed = await this.outbox.claimDue(free, holdMs);
        } catch (err) {
          if (isRedisUnavailable(err)) redisUnavailable.inc({ where: 'webhooks' });
          log.warn('claiming due webhooks failed; retrying', { err });
        }
      }
      for (const claim of claimed) {
        const step: Promise<void> = this.deliverNext(claim)
          .catch((err: unknown) => log.warn('a webhook delivery step failed; its claim expires and it is taken again', { job: claim.subscription.jobId, err }))
          .finally(() => {
            this.inflight.delete(step);
            this.wake?.();
          });
        this.inflight.add(step);
      }
      if (free === 0 || claimed.length < free) await this.nap(w.pollMs);
    }
  }

  /** Waits `ms`, or less when a delivery step ends or the replica shuts down. */
  private async nap(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.wake = resolve;
      timer = setTimeout(resolve, ms);
    });
    clearTimeout(timer);
    this.wake = null;
  }

  /** One look at a claimed job: deliver (or try to) its next selected event, skip the others, finish when there is nothing more. */
  private async deliverNext(claim: WebhookClaim): Promise<void> {
    const sub = claim.subscription;
    const w = this.config.webhooks;
    const now = Date.now();
    // The status before the events: a terminal record gets no more events, so if it is terminal
    // now, the read below sees its last one.
    const rec = await this.jobs.get(sub.jobId);
    if (!rec) {
      // Deleted or expired (with its events), or a submit still writing it.
      if (now - sub.createdAt > ORPHAN_GRACE_MS) await this.outbox.finish(claim);
      else await this.outbox.settle(claim, { cursor: sub.cursor, attempts: sub.attempts, dueAt: now + w.pollMs });
      return;
    }
    const events = await this.jobs.events(sub.jobId, sub.cursor, { count: READ_COUNT });
    const next = events.findIndex((e) => sub.events.includes(e.event));
    if (next < 0) {
      if (isTerminal(rec.status) && events.length < READ_COUNT) await this.outbox.finish(claim);
      else await this.outbox.settle(claim, { cursor: events.at(-1)?.id ?? sub.cursor, attempts: 0, dueAt: events.length === READ_COUNT ? now : now + w.pollMs });
      return;
    }
    const event = events[next];
    // The events before it were not selected: passed.
    const before = next > 0 ? events[next - 1].id : sub.cursor;
    const attempt = sub.attempts + 1;
    const { id, result } = await this.attempt(sub, event, rec.tenant);
    const passed = result.kind === 'response' && result.status >= 200 && result.status < 300;
    const last = !passed && attempt >= w.maxAttempts;
    webhookDeliveries.inc({ outcome: passed ? 'delivered' : last ? 'exhausted' : result.kind === 'refused' ? 'refused' : 'failed' });
    const why = result.kind === 'response' ? `HTTP ${result.status}` : result.message;
    const host = new URL(sub.url).host;
    if (last) log.warn('webhook event given up after its last attempt', { job: sub.jobId, event: id, type: event.event, host, attempts: attempt, why });
    else if (!passed) log.info('webhook attempt failed; retrying later', { job: sub.jobId, event: id, host, attempt, why });
    const settled =
      passed || last
        ? await this.outbox.settle(claim, { cursor: event.id, attempts: 0, dueAt: Date.now() })
        : await this.outbox.settle(claim, { cursor: before, attempts: attempt, dueAt: Date.now() + retryDelayMs(id, attempt, w.backoffMs, w.maxBackoffMs) });
    if (!settled) log.warn('a webhook claim expired during an attempt; another loop took the job over', { job: sub.jobId, event: id });
  }

  /**
   * Signs and sends one attempt (a fresh timestamp each time; the id and body never change) with
   * the secrets of the job's tenant as they are now (a rotation applies to the next attempt).
   */
  private async attempt(sub: WebhookSubscription, event: JobEvent, tenant: string): Promise<{ id: string; result: AttemptResult }> {
    const { id, body } = webhookPayload(sub.jobId, event);
    const secrets = await this.secrets.signingSecrets(tenant);
    if (secrets === null) return { id, result: { kind: 'error', message: 'webhooks are not enabled on this replica (LONGSHOT_WEBHOOK_SECRET unset)' } };
    const timestamp = Math.floor(Date.now() / 1000);
    const headers = { [WEBHOOK_HEADERS.id]: id, [WEBHOOK_HEADERS.timestamp]: String(timestamp), [WEBHOOK_HEADERS.signature]: webhookSignatures(secrets, id, timestamp, body) };
    const end = webhookAttemptDuration.startTimer();
    try {
      return { id, result: await this.sender.post(new URL(sub.url), body, headers, this.config.webhooks.timeoutMs) };
    } finally {
      end();
    }
  }
}
