import { spawn } from 'node:child_process';
import { join } from 'node:path';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registry as metrics, type Logger } from '@longshot/telemetry';
import { WorkerRegistry, startRedis, type WorkerInfo } from '../src';
import { eventually, sleep, testRedis, type TestRedis } from './helpers';

let t: TestRedis;
beforeAll(async () => {
  t = await testRedis();
});
afterAll(async () => {
  await t?.close();
});

function info(id: string, extra: Partial<WorkerInfo> = {}): WorkerInfo {
  return {
    id,
    address: '127.0.0.1:50051',
    metricsAddress: '127.0.0.1:9464',
    capacity: 4,
    sessions: 0,
    models: ['wan2.1-t2v-1.3b'],
    backend: 'cpu', numerics: 'cpu:f32:simd=scalar:test',
    pid: process.pid,
    startedAt: 1_700_000_000_000,
    ...extra,
  };
}

/** A logger that keeps records, to assert on what the registry reports. */
function recorder(): Logger & { records: { level: string; msg: string; fields?: Record<string, unknown> }[] } {
  const records: { level: string; msg: string; fields?: Record<string, unknown> }[] = [];
  const at = (level: string) => (msg: string, fields?: Record<string, unknown>) => void records.push({ level, msg, fields });
  return { records, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

describe('WorkerRegistry', () => {
  it('registers, lists, gets, and deregisters', async () => {
    const a = new WorkerRegistry(t.redis, { keys: t.keys });
    const b = new WorkerRegistry(t.redis, { keys: t.keys });
    const reader = new WorkerRegistry(t.redis, { keys: t.keys });
    const dataPlane = { tcpAddress: '127.0.0.1:50052', tcp: true, shm: true, hostId: 'boot/host', nccl: true };
    const topology = { gpu: { index: 3, uuid: 'GPU-8f1e2d3c-0000-1111-2222-333344445555', name: 'NVIDIA H100 80GB HBM3' }, nvlinkDomain: 'node-7', linkGbps: 400 };
    await a.register(info('w-a', { models: ['*'], backend: 'cuda', dataPlane, topology }));
    await b.register({ ...info('w-b'), extra: 'not stored' } as WorkerInfo);
    // A data-plane endpoint and a topology are stored as given; a worker without them registers none.
    expect(await reader.list()).toEqual([info('w-a', { models: ['*'], backend: 'cuda', dataPlane, topology }), info('w-b')]);
    expect(await reader.get('w-b')).toEqual(info('w-b'));
    expect(await reader.get('nobody')).toBeNull();
    expect(await reader.isAlive('w-a')).toBe(true);
    const ttl = await t.redis.pttl(t.keys.workerKey('w-a'));
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(3000);

    await a.deregister();
    expect(await reader.isAlive('w-a')).toBe(false);
    // Leaving on purpose is not getting lost.
    expect(await t.redis.exists(t.keys.workerLastSeenKey('w-a'))).toBe(0);
    expect((await reader.listWithLost()).lost).toEqual([]);
    expect(await t.redis.smembers(t.keys.workersIndexKey())).toEqual(['w-b']);
    expect((await reader.list()).map((w) => w.id)).toEqual(['w-b']);
    await b.deregister();
    expect(await reader.list()).toEqual([]);
  });

  it('refuses invalid registrations', async () => {
    const r = new WorkerRegistry(t.redis, { keys: t.keys });
    await expect(r.register(info('w', { address: 'nohost' }))).rejects.toThrow(/address must be host:port/);
    await expect(r.register(info('w', { capacity: 0 }))).rejects.toThrow(/capacity/);
    await expect(r.register(info('w', { models: [] }))).rejects.toThrow(/models/);
    await expect(r.register(info('bad id'))).rejects.toThrow(/whitespace/);
    await expect(r.register(info('w', { dataPlane: { tcpAddress: 'nohost', tcp: true, shm: false, hostId: 'h' } }))).rejects.toThrow(/dataPlane.tcpAddress must be host:port or empty/);
    await expect(r.register(info('w', { dataPlane: { tcpAddress: '', tcp: 'yes', shm: false, hostId: 'h' } as never }))).rejects.toThrow(/dataPlane.tcp and dataPlane.shm must be booleans/);
    await expect(r.register(info('w', { topology: { gpu: null, nvlinkDomain: 'n', linkGbps: -1 } }))).rejects.toThrow('topology.linkGbps must be a non-negative number, got -1');
    await expect(r.register(info('w', { topology: { gpu: { index: -1, uuid: '', name: 'x' }, nvlinkDomain: '', linkGbps: 0 } }))).rejects.toThrow('topology.gpu.index must be a non-negative integer, got -1');
    await expect(r.register(info('w', { topology: { gpu: null, nvlinkDomain: 7, linkGbps: 0 } as never }))).rejects.toThrow(/topology.nvlinkDomain must be a string/);
    await expect(r.register(info('w', { dataPlane: { tcpAddress: '', tcp: true, shm: false, hostId: 'h', nccl: 'yes' } as never }))).rejects.toThrow(/dataPlane.nccl must be a boolean/);
    await expect(r.register(info('w'), { ttlMs: 1000, heartbeatMs: 1000 })).rejects.toThrow(/shorter than ttlMs/);
    await r.register(info('w-once'));
    await expect(r.register(info('w-twice'))).rejects.toThrow(/already registered worker w-once/);
    await r.deregister();
    expect(await r.isAlive('w')).toBe(false);
  });

  it('heartbeats keep a worker alive past its TTL and carry the current session count', async () => {
    const r = new WorkerRegistry(t.redis, { keys: t.keys });
    let sessions = 0;
    await r.register(info('w-beat'), { ttlMs: 300, heartbeatMs: 75, sessions: () => sessions });
    sessions = 3;
    await sleep(900);
    expect(await r.isAlive('w-beat')).toBe(true);
    expect((await r.get('w-beat'))?.sessions).toBe(3);
    await r.deregister();
  });

  it('refresh publishes a changed session count at once, then the regular beats go on', async () => {
    const r = new WorkerRegistry(t.redis, { keys: t.keys });
    let sessions = 2;
    // A heartbeat far longer than the test: only refresh can write the new count.
    await r.register(info('w-refresh'), { ttlMs: 60_000, heartbeatMs: 30_000, sessions: () => sessions });
    expect((await r.get('w-refresh'))?.sessions).toBe(2);
    sessions = 0;
    // Calls made while one waits coalesce into it.
    await Promise.all([r.refresh(), r.refresh(), r.refresh()]);
    expect((await r.get('w-refresh'))?.sessions).toBe(0);
    sessions = 1;
    await r.refresh();
    expect((await r.get('w-refresh'))?.sessions).toBe(1);
    await r.deregister();
    await r.refresh();
    expect(await r.isAlive('w-refresh')).toBe(false);
  });

  it('a worker process that dies disappears within its TTL, is listed as lost for its retention, then pruned from the index', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, 'fixtures', 'worker-process.ts')], {
      env: { ...process.env, REDIS_URL: t.server.url, KEY_ROOT: t.keys.root, WORKER_ID: 'w-doomed', TTL_MS: '500', HEARTBEAT_MS: '100', LOST_MS: '4000' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => d.toString().includes('registered') && resolve());
        child.once('exit', (code) => reject(new Error(`worker fixture exited with ${code}: ${stderr}`)));
      });
      const reader = new WorkerRegistry(t.redis, { keys: t.keys });
      // Alive for several TTLs while it heartbeats.
      await sleep(1200);
      const live = await reader.list();
      expect(live.map((w) => w.id)).toContain('w-doomed');
      expect(live.find((w) => w.id === 'w-doomed')?.pid).toBe(child.pid);

      // SIGKILL: no deregistration, the heartbeats just stop.
      const killedAt = Date.now();
      child.kill('SIGKILL');
      await exited;
      await eventually('the dead worker expires', async () => !(await reader.isAlive('w-doomed')), 2000);
      expect(Date.now() - killedAt).toBeLessThan(1500);
      expect(await t.redis.sismember(t.keys.workersIndexKey(), 'w-doomed')).toBe(1);
      expect((await reader.list()).map((w) => w.id)).not.toContain('w-doomed');
      // Lost, not gone: its last registration (metrics address included) outlives it.
      const seen = await reader.listWithLost();
      expect(seen.live.map((w) => w.id)).not.toContain('w-doomed');
      expect(seen.lost.find((w) => w.id === 'w-doomed')).toMatchObject({ id: 'w-doomed', metricsAddress: '127.0.0.1:9464', pid: child.pid });
      await eventually('the lost worker to be forgotten', async () => !(await reader.listWithLost()).lost.some((w) => w.id === 'w-doomed'), 15_000);
      expect(await t.redis.sismember(t.keys.workersIndexKey(), 'w-doomed')).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('skips a malformed registration without failing the listing', async () => {
    const log = recorder();
    const r = new WorkerRegistry(t.redis, { keys: t.keys, logger: log });
    await t.redis.multi().set(t.keys.workerKey('w-garbage'), '{"id":"w-garbage","capacity":"lots"}', 'PX', 5000).sadd(t.keys.workersIndexKey(), 'w-garbage').exec();
    await t.redis.multi().set(t.keys.workerKey('w-notjson'), 'nope', 'PX', 5000).sadd(t.keys.workersIndexKey(), 'w-notjson').exec();
    await t.redis.sadd(t.keys.workersIndexKey(), 'bad id');
    await r.register(info('w-good'));
    expect((await r.list()).map((w) => w.id)).toEqual(['w-good']);
    await t.redis.srem(t.keys.workersIndexKey(), 'bad id');
    expect(await r.get('w-garbage')).toBeNull();
    expect(log.records.filter((x) => x.level === 'warn').map((x) => x.fields?.worker)).toEqual(expect.arrayContaining(['w-garbage', 'w-notjson']));
    await r.deregister();
    await t.redis.del(t.keys.workerKey('w-garbage'), t.keys.workerKey('w-notjson'));
    await r.list();
  });

  it('survives a Redis outage: heartbeats fail, are logged and counted, and re-register after it', async () => {
    const server = await startRedis({ url: null });
    const port = Number(new URL(server.url).port);
    // Short retry delays so the client notices the server is back quickly.
    const redis = new Redis(server.url, { retryStrategy: () => 50, maxRetriesPerRequest: 1 });
    redis.on('error', () => {});
    const log = recorder();
    const r = new WorkerRegistry(redis, { keys: t.keys, logger: log });
    const failures = async (): Promise<number> => (await metrics.getSingleMetric('longshot_registry_heartbeat_failures_total')!.get()).values[0]?.value ?? 0;
    const before = await failures();
    await r.register(info('w-outage'), { ttlMs: 400, heartbeatMs: 100 });

    await server.stop();
    await eventually('a failed heartbeat is counted', async () => (await failures()) > before, 5000);
    expect(log.records.some((x) => x.level === 'warn' && x.msg.includes('heartbeat failed'))).toBe(true);

    // A fresh, empty server where the old one was: the heartbeat writes the registration back.
    const again = await startRedis({ url: null, port });
    try {
      await eventually('the worker re-registers', async () => (await new WorkerRegistry(redis, { keys: t.keys }).list()).some((w) => w.id === 'w-outage'), 10_000);
      await eventually('recovery is logged', async () => log.records.some((x) => x.msg.includes('recovered')), 2000);
      await r.deregister();
      expect(await redis.exists(t.keys.workerKey('w-outage'))).toBe(0);
    } finally {
      redis.disconnect();
      await again.stop();
    }
  });
});
