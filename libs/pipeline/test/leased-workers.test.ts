import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkerLeases, WorkerRegistry, type WorkerInfo } from '@longshot/cache';
import { candidates, LeasedWorkers, placeByTopology, stagePlacement, workerState } from '../src';
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
    expect(placeByTopology(candidates(ws, 'tiny'), infoOf(ws), 2)).toEqual(['x1', 'x3', 'x2', 'x4']);
    // A busier host comes after an idle one that also fits.
    const busyA = [on('A', 'x1', { sessions: 1 }), on('B', 'x2'), on('A', 'x3', { sessions: 1 }), on('B', 'x4')];
    expect(placeByTopology(candidates(busyA, 'tiny'), infoOf(busyA), 2)).toEqual(['x2', 'x4', 'x1', 'x3']);
  });

  it('spreads over as few hosts as it can when none takes every stage, biggest first, each host\'s stages together', () => {
    const ws = [on('A', 'a1'), on('B', 'b1'), on('B', 'b2'), on('C', 'c1'), on('B', 'b3')];
    expect(placeByTopology(candidates(ws, 'tiny'), infoOf(ws), 4)).toEqual(['b1', 'b2', 'b3', 'a1', 'c1']);
  });

  it('leaves the order alone without host information (each worker its own host) or on one host', () => {
    const plain = [worker('c', { sessions: 1 }), worker('b'), worker('a')];
    expect(placeByTopology(candidates(plain, 'tiny'), infoOf(plain), 2)).toEqual(candidates(plain, 'tiny'));
    const one = [on('A', 'c', { sessions: 1 }), on('A', 'b'), on('A', 'a')];
    expect(placeByTopology(candidates(one, 'tiny'), infoOf(one), 2)).toEqual(['a', 'b', 'c']);
  });
});

/** A worker on `host` in NVLink domain `domain`. */
const inDomain = (domain: string, host: string, id: string, over: Partial<WorkerInfo> = {}): WorkerInfo => on(host, id, { topology: { gpu: { index: 0, uuid: `GPU-${id}`, name: 'NVIDIA H100 80GB HBM3' }, nvlinkDomain: domain, linkGbps: 100 }, ...over });

describe('placement by NVLink domain, then host', () => {
  it('keeps a job in one NVLink domain spanning hosts rather than on one host outside it', () => {
    // Host A has two workers but no domain; rack R spans hosts B and C with one worker each.
    const ws = [on('A', 'a1'), inDomain('R', 'B', 'b1'), on('A', 'a2'), inDomain('R', 'C', 'c1')];
    expect(candidates(ws, 'tiny')).toEqual(['a1', 'a2', 'b1', 'c1']);
    expect(placeByTopology(candidates(ws, 'tiny'), infoOf(ws), 2)).toEqual(['b1', 'c1', 'a1', 'a2']);
  });

  it('within a domain, as few hosts as possible: a host that takes every stage first', () => {
    const ws = [inDomain('R', 'B', 'b1'), inDomain('R', 'C', 'c1'), inDomain('R', 'C', 'c2'), inDomain('R', 'B', 'b2'), inDomain('R', 'C', 'c3')];
    expect(placeByTopology(candidates(ws, 'tiny'), infoOf(ws), 3)).toEqual(['c1', 'c2', 'c3', 'b1', 'b2']);
    // Four stages: no host takes them all; the bigger host's stages come first, then the other's.
    expect(placeByTopology(candidates(ws, 'tiny'), infoOf(ws), 4)).toEqual(['c1', 'c2', 'c3', 'b1', 'b2']);
  });

  it('spreads over as few domains as it can, biggest first, the least busy of those that fit', () => {
    const ws = [inDomain('N1', 'n1', 'p1'), inDomain('N2', 'n2', 'q1'), inDomain('N2', 'n2', 'q2'), inDomain('N1', 'n1', 'p2', { sessions: 1 }), inDomain('N2', 'n2', 'q3')];
    expect(placeByTopology(candidates(ws, 'tiny'), infoOf(ws), 2)).toEqual(['q1', 'q2', 'q3', 'p1', 'p2']);
    expect(placeByTopology(candidates(ws, 'tiny'), infoOf(ws), 5)).toEqual(['q1', 'q2', 'q3', 'p1', 'p2']);
  });

  it('a leased worker\'s placement for the planner: host, domain, GPU and link speed in bytes per second', () => {
    expect(stagePlacement(inDomain('R', 'B', 'b1'))).toEqual({ host: 'B', nvlinkDomain: 'R', gpu: 'GPU-b1', nicBytesPerSecond: 12.5e9 });
    expect(stagePlacement(worker('plain'))).toEqual({ host: null, nvlinkDomain: null, gpu: null, nicBytesPerSecond: null });
    expect(stagePlacement(on('B', 'x', { topology: { gpu: { index: 2, uuid: '', name: 'H100' }, nvlinkDomain: '', linkGbps: 0 } }))).toEqual({ host: 'B', nvlinkDomain: null, gpu: 'B#2', nicBytesPerSecond: null });
  });
});

/** Registers `fleet` in a Redis of its own around the enclosing describe block; `source(job)` leases from it. */
function registeredFleet(fleet: () => WorkerInfo[]): { source(job: string): LeasedWorkers } {
  let t: TestRedis;
  const registries: WorkerRegistry[] = [];
  beforeAll(async () => {
    t = await testRedis();
    for (const w of fleet()) {
      const r = new WorkerRegistry(t.redis, { keys: t.keys });
      await r.register(w);
      registries.push(r);
    }
  });
  afterAll(async () => {
    for (const r of registries) await r.deregister();
    await t?.close();
  });
  return {
    source: (job) =>
      new LeasedWorkers({ leases: new WorkerLeases(t.redis, { keys: t.keys }), registry: new WorkerRegistry(t.redis, { keys: t.keys }), holder: { job, run: `${job}-run` }, model: 'tiny', leaseMs: 10_000, waitMs: 0 }),
  };
}

describe('LeasedWorkers places a job in one NVLink domain (real Redis)', () => {
  // Least busy first alternates: a host without a domain (A) and a rack domain over hosts B and C.
  const { source } = registeredFleet(() => [on('A', 'a1'), inDomain('R', 'B', 'b1'), on('A', 'a2'), inDomain('R', 'C', 'c1'), inDomain('R', 'C', 'c2')]);

  it('leases three stages in the domain (one host first), hands out their topology, and the next job the rest', async () => {
    const first = source('job-r');
    const second = source('job-a');
    try {
      const got = await first.tryLease(3);
      expect(got?.map((w) => w.id)).toEqual(['c1', 'c2', 'b1']);
      expect(got?.map((w) => stagePlacement(w).nvlinkDomain)).toEqual(['R', 'R', 'R']);
      expect(got?.[0].topology?.gpu?.uuid).toBe('GPU-c1');
      expect((await second.tryLease(2))?.map((w) => w.id)).toEqual(['a1', 'a2']);
    } finally {
      await first.close();
      await second.close();
    }
  });
});

describe('LeasedWorkers places a job on one host (real Redis)', () => {
  // Registered in an order that alternates hosts.
  const { source } = registeredFleet(() => [on('A', 'x1'), on('B', 'x2'), on('A', 'x3'), on('B', 'x4')]);

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
