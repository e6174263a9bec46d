import { randomBytes } from 'node:crypto';
import Redis from 'ioredis';
import { KeySchema, startRedis, type RedisHandle } from '../src';

export interface TestRedis {
  server: RedisHandle;
  redis: Redis;
  /** A root of its own, so suites sharing a REDIS_URL server never see each other's keys. */
  keys: KeySchema;
  close(): Promise<void>;
}

export async function testRedis(): Promise<TestRedis> {
  // The suite's REDIS_URL, when CI gives one; else a private server.
  const server = await startRedis({ url: process.env.REDIS_URL });
  const redis = new Redis(server.url, { lazyConnect: true });
  await redis.connect();
  const keys = new KeySchema(`test-${randomBytes(6).toString('hex')}`);
  return {
    server,
    redis,
    keys,
    async close() {
      if (server.external) {
        const found = await redis.keys(`${keys.root}:*`);
        if (found.length) await redis.del(...found);
      }
      redis.disconnect();
      await server.stop();
    },
  };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls until `check` holds, or fails with `what` after `timeoutMs`. */
export async function eventually(what: string, check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(25);
  }
}
