import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { CheckpointManifest, PieceId, QueueState } from '@longshot/planner';
import { BlockStore, CheckpointStore, pieceName, type PieceRef } from './checkpoints';
import { FencedWriteError } from './job-keys';

/** Where the head's checkpoint tensors go: pieces as they are computed, finished blocks. */
/** A tensor to store as a checkpoint piece. */
export interface PieceValues {
  readonly id: PieceId;
  readonly values: Float32Array;
}

export interface CheckpointWrites {
  /** Stores the pieces (concurrently) and returns their references in the same order. */
  putPieces(prefix: string, run: string, pieces: readonly PieceValues[], ttlSeconds: number): Promise<PieceRef[]>;
  /** A fenced write of a finished block (FencedWriteError once `run` no longer owns the job). */
  putBlock(prefix: string, index: number, latents: Float32Array, ttlSeconds: number, run: string): Promise<void>;
  close(): Promise<void>;
}

/** The writes on the calling thread, through the stores. */
export class DirectCheckpointWrites implements CheckpointWrites {
  constructor(
    private readonly checkpoints: CheckpointStore,
    private readonly blocks: BlockStore,
  ) {}

  putPieces(prefix: string, run: string, pieces: readonly PieceValues[], ttlSeconds: number): Promise<PieceRef[]> {
    return Promise.all(pieces.map((p) => this.checkpoints.putPiece(prefix, run, p.id, p.values, ttlSeconds)));
  }

  putBlock(prefix: string, index: number, latents: Float32Array, ttlSeconds: number, run: string): Promise<void> {
    return this.blocks.put(prefix, index, latents, ttlSeconds, run);
  }

  async close(): Promise<void> {}
}

/** A call to the writer thread and its answer (checkpoint-writer-thread.ts). */
export type WriterRequest =
  | { seq: number; op: 'pieces'; prefix: string; run: string; pieces: readonly PieceValues[]; ttlSeconds: number }
  | { seq: number; op: 'block'; prefix: string; index: number; latents: Float32Array; ttlSeconds: number; run: string };
export type WriterReply = { seq: number; ok: true; refs?: PieceRef[] } | { seq: number; ok: false; error: { name: string; message: string; key?: string; run?: string } };

export interface WriterThreadOptions {
  readonly redisUrl: string;
  /** The key schema's root (KeySchema.root). */
  readonly keyRoot: string;
}

/**
 * The writes on a thread of their own, with its own Redis connection: checksums, the client's
 * copy of each value and the socket writes stay off the JS thread that runs the head. Tensors in
 * shared memory (SharedArrayBuffer, as the head's block queue keeps them) cross without a copy;
 * others are copied by postMessage. The caller must leave a tensor unchanged until its write
 * has resolved. Started on the first write; a thread that dies fails every write in flight and
 * the next one starts another.
 */
export class ThreadCheckpointWrites implements CheckpointWrites {
  private worker: Worker | null = null;
  private seq = 0;
  private readonly calls = new Map<number, { resolve: (r: WriterReply) => void; reject: (e: Error) => void }>();

  constructor(private readonly options: WriterThreadOptions) {}

  async putPieces(prefix: string, run: string, pieces: readonly PieceValues[], ttlSeconds: number): Promise<PieceRef[]> {
    // One message for all of a block-step's pieces: fewer wake-ups of either thread.
    const reply = await this.call({ seq: 0, op: 'pieces', prefix, run, pieces, ttlSeconds });
    if (!reply.ok || reply.refs?.length !== pieces.length) throw new Error('checkpoint writer thread: its reply does not reference every piece');
    return reply.refs;
  }

  async putBlock(prefix: string, index: number, latents: Float32Array, ttlSeconds: number, run: string): Promise<void> {
    await this.call({ seq: 0, op: 'block', prefix, index, latents, ttlSeconds, run });
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
  }

  private call(request: WriterRequest): Promise<WriterReply> {
    const worker = this.started();
    const seq = ++this.seq;
    return new Promise<WriterReply>((resolve, reject) => {
      this.calls.set(seq, { resolve, reject });
      worker.postMessage({ ...request, seq });
    }).then((reply) => {
      if (reply.ok) return reply;
      const e = reply.error;
      if (e.name === 'FencedWriteError' && e.key && e.run) throw new FencedWriteError(e.key, e.run);
      const err = new Error(e.message);
      err.name = e.name;
      throw err;
    });
  }

  private started(): Worker {
    if (this.worker) return this.worker;
    // The thread runs TypeScript source like the rest of the process (tsx's require hook). Both
    // paths are resolved here: an eval'd thread resolves bare names from the process's working
    // directory, which need not be the repository (a worker started by the CLI from elsewhere).
    const entry = join(__dirname, 'checkpoint-writer-thread.ts');
    const hook = require.resolve('tsx/cjs');
    const worker = new Worker(`require(${JSON.stringify(hook)}); require(${JSON.stringify(entry)});`, { eval: true, workerData: this.options, name: 'checkpoint-writer' });
    worker.unref();
    worker.on('message', (reply: WriterReply) => {
      const call = this.calls.get(reply.seq);
      this.calls.delete(reply.seq);
      call?.resolve(reply);
    });
    const fail = (e: Error) => {
      if (this.worker === worker) this.worker = null;
      for (const c of this.calls.values()) c.reject(new Error(`checkpoint writer thread failed: ${e.message}`));
      this.calls.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`exited with code ${code}`)));
    this.worker = worker;
    return worker;
  }
}

/** A stored piece as a set member: the run that wrote it and its name. */
const refKey = (p: PieceRef): string => `${p.run}/${pieceName(p)}`;

/** Every piece a manifest names. */
function namedPieces(m: CheckpointManifest): PieceId[] {
  return m.blocks.flatMap((b) => [b.pieces.latents, ...b.pieces.modelOutputs, ...(b.pieces.lastSample ? [b.pieces.lastSample] : [])]);
}

/**
 * One head's checkpoints of one job (incremental: checkpoints.ts): stores each piece as the queue
 * hands it out, keeps what was stored (and what the loaded checkpoint named), and commits
 * manifests that name them, deleting the pieces no manifest names any more.
 */
export class JobCheckpoint {
  /** Stored pieces by name (block, kind, step), the latest write of each. */
  private readonly stored = new Map<string, PieceRef>();
  /** Every stored piece not deleted yet (older writes of a name included). */
  private known: PieceRef[] = [];
  /** The pieces the last committed (or loaded) manifest names (refKey). */
  private committed = new Set<string>();
  private pending: Promise<void>[] = [];
  private failure: unknown = null;

  constructor(
    private readonly store: CheckpointStore,
    private readonly writes: CheckpointWrites,
    readonly prefix: string,
    readonly run: string,
    readonly ttlSeconds: number,
  ) {}

  /** The job's last checkpoint (null: none); its pieces count as stored from now on. */
  async load(): Promise<QueueState | null> {
    const loaded = await this.store.load(this.prefix);
    if (!loaded) return null;
    for (const p of loaded.pieces) this.remember(p);
    this.committed = new Set(loaded.pieces.map(refKey));
    return loaded.state;
  }

  /** Starts storing pieces; `flush` waits for them. Their values must stay unchanged until then. */
  put(pieces: readonly PieceValues[]): void {
    if (pieces.length === 0) return;
    const write = this.writes.putPieces(this.prefix, this.run, pieces, this.ttlSeconds).then(
      (refs) => refs.forEach((ref) => this.remember(ref)),
      (e: unknown) => {
        this.failure ??= e;
      },
    );
    this.pending.push(write);
  }

  /** Waits until every piece put so far is stored; rejects with the first failed write. */
  async flush(): Promise<void> {
    while (this.pending.length) {
      const pending = this.pending;
      this.pending = [];
      await Promise.all(pending);
    }
    if (this.failure) throw this.failure;
  }

  /** A finished block (fenced). */
  putBlock(index: number, latents: Float32Array): Promise<void> {
    return this.writes.putBlock(this.prefix, index, latents, this.ttlSeconds, this.run);
  }

  /**
   * Stores what was put, then commits `manifest` (fenced; FencedWriteError once superseded),
   * deleting every other piece this head knows of.
   */
  async commit(manifest: CheckpointManifest): Promise<void> {
    await this.flush();
    const named = await this.store.commit(this.prefix, this.run, manifest, (p) => this.stored.get(pieceName(p)), this.known, this.ttlSeconds);
    this.committed = new Set(named.map(refKey));
    this.keepOnly(this.committed);
  }

  /**
   * At a boundary without a commit (`--checkpoint-every` > 1): deletes the pieces stored since the
   * last commit that neither it nor `current` (the queue's state now) names, such as latents a
   * later step has superseded, so that Redis holds about two states' pieces, never the job's.
   */
  async prune(current: CheckpointManifest): Promise<void> {
    await this.flush();
    const keep = new Set(this.committed);
    for (const id of namedPieces(current)) {
      const ref = this.stored.get(pieceName(id));
      if (ref) keep.add(refKey(ref));
    }
    const drop = this.known.filter((p) => !keep.has(refKey(p)));
    if (drop.length === 0) return;
    await this.store.dropPieces(this.prefix, drop);
    this.keepOnly(keep);
  }

  private keepOnly(keep: ReadonlySet<string>): void {
    this.known = this.known.filter((p) => keep.has(refKey(p)));
    for (const [name, p] of this.stored) if (!keep.has(refKey(p))) this.stored.delete(name);
  }

  private remember(ref: PieceRef): void {
    this.stored.set(pieceName(ref), ref);
    this.known.push(ref);
  }
}
