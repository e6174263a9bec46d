import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnTied } from './tied-process';

export interface RedisHandle {
  /** redis://host:port of the server to use. */
  readonly url: string;
  /** True when `url` named an existing server (which `stop` then leaves alone). */
  readonly external: boolean;
  /** The spawned redis-server's PID now (undefined for an external server); changes on restart. */
  readonly pid?: number;
  /** Where the spawned server keeps its AOF (undefined for an external server). */
  readonly dataDir?: string;
  /** Sends `signal` to the spawned server and waits for it to exit (tests: SIGKILL mid-job). */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /**
   * Starts the server again on the same port and data dir after it stopped or was killed: it
   * replays its AOF, so clients reconnect to the state it had (less at most ~1 s of writes).
   */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export interface StartRedisOptions {
  /** An existing server to use as is (the app's REDIS_URL); unset, null or empty: spawn one. */
  url?: string | null;
  /** How long to wait for the spawned server to answer PING. */
  readyTimeoutMs?: number;
  /** The binary to run. */
  binary?: string;
  /** A fixed port (e.g. to bring a server back where clients expect it); default a free one. */
  port?: number;
  /**
   * Where the server keeps its append-only file. Given, it is kept on stop (a later start on it
   * gets the same data back); default a temporary folder that lives as long as this handle.
   */
  dataDir?: string;
  /** More redis-server arguments, after ours (e.g. ['--cluster-enabled', 'yes'] for a one-node Redis Cluster). */
  args?: readonly string[];
}

const HOST = '127.0.0.1';
const PORT_ATTEMPTS = 5;
/** Keeps the tail of redis's output for error messages without holding its whole log. */
const OUTPUT_TAIL = 8192;

/**
 * A Redis to talk to: `url` when given, else a private redis-server on a free loopback port
 * with AOF on (`appendonly yes`, `appendfsync everysec`, as compose and k8s run it): a server
 * that is killed and restarted (`restart`) within the handle's life comes back with its queue,
 * records, leases and checkpoints, less at most the last second of writes. Without AOF a
 * restart loses every queued and running job (docs/operations.md).
 */
export async function startRedis(options: StartRedisOptions = {}): Promise<RedisHandle> {
  const url = options.url;
  if (url) {
    const external = (): Promise<void> => Promise.reject(new Error('an external Redis (REDIS_URL) is not ours to kill or restart'));
    return { url, external: true, kill: external, restart: external, stop: async () => {} };
  }

  const binary = options.binary ?? 'redis-server';
  const readyTimeoutMs = options.readyTimeoutMs ?? 10_000;
  if (options.port !== undefined) {
    if (!Number.isInteger(options.port) || options.port < 1 || options.port > 65535) throw new Error(`redis-server: port must be 1..65535, got ${options.port}`);
    return handle(binary, options.port, readyTimeoutMs, options.dataDir, options.args ?? []);
  }
  let lastError: Error | null = null;
  // The port is free when we look, but another process can take it before redis binds it;
  // redis then exits with "Address already in use" and we try another.
  for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
    const port = await freePort();
    try {
      return await handle(binary, port, readyTimeoutMs, options.dataDir, options.args ?? []);
    } catch (err) {
      if (!(err instanceof AddressInUseError)) throw err;
      lastError = err;
    }
  }
  throw new Error(`redis-server: no free port after ${PORT_ATTEMPTS} attempts: ${lastError?.message}`);
}

class AddressInUseError extends Error {}

/** `redis-server --port 0` disables TCP instead of choosing a port, so ask the kernel for one. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** The handle over successive server processes on one port and data dir. */
async function handle(binary: string, port: number, readyTimeoutMs: number, dataDir: string | undefined, extraArgs: readonly string[]): Promise<RedisHandle> {
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), 'longshot-redis-'));
  if (dataDir) mkdirSync(dataDir, { recursive: true });
  const removeDir = (): void => {
    if (!dataDir) rmSync(dir, { recursive: true, force: true });
  };
  let server: Server;
  try {
    server = await spawnRedis(binary, port, dir, readyTimeoutMs, extraArgs);
  } catch (e) {
    removeDir();
    throw e;
  }
  let stopping: Promise<void> | null = null;
  return {
    url: `redis://${HOST}:${port}`,
    external: false,
    get pid() {
      return server.pid;
    },
    dataDir: dir,
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      await server.kill(signal);
    },
    async restart() {
      if (stopping) throw new Error('redis-server: restart after stop');
      await server.kill('SIGTERM');
      server = await spawnRedis(binary, port, dir, readyTimeoutMs, extraArgs);
    },
    stop() {
      stopping ??= server.stop().finally(removeDir);
      return stopping;
    },
  };
}

interface Server {
  readonly pid: number | undefined;
  /** Signals the process (unless it exited) and waits for its exit. */
  kill(signal: NodeJS.Signals): Promise<void>;
  stop(): Promise<void>;
}

async function spawnRedis(binary: string, port: number, dir: string, readyTimeoutMs: number, extraArgs: readonly string[]): Promise<Server> {
  const args = ['--bind', HOST, '--port', String(port), '--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec', '--dir', dir, '--daemonize', 'no', '--logfile', '', ...extraArgs];
  // Tied to this process: a CLI or test runner that is SIGKILLed leaves no redis behind.
  const child = spawnTied(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (chunk: Buffer): void => {
    output = (output + chunk.toString('utf8')).slice(-OUTPUT_TAIL);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);

  // Filled in by the child's events while the loop below waits on PING.
  const state: { exited: { code: number | null; signal: NodeJS.Signals | null } | null; spawnError: NodeJS.ErrnoException | null } = {
    exited: null,
    spawnError: null,
  };
  const exit = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      state.exited = { code, signal };
      resolve();
    });
    child.once('error', (err: NodeJS.ErrnoException) => {
      state.spawnError = err;
      resolve();
    });
  });

  // A test runner or CLI that exits without calling stop() must not leave a redis behind.
  const killOnExit = (): void => {
    if (!state.exited) child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);
  const cleanup = (): void => {
    process.off('exit', killOnExit);
  };

  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (state.spawnError) {
      cleanup();
      const err = state.spawnError;
      if (err.code === 'ENOENT') {
        throw new Error(`${binary} was not found on PATH: install the Debian package \`redis-server\` (apt-get install redis-server), or set REDIS_URL to an existing server`);
      }
      throw new Error(`cannot start ${binary}: ${err.message}`);
    }
    if (state.exited) {
      cleanup();
      const { code, signal } = state.exited;
      const message = `${binary} on port ${port} exited (${signal ?? `code ${code}`}) before it answered; its output:\n${output.trim()}`;
      if (/Address already in use/i.test(output)) throw new AddressInUseError(message);
      throw new Error(message);
    }
    if (await answers(port, child.pid, 500)) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await exit;
      cleanup();
      throw new Error(`${binary} on port ${port} did not answer within ${readyTimeoutMs} ms; its output:\n${output.trim()}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }

  let stopping: Promise<void> | null = null;
  return {
    pid: child.pid,
    async kill(signal) {
      if (!state.exited) child.kill(signal);
      await exit;
      cleanup();
    },
    stop() {
      stopping ??= stopChild(child, port, exit, () => state.exited !== null).finally(cleanup);
      return stopping;
    },
  };
}

async function stopChild(child: ChildProcess, port: number, exit: Promise<void>, hasExited: () => boolean): Promise<void> {
  if (hasExited()) return;
  // SHUTDOWN NOSAVE: exit now without writing a dump, even if a test turned persistence on.
  await sendCommand(port, 'SHUTDOWN NOSAVE', 1000).catch(() => {});
  if (await within(exit, 3000)) return;
  child.kill('SIGTERM');
  if (await within(exit, 3000)) return;
  child.kill('SIGKILL');
  await exit;
}

function within(p: Promise<void>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    void p.then(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/**
 * An inline command over a raw socket, no client library, so readiness does not depend on a
 * client's reconnect logic. Handles the reply types we send for: simple, error and bulk strings.
 */
function sendCommand(port: number, command: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host: HOST, port });
    let reply = Buffer.alloc(0);
    let settled = false;
    const done = (err: Error | null, value = ''): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(() => done(new Error(`no reply to ${command} within ${timeoutMs} ms`)), timeoutMs);
    socket.once('connect', () => socket.write(`${command}\r\n`));
    socket.on('data', (d: Buffer) => {
      reply = Buffer.concat([reply, d]);
      const eol = reply.indexOf('\r\n');
      if (eol < 0) return;
      if (reply[0] !== 0x24 /* $ */) return done(null, reply.subarray(0, eol).toString('utf8'));
      const length = Number(reply.subarray(1, eol).toString('latin1'));
      if (length < 0) return done(null, '');
      if (reply.length >= eol + 2 + length + 2) done(null, reply.subarray(eol + 2, eol + 2 + length).toString('utf8'));
    });
    socket.once('error', (err) => done(err));
    // SHUTDOWN closes the connection without a reply.
    socket.once('close', () => done(null, reply.toString('utf8')));
  });
}

/**
 * Whether our redis-server is up: the answer must come from `pid`, not from some other process
 * that took the port between our probe and redis's bind.
 */
async function answers(port: number, pid: number | undefined, timeoutMs: number): Promise<boolean> {
  try {
    const info = await sendCommand(port, 'INFO server', timeoutMs);
    return pid !== undefined && new RegExp(`^process_id:${pid}\\r?$`, 'm').test(info);
  } catch {
    return false;
  }
}
