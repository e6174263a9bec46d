import * as fs from 'node:fs';
import { createConnection } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import { startRedis } from '../src';

function portOf(url: string): number {
  return Number(new URL(url).port);
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

describe('startRedis', () => {
  it('spawns a private redis-server on a free loopback port with AOF, and stops it', async () => {
    const a = await startRedis({ url: null });
    const b = await startRedis({ url: null });
    try {
      expect(a.external).toBe(false);
      expect(a.url).toMatch(/^redis:\/\/127\.0\.0\.1:\d+$/);
      expect(portOf(a.url)).not.toBe(portOf(b.url));
      const redis = new Redis(a.url);
      try {
        expect(await redis.ping()).toBe('PONG');
        expect(await redis.config('GET', 'save')).toEqual(['save', '']);
        expect(await redis.config('GET', 'appendonly')).toEqual(['appendonly', 'yes']);
        expect(await redis.config('GET', 'appendfsync')).toEqual(['appendfsync', 'everysec']);
        expect(await redis.config('GET', 'bind')).toEqual(['bind', '127.0.0.1']);
      } finally {
        redis.disconnect();
      }
    } finally {
      await a.stop();
      await b.stop();
    }
    expect(await accepts(portOf(a.url))).toBe(false);
    // Stopping twice is harmless.
    await a.stop();
  });

  it('uses an explicit url as is, and leaves that server alone on stop; it never reads REDIS_URL itself', async () => {
    const local = await startRedis({ url: null });
    const saved = process.env.REDIS_URL;
    process.env.REDIS_URL = local.url;
    try {
      const ext = await startRedis({ url: local.url });
      expect(ext).toMatchObject({ url: local.url, external: true });
      await ext.stop();
      expect(await accepts(portOf(local.url))).toBe(true);
      const own = await startRedis();
      expect(own.external).toBe(false);
      expect(own.url).not.toBe(local.url);
      await own.stop();
    } finally {
      if (saved === undefined) delete process.env.REDIS_URL;
      else process.env.REDIS_URL = saved;
      await local.stop();
    }
  });

  it('comes back with its data on the same port after SIGKILL (AOF), and drops a temporary data dir on stop', async () => {
    const server = await startRedis({ url: null });
    const redis = new Redis(server.url, { maxRetriesPerRequest: null });
    try {
      // everysec (what Longshot runs) may hold back a write while an earlier fsync is slow, so a
      // SIGKILL right after it can lose the last second; this test is about the AOF coming back,
      // so it makes its own writes synchronous.
      await redis.config('SET', 'appendfsync', 'always');
      await redis.set('durable', 'yes');
      await redis.rpush('list', 'a', 'b');
      const before = server.pid;
      await server.kill('SIGKILL');
      expect(await accepts(portOf(server.url))).toBe(false);
      await server.restart();
      expect(server.pid).not.toBe(before);
      // The same client reconnects by itself to the restarted server.
      expect(await redis.get('durable')).toBe('yes');
      expect(await redis.lrange('list', 0, -1)).toEqual(['a', 'b']);
    } finally {
      redis.disconnect();
      await server.stop();
    }
    expect(fs.existsSync(server.dataDir!)).toBe(false);
    await expect(server.restart()).rejects.toThrow(/restart after stop/);
  });

  it('keeps a given data dir: a new server on it has the data back', async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-redis-test-'));
    try {
      const a = await startRedis({ url: null, dataDir });
      const ra = new Redis(a.url);
      await ra.config('SET', 'appendfsync', 'always'); // as above: the write must be on disk before the kill
      await ra.set('k', 'v');
      ra.disconnect();
      await a.kill('SIGKILL');
      await a.stop();
      const b = await startRedis({ url: null, dataDir });
      const rb = new Redis(b.url);
      try {
        expect(await rb.get('k')).toBe('v');
      } finally {
        rb.disconnect();
        await b.stop();
      }
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('restarts on a given port', async () => {
    const first = await startRedis({ url: null });
    const port = portOf(first.url);
    await first.stop();
    const again = await startRedis({ url: null, port });
    try {
      expect(again.url).toBe(first.url);
    } finally {
      await again.stop();
    }
  });

  it('reports a busy fixed port with redis-server output', async () => {
    const a = await startRedis({ url: null });
    try {
      await expect(startRedis({ url: null, port: portOf(a.url) })).rejects.toThrow(/exited .* before it answered[\s\S]*Address already in use/);
    } finally {
      await a.stop();
    }
  });

  it('names the Debian package when redis-server is missing', async () => {
    await expect(startRedis({ url: null, binary: 'redis-server-definitely-not-installed' })).rejects.toThrow(/Debian package `redis-server`/);
  });
});
