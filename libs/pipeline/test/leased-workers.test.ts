import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkerLeases, WorkerRegistry, type WorkerInfo } from '@longshot/cache';
import { candidates, LeasedWorkers, placeByHost, workerState } from '../src';
import { testRedis, type TestRedis } from '../../cache/test/helpers';

const worker = (id: string, over: Partial<WorkerInfo> = {}): WorkerInfo => ({
  id,
  address: `127.0.0.1:${1000 + id.length}`,
  metricsAddress: '127.0.0.1:9',
  capacity: 2,
  sessions: 0,
  models: ['*'],
  backend: 'cpu',
  numerics: 'cpu:simd=avx2:storage=f32:build=000000000000',
  pid: 1,
  startedAt: 0,
  ...over,
});

describe('worker availability', () => {
  it('a worker whose sessions fill its capacity is full, not free; a leased one is leased', () => {
    expect(workerState(worker('a'), false)).toBe('free');
    expect(workerState(worker('a', { sessions: 2 }), false)).toBe('full');
    expect(workerState(worker('a', { sessions: 1 }), true)).toBe('leased');
  });

  it('candidates: serving the model, not full, of the pinned numerics, least busy first', () => {
    const scalar = 'cpu:simd=scalar:storage=f32:build=000000000000';
    const ws = [
      worker('c', { sessions: 1 }),
      worker('b'),
      worker('full', { sessions: 2 }),
      worker('other-model', { models: ['wan2.1-t2v-1.3b'] }),
      worker('s', { numerics: scalar }),
    ];
    expect(candidates(ws, 'tiny')).toEqual(['b', 's', 'c']);
    expect(candidates(ws, 'wan2.1-t2v-1.3b')).toEqual(['b', 'other-model', 's', 'c']);
    expect(candidates(ws, 'tiny', new Set(['b']))).toEqual(['s', 'c']);
    expect(candidates(ws, 'tiny', new Set(), scalar)).toEqual(['s']);
    expect(candidates(ws, 'tiny', new Set(), ws[0].numerics)).toEqual(['b', 'c']);
  });
});

/** A worker on `host` (its data plane's host id). */
const on = (host: string, id: string, over: Partial<WorkerInfo> = {}): WorkerInfo => worker(id, { dataPlane: { tcpAddress: '127.0.0.1:7000', tcp: true, hostId: host, shm: true }, ...over });
const infoOf = (ws: WorkerInfo[]) => new Map(ws.map((w) => [w.id, w]));

describe('placement by host', () => {
  it('keeps a job on one host when one can take every stage, consecutively, the least busy such host first', () => {
    // Least busy first alone would alternate hosts: x1 (A), x2 (B), x3 (A), x4 (B).
    const ws = [on('A', 'x1'), on('B', 'x2'), on('A', 'x3'), on('B', 'x4')];
    expect(candidates(ws, 'tiny')).toEqual(['x1', 'x2', 'x3', 'x4']);
    expect(placeByHost(candidates(ws, 'tiny'), infoOf(ws), 2)).toEqual(['x1', 'x3', 'x2', 'x4']);
    // A busier host comes after an idle one that also fits.
    const busyA = [on('A', 'x1', { sessions: 1 }), on('B', 'x2'), on('A', 'x3', { sessions: 1 }), on('B', 'x4')];
    expect(placeByHost(candidates(busyA, 'tiny'), infoOf(busyA), 2)).toEqual(['x2', 'x4', 'x1', 'x3']);
  });

  it('spreads over as few hosts as it can when none takes every stage, biggest first, each host\'s stages together', () => {
    const ws = [on('A', 'a1'), on('B', 'b1'), on('B', 'b2'), on('C', 'c1'), on('B', 'b3')];
    expect(placeByHost(candidates(ws, 'tiny'), infoOf(ws), 4)).toEqual(['b1', 'b2', 'b3', 'a1', 'c1']);
  });

  it('leaves the order alone without host information (each worker its own host) or on one host', () => {
    const plain = [worker('c', { sessions: 1 }), worker('b'), worker('a')];
    expect(placeByHost(candidates(plain, 'tiny'), infoOf(plain), 2)).toEqual(candidates(plain, 'tiny'));
    const one = [on('A', 'c', { sessions: 1 }), on('A', 'b'), on('A', 'a')];
    expect(placeByHost(candidates(one, 'tiny'), infoOf(one), 2)).toEqual(['a', 'b', 'c']);
  });
});

describe('LeasedWorkers places a job on one host (real Redis)', () => {
  let t: TestRedis;
  const registries: WorkerRegistry[] = [];
  beforeAll(async () => {
    t = await testRedis();
    // Registered in an order that alternates hosts.
    for (const w of [on('A', 'x1'), on('B', 'x2'), on('A', 'x3'), on('B', 'x4')]) {
      const r = new WorkerRegistry(t.redis, { keys: t.keys });
      await r.register(w);
      registries.push(r);
    }
  });
  afterAll(async () => {
    for (const r of registries) await r.deregister();
    await t?.close();
  });

  const source = (job: string) =>
    new LeasedWorkers({ leases: new WorkerLeases(t.redis, { keys: t.keys }), registry: new WorkerRegistry(t.redis, { keys: t.keys }), holder: { job, run: `${job}-run` }, model: 'tiny', leaseMs: 10_000, waitMs: 0 });

  it('leases two stages on one host, and the next job the other host', async () => {
    const first = source('job-1');
    const second = source('job-2');
    try {
      expect((await first.tryLease(2))?.map((w) => w.id)).toEqual(['x1', 'x3']);
      expect((await second.tryLease(2))?.map((w) => w.id)).toEqual(['x2', 'x4']);
    } finally {
      await first.close();
      await second.close();
    }
  });

  it('leases four stages host by host: one network hop between the two halves', async () => {
    const all = source('job-3');
    try {
      expect((await all.tryLease(4))?.map((w) => w.id)).toEqual(['x1', 'x3', 'x2', 'x4']);
    } finally {
      await all.close();
    }
  });
});
