import { spawn, type ChildProcess } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { startRedis, type RedisHandle } from '@longshot/cache';

export interface LocalWorker {
  readonly id: string;
  readonly address: string;
  readonly metricsAddress: string;
  readonly process: ChildProcess;
}

export interface LocalClusterOptions {
  readonly workers: number;
  /** Extra flags for every worker (e.g. ['--emulate', 'h100-nvlink']). */
  readonly workerArgs?: readonly string[];
  /** Start a fresh worker when one exits unexpectedly, as a Kubernetes Deployment would. */
  readonly respawn?: boolean;
  readonly env?: NodeJS.ProcessEnv;
  /** Prefix of the worker ids (default 'local'). */
  readonly name?: string;
}

const WORKER_BIN = path.resolve(__dirname, '../../worker/bin/longshot-worker.js');

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
  private stopping = false;
  private spawned = 0;

  private constructor(
    readonly redis: RedisHandle,
    private readonly options: LocalClusterOptions,
  ) {}

  static async start(options: LocalClusterOptions): Promise<LocalCluster> {
    const redis = await startRedis();
    const cluster = new LocalCluster(redis, options);
    try {
      await Promise.all(Array.from({ length: options.workers }, () => cluster.spawnWorker()));
    } catch (e) {
      await cluster.stop();
      throw e;
    }
    return cluster;
  }

  get redisUrl(): string {
    return this.redis.url;
  }

  /** Starts one more worker and resolves once it is registered and serving. */
  spawnWorker(): Promise<LocalWorker> {
    const id = `${this.options.name ?? 'local'}-${this.spawned++}`;
    const args = [WORKER_BIN, '--host', '127.0.0.1', '--port', '0', '--metrics-port', '0', '--redis', this.redis.url, '--id', id, '--drain', '5', ...(this.options.workerArgs ?? [])];
    // Workers sharing this machine split its cores: oversubscribed, every op's thread barrier
    // would wait on the OS scheduler. Results do not depend on the thread count.
    const threads = String(Math.max(1, Math.floor(os.availableParallelism() / this.options.workers)));
    const env = { LONGSHOT_THREADS: threads, ...process.env, ...this.options.env };
    const child = spawn(process.execPath, [...WORKER_NODE_FLAGS, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
      if (process.env.LONGSHOT_WORKER_LOGS) process.stderr.write(d);
    });
    return new Promise<LocalWorker>((resolve, reject) => {
      const lines = readline.createInterface({ input: child.stdout! });
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`worker ${id} did not start within 60 s: ${stderr.trim()}`));
      }, 60_000);
      lines.on('line', (line) => {
        let msg: { event?: string; address?: string; metricsAddress?: string };
        try {
          msg = JSON.parse(line) as typeof msg;
        } catch {
          return;
        }
        if (msg.event !== 'ready') return;
        clearTimeout(timer);
        const w: LocalWorker = { id, address: msg.address!, metricsAddress: msg.metricsAddress!, process: child };
        this.workers.set(id, w);
        resolve(w);
      });
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        const known = this.workers.delete(id);
        if (!known) reject(new Error(`worker ${id} exited (${signal ?? code}) before it was ready: ${stderr.trim()}`));
        else if (!this.stopping && this.options.respawn) void this.spawnWorker().catch(() => undefined);
      });
    });
  }

  /** Sends a signal to one worker (tests: SIGKILL in the middle of a job). */
  kill(id: string, signal: NodeJS.Signals = 'SIGKILL'): void {
    const w = this.workers.get(id);
    if (!w) throw new Error(`no worker ${id}`);
    w.process.kill(signal);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const exits = [...this.workers.values()].map(
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
