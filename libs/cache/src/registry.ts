import type { Redis } from 'ioredis';
import { counter, logger, type Logger } from '@longshot/telemetry';
import { DEFAULT_KEYS as defaultKeys, type KeySchema } from './keys';

export interface WorkerInfo {
  readonly id: string;
  /** host:port of the worker's gRPC server. */
  readonly address: string;
  /** host:port of the worker's /metrics endpoint. */
  readonly metricsAddress: string;
  /** Most stage sessions the worker runs at once. */
  readonly capacity: number;
  /** Sessions open now (refreshed with every heartbeat). */
  readonly sessions: number;
  /** Model ids the worker serves; '*' means any. */
  readonly models: readonly string[];
  /** Compute backend, e.g. 'cpu' or 'cuda'. */
  readonly backend: string;
  /**
   * Numerics fingerprint: backend, storage dtype, SIMD level or device, engine build. Workers
   * with equal fingerprints compute bit-identical results; a job never mixes two.
   */
  readonly numerics: string;
  readonly pid: number;
  /** Epoch milliseconds. */
  readonly startedAt: number;
  /**
   * What its data plane accepts (docs/dataplane.md): its native listener's host:port ('' for
   * none), payloads over TCP, shared memory, and its host's identity. Absent: tensor bytes
   * reach it over gRPC only.
   */
  readonly dataPlane?: WorkerDataPlane;
  /**
   * Where it computes (docs/dataplane.md "Placement"): its GPU, NVLink domain and network link.
   * Absent in records of workers older than this field.
   */
  readonly topology?: WorkerTopology;
}

export interface WorkerTopology {
  /** The CUDA device it computes on; null on the CPU. */
  readonly gpu: WorkerGpu | null;
  /** Workers with equal non-empty domains reach each other over NVLink; '' for none. */
  readonly nvlinkDomain: string;
  /** Bandwidth of its network link in Gb/s; 0 when not given. */
  readonly linkGbps: number;
}

export interface WorkerGpu {
  /** CUDA device index on its host. */
  readonly index: number;
  /** The device's UUID ("GPU-..."), unique across hosts; '' when the driver did not report one. */
  readonly uuid: string;
  /** Its model, e.g. "NVIDIA H100 80GB HBM3". */
  readonly name: string;
}

export interface WorkerDataPlane {
  readonly tcpAddress: string;
  readonly tcp: boolean;
  readonly hostId: string;
  readonly shm: boolean;
  /** Takes tensors by NCCL (a CUDA worker that loaded it); absent in records of older workers. */
  readonly nccl?: boolean;
}

export interface RegisterOptions {
  /** Lifetime of the registration without heartbeats: a dead worker disappears within this. */
  ttlMs?: number;
  heartbeatMs?: number;
  /** Current open sessions, read at each heartbeat. */
  sessions?: () => number;
  /**
   * How long the last registration outlives a worker that stops heartbeating without
   * deregistering (a crash, a kill, a lost node): `listWithLost()` lists it meanwhile, so its metrics
   * target stays discovered and scrapes of it fail (LongshotWorkerDown) instead of vanishing.
   */
  lostRetentionMs?: number;
}

/** Default of RegisterOptions.lostRetentionMs: longer than the worker-down alert's `for`. */
export const LOST_WORKER_RETENTION_MS = 15 * 60_000;

const heartbeatFailures = counter({
  name: 'longshot_registry_heartbeat_failures_total',
  help: 'Worker registry heartbeats that failed to reach Redis',
});

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isText = (v: unknown): v is string => typeof v === 'string' && v.length > 0;

/** Validates a worker record, whether a caller's or one read back from Redis; returns the problem or null. */
export function workerInfoProblem(v: unknown): string | null {
  const w = v as Partial<WorkerInfo> | null;
  if (typeof w !== 'object' || w === null) return 'not an object';
  if (!isText(w.id)) return 'id must be a non-empty string';
  if (!isText(w.address) || !/^.+:\d{1,5}$/.test(w.address)) return `address must be host:port, got ${JSON.stringify(w.address)}`;
  if (!isText(w.metricsAddress) || !/^.+:\d{1,5}$/.test(w.metricsAddress)) return `metricsAddress must be host:port, got ${JSON.stringify(w.metricsAddress)}`;
  if (!isCount(w.capacity) || w.capacity < 1) return `capacity must be a positive integer, got ${w.capacity}`;
  if (!isCount(w.sessions)) return `sessions must be a non-negative integer, got ${w.sessions}`;
  if (!Array.isArray(w.models) || w.models.length === 0 || !w.models.every(isText)) return 'models must be a non-empty array of model ids';
  if (!isText(w.backend)) return 'backend must be a non-empty string';
  if (!isText(w.numerics)) return 'numerics must be a non-empty string';
  if (!isCount(w.pid)) return `pid must be a non-negative integer, got ${w.pid}`;
  if (!isCount(w.startedAt)) return `startedAt must be epoch milliseconds, got ${w.startedAt}`;
  if (w.dataPlane !== undefined) {
    const d = w.dataPlane as Partial<WorkerDataPlane> | null;
    if (typeof d !== 'object' || d === null) return 'dataPlane must be an object';
    if (typeof d.tcpAddress !== 'string' || (d.tcpAddress !== '' && !/^.+:\d{1,5}$/.test(d.tcpAddress))) return `dataPlane.tcpAddress must be host:port or empty, got ${JSON.stringify(d.tcpAddress)}`;
    if (typeof d.hostId !== 'string') return 'dataPlane.hostId must be a string';
    if (typeof d.shm !== 'boolean' || typeof d.tcp !== 'boolean') return 'dataPlane.tcp and dataPlane.shm must be booleans';
    if (d.nccl !== undefined && typeof d.nccl !== 'boolean') return 'dataPlane.nccl must be a boolean';
  }
  if (w.topology !== undefined) return topologyProblem(w.topology);
  return null;
}

function topologyProblem(v: unknown): string | null {
  const t = v as Partial<WorkerTopology> | null;
  if (typeof t !== 'object' || t === null) return 'topology must be an object';
  if (typeof t.nvlinkDomain !== 'string' || t.nvlinkDomain.length > 256) return 'topology.nvlinkDomain must be a string of at most 256 characters';
  if (typeof t.linkGbps !== 'number' || !Number.isFinite(t.linkGbps) || t.linkGbps < 0) return `topology.linkGbps must be a non-negative number, got ${JSON.stringify(t.linkGbps)}`;
  if (t.gpu !== null) {
    const g = t.gpu as Partial<WorkerGpu> | undefined;
    if (typeof g !== 'object' || g === null) return 'topology.gpu must be an object or null';
    if (!isCount(g.index)) return `topology.gpu.index must be a non-negative integer, got ${JSON.stringify(g.index)}`;
    if (typeof g.uuid !== 'string' || typeof g.name !== 'string') return 'topology.gpu.uuid and topology.gpu.name must be strings';
  }
  return null;
}

function pick(w: WorkerInfo): WorkerInfo {
  // Only the schema's fields reach Redis, whatever else the caller's object carries.
  return {
    id: w.id,
    address: w.address,
    metricsAddress: w.metricsAddress,
    capacity: w.capacity,
    sessions: w.sessions,
    models: [...w.models],
    backend: w.backend,
    numerics: w.numerics,
    pid: w.pid,
    startedAt: w.startedAt,
    ...(w.dataPlane ? { dataPlane: { tcpAddress: w.dataPlane.tcpAddress, tcp: w.dataPlane.tcp, hostId: w.dataPlane.hostId, shm: w.dataPlane.shm, ...(w.dataPlane.nccl ? { nccl: true } : {}) } } : {}),
    ...(w.topology
      ? { topology: { gpu: w.topology.gpu ? { index: w.topology.gpu.index, uuid: w.topology.gpu.uuid, name: w.topology.gpu.name } : null, nvlinkDomain: w.topology.nvlinkDomain, linkGbps: w.topology.linkGbps } }
      : {}),
  };
}

/**
 * Removes index entries whose worker key and last-seen key have both expired (KEYS: the index,
 * then each id's two keys). A script, so an id re-added by a heartbeat between our read and the
 * removal is not lost. Registry keys share a hash slot (keys.ts).
 */
const PRUNE = `
local removed = 0
for i, id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[2 * i], KEYS[2 * i + 1]) == 0 then
    removed = removed + redis.call('SREM', KEYS[1], id)
  end
end
return removed
`;

interface Registration {
  info: WorkerInfo;
  ttlMs: number;
  heartbeatMs: number;
  lostRetentionMs: number;
  sessions: (() => number) | undefined;
  timer: NodeJS.Timeout | null;
  inFlight: Promise<void> | null;
  /** A beat out of turn is waiting for the one in flight (refresh). */
  refreshing: boolean;
  failures: number;
  stopped: boolean;
}

/**
 * Which workers exist, by heartbeat. A worker registers with a short TTL and refreshes it; one that
 * dies, hangs or loses its network stops refreshing and drops out within the TTL, with no
 * deregistration needed. One instance registers at most one worker (its own process).
 */
export class WorkerRegistry {
  private readonly keys: KeySchema;
  private readonly log: Logger;
  private registration: Registration | null = null;

  constructor(
    private readonly redis: Redis,
    options: { keys?: KeySchema; logger?: Logger } = {},
  ) {
    this.keys = options.keys ?? defaultKeys;
    this.log = options.logger ?? logger('registry');
  }

  async register(info: WorkerInfo, options: RegisterOptions = {}): Promise<void> {
    if (this.registration) throw new Error(`this registry already registered worker ${this.registration.info.id}; deregister it first`);
    const problem = workerInfoProblem(info);
    if (problem) throw new Error(`worker info: ${problem}`);
    this.keys.workerKey(info.id);
    const ttlMs = options.ttlMs ?? 3000;
    const heartbeatMs = options.heartbeatMs ?? 1000;
    if (!Number.isInteger(ttlMs) || ttlMs < 1) throw new Error(`ttlMs must be a positive integer, got ${ttlMs}`);
    if (!Number.isInteger(heartbeatMs) || heartbeatMs < 1) throw new Error(`heartbeatMs must be a positive integer, got ${heartbeatMs}`);
    // A heartbeat slower than the TTL lets a live worker flicker out of the registry.
    if (heartbeatMs >= ttlMs) throw new Error(`heartbeatMs (${heartbeatMs}) must be shorter than ttlMs (${ttlMs})`);
    const lostRetentionMs = options.lostRetentionMs ?? LOST_WORKER_RETENTION_MS;
    if (!Number.isInteger(lostRetentionMs) || lostRetentionMs < 0) throw new Error(`lostRetentionMs must be a non-negative integer, got ${lostRetentionMs}`);

    const reg: Registration = {
      info: pick(info),
      ttlMs,
      heartbeatMs,
      lostRetentionMs,
      sessions: options.sessions,
      timer: null,
      inFlight: null,
      refreshing: false,
      failures: 0,
      stopped: false,
    };
    // The first write fails loudly: a worker that cannot register at start-up should not serve.
    await this.write(reg);
    this.registration = reg;
    this.schedule(reg);
  }

  /**
   * A heartbeat now, out of turn, e.g. when the worker's session count changed: a driver waiting
   * for free workers sees them free at once rather than up to a heartbeat later. Calls while one
   * waits coalesce into it; the regular beats continue a heartbeat after it. Never rejects.
   */
  async refresh(): Promise<void> {
    const reg = this.registration;
    if (!reg || reg.stopped || reg.refreshing) return;
    reg.refreshing = true;
    // A beat in flight may have read the count before it changed: this one follows it.
    await reg.inFlight;
    reg.refreshing = false;
    if (reg.stopped) return;
    if (reg.timer) clearTimeout(reg.timer);
    reg.timer = null;
    reg.inFlight = this.beat(reg).finally(() => {
      reg.inFlight = null;
      this.schedule(reg);
    });
    await reg.inFlight;
  }

  /** Stops heartbeating and removes the worker now rather than after its TTL. */
  async deregister(): Promise<void> {
    const reg = this.registration;
    if (!reg) return;
    this.registration = null;
    reg.stopped = true;
    if (reg.timer) clearTimeout(reg.timer);
    // A heartbeat still in flight would re-create the key after the delete.
    await reg.inFlight;
    // A worker that leaves on purpose is not lost: its last-seen record goes too.
    const id = reg.info.id;
    await this.redis.multi().del(this.keys.workerKey(id), this.keys.workerLastSeenKey(id)).srem(this.keys.workersIndexKey(), id).exec();
  }

  /** Live workers (registration present and well-formed); prunes index entries of expired ones. */
  async list(): Promise<WorkerInfo[]> {
    return (await this.scan(false)).live;
  }

  /**
   * Live workers, and lost ones: those whose registration expired without a deregistration
   * (crashed, killed, partitioned) less than their lostRetentionMs ago, as last registered.
   */
  async listWithLost(): Promise<{ live: WorkerInfo[]; lost: WorkerInfo[] }> {
    return this.scan(true);
  }

  private async scan(withLost: boolean): Promise<{ live: WorkerInfo[]; lost: WorkerInfo[] }> {
    const live: WorkerInfo[] = [];
    const lost: WorkerInfo[] = [];
    const ids = (await this.redis.smembers(this.keys.workersIndexKey())).filter((id) => this.validId(id)).sort();
    if (ids.length === 0) return { live, lost };
    const values = await this.redis.mget(ids.map((id) => this.keys.workerKey(id)));
    const expired = ids.filter((_, i) => values[i] === null);
    ids.forEach((id, i) => {
      const info = values[i] === null ? null : this.parse(id, values[i]!);
      if (info) live.push(info);
    });
    if (expired.length === 0) return { live, lost };
    if (withLost) {
      const last = await this.redis.mget(expired.map((id) => this.keys.workerLastSeenKey(id)));
      expired.forEach((id, i) => {
        const info = last[i] === null ? null : this.parse(id, last[i]!);
        if (info) lost.push(info);
      });
    }
    await this.prune(expired);
    return { live, lost };
  }

  async get(id: string): Promise<WorkerInfo | null> {
    const value = await this.redis.get(this.keys.workerKey(id));
    return value === null ? null : this.parse(id, value);
  }

  async isAlive(id: string): Promise<boolean> {
    return (await this.redis.exists(this.keys.workerKey(id))) === 1;
  }

  /** An index entry no key can be built for was not written by this code; report it rather than fail every listing. */
  private validId(id: string): boolean {
    try {
      this.keys.workerKey(id);
      return true;
    } catch (err) {
      this.log.warn('ignoring an invalid id in the worker index', { worker: id, err });
      return false;
    }
  }

  private async prune(ids: string[]): Promise<void> {
    const perId = ids.flatMap((id) => [this.keys.workerKey(id), this.keys.workerLastSeenKey(id)]);
    const removed = Number(await this.redis.eval(PRUNE, perId.length + 1, this.keys.workersIndexKey(), ...perId, ...ids));
    if (removed) this.log.info('pruned expired workers from the index', { workers: ids, removed });
  }

  /**
   * A malformed record (another version's schema, a hand edit) is skipped, not deleted: its owner
   * may be alive, and the key expires by itself if not.
   */
  private parse(id: string, value: string): WorkerInfo | null {
    let raw: unknown;
    try {
      raw = JSON.parse(value);
    } catch {
      this.log.warn('worker registration is not JSON; skipping it', { worker: id, key: this.keys.workerKey(id) });
      return null;
    }
    const problem = workerInfoProblem(raw) ?? ((raw as WorkerInfo).id !== id ? `id ${(raw as WorkerInfo).id} does not match its key` : null);
    if (problem) {
      this.log.warn('worker registration is invalid; skipping it', { worker: id, key: this.keys.workerKey(id), problem });
      return null;
    }
    return pick(raw as WorkerInfo);
  }

  /** SETs and SADD together, so a key that expired during an outage comes back with its index entry. */
  private async write(reg: Registration): Promise<void> {
    let sessions = reg.info.sessions;
    if (reg.sessions) {
      const now = reg.sessions();
      if (isCount(now)) sessions = now;
      else this.log.warn('sessions getter returned an invalid count; keeping the last one', { worker: reg.info.id, value: now });
    }
    reg.info = { ...reg.info, sessions };
    const value = JSON.stringify(reg.info);
    const results = await this.redis
      .multi()
      .set(this.keys.workerKey(reg.info.id), value, 'PX', reg.ttlMs)
      .set(this.keys.workerLastSeenKey(reg.info.id), value, 'PX', reg.ttlMs + reg.lostRetentionMs)
      .sadd(this.keys.workersIndexKey(), reg.info.id)
      .exec();
    const failed = results?.find(([err]) => err);
    if (!results) throw new Error('registry write was discarded');
    if (failed?.[0]) throw failed[0];
  }

  private schedule(reg: Registration): void {
    if (reg.stopped) return;
    reg.timer = setTimeout(() => {
      reg.timer = null;
      reg.inFlight = this.beat(reg).finally(() => {
        reg.inFlight = null;
        this.schedule(reg);
      });
    }, reg.heartbeatMs);
    // Heartbeats alone must not keep a process alive that has otherwise finished.
    reg.timer.unref();
  }

  /** Never rejects: a Redis outage is logged and retried at the next beat, and the worker keeps serving. */
  private async beat(reg: Registration): Promise<void> {
    try {
      // ioredis queues commands while reconnecting; bound the wait so beats keep their rhythm
      // and the failure is visible instead of a silent stall.
      await withTimeout(this.write(reg), reg.ttlMs, 'heartbeat timed out');
      if (reg.failures > 0) this.log.info('registry heartbeat recovered', { worker: reg.info.id, failedBeats: reg.failures });
      reg.failures = 0;
    } catch (err) {
      if (reg.stopped) return;
      reg.failures++;
      heartbeatFailures.inc();
      // First failure, then periodically: an outage of minutes should not flood the log.
      if (reg.failures === 1 || reg.failures % 30 === 0) {
        this.log.warn('registry heartbeat failed; retrying', { worker: reg.info.id, failedBeats: reg.failures, err });
      }
    }
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${message} after ${ms} ms`)), ms);
    timer.unref();
  });
  // The abandoned write may still fail later; swallow that so it is not an unhandled rejection.
  p.catch(() => {});
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
