import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { modelsDirFlag } from '@longshot/model';
import { loadTlsFiles, parseGrantKeys, type GrantKey, type TlsFiles } from '@longshot/transport';

/** Everything the controller reads from its flags and environment, checked once at start-up. */
export interface ControllerConfig {
  readonly id: string;
  readonly host: string;
  readonly port: number;
  readonly redisUrl: string;
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
}

export function loadConfig(argv: string[], env: NodeJS.ProcessEnv): ControllerConfig {
  const { values: f } = parseArgs({
    args: argv,
    options: { host: { type: 'string' }, port: { type: 'string' }, redis: { type: 'string' }, id: { type: 'string' }, 'results-dir': { type: 'string' }, 'models-dir': { type: 'string' } },
    strict: true,
  });
  const int = (name: string, raw: string | undefined, fallback: number, min = 1): number => {
    if (raw === undefined || raw === '') return fallback;
    const v = Number(raw);
    if (!Number.isSafeInteger(v) || v < min) throw new Error(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
    return v;
  };
  const lockMs = int('LONGSHOT_JOB_LOCK_MS', env.LONGSHOT_JOB_LOCK_MS, 30_000);
  return {
    id: f.id ?? env.LONGSHOT_CONTROLLER_ID ?? `controller-${process.pid}`,
    host: f.host ?? env.HOST ?? '0.0.0.0',
    port: int('--port', f.port ?? env.PORT, 8080, 0),
    redisUrl: f.redis ?? env.REDIS_URL ?? 'redis://127.0.0.1:6379',
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
    plannerProfile: env.LONGSHOT_PLANNER_PROFILE ?? 'h100-100gbe',
    livenessIntervalMs: int('LONGSHOT_LIVENESS_MS', env.LONGSHOT_LIVENESS_MS, 500),
    reconcileIntervalMs: int('LONGSHOT_RECONCILE_MS', env.LONGSHOT_RECONCILE_MS, 10_000, 100),
    reconcileGraceMs: int('LONGSHOT_RECONCILE_GRACE_MS', env.LONGSHOT_RECONCILE_GRACE_MS, 5_000, 0),
    workersDeadlineMs: int('LONGSHOT_WORKERS_DEADLINE_MS', env.LONGSHOT_WORKERS_DEADLINE_MS, 600_000),
    resultsMinFreeBytes: int('LONGSHOT_RESULTS_MIN_FREE_BYTES', env.LONGSHOT_RESULTS_MIN_FREE_BYTES, 16 * 1024 * 1024, 0),
    resultsMaxBytes: int('LONGSHOT_RESULTS_MAX_BYTES', env.LONGSHOT_RESULTS_MAX_BYTES, 0, 0),
    modelsDir: modelsDirFlag(f['models-dir'] ?? env.LONGSHOT_MODELS_DIR),
    // Wan2.1's cond + uncond as float32 safetensors is 16 MiB.
    maxUploadBytes: int('LONGSHOT_MAX_UPLOAD_BYTES', env.LONGSHOT_MAX_UPLOAD_BYTES, 64 * 1024 * 1024),
    grantKey: parseGrantKeys(env.LONGSHOT_GRANT_KEYS ?? '', 'LONGSHOT_GRANT_KEYS')[0],
    tls: loadTlsFiles({ cert: env.LONGSHOT_TLS_CERT, key: env.LONGSHOT_TLS_KEY, ca: env.LONGSHOT_TLS_CA }, { cert: 'LONGSHOT_TLS_CERT', key: 'LONGSHOT_TLS_KEY', ca: 'LONGSHOT_TLS_CA' }),
  };
}

