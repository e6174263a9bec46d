import { request } from 'node:http';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Counter, Histogram } from 'prom-client';
import { counter, gauge, histogram, logger, parseLogLevel, registry, setLogLevel, startMetricsServer } from '../src';

function get(port: number, path: string): Promise<{ status: number; type: string | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: 'GET', agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'], body }));
    });
    req.once('error', reject);
    req.end();
  });
}

describe('metric factories', () => {
  it('register on the process registry and are idempotent by name', () => {
    const a = counter({ name: 'longshot_test_things_total', help: 'things', labelNames: ['kind'] as const });
    const b = counter({ name: 'longshot_test_things_total', help: 'things', labelNames: ['kind'] as const });
    expect(b).toBe(a);
    expect(a).toBeInstanceOf(Counter);
    expect(registry.getSingleMetric('longshot_test_things_total')).toBe(a);
    const h = histogram({ name: 'longshot_test_seconds', help: 'time', buckets: [0.1, 1] });
    expect(histogram({ name: 'longshot_test_seconds', help: 'time', buckets: [0.1, 1] })).toBe(h);
    expect(h).toBeInstanceOf(Histogram);
    expect(gauge({ name: 'longshot_test_level', help: 'level' })).toBe(gauge({ name: 'longshot_test_level', help: 'level' }));
  });

  it('export the known label sets at 0 before any event (counters and histograms)', async () => {
    counter({ name: 'longshot_test_known_total', help: 'k', labelNames: ['reason'] as const, known: { reason: ['a', 'b'] } });
    histogram({ name: 'longshot_test_known_seconds', help: 'k', labelNames: ['status'] as const, buckets: [1], known: { status: ['ok', 'failed'] } });
    const page = (await registry.metrics()).split('\n');
    for (const line of ['longshot_test_known_total{reason="a"} 0', 'longshot_test_known_total{reason="b"} 0', 'longshot_test_known_seconds_count{status="failed"} 0', 'longshot_test_known_seconds_bucket{le="+Inf",status="ok"} 0', 'longshot_test_known_seconds_sum{status="ok"} 0']) {
      expect(page).toContain(line);
    }
    expect(() => histogram({ name: 'longshot_test_known_bad', help: 'k', labelNames: ['status'] as const, known: {} })).toThrow(/known label values must cover exactly/);
  });

  it('refuse a name reused for another kind or label set', () => {
    counter({ name: 'longshot_test_clash', help: 'c' });
    expect(() => gauge({ name: 'longshot_test_clash', help: 'c' })).toThrow(/already registered as a different kind \(Counter\)/);
    expect(() => counter({ name: 'longshot_test_clash', help: 'c', labelNames: ['x'] })).toThrow(/labels \[\], requested \[x\]/);
  });
});

describe('startMetricsServer', () => {
  it('serves the registry on GET /metrics, with default process metrics, and 404 elsewhere', async () => {
    const jobs = counter({ name: 'longshot_test_jobs_total', help: 'jobs run', labelNames: ['outcome'] as const });
    jobs.inc({ outcome: 'done' }, 2);
    const server = await startMetricsServer({ port: 0 });
    try {
      expect(server.port).toBeGreaterThan(0);
      const res = await get(server.port, '/metrics');
      expect(res.status).toBe(200);
      expect(res.type).toBe(registry.contentType);
      expect(res.body).toContain('# TYPE longshot_test_jobs_total counter');
      expect(res.body).toContain('longshot_test_jobs_total{outcome="done"} 2');
      expect(res.body).toMatch(/^process_cpu_user_seconds_total \d/m);
      expect(res.body).toMatch(/^nodejs_heap_size_used_bytes \d/m);
      expect((await get(server.port, '/metrics?x=1')).status).toBe(200);
      expect((await get(server.port, '/')).status).toBe(404);
      expect((await get(server.port, '/metricsx')).status).toBe(404);
    } finally {
      await server.close();
      await server.close();
    }
    await expect(get(server.port, '/metrics')).rejects.toThrow(/ECONNREFUSED/);
  });

  it('reports a port in use clearly', async () => {
    const a = await startMetricsServer({ port: 0 });
    try {
      await expect(startMetricsServer({ port: a.port })).rejects.toThrow(new RegExp(`cannot listen on 127.0.0.1:${a.port}: .*EADDRINUSE`));
    } finally {
      await a.close();
    }
  });
});

describe('logger', () => {
  afterEach(() => {
    vi.restoreAllMocks();
    setLogLevel('info');
  });

  function capture(): string[] {
    const lines: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      lines.push(String(chunk));
      return true;
    });
    return lines;
  }

  it('writes JSON lines to stderr at info and above by default', () => {
    const lines = capture();
    const log = logger('test');
    log.debug('hidden');
    log.info('started', { port: 1234 });
    log.error('failed', { err: Object.assign(new Error('boom'), { code: 'ECONNRESET' }) });
    expect(lines).toHaveLength(2);
    expect(lines.every((l) => l.endsWith('\n'))).toBe(true);
    const [info, error] = lines.map((l) => JSON.parse(l));
    expect(info).toMatchObject({ level: 'info', component: 'test', msg: 'started', port: 1234 });
    expect(Date.parse(info.time)).not.toBeNaN();
    expect(error).toMatchObject({ level: 'error', msg: 'failed', err: { name: 'Error', message: 'boom', code: 'ECONNRESET' } });
    expect(error.err.stack).toContain('boom');
  });

  it('follows the level the app sets, also in loggers made before it was set', () => {
    const early = logger('test');
    setLogLevel(parseLogLevel('warn'));
    let lines = capture();
    early.info('no');
    logger('test').warn('yes');
    expect(lines.map((l) => JSON.parse(l).msg)).toEqual(['yes']);

    setLogLevel(parseLogLevel(' DEBUG '));
    vi.restoreAllMocks();
    lines = capture();
    early.debug('shown');
    expect(lines.map((l) => JSON.parse(l).msg)).toEqual(['shown']);
  });

  it('parseLogLevel: unset is info, and a typo falls back to info saying so once (naming the variable)', () => {
    expect(parseLogLevel(undefined)).toBe('info');
    expect(parseLogLevel('')).toBe('info');
    const lines = capture();
    expect(parseLogLevel('verbose')).toBe('info');
    expect(parseLogLevel('loud')).toBe('info');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0])).toMatchObject({ level: 'warn', msg: 'unknown LONGSHOT_LOG_LEVEL "verbose", using info' });
  });

  it('does not throw on circular fields', () => {
    const lines = capture();
    const loop: Record<string, unknown> = {};
    loop.self = loop;
    logger('test').info('circular', { loop });
    expect(JSON.parse(lines[0])).toMatchObject({ msg: 'circular', fields: '[unserializable]' });
  });
});
