import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  Counter,
  Gauge,
  Histogram,
  Registry,
  collectDefaultMetrics,
  type CounterConfiguration,
  type GaugeConfiguration,
  type HistogramConfiguration,
  type Metric,
} from 'prom-client';

/**
 * The process's one metrics registry. Everything registers here (never on prom-client's global
 * default registry) so a scrape of /metrics shows the whole process and nothing else.
 */
export const registry = new Registry();

// Once, at module load: a second call would throw on the duplicate metric names.
collectDefaultMetrics({ register: registry });

type MetricClass<M> = abstract new (...args: never[]) => M;

/**
 * Returns the metric already registered under `name` when it is of the requested kind, so two
 * modules (or a module evaluated twice by a test runner) can declare the same metric without
 * prom-client's "already registered" error. A name reused for a different kind or label set is a
 * programming error and throws.
 */
function existing<M extends Metric>(name: string, kind: MetricClass<M>, labelNames: readonly string[] | undefined): M | undefined {
  const found = registry.getSingleMetric(name);
  if (!found) return undefined;
  if (!(found instanceof kind)) {
    throw new Error(`metric ${name} is already registered as a different kind (${found.constructor.name})`);
  }
  const had = [...((found as unknown as { labelNames?: readonly string[] }).labelNames ?? [])].sort().join(',');
  const want = [...(labelNames ?? [])].sort().join(',');
  if (had !== want) throw new Error(`metric ${name} is already registered with labels [${had}], requested [${want}]`);
  return found;
}

/**
 * Every label set of `known` (the cartesian product of each label's values), or none when
 * `known` is absent. A label left out of `known` would make series without it: an error.
 */
export function knownLabelSets<T extends string>(name: string, labelNames: readonly T[] | undefined, known: KnownLabelValues<T> | undefined): Record<T, string>[] {
  if (!known) return [];
  const names = labelNames ?? [];
  const missing = names.filter((n) => !known[n]?.length);
  const extra = Object.keys(known).filter((k) => !names.includes(k as T));
  if (missing.length > 0 || extra.length > 0) throw new Error(`metric ${name}: known label values must cover exactly its labels [${names.join(',')}]`);
  let sets: Record<string, string>[] = [{}];
  for (const n of names) sets = sets.flatMap((s) => known[n]!.map((v) => ({ ...s, [n]: v })));
  return sets as Record<T, string>[];
}

/** For each label, the values it is known to take: their series exist (at 0) from registration on. */
export type KnownLabelValues<T extends string> = { readonly [K in T]?: readonly string[] };

/**
 * A counter on the process's registry. With `known`, every label set of the known values is
 * exported at 0 before its first event, so `rate()` and `increase()` see the first one and an
 * alert on it is not silently absent.
 */
export function counter<T extends string = string>(config: Omit<CounterConfiguration<T>, 'registers'> & { readonly known?: KnownLabelValues<T> }): Counter<T> {
  const { known, ...rest } = config;
  const c = existing(rest.name, Counter<T>, rest.labelNames) ?? new Counter<T>({ ...rest, registers: [registry] });
  for (const labels of knownLabelSets(rest.name, rest.labelNames, known)) c.inc(labels as Parameters<Counter<T>['inc']>[0] & object, 0);
  return c;
}

export function gauge<T extends string = string>(config: Omit<GaugeConfiguration<T>, 'registers'>): Gauge<T> {
  return existing(config.name, Gauge<T>, config.labelNames) ?? new Gauge<T>({ ...config, registers: [registry] });
}

/** A histogram on the process's registry; with `known`, as `counter` does, every known label set exported at 0 (buckets, sum and count). */
export function histogram<T extends string = string>(config: Omit<HistogramConfiguration<T>, 'registers'> & { readonly known?: KnownLabelValues<T> }): Histogram<T> {
  const { known, ...rest } = config;
  const h = existing(rest.name, Histogram<T>, rest.labelNames) ?? new Histogram<T>({ ...rest, registers: [registry] });
  for (const labels of knownLabelSets(rest.name, rest.labelNames, known)) h.zero(labels as Parameters<Histogram<T>['zero']>[0]);
  return h;
}

export interface MetricsServer {
  /** The bound port (the chosen one when 0 was requested). */
  readonly port: number;
  close(): Promise<void>;
}

/** Serves GET /metrics from `registry`. Port 0 binds a free port. */
export async function startMetricsServer(options: { port: number; host?: string }): Promise<MetricsServer> {
  const host = options.host ?? '127.0.0.1';
  if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
    throw new Error(`metrics server: port must be an integer in 0..65535, got ${options.port}`);
  }
  const log = logger('metrics');
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if ((req.method === 'GET' || req.method === 'HEAD') && path === '/metrics') {
      registry.metrics().then(
        (body) => {
          res.writeHead(200, { 'Content-Type': registry.contentType });
          res.end(req.method === 'HEAD' ? undefined : body);
        },
        (err: unknown) => {
          log.error('collecting metrics failed', { err });
          res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' });
          res.end('collecting metrics failed\n');
        },
      );
      return;
    }
    res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' });
    res.end('not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(new Error(`metrics server: cannot listen on ${host}:${options.port}: ${err.message}`));
    server.once('error', onError);
    server.listen(options.port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.on('error', (err) => log.error('metrics server error', { err }));
  const port = (server.address() as AddressInfo).port;
  let closing: Promise<void> | null = null;
  return {
    port,
    close() {
      // Idempotent, and drops keep-alive connections from scrapers so close() does not wait for them.
      closing ??= new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/** Where loggers write from: info until the app sets its configured level (setLogLevel). */
let threshold = LEVELS.info;

/** The process's log level, set by the app from its validated config before it does any work. */
export function setLogLevel(level: LogLevel): void {
  threshold = LEVELS[level];
}

/**
 * A log level as an app's config reads it (LONGSHOT_LOG_LEVEL: debug|info|warn|error, any case;
 * unset: info). A typo in the level must not silence logs: it falls back to info and says so once.
 */
export function parseLogLevel(raw: string | undefined, name = 'LONGSHOT_LOG_LEVEL'): LogLevel {
  const v = raw?.trim().toLowerCase();
  if (!v) return 'info';
  if (v in LEVELS) return v as LogLevel;
  if (!warnedLevel) {
    warnedLevel = true;
    process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level: 'warn', component: 'telemetry', msg: `unknown ${name} ${JSON.stringify(v)}, using info` })}\n`);
  }
  return 'info';
}
let warnedLevel = false;

/** Errors do not survive JSON.stringify (their fields are non-enumerable); keep what helps debugging. */
function serializable(value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as NodeJS.ErrnoException).code;
    return { name: value.name, message: value.message, ...(code ? { code } : {}), stack: value.stack };
  }
  if (typeof value === 'bigint') return value.toString();
  return value;
}

/** JSON lines on stderr (stdout may carry a command's real output, e.g. `longshot render -`). */
export function logger(component: string): Logger {
  const write = (level: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (LEVELS[level] < threshold) return;
    const record: Record<string, unknown> = { time: new Date().toISOString(), level, component, msg };
    if (fields) for (const [k, v] of Object.entries(fields)) if (!(k in record)) record[k] = serializable(v);
    let line: string;
    try {
      line = JSON.stringify(record, (_k, v: unknown) => serializable(v));
    } catch {
      // Circular fields: log the message rather than throw from a logging call.
      line = JSON.stringify({ time: record.time, level, component, msg, fields: '[unserializable]' });
    }
    process.stderr.write(`${line}\n`);
  };
  return {
    debug: (msg, fields) => write('debug', msg, fields),
    info: (msg, fields) => write('info', msg, fields),
    warn: (msg, fields) => write('warn', msg, fields),
    error: (msg, fields) => write('error', msg, fields),
  };
}
