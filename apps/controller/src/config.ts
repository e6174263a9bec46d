import { hkdfSync } from 'node:crypto';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { keySchemaOf, type KeySchema } from '@longshot/cache';
import { modelsDirFlag } from '@longshot/model';
import { DEFAULT_PLANNER_PROFILE, getProfile } from '@longshot/planner';
import { parseLogLevel, type LogLevel } from '@longshot/telemetry';
import { parseCidr } from './webhooks/addresses';
import { loadTlsFiles, parseGrantKeys, type GrantKey, type TlsFiles } from '@longshot/transport';

/** Everything the controller reads from its flags and environment, checked once at start-up. */
export interface ControllerConfig {
  readonly id: string;
  readonly host: string;
  readonly port: number;
  readonly redisUrl: string;
  /** Every Redis key the controller writes is under this schema's root (LONGSHOT_KEY_ROOT, default `longshot`). */
  readonly keys: KeySchema;
  /** LONGSHOT_LOG_LEVEL (debug|info|warn|error; a typo falls back to info with a warning). */
  readonly logLevel: LogLevel;
  readonly resultsDir: string;
  readonly maxFrames: number;
  /** Jobs one replica runs at once (each holds its own leased workers). */
  readonly concurrency: number;
  /** BullMQ lock: a replica that stops renewing it for this long loses the job to another. */
  readonly lockMs: number;
  readonly stalledIntervalMs: number;
  readonly maxStalledCount: number;
  readonly attempts: number;
  readonly backoffMs: number;
  /** Worker lease lifetime; renewed every third of it while a job runs. */
  readonly leaseMs: number;
  /** How long a job that found too few free workers waits in the queue before it looks again. */
  readonly waitForWorkersMs: number;
  /** How long a failover waits for a replacement worker before the attempt fails. */
  readonly replacementWaitMs: number;
  /** Retention of finished jobs: records, events, Redis keys, and BullMQ's own entries. */
  readonly retentionSeconds: number;
  readonly keepCompletedJobs: number;
  /** Hardware profile the planner's cost model uses to choose K. */
  readonly plannerProfile: string;
  readonly livenessIntervalMs: number;
  /** How often the reconciler looks for `queued` records without a queue entry. */
  readonly reconcileIntervalMs: number;
  /** A record younger than this is left to the submit that is writing it. */
  readonly reconcileGraceMs: number;
  /** A job waiting for free workers longer than this fails with a clear error. */
  readonly workersDeadlineMs: number;
  /** /readyz is 503 and a job about to write fails early when the results store has less free. */
  readonly resultsMinFreeBytes: number;
  /** A quota on the results store (0: none): writes beyond it fail with ENOSPC. */
  readonly resultsMaxBytes: number;
  /** Where the models clients may name live (entries by name); null: only the built-in names. */
  readonly modelsDir: string | null;
  /** Largest accepted upload (POST /v1/embeddings) in bytes. */
  readonly maxUploadBytes: number;
  /** Signs workers' session grants: the first of LONGSHOT_GRANT_KEYS (workers also accept the second during a rotation). */
  readonly grantKey: GrantKey;
  /** mTLS client certificate for the links to workers (LONGSHOT_TLS_CERT/KEY/CA); null = plaintext. */
  readonly tls: TlsFiles | null;
  /** API keys required (the default); false only with --no-auth on a loopback bind. */
  readonly auth: boolean;
  /** Signs session cookies and signed URLs (LONGSHOT_SESSION_SECRET, else derived from the grant key). */
  readonly sessionSecret: Buffer;
  readonly sessionSeconds: number;
  /** Lifetime of the signed URLs a job resource carries. */
  readonly signedUrlSeconds: number;
  /** Every tenant's limits unless LONGSHOT_TENANT_LIMITS names it. */
  readonly limits: TenantLimits;
  readonly tenantLimits: ReadonlyMap<string, TenantLimits>;
  readonly webhooks: WebhookConfig;
}

/** What one tenant may use (operators are not limited). 0: no limit. */
export interface TenantLimits {
  /** Requests a minute (a token bucket in Redis, shared by every replica). */
  readonly requestsPerMinute: number;
  /** Admission cost cap: block-steps x model parameters of one job. */
  readonly maxJobCost: number;
}

/** Hosts that only this machine can reach: --no-auth is refused on any other bind. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** LONGSHOT_TENANT_LIMITS: {"tenant": {"requestsPerMinute": N, "maxJobCost": N}, ...}; a missing field keeps the default. */
export function parseTenantLimits(raw: string, defaults: TenantLimits): Map<string, TenantLimits> {
  const out = new Map<string, TenantLimits>();
  if (raw.trim() === '') return out;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new Error('LONGSHOT_TENANT_LIMITS must be a JSON object {"tenant": {"requestsPerMinute": N, "maxJobCost": N}}');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('LONGSHOT_TENANT_LIMITS must be a JSON object keyed by tenant');
  for (const [tenant, v] of Object.entries(parsed as Record<string, unknown>)) {
    const o = (v ?? {}) as Record<string, unknown>;
    const field = (name: keyof TenantLimits): number => {
      const x = o[name] ?? defaults[name];
      if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) throw new Error(`LONGSHOT_TENANT_LIMITS: ${tenant}.${name} must be an integer >= 0`);
      return x;
    };
    for (const k of Object.keys(o)) if (k !== 'requestsPerMinute' && k !== 'maxJobCost') throw new Error(`LONGSHOT_TENANT_LIMITS: ${tenant}.${k} is not a limit (requestsPerMinute, maxJobCost)`);
    out.set(tenant, { requestsPerMinute: field('requestsPerMinute'), maxJobCost: field('maxJobCost') });
  }
  return out;
}

/** Job webhooks (docs/api.md, Webhooks). */
export interface WebhookConfig {
  /**
   * The master key every tenant's signing secret is derived from (LONGSHOT_WEBHOOK_SECRET, at least
   * 16 characters; webhooks/tenant-secrets.ts); null: webhooks are off and jobs with one are refused.
   */
  readonly masterSecret: string | null;
  /** After a tenant rotates its secret, payloads carry the old one's signature too for this long (LONGSHOT_WEBHOOK_ROTATION_GRACE_S). */
  readonly rotationGraceSeconds: number;
  /** Ranges webhooks may reach although loopback, private, link-local... (LONGSHOT_WEBHOOK_ALLOW_CIDRS); checked CIDRs. */
  readonly allowCidrs: readonly string[];
  /** Attempts per event before it is given up. */
  readonly maxAttempts: number;
  /** Delay before the second attempt; doubled each time up to maxBackoffMs (with +-20% jitter). */
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
  /** Deadline of one attempt (connect, send, answer). */
  readonly timeoutMs: number;
  /** How often a job with nothing to deliver is looked at again. */
  readonly pollMs: number;
  /** Deliveries one replica runs at once (each to a different job). */
  readonly concurrency: number;
}

export function loadConfig(argv: string[], env: NodeJS.ProcessEnv): ControllerConfig {
  const { values: f } = parseArgs({
    args: argv,
    options: { 'no-auth': { type: 'boolean' }, host: { type: 'string' }, port: { type: 'string' }, redis: { type: 'string' }, id: { type: 'string' }, 'results-dir': { type: 'string' }, 'models-dir': { type: 'string' } },
    strict: true,
  });
  const int = (name: string, raw: string | undefined, fallback: number, min = 1): number => {
    if (raw === undefined || raw === '') return fallback;
    const v = Number(raw);
    if (!Number.isSafeInteger(v) || v < min) throw new Error(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
    return v;
  };
  const lockMs = int('LONGSHOT_JOB_LOCK_MS', env.LONGSHOT_JOB_LOCK_MS, 30_000);
  const host = f.host ?? env.HOST ?? '0.0.0.0';
  const auth = f['no-auth'] !== true;
  if (!auth && !isLoopback(host)) throw new Error(`--no-auth is only allowed on a loopback bind (127.0.0.1, ::1, localhost), not on ${host}: anyone who can reach it would act as an operator`);
  const grantKey = parseGrantKeys(env.LONGSHOT_GRANT_KEYS ?? '', 'LONGSHOT_GRANT_KEYS')[0];
  const sessionSecret = env.LONGSHOT_SESSION_SECRET ?? '';
  if (sessionSecret !== '' && sessionSecret.length < 32) throw new Error('LONGSHOT_SESSION_SECRET must be at least 32 characters');
  const limits: TenantLimits = {
    requestsPerMinute: int('LONGSHOT_RATE_LIMIT_PER_MINUTE', env.LONGSHOT_RATE_LIMIT_PER_MINUTE, 600, 0),
    maxJobCost: int('LONGSHOT_MAX_JOB_COST', env.LONGSHOT_MAX_JOB_COST, 0, 0),
  };
  return {
    id: f.id ?? env.LONGSHOT_CONTROLLER_ID ?? `controller-${process.pid}`,
    host,
    port: int('--port', f.port ?? env.PORT, 8080, 0),
    redisUrl: f.redis ?? env.REDIS_URL ?? 'redis://127.0.0.1:6379',
    keys: keySchemaOf(env.LONGSHOT_KEY_ROOT, 'LONGSHOT_KEY_ROOT'),
    logLevel: parseLogLevel(env.LONGSHOT_LOG_LEVEL),
    resultsDir: path.resolve(f['results-dir'] ?? env.LONGSHOT_RESULTS_DIR ?? './out/results'),
    maxFrames: int('LONGSHOT_MAX_FRAMES', env.LONGSHOT_MAX_FRAMES, 4097),
    concurrency: int('LONGSHOT_RUNNER_CONCURRENCY', env.LONGSHOT_RUNNER_CONCURRENCY, 4),
    lockMs,
    stalledIntervalMs: int('LONGSHOT_JOB_STALLED_MS', env.LONGSHOT_JOB_STALLED_MS, lockMs),
    maxStalledCount: int('LONGSHOT_JOB_MAX_STALLED', env.LONGSHOT_JOB_MAX_STALLED, 3, 0),
    attempts: int('LONGSHOT_JOB_ATTEMPTS', env.LONGSHOT_JOB_ATTEMPTS, 3),
    backoffMs: int('LONGSHOT_JOB_BACKOFF_MS', env.LONGSHOT_JOB_BACKOFF_MS, 2000),
    leaseMs: int('LONGSHOT_LEASE_MS', env.LONGSHOT_LEASE_MS, 15_000, 300),
    waitForWorkersMs: int('LONGSHOT_WAIT_FOR_WORKERS_MS', env.LONGSHOT_WAIT_FOR_WORKERS_MS, 1000),
    replacementWaitMs: int('LONGSHOT_REPLACEMENT_WAIT_MS', env.LONGSHOT_REPLACEMENT_WAIT_MS, 30_000),
    retentionSeconds: int('LONGSHOT_RETENTION_SECONDS', env.LONGSHOT_RETENTION_SECONDS, 7 * 24 * 3600),
    keepCompletedJobs: int('LONGSHOT_KEEP_JOBS', env.LONGSHOT_KEEP_JOBS, 1000),
    plannerProfile: plannerProfile(env.LONGSHOT_PLANNER_PROFILE),
    livenessIntervalMs: int('LONGSHOT_LIVENESS_MS', env.LONGSHOT_LIVENESS_MS, 500),
    reconcileIntervalMs: int('LONGSHOT_RECONCILE_MS', env.LONGSHOT_RECONCILE_MS, 10_000, 100),
    reconcileGraceMs: int('LONGSHOT_RECONCILE_GRACE_MS', env.LONGSHOT_RECONCILE_GRACE_MS, 5_000, 0),
    workersDeadlineMs: int('LONGSHOT_WORKERS_DEADLINE_MS', env.LONGSHOT_WORKERS_DEADLINE_MS, 600_000),
    resultsMinFreeBytes: int('LONGSHOT_RESULTS_MIN_FREE_BYTES', env.LONGSHOT_RESULTS_MIN_FREE_BYTES, 16 * 1024 * 1024, 0),
    resultsMaxBytes: int('LONGSHOT_RESULTS_MAX_BYTES', env.LONGSHOT_RESULTS_MAX_BYTES, 0, 0),
    modelsDir: modelsDirFlag(f['models-dir'] ?? env.LONGSHOT_MODELS_DIR),
    // Wan2.1's cond + uncond as float32 safetensors is 16 MiB.
    maxUploadBytes: int('LONGSHOT_MAX_UPLOAD_BYTES', env.LONGSHOT_MAX_UPLOAD_BYTES, 64 * 1024 * 1024),
    grantKey,
    webhooks: {
      masterSecret: webhookSecret(env.LONGSHOT_WEBHOOK_SECRET),
      rotationGraceSeconds: int('LONGSHOT_WEBHOOK_ROTATION_GRACE_S', env.LONGSHOT_WEBHOOK_ROTATION_GRACE_S, 86_400, 0),
      allowCidrs: cidrList('LONGSHOT_WEBHOOK_ALLOW_CIDRS', env.LONGSHOT_WEBHOOK_ALLOW_CIDRS),
      maxAttempts: int('LONGSHOT_WEBHOOK_MAX_ATTEMPTS', env.LONGSHOT_WEBHOOK_MAX_ATTEMPTS, 10),
      backoffMs: int('LONGSHOT_WEBHOOK_BACKOFF_MS', env.LONGSHOT_WEBHOOK_BACKOFF_MS, 1000),
      maxBackoffMs: int('LONGSHOT_WEBHOOK_MAX_BACKOFF_MS', env.LONGSHOT_WEBHOOK_MAX_BACKOFF_MS, 300_000),
      timeoutMs: int('LONGSHOT_WEBHOOK_TIMEOUT_MS', env.LONGSHOT_WEBHOOK_TIMEOUT_MS, 10_000, 100),
      pollMs: int('LONGSHOT_WEBHOOK_POLL_MS', env.LONGSHOT_WEBHOOK_POLL_MS, 1000, 10),
      concurrency: int('LONGSHOT_WEBHOOK_CONCURRENCY', env.LONGSHOT_WEBHOOK_CONCURRENCY, 16),
    },
    tls: loadTlsFiles({ cert: env.LONGSHOT_TLS_CERT, key: env.LONGSHOT_TLS_KEY, ca: env.LONGSHOT_TLS_CA }, { cert: 'LONGSHOT_TLS_CERT', key: 'LONGSHOT_TLS_KEY', ca: 'LONGSHOT_TLS_CA' }),
    auth,
    // Every replica shares the grant key, so a secret derived from it (a distinct HKDF label:
    // never the grant key itself) lets any replica check a session another one issued.
    sessionSecret: sessionSecret !== '' ? Buffer.from(sessionSecret, 'utf8') : Buffer.from(hkdfSync('sha256', grantKey.secret, Buffer.alloc(0), 'longshot-session-v1', 32)),
    sessionSeconds: int('LONGSHOT_SESSION_SECONDS', env.LONGSHOT_SESSION_SECONDS, 12 * 3600, 60),
    signedUrlSeconds: int('LONGSHOT_SIGNED_URL_SECONDS', env.LONGSHOT_SIGNED_URL_SECONDS, 900, 10),
    limits,
    tenantLimits: parseTenantLimits(env.LONGSHOT_TENANT_LIMITS ?? '', limits),
  };
}


function webhookSecret(raw: string | undefined): string | null {
  if (raw === undefined || raw === '') return null;
  if (raw.length < 16) throw new Error(`LONGSHOT_WEBHOOK_SECRET must be at least 16 characters (got ${raw.length})`);
  return raw;
}

/** A known hardware profile (every job's modelled hop links use it, not only the planner's K). */
function plannerProfile(raw: string | undefined): string {
  const name = raw || DEFAULT_PLANNER_PROFILE;
  try {
    return getProfile(name).name;
  } catch (e) {
    throw new Error(`LONGSHOT_PLANNER_PROFILE: ${(e as Error).message}`);
  }
}

/** A comma-separated list of CIDR ranges, each checked (the error names the variable and the entry). */
function cidrList(name: string, raw: string | undefined): string[] {
  const list = (raw ?? '').split(',').map((s) => s.trim()).filter((s) => s !== '');
  for (const c of list) {
    try {
      parseCidr(c);
    } catch (e) {
      throw new Error(`${name}: ${(e as Error).message}`);
    }
  }
  return list;
}
