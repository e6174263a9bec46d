import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobStore } from '../src';
import { testRedis, type TestRedis } from './helpers';

let t: TestRedis;
beforeAll(async () => {
  t = await testRedis();
});
afterAll(async () => {
  await t?.close();
});

const input = (id: string, tenant = 'acme') => ({ id, tenant, spec: { prompt: 'p' }, priority: 5, stages: null, blocks: 3, blockSteps: 12 });

describe('JobStore', () => {
  it('creates, updates with events, and never changes a terminal record', async () => {
    const jobs = new JobStore<{ prompt: string }, { sha: string }>(t.redis, { keys: t.keys, retentionMs: 60_000 });
    const made = await jobs.create(input('j1'), null);
    expect(made.created).toBe(true);
    expect((await jobs.get('j1'))!.status).toBe('queued');
    expect((await jobs.update('j1', { status: 'running', fields: { stages: 2, workers: ['a', 'b'], attempts: 1 }, event: { name: 'started', data: { stages: 2 } } })).changed).toBe(true);
    expect(await jobs.blockDone('j1', 1, { index: 1 })).toBe(false);
    expect(await jobs.blockDone('j1', 0, { index: 0 })).toBe(true);
    expect(await jobs.blockDone('j1', 0, { index: 0 })).toBe(false);
    expect((await jobs.update('j1', { status: 'canceled', event: { name: 'canceled', data: {} } })).changed).toBe(true);
    const late = await jobs.update('j1', { from: ['running'], fields: { progress: { blockStepsDone: 9 } }, event: { name: 'progress', data: {} } });
    expect(late).toEqual({ changed: false, previous: 'canceled' });
    const rec = (await jobs.get('j1'))!;
    expect(rec).toMatchObject({ status: 'canceled', stages: 2, workers: ['a', 'b'], attempts: 1, progress: { blocksDone: 1, blockStepsDone: 0, blocks: 3 } });
    expect((await jobs.events('j1', '0')).map((e) => e.event)).toEqual(['queued', 'started', 'block', 'canceled']);
    expect(await t.redis.pttl(`${t.keys.root}:{jobs}:record:j1`)).toBeGreaterThan(0);
  });

  it('answers an idempotency key with the first job, and says whether the body matched', async () => {
    const jobs = new JobStore(t.redis, { keys: t.keys });
    expect((await jobs.create(input('j2'), { key: 'k', bodyHash: 'h1' })).created).toBe(true);
    expect(await jobs.create(input('j3'), { key: 'k', bodyHash: 'h1' })).toEqual({ created: false, existingId: 'j2', sameBody: true });
    expect(await jobs.create(input('j4'), { key: 'k', bodyHash: 'h2' })).toEqual({ created: false, existingId: 'j2', sameBody: false });
    expect(await jobs.get('j3')).toBeNull();
  });

  it('lists newest first with a status filter and a cursor', async () => {
    const jobs = new JobStore(t.redis, { keys: t.keys });
    for (const id of ['l1', 'l2', 'l3']) {
      await jobs.create(input(id), null);
      await new Promise((r) => setTimeout(r, 5));
    }
    await jobs.update('l2', { status: 'failed', fields: { error: { message: 'x' } } });
    const first = await jobs.list({ status: 'queued', limit: 1 });
    expect(first.items.map((r) => r.id)).toEqual(['l3']);
    const second = await jobs.list({ status: 'queued', limit: 1, cursor: first.cursor! });
    expect(second.items.map((r) => r.id)).toEqual(['l1']);
    expect((await jobs.list({ status: 'failed', limit: 10 })).items.map((r) => r.error)).toEqual([{ message: 'x' }]);
  });

  it("lists one tenant's jobs from its own index, and a delete drops them from it", async () => {
    const jobs = new JobStore(t.redis, { keys: t.keys });
    await jobs.create(input('t1', 'red'), null);
    await jobs.create(input('t2', 'blue'), null);
    await jobs.create(input('t3', 'red'), null);
    const ids = async (tenant?: string) => (await jobs.list({ tenant, limit: 10 })).items.map((r) => r.id).sort();
    expect(await ids('red')).toEqual(['t1', 't3']);
    expect(await ids('blue')).toEqual(['t2']);
    expect((await jobs.get('t2'))!.tenant).toBe('blue');
    await jobs.update('t1', { status: 'canceled' });
    expect(await jobs.remove('t1')).toBe('canceled');
    expect(await ids('red')).toEqual(['t3']);
    expect(await t.redis.zrange(`${t.keys.root}:{jobs}:index:red`, 0, -1)).toEqual(['t3']);
  });

  it('keeps the list of queued records the reconciler walks: in on create and retry, out on start and end', async () => {
    const jobs = new JobStore(t.redis, { keys: t.keys });
    for (const id of ['q1', 'q2', 'q3']) await jobs.create(input(id), null);
    const now = Date.now() + 1;
    expect(await jobs.queuedBefore(now, 100)).toEqual(expect.arrayContaining(['q1', 'q2', 'q3']));
    expect(await jobs.queuedBefore(0, 100)).toEqual([]);
    await jobs.update('q1', { status: 'running' });
    await jobs.update('q2', { status: 'failed' });
    let queued = await jobs.queuedBefore(now, 100);
    expect(queued).toContain('q3');
    expect(queued).not.toContain('q1');
    expect(queued).not.toContain('q2');
    // A failed run goes back to queued for its retry: listed again.
    await jobs.update('q1', { from: ['running'], status: 'queued' });
    expect(await jobs.queuedBefore(now, 100)).toContain('q1');
    // A record gone (retention) is dropped from the list when met.
    await t.redis.del(`${t.keys.root}:{jobs}:record:q3`);
    queued = await jobs.queuedBefore(now, 100);
    expect(queued).not.toContain('q3');
    expect(await t.redis.zscore(`${t.keys.root}:{jobs}:queued`, 'q3')).toBeNull();
  });
});
