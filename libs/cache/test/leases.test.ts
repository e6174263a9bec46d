import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkerLeases, WorkerRegistry, type WorkerInfo } from '../src';
import { sleep, testRedis, type TestRedis } from './helpers';

let t: TestRedis;
const registries: WorkerRegistry[] = [];
beforeAll(async () => {
  t = await testRedis();
  for (const id of ['w0', 'w1', 'w2']) {
    const r = new WorkerRegistry(t.redis, { keys: t.keys });
    const info: WorkerInfo = { id, address: '127.0.0.1:1', metricsAddress: '127.0.0.1:2', capacity: 2, sessions: 0, models: ['*'], backend: 'cpu', numerics: 'cpu:f32:simd=scalar:test', pid: 1, startedAt: Date.now() };
    await r.register(info, { ttlMs: 5000, heartbeatMs: 1000 });
    registries.push(r);
  }
});
afterAll(async () => {
  for (const r of registries) await r.deregister();
  await t?.close();
});

describe('WorkerLeases', () => {
  it('leases all or nothing, never the same worker twice, and releases only its own', async () => {
    const leases = new WorkerLeases(t.redis, { keys: t.keys });
    const a = { job: 'ja', run: 'r1' };
    const b = { job: 'jb', run: 'r1' };
    expect(await leases.acquire(a, ['w0', 'w1'], 2, 5000)).toEqual(['w0', 'w1']);
    // Two free needed, one free: nothing is written.
    expect(await leases.acquire(b, ['w0', 'w1', 'w2', 'ghost'], 2, 5000)).toBeNull();
    expect((await leases.leases(['w2'])).length).toBe(0);
    expect(await leases.acquire(b, ['w0', 'w1', 'w2'], 1, 5000)).toEqual(['w2']);
    expect(await leases.release(b, ['w0'])).toBe(0);
    const held = await leases.leases(['w0', 'w1', 'w2']);
    expect(held.map((l) => [l.worker, l.holder.job])).toEqual([['w0', 'ja'], ['w1', 'ja'], ['w2', 'jb']]);
    expect(await leases.release(a, ['w0', 'w1'])).toBe(2);
    expect(await leases.release(b, ['w2'])).toBe(1);
  });

  it('races: concurrent runs split the workers without overlap', async () => {
    const leases = new WorkerLeases(t.redis, { keys: t.keys });
    const got = await Promise.all(Array.from({ length: 6 }, (_, i) => leases.acquire({ job: `j${i}`, run: 'r' }, ['w0', 'w1', 'w2'], 1, 5000)));
    const ids = got.filter((g): g is string[] => g !== null).flat();
    expect(ids.sort()).toEqual(['w0', 'w1', 'w2']);
    for (let i = 0; i < 6; i++) await leases.release({ job: `j${i}`, run: 'r' }, ['w0', 'w1', 'w2']);
  });

  it('expires unless renewed; a takeover run of the same job inherits its workers and the old run learns it lost them', async () => {
    const leases = new WorkerLeases(t.redis, { keys: t.keys });
    const old = { job: 'jt', run: 'dead-replica' };
    expect(await leases.acquire(old, ['w0'], 1, 300)).toEqual(['w0']);
    expect(await leases.renew(old, ['w0'], 300)).toEqual([]);
    expect(await leases.acquire({ job: 'other', run: 'x' }, ['w0'], 1, 300)).toBeNull();
    const next = { job: 'jt', run: 'new-replica' };
    expect(await leases.acquire(next, ['w0'], 1, 300)).toEqual(['w0']);
    expect(await leases.renew(old, ['w0'], 300)).toEqual(['w0']);
    await sleep(400);
    expect(await leases.leases(['w0'])).toEqual([]);
    expect(await leases.acquire({ job: 'other', run: 'x' }, ['w0'], 1, 300)).toEqual(['w0']);
  });

  it('does not lease unregistered workers', async () => {
    const leases = new WorkerLeases(t.redis, { keys: t.keys });
    expect(await leases.acquire({ job: 'j', run: 'r' }, ['nobody'], 1, 1000)).toBeNull();
  });
});
