import { Job, Queue, QueueKeys, Worker } from 'bullmq';
import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type RedisHandle } from '@longshot/cache';
import { QUEUE_NAME, queuePrefix } from '../src/queue';
import { waitFor } from '../../../test/e2e/http';

/*
 * Redis Cluster: BullMQ's Lua scripts read and write many keys of a queue at once, which a
 * cluster allows only within one hash slot. The queue prefix carries a hash tag so they all share
 * one; checked by computing the slots, and by running the queue on a real one-node Redis Cluster.
 */

/** CRC16/XMODEM, the checksum Redis Cluster takes modulo 16384 (cluster spec, appendix A). */
function crc16(data: Buffer): number {
  let crc = 0;
  for (const byte of data) {
    crc ^= byte << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

/** The slot of a key: of its hash tag (the first non-empty `{...}`) when it has one. */
function slot(key: string): number {
  const open = key.indexOf('{');
  const close = open >= 0 ? key.indexOf('}', open + 1) : -1;
  const hashed = close > open + 1 ? key.slice(open + 1, close) : key;
  return crc16(Buffer.from(hashed, 'utf8')) % 16384;
}

/** Every key BullMQ writes for `QUEUE_NAME` under `prefix`: the queue's own, one job's, the metrics. */
function queueKeys(prefix: string): string[] {
  const k = new QueueKeys(prefix);
  const job = k.toKey(QUEUE_NAME, '123e4567-e89b-42d3-a456-426614174000');
  return [
    ...Object.values(k.getKeys(QUEUE_NAME)),
    job,
    ...['lock', 'logs', 'dependencies', 'processed', 'failed', 'unsuccessful'].map((s) => `${job}:${s}`),
    ...['completed', 'failed'].flatMap((m) => [k.toKey(QUEUE_NAME, `metrics:${m}`), k.toKey(QUEUE_NAME, `metrics:${m}:data`)]),
  ];
}

describe('the render queue on Redis Cluster', () => {
  it('computes slots as Redis does (the reference values of the cluster spec and docs)', () => {
    expect(crc16(Buffer.from('123456789'))).toBe(0x31c3);
    expect(slot('foo')).toBe(12182);
    expect(slot('somekey')).toBe(11058);
    expect(slot('{user1000}.following')).toBe(slot('{user1000}.followers'));
    // The spec's edge cases: an empty first tag hashes the whole key; the tag ends at the first '}'.
    expect(slot('foo{}{bar}')).toBe(crc16(Buffer.from('foo{}{bar}')) % 16384);
    expect(slot('foo{{bar}}zap')).toBe(slot('{bar'));
  });

  it('puts every key of the queue in one hash slot', () => {
    expect(queuePrefix()).toMatch(/\{[^{}]+\}$/);
    const keys = queueKeys(queuePrefix());
    expect(keys.length).toBeGreaterThan(25);
    expect(new Set(keys.map(slot)).size).toBe(1);
    // Without the hash tag (the prefix before this change) they spread over the slots.
    expect(new Set(queueKeys(queuePrefix().replace(/[{}]/g, '')).map(slot)).size).toBeGreaterThan(10);
  });

  describe('on a real one-node Redis Cluster', () => {
    let server: RedisHandle;
    let cluster: Cluster;
    beforeAll(async () => {
      server = await startRedis({ url: null, args: ['--cluster-enabled', 'yes', '--cluster-announce-ip', '127.0.0.1'] });
      const admin = new Redis(server.url);
      try {
        await admin.call('CLUSTER', 'ADDSLOTSRANGE', '0', '16383');
        await waitFor('the cluster to be ok', async () => /cluster_state:ok/.test(String(await admin.call('CLUSTER', 'INFO'))), 30_000);
      } finally {
        admin.disconnect();
      }
      const { hostname, port } = new URL(server.url);
      cluster = new Cluster([{ host: hostname, port: Number(port) }], { redisOptions: { maxRetriesPerRequest: null } });
    });
    afterAll(async () => {
      cluster?.disconnect();
      await server?.stop();
    });

    it('runs a job through the queue with the app\'s prefix; the untagged prefix is refused (CROSSSLOT)', async () => {
      const queue = new Queue(QUEUE_NAME, { connection: cluster, prefix: queuePrefix() });
      const worker = new Worker(QUEUE_NAME, async (job: Job<{ n: number }>) => job.data.n * 2, { connection: cluster.duplicate(), prefix: queuePrefix() });
      const untagged = new Queue(QUEUE_NAME, { connection: cluster, prefix: queuePrefix().replace(/[{}]/g, '') });
      try {
        const job = await queue.add('render', { n: 21 }, { jobId: 'job-1', priority: 2 });
        const done = await waitFor('the job to complete', async () => ((await queue.getJobState(job.id!)) === 'completed' ? Job.fromId(queue, job.id!) : null), 30_000);
        expect(done?.returnvalue).toBe(42);
        expect(await queue.getJobCounts('completed')).toEqual({ completed: 1 });
        await expect(untagged.add('render', { n: 1 }, { jobId: 'job-2' })).rejects.toThrow(/CROSSSLOT/);
      } finally {
        await worker.close();
        await queue.close();
        await untagged.close();
      }
    });
  });
});
