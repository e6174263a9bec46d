import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebhookOutbox, WebhookSecretGenerations } from '../src';
import { sleep, testRedis, type TestRedis } from './helpers';

let t: TestRedis;
beforeAll(async () => {
  t = await testRedis();
});
afterAll(async () => {
  await t?.close();
});

const hook = { url: 'https://hooks.example.com/in', events: ['started', 'succeeded'] };

describe('WebhookOutbox', () => {
  it('claims a due subscription once, holds it, and lets only the claim holder settle it', async () => {
    const outbox = new WebhookOutbox(t.redis, t.keys);
    await outbox.subscribe('w1', hook);
    const [claim, ...rest] = await outbox.claimDue(10, 60_000);
    expect(rest).toEqual([]);
    expect(claim.subscription).toMatchObject({ jobId: 'w1', url: hook.url, events: hook.events, cursor: '0', attempts: 0 });
    // Held: not due for anyone else.
    expect(await outbox.claimDue(10, 60_000)).toEqual([]);
    expect(await outbox.settle(claim, { cursor: '5-0', attempts: 2, dueAt: Date.now() })).toBe(true);
    const again = await outbox.claimDue(10, 60_000);
    expect(again.map((c) => c.subscription)).toEqual([expect.objectContaining({ jobId: 'w1', cursor: '5-0', attempts: 2 })]);
    // The first claim is stale now: its writes are refused.
    expect(await outbox.settle(claim, { cursor: '9-0', attempts: 0, dueAt: Date.now() })).toBe(false);
    expect(await outbox.finish(claim)).toBe(false);
    expect((await outbox.get('w1'))!.cursor).toBe('5-0');
    expect(await outbox.finish(again[0])).toBe(true);
    expect(await outbox.get('w1')).toBeNull();
    expect(await outbox.pending()).toBe(0);
  });

  it('gives an expired claim (a replica that died mid-attempt) to the next claimer, from the same cursor', async () => {
    const outbox = new WebhookOutbox(t.redis, t.keys);
    await outbox.subscribe('w2', hook);
    const [dead] = await outbox.claimDue(10, 50);
    await sleep(120);
    const [taken] = await outbox.claimDue(10, 60_000);
    expect(taken.subscription).toMatchObject({ jobId: 'w2', cursor: '0' });
    expect(taken.token).not.toBe(dead.token);
    expect(await outbox.settle(dead, { cursor: '1-0', attempts: 0, dueAt: 0 })).toBe(false);
    expect(await outbox.finish(taken)).toBe(true);
  });

  it('claims only what is due, at most `limit`, and forgets unsubscribed jobs', async () => {
    const outbox = new WebhookOutbox(t.redis, t.keys);
    for (const id of ['a1', 'a2', 'a3']) await outbox.subscribe(id, hook);
    const first = await outbox.claimDue(2, 60_000);
    expect(first).toHaveLength(2);
    const later = Date.now() + 60_000;
    for (const c of first) expect(await outbox.settle(c, { cursor: '0', attempts: 1, dueAt: later })).toBe(true);
    expect((await outbox.claimDue(10, 60_000)).map((c) => c.subscription.jobId)).toEqual(['a3']);
    expect(await outbox.pending()).toBe(3);
    for (const id of ['a1', 'a2', 'a3']) await outbox.unsubscribe(id);
    expect(await outbox.pending()).toBe(0);
    expect(await t.redis.keys(`${t.keys.root}:{webhooks}:*`)).toEqual([]);
  });
});

describe('WebhookSecretGenerations', () => {
  it('starts every tenant at generation 0, rotates atomically, and keeps only the generation and its time', async () => {
    const generations = new WebhookSecretGenerations(t.redis, t.keys);
    expect(await generations.get('acme')).toEqual({ generation: 0, rotatedAt: null });
    expect(await generations.rotate('acme', 1_000)).toEqual({ generation: 1, rotatedAt: 1_000 });
    // Concurrent rotations each get their own generation.
    const many = await Promise.all([2_000, 2_001, 2_002].map((at) => generations.rotate('acme', at)));
    expect(many.map((g) => g.generation).sort()).toEqual([2, 3, 4]);
    expect((await generations.get('acme')).generation).toBe(4);
    expect(await generations.get('globex')).toEqual({ generation: 0, rotatedAt: null });
    const key = t.keys.webhookSecretKey('acme');
    expect(key).toBe(`${t.keys.root}:{webhooks}:secret:acme`);
    expect(Object.keys(await t.redis.hgetall(key)).sort()).toEqual(['generation', 'rotatedAt']);
    await expect(generations.rotate('Not A Tenant', 1)).rejects.toThrow(/tenant/);
  });
});
