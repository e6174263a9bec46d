import * as fs from 'node:fs';
import * as os from 'node:os';
import { parseArgs } from 'node:util';
import { keySchemaOf } from '@longshot/cache';
import { engineSettingsFromEnv, type EngineSettings } from '@longshot/engine';
import { modelsDirFlag } from '@longshot/model';
import { parseCommitCadence } from '@longshot/pipeline';
import { getProfile } from '@longshot/planner';
import { parseLogLevel, type LogLevel } from '@longshot/telemetry';
import { DATA_PLANE_MODES, loadTlsFiles, parseGrantKeys, type DataPlaneMode } from '@longshot/transport';
import type { WorkerConfig } from './worker';

export const WORKER_HELP = `longshot-worker: serves stage sessions over gRPC

  --host ADDR          bind address (LONGSHOT_WORKER_HOST, 0.0.0.0)
  --advertise ADDR     address other stages reach this worker at (LONGSHOT_WORKER_ADVERTISE, POD_IP, or --host)
  --port N             gRPC port, 0 = any free port (LONGSHOT_WORKER_PORT, 50051)
  --metrics-port N     Prometheus /metrics port, 0 = any free port (LONGSHOT_METRICS_PORT, 9464)
  --redis URL          Redis (REDIS_URL)
  --id ID              worker id (LONGSHOT_WORKER_ID, worker-HOSTNAME-PID)
  --capacity N         most stage sessions at once (LONGSHOT_WORKER_CAPACITY, 4)
  --models LIST        comma-separated model names served, * = any (LONGSHOT_WORKER_MODELS, *)
  --models-dir DIR     the models served by name besides the built-ins: pipeline directories and
                       .safetensors files in DIR; a job names a model, never a path (LONGSHOT_MODELS_DIR)
  --backend KIND       cpu | cuda | auto (LONGSHOT_BACKEND, auto)
  --emulate PROFILE    emulated compute: sleep for a hardware profile's modelled time instead of computing
  --time-scale X       emulated seconds are multiplied by X (1)
  --key-ttl SECONDS    lifetime of a job's Redis keys after each write (86400)
  --drain SECONDS      on SIGTERM, how long open sessions may finish (30)
  --checkpoint-every N|Ts  head checkpoints every N iterations, or every T seconds of work (e.g. 30s: the
                       count of iterations follows the measured pace), storing only what a commit names:
                       fewer writes, more work redone after a failure (LONGSHOT_CHECKPOINT_EVERY, 1)
  --grant-keys KEYS    id:secret[,id:secret] keys whose session grants are accepted: the driver's
                       current key, and during a rotation the previous one (LONGSHOT_GRANT_KEYS; required)
  --tls-cert FILE      mTLS: this worker's certificate (PEM); with --tls-key and --tls-ca (LONGSHOT_TLS_CERT)
  --tls-key FILE       mTLS: its private key (LONGSHOT_TLS_KEY)
  --tls-ca FILE        mTLS: CA that signs every worker's and driver's certificate (LONGSHOT_TLS_CA)
  --data-plane MODE    how tensor bytes travel between stages: grpc | tcp | shm | auto (LONGSHOT_DATA_PLANE, auto);
                       gRPC always carries headers, acks and errors; auto: shared memory to a worker of the
                       same host, native TCP otherwise (docs/dataplane.md)
  --data-plane-port N  port of the native TCP data-plane listener, 0 = any free port (LONGSHOT_DATA_PLANE_PORT, 0)
  --host-id ID         identity of this host for the data plane: workers with equal ones share memory
                       (default: the kernel boot id and the hostname)
  --nvlink-domain ID   NVLink domain of this worker's GPU: workers with equal ones reach each other over
                       NVLink, and leasing keeps a job's consecutive stages in one (LONGSHOT_NVLINK_DOMAIN;
                       default none; on Kubernetes the node name, k8s/overlays/prod)
  --link-gbps N        bandwidth of this worker's network link in Gb/s, for the planner's per-hop links
                       between hosts (LONGSHOT_LINK_GBPS; default: the planner profile's network link)
  --memory-probe       sample retained memory (after a forced GC) at every finished block; needs node --expose-gc (leak tests)

  Environment only (docs/configuration.md): LONGSHOT_KEY_ROOT, LONGSHOT_LOG_LEVEL, LONGSHOT_THREADS,
  LONGSHOT_SIMD, LONGSHOT_CUDA_DEVICE, LONGSHOT_CUDA_CACHE_MB
`;

export type BackendKind = 'cpu' | 'cuda' | 'auto';

/**
 * Flags win over environment variables, which win over defaults; every value is checked here.
 * `engine` and `logLevel` are applied by main before anything runs (the libraries read no environment).
 */
export function workerConfig(argv: string[], env: NodeJS.ProcessEnv): { config: WorkerConfig; backend: BackendKind; engine: EngineSettings; logLevel: LogLevel; help: boolean } {
  const { values: f } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      host: { type: 'string' },
      advertise: { type: 'string' },
      port: { type: 'string' },
      'metrics-port': { type: 'string' },
      redis: { type: 'string' },
      id: { type: 'string' },
      capacity: { type: 'string' },
      models: { type: 'string' },
      'models-dir': { type: 'string' },
      backend: { type: 'string' },
      emulate: { type: 'string' },
      'time-scale': { type: 'string' },
      'key-ttl': { type: 'string' },
      drain: { type: 'string' },
      'checkpoint-every': { type: 'string' },
      'memory-probe': { type: 'boolean', default: false },
      'data-plane': { type: 'string' },
      'data-plane-port': { type: 'string' },
      'host-id': { type: 'string' },
      'nvlink-domain': { type: 'string' },
      'link-gbps': { type: 'string' },
      'grant-keys': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-ca': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  const int = (name: string, v: string | undefined, dflt: number, min: number, max: number): number => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < min || n > max) throw new Error(`--${name}: expected an integer in ${min}..${max}, got '${v}'`);
    return n;
  };
  const host = f.host ?? env.LONGSHOT_WORKER_HOST ?? '0.0.0.0';
  const redisUrl = f.redis ?? env.REDIS_URL;
  if (!redisUrl && !f.help) throw new Error('--redis: required (or set REDIS_URL)');
  const backend = (f.backend ?? env.LONGSHOT_BACKEND ?? 'auto') as BackendKind;
  if (!['cpu', 'cuda', 'auto'].includes(backend)) throw new Error(`--backend: expected cpu, cuda or auto, got '${backend}'`);
  const timeScale = Number(f['time-scale'] ?? '1');
  if (!(timeScale > 0) || !Number.isFinite(timeScale)) throw new Error(`--time-scale: expected a positive number, got '${f['time-scale']}'`);
  let emulation: WorkerConfig['emulation'] = null;
  if (f.emulate) {
    try {
      emulation = { profile: getProfile(f.emulate), timeScale };
    } catch (e) {
      throw new Error(`--emulate: ${(e as Error).message}`);
    }
  }
  const models = (f.models ?? env.LONGSHOT_WORKER_MODELS ?? '*').split(',').map((m) => m.trim()).filter(Boolean);
  if (models.length === 0) throw new Error('--models: give at least one model id or *');
  const grantSpec = f['grant-keys'] ?? env.LONGSHOT_GRANT_KEYS;
  if (!grantSpec && !f.help) throw new Error('--grant-keys: required (or set LONGSHOT_GRANT_KEYS): workers open sessions only for drivers holding a grant signed with one of these keys');
  const grantKeys = grantSpec ? parseGrantKeys(grantSpec, '--grant-keys') : [];
  const tls = loadTlsFiles({ cert: f['tls-cert'] ?? env.LONGSHOT_TLS_CERT, key: f['tls-key'] ?? env.LONGSHOT_TLS_KEY, ca: f['tls-ca'] ?? env.LONGSHOT_TLS_CA });
  const dataPlaneMode = (f['data-plane'] ?? env.LONGSHOT_DATA_PLANE ?? 'auto') as DataPlaneMode;
  if (!DATA_PLANE_MODES.includes(dataPlaneMode)) throw new Error(`--data-plane: expected ${DATA_PLANE_MODES.join(', ')}, got '${dataPlaneMode}'`);
  const hostId = f['host-id'] ?? hostIdentity();
  if (hostId.length === 0 || hostId.length > 256) throw new Error(`--host-id: expected 1 to 256 characters, got ${hostId.length}`);
  const topology = topologyFlags(f['nvlink-domain'] ?? env.LONGSHOT_NVLINK_DOMAIN, f['link-gbps'] ?? env.LONGSHOT_LINK_GBPS);
  const config: WorkerConfig = {
    id: f.id ?? env.LONGSHOT_WORKER_ID ?? `worker-${os.hostname()}-${process.pid}`,
    host,
    advertiseHost: f.advertise ?? env.LONGSHOT_WORKER_ADVERTISE ?? env.POD_IP ?? (host === '0.0.0.0' ? os.hostname() : host),
    port: int('port', f.port ?? env.LONGSHOT_WORKER_PORT, 50051, 0, 65535),
    metricsPort: int('metrics-port', f['metrics-port'] ?? env.LONGSHOT_METRICS_PORT, 9464, 0, 65535),
    redisUrl: redisUrl ?? '',
    keys: keySchemaOf(env.LONGSHOT_KEY_ROOT, 'LONGSHOT_KEY_ROOT'),
    capacity: int('capacity', f.capacity ?? env.LONGSHOT_WORKER_CAPACITY, 4, 1, 1024),
    models,
    modelsDir: modelsDirFlag(f['models-dir'] ?? env.LONGSHOT_MODELS_DIR),
    emulation,
    keyTtlSeconds: int('key-ttl', f['key-ttl'], 86400, 1, 365 * 86400),
    drainSeconds: int('drain', f.drain, 30, 0, 3600),
    checkpointEvery: parseCommitCadence(f['checkpoint-every'] ?? env.LONGSHOT_CHECKPOINT_EVERY ?? '1', '--checkpoint-every'),
    memoryProbe: f['memory-probe'] ?? false,
    dataPlane: { mode: dataPlaneMode, port: int('data-plane-port', f['data-plane-port'] ?? env.LONGSHOT_DATA_PLANE_PORT, 0, 0, 65535), hostId },
    topology,
    grantKeys,
    tls,
  };
  return { config, backend, engine: engineSettingsFromEnv(env), logLevel: parseLogLevel(env.LONGSHOT_LOG_LEVEL), help: f.help ?? false };
}

/** Most Gb/s a link may claim (a 3.2 Tb/s multi-rail node is well inside). */
const MAX_LINK_GBPS = 100_000;

/** --nvlink-domain and --link-gbps, checked; empty values mean none (an unset variable in a manifest). */
function topologyFlags(domain: string | undefined, gbps: string | undefined): WorkerConfig['topology'] {
  const nvlinkDomain = (domain ?? '').trim();
  if (nvlinkDomain.length > 256 || /\s|[\x00-\x1f]/.test(nvlinkDomain)) throw new Error(`--nvlink-domain: expected at most 256 characters without whitespace, got ${JSON.stringify(domain)}`);
  let linkGbps = 0;
  if (gbps !== undefined && gbps.trim() !== '') {
    linkGbps = Number(gbps);
    if (!/^\d+(\.\d+)?$/.test(gbps.trim()) || !(linkGbps > 0) || linkGbps > MAX_LINK_GBPS) throw new Error(`--link-gbps: expected a positive number of Gb/s up to ${MAX_LINK_GBPS}, got '${gbps}'`);
  }
  return { nvlinkDomain, linkGbps };
}

/**
 * This host as the data plane tells hosts apart: the kernel's boot id (new at every boot, shared
 * by every container of the node) and the hostname. Without /proc (not Linux) the hostname only.
 */
export function hostIdentity(): string {
  let boot = '';
  try {
    boot = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    boot = '';
  }
  return boot ? `${boot}/${os.hostname()}` : os.hostname();
}
