/**
 * The checkpoint writer thread (ThreadCheckpointWrites): its own Redis connection and stores,
 * one call at a time in arrival order per message, each answered with its result or error.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Redis } from 'ioredis';
import { BlockStore, CheckpointStore } from './checkpoints';
import type { WriterReply, WriterRequest, WriterThreadOptions } from './checkpoint-writes';
import { FencedWriteError } from './job-keys';
import { KeySchema } from './keys';

const options = workerData as WriterThreadOptions;
const redis = new Redis(options.redisUrl, { maxRetriesPerRequest: 3 });
// Errors reach the caller through the replies; the connection retries by itself.
redis.on('error', () => undefined);
const keys = new KeySchema(options.keyRoot);
const checkpoints = new CheckpointStore(redis, { keys });
const blocks = new BlockStore(redis, { keys });

async function handle(r: WriterRequest): Promise<WriterReply> {
  try {
    if (r.op === 'pieces') return { seq: r.seq, ok: true, refs: await Promise.all(r.pieces.map((p) => checkpoints.putPiece(r.prefix, r.run, p.id, p.values, r.ttlSeconds))) };
    await blocks.put(r.prefix, r.index, r.latents, r.ttlSeconds, r.run);
    return { seq: r.seq, ok: true };
  } catch (e) {
    if (e instanceof FencedWriteError) return { seq: r.seq, ok: false, error: { name: 'FencedWriteError', message: e.message, key: e.key, run: e.run } };
    const err = e instanceof Error ? e : new Error(String(e));
    return { seq: r.seq, ok: false, error: { name: err.name, message: err.message } };
  }
}

parentPort!.on('message', (r: WriterRequest) => {
  void handle(r).then((reply) => parentPort!.postMessage(reply));
});
