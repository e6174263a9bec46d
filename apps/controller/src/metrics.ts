import { TERMINAL_STATUSES } from '@longshot/cache';
import { FAILOVER_REASONS } from '@longshot/pipeline';
import { counter, gauge, histogram } from '@longshot/telemetry';

/**
 * The controller's metrics (on the process's one registry). Gauges that mirror Redis state are
 * filled on scrape by MetricsCollector, so every replica reports the same cluster-wide numbers.
 */
export const jobDuration = histogram<'status'>({
  name: 'longshot_job_duration_seconds',
  help: 'Time from submission to the end of a job, by final status',
  labelNames: ['status'],
  buckets: [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200],
  // At 0 from start-up: the failure ratio (rules.yml) and the dashboard's Failed panel need the
  // failed series before the first failure.
  known: { status: TERMINAL_STATUSES },
});

/** Attempts the driver of a job on this replica gave up after losing a stage, by why (FAILOVER_REASONS). */
export const failovers = counter<'reason'>({ name: 'longshot_failovers_total', help: 'Stages lost mid-job and replaced (a new attempt resuming from the checkpoint), by reason', labelNames: ['reason'], known: { reason: FAILOVER_REASONS } });

/** Each attempt's set-up: workers leased, the text embeddings stored, every stage session open (DistributedResult attempts[].openSeconds). */
export const jobSetup = histogram({
  name: 'longshot_job_setup_seconds',
  help: 'Set-up of each attempt of the jobs this replica drives: workers leased, text embeddings stored for the stages, every stage session open',
  buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
});

export const blockSteps = counter({ name: 'longshot_block_steps_total', help: 'Block-steps applied by the heads of jobs this replica drives' });


/** Redis could not be reached: by where it was noticed (an HTTP request answered 503, the SSE reader, the reconciler, the webhook loop). */
export const redisUnavailable = counter<'where'>({ name: 'longshot_redis_unavailable_total', help: 'Operations that found Redis unreachable (HTTP answered 503 with Retry-After, SSE reader, reconciler, webhook delivery)', labelNames: ['where'], known: { where: ['http', 'sse', 'reconciler', 'webhooks'] } });

export const jobsReenqueued = counter({ name: 'longshot_jobs_reenqueued_total', help: 'Queued job records found without a queue entry and enqueued again by the reconciler' });

export const workersDeadlineFailures = counter({ name: 'longshot_jobs_workers_deadline_total', help: 'Jobs failed because they waited for free workers past LONGSHOT_WORKERS_DEADLINE_MS' });

export const resultsStoreFailures = counter<'code'>({ name: 'longshot_results_store_failures_total', help: 'Results-store writes that failed, by error code (ENOSPC: out of space)', labelNames: ['code'], known: { code: ['ENOSPC'] } });

export const stitchedBlocks = counter({ name: 'longshot_stitched_blocks_total', help: 'Blocks decoded and encoded into segments by this replica' });

/**
 * Requests refused with a 4xx, by the `error` code of the response (invalid_request,
 * payload_too_large, range_not_satisfiable, not_found, conflict, ...): a fixed, small set.
 */
export const rejectedRequests = counter<'reason'>({ name: 'longshot_http_rejected_total', help: 'Requests refused with a 4xx, by error code', labelNames: ['reason'] });

/** How a webhook delivery attempt ended (exhausted: it failed or was refused, and it was the event's last). */
export const WEBHOOK_OUTCOMES = ['delivered', 'failed', 'refused', 'exhausted'] as const;

export const webhookDeliveries = counter<'outcome'>({
  name: 'longshot_webhook_deliveries_total',
  help: 'Webhook delivery attempts by outcome: delivered (2xx), failed (retried), refused (destination not allowed at delivery; retried), exhausted (the last attempt failed: the event was given up)',
  labelNames: ['outcome'],
  known: { outcome: WEBHOOK_OUTCOMES },
});

export const webhookAttemptDuration = histogram({
  name: 'longshot_webhook_attempt_duration_seconds',
  help: 'Duration of one webhook delivery attempt (resolve, connect, send, answer)',
  buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
});

export const webhookSecretRotations = counter({ name: 'longshot_webhook_secret_rotations_total', help: "Tenants' webhook signing secrets rotated (POST /v1/webhooks/secret/rotate)" });

/** What the scrape-time gauges read. */
export interface ClusterState {
  queueCounts(): Promise<Record<string, number>>;
  workers(): Promise<{ registered: number; leased: number }>;
  /** Jobs whose webhook still has (or may get) events to deliver. */
  webhookJobs(): Promise<number>;
  /** API keys by role, active and revoked. */
  apiKeys(): Promise<readonly { role: string; revoked: boolean }[]>;
}

/** Registers the gauges that mirror cluster state; their collect() runs on every scrape. */
export function registerClusterGauges(state: ClusterState): void {
  gauge<'state'>({
    name: 'longshot_queue_jobs',
    help: 'Jobs in the render queue by state',
    labelNames: ['state'],
    async collect() {
      for (const [k, v] of Object.entries(await state.queueCounts())) this.set({ state: k }, v);
    },
  });
  let workers: Promise<{ registered: number; leased: number }> | null = null;
  // Both worker gauges come from one registry read per scrape.
  const read = () => (workers ??= state.workers().finally(() => setTimeout(() => (workers = null), 100).unref()));
  gauge({
    name: 'longshot_workers_registered',
    help: 'Workers in the registry (heartbeating)',
    async collect() {
      this.set((await read()).registered);
    },
  });
  gauge({
    name: 'longshot_worker_leases_active',
    help: 'Workers leased to jobs now',
    async collect() {
      this.set((await read()).leased);
    },
  });
  gauge({
    name: 'longshot_webhook_jobs_pending',
    help: 'Jobs in the webhook outbox: events still owed to their receiver, or the job not finished yet',
    async collect() {
      this.set(await state.webhookJobs());
    },
  });
  gauge<'role' | 'state'>({
    name: 'longshot_api_keys',
    help: 'API keys by role and state (active | revoked): every `longshot keys create` adds one, every revoke moves one to revoked',
    labelNames: ['role', 'state'],
    async collect() {
      this.reset();
      for (const role of ['tenant', 'operator']) for (const state of ['active', 'revoked']) this.set({ role, state }, 0);
      for (const k of await state.apiKeys()) this.inc({ role: k.role, state: k.revoked ? 'revoked' : 'active' });
    },
  });
  let last = { at: Date.now(), total: 0 };
  gauge({
    name: 'longshot_block_steps_per_second',
    help: 'Block-steps per second this replica drove since the previous scrape',
    async collect() {
      const total = (await blockSteps.get()).values[0]?.value ?? 0;
      const now = Date.now();
      this.set(now > last.at ? ((total - last.total) * 1000) / (now - last.at) : 0);
      last = { at: now, total };
    },
  });
}

export const httpDuration = histogram<'method' | 'route' | 'status'>({
  name: 'longshot_http_request_duration_seconds',
  help: 'HTTP request duration by route and status',
  labelNames: ['method', 'route', 'status'],
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
});

/** Requests refused by authentication or authorization (401, 403, 429), by why. */
export const authRefusals = counter<'reason'>({
  name: 'longshot_auth_refused_total',
  help: 'Requests refused for their identity: no or bad credentials (401), not an operator (403), over the rate limit (429)',
  labelNames: ['reason'],
  known: { reason: ['unauthenticated', 'forbidden', 'rate_limited'] },
});
