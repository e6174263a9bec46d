import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { Redis } from 'ioredis';
import { ApiKeyStore, BlockStore, JobTextStore, keySchemaOf, spawnTied, startRedis, WorkerLeases, WorkerRegistry, type KeySchema, type RedisHandle } from '@longshot/cache';
import { registryWorkers, type LeasedWorkers } from '@longshot/pipeline';
import { parseGrantKeys, type GrantKey } from '@longshot/transport';

export interface LocalWorker {
  readonly id: string;
  readonly address: string;
  readonly metricsAddress: string;
  readonly process: ChildProcess;
}

export interface LocalController {
  readonly id: string;
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly process: ChildProcess;
}

export interface LocalClusterOptions {
  readonly workers: number;
  /** Controller replicas to start (0 for a workers-only cluster). */
  readonly controllers?: number;
  /** Port of the first controller (0 = any free port). */
  readonly controllerPort?: number;
  /** Extra environment for the controllers (e.g. LONGSHOT_RESULTS_DIR). */
  readonly controllerEnv?: NodeJS.ProcessEnv;
  /** The models directory (--models-dir) of every controller and worker: the models served by name besides the built-ins. */
  readonly modelsDir?: string;
  /** Extra flags for every worker (e.g. ['--emulate', 'h100-nvlink']). */
  readonly workerArgs?: readonly string[];
  /** Extra Node flags for every worker process (e.g. ['--cpu-prof', '--cpu-prof-dir=/tmp/prof']). */
  readonly workerNodeFlags?: readonly string[];
  /** Start a fresh worker when one exits unexpectedly, as a Kubernetes Deployment would. */
  readonly respawn?: boolean;
  readonly env?: NodeJS.ProcessEnv;
  /** Prefix of the worker ids (default 'local'). */
  readonly name?: string;
  /** Workers sample retained memory at every finished block (node --expose-gc, --memory-probe). */
  readonly memoryProbe?: boolean;
  /**
   * Session grant keys (id:secret[,id:secret]) shared by the controllers and workers; default: a
   * fresh random key per cluster (see docs/operations.md "Worker trust").
   */
  readonly grantKeys?: string;
  /**
   * 'key' (the default): controllers require API keys, and the cluster makes one operator key
   * (apiKey) for its own clients. 'none': controllers run with --no-auth, which they accept
   * only because they bind to loopback (tests that exercise the API without identities).
   */
  readonly auth?: 'key' | 'none';
  /** Called once Redis answers and once each worker and controller is ready (a progress bar). */
  readonly onStarted?: () => void;
}

const WORKER_BIN = path.resolve(__dirname, '../../worker/bin/longshot-worker.js');
const CONTROLLER_BIN = path.resolve(__dirname, '../../controller/bin/longshot-controller.js');

/**
 * A worker's young generation is fixed in size from the start (V8 otherwise grows it over the
 * first minutes of traffic), so a worker's footprint is flat from its first job on, as a pod's
 * memory request assumes. The worker image starts node with the same flags.
 */
export const WORKER_NODE_FLAGS = ['--min-semi-space-size=4', '--max-semi-space-size=4'];

/**
 * Redis plus N worker processes on loopback: what `longshot render --stages K`, `longshot up`,
 * the end-to-end tests and the pipeline benchmark run against. Real processes, real sockets.
 */
export class LocalCluster {
  readonly workers = new Map<string, LocalWorker>();
  readonly controllers = new Map<string, LocalController>();
  private stopping = false;
  private spawned = 0;
  private readonly grantKeys: string;
  /** The keys' root the cluster's processes use (LONGSHOT_KEY_ROOT of the environment they get). */
  readonly keys: KeySchema;
  /** The operator key (lsk_...) this cluster's controllers accept; null with auth 'none' or no controllers. */
  apiKey: string | null = null;

  private constructor(
    readonly redis: RedisHandle,
    private readonly options: LocalClusterOptions,
  ) {
    this.grantKeys = options.grantKeys ?? `local:${randomBytes(32).toString('base64url')}`;
    this.keys = keySchemaOf({ ...process.env, ...options.env }.LONGSHOT_KEY_ROOT, 'LONGSHOT_KEY_ROOT');
  }

  /** The key this cluster's drivers sign session grants with (an embedded driver needs it too). */
  get grantKey(): GrantKey {
    return parseGrantKeys(this.grantKeys)[0];
  }

  /**
   * What an embedded driver (runDistributedJob without a controller: tests, benches) needs to
   * run job `job` on this cluster: its block and text stores, workers leased for the job, the grant key.
   */
  driver(redis: Redis, job: string, o: { waitMs?: number } = {}): { blocks: BlockStore; jobText: JobTextStore; workers: LeasedWorkers; grantKey: GrantKey } {
    const keys = this.keys;
    return { blocks: new BlockStore(redis, { keys }), jobText: new JobTextStore(redis, { keys }), workers: registryWorkers({ registry: new WorkerRegistry(redis, { keys }), leases: new WorkerLeases(redis, { keys }), job, waitMs: o.waitMs }), grantKey: this.grantKey };
  }

  static async start(options: LocalClusterOptions): Promise<LocalCluster> {
    // REDIS_URL: an existing server (which stop leaves alone); else a private one.
    const redis = await startRedis({ url: process.env.REDIS_URL });
    options.onStarted?.();
    const cluster = new LocalCluster(redis, options);
    try {
      if ((options.controllers ?? 0) > 0 && options.auth !== 'none') cluster.apiKey = await cluster.createApiKey({ tenant: 'local', role: 'operator' });
      await Promise.all(Array.from({ length: options.workers }, () => cluster.spawnWorker().then(() => options.onStarted?.())));
      for (let i = 0; i < (options.controllers ?? 0); i++) {
        await cluster.spawnController(i === 0 ? (options.controllerPort ?? 0) : 0);
        options.onStarted?.();
      }
    } catch (e) {
      await cluster.stop();
      throw e;
    }
    return cluster;
  }

  get redisUrl(): string {
    return this.redis.url;
  }

  /** Stores a new API key in this cluster's Redis and returns it (lsk_...). */
  async createApiKey(input: { tenant: string; role: 'tenant' | 'operator' }): Promise<string> {
    const redis = new Redis(this.redis.url, { maxRetriesPerRequest: 3 });
    try {
      return (await new ApiKeyStore(redis, this.keys).create(input)).token;
    } finally {
      redis.disconnect();
    }
  }

  /** Starts one more controller replica and resolves once it serves HTTP; `env` adds to (or overrides) controllerEnv for this one. */
  spawnController(port = 0, env: NodeJS.ProcessEnv = {}): Promise<LocalController> {
    const id = `${this.options.name ?? 'local'}-controller-${this.controllers.size}-${this.spawned++}`;
    const args = [CONTROLLER_BIN, '--host', '127.0.0.1', '--port', String(port), '--redis', this.redis.url, '--id', id, ...this.modelsDirArgs(), ...(this.options.auth === 'none' ? ['--no-auth'] : [])];
    return this.spawnReady(id, args, { ...process.env, LONGSHOT_GRANT_KEYS: this.grantKeys, ...this.options.controllerEnv, ...env }, (msg, child) => {
      const c: LocalController = { id, url: msg.url as string, process: child };
      this.controllers.set(id, c);
      return c;
    }, () => this.controllers.delete(id), false);
  }

  /** Starts one more worker and resolves once it is registered and serving; `extra` adds flags and environment for this one. */
  spawnWorker(extra: { args?: readonly string[]; env?: NodeJS.ProcessEnv } = {}): Promise<LocalWorker> {
    const id = `${this.options.name ?? 'local'}-${this.spawned++}`;
    const probe = this.options.memoryProbe === true;
    const args = [WORKER_BIN, '--host', '127.0.0.1', '--port', '0', '--metrics-port', '0', '--redis', this.redis.url, '--id', id, '--drain', '5', ...this.modelsDirArgs(), ...(probe ? ['--memory-probe'] : []), ...(this.options.workerArgs ?? []), ...(extra.args ?? [])];
    // Workers sharing this machine split its cores: oversubscribed, every op's thread barrier
    // would wait on the OS scheduler. Results do not depend on the thread count.
    const threads = String(Math.max(1, Math.floor(os.availableParallelism() / this.options.workers)));
    const env = { LONGSHOT_THREADS: threads, ...process.env, LONGSHOT_GRANT_KEYS: this.grantKeys, ...this.options.env, ...extra.env };
    return this.spawnReady(id, [...WORKER_NODE_FLAGS, ...(this.options.workerNodeFlags ?? []), ...(probe ? ['--expose-gc'] : []), ...args], env, (msg, child) => {
      const w: LocalWorker = { id, address: msg.address as string, metricsAddress: msg.metricsAddress as string, process: child };
      this.workers.set(id, w);
      return w;
    }, () => this.workers.delete(id), this.options.respawn === true, () => void this.spawnWorker(extra).catch(() => undefined));
  }

  private modelsDirArgs(): string[] {
    return this.options.modelsDir === undefined ? [] : ['--models-dir', this.options.modelsDir];
  }

  /**
   * Spawns a Longshot process and resolves once it prints its JSON ready line. `forget` removes
   * it from the cluster's maps when it exits; `respawn` restarts it after an unexpected exit.
   */
  private spawnReady<T>(
    id: string,
    args: string[],
    env: NodeJS.ProcessEnv,
    ready: (msg: Record<string, unknown>, child: ChildProcess) => T,
    forget: () => boolean,
    respawn: boolean,
    restart?: () => void,
  ): Promise<T> {
    // Tied to this process (spawnTied): no worker or controller outlives a SIGKILLed CLI.
    const child = spawnTied(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
      if (process.env.LONGSHOT_WORKER_LOGS) process.stderr.write(d);
    });
    return new Promise<T>((resolve, reject) => {
      const lines = readline.createInterface({ input: child.stdout! });
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`${id} did not start within 60 s: ${stderr.trim()}`));
      }, 60_000);
      lines.on('line', (line) => {
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line) as Record<string, unknown>;
        } catch {
          return;
        }
        if (msg.event !== 'ready') return;
        clearTimeout(timer);
        resolve(ready(msg, child));
      });
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        const known = forget();
        if (!known) reject(new Error(`${id} exited (${signal ?? code}) before it was ready: ${stderr.trim()}`));
        else if (!this.stopping && respawn) restart?.();
      });
    });
  }

  /** Sends a signal to one worker or controller (tests: SIGKILL in the middle of a job). */
  kill(id: string, signal: NodeJS.Signals = 'SIGKILL'): void {
    const p = this.workers.get(id) ?? this.controllers.get(id);
    if (!p) throw new Error(`no process ${id}`);
    p.process.kill(signal);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const exits = [...this.controllers.values(), ...this.workers.values()].map(
      (w) =>
        new Promise<void>((resolve) => {
          if (w.process.exitCode !== null || w.process.signalCode !== null) return resolve();
          const t = setTimeout(() => w.process.kill('SIGKILL'), 10_000);
          w.process.once('exit', () => {
            clearTimeout(t);
            resolve();
          });
          w.process.kill('SIGTERM');
        }),
    );
    await Promise.all(exits);
    await this.redis.stop();
  }
}
