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

/** A stored piece and the boundary it was put for (-1: named by the loaded checkpoint). */
interface KnownPiece {
  readonly ref: PieceRef;
  readonly boundary: number;
}

/**
 * One head's checkpoints of one job (incremental: checkpoints.ts): stores each piece as the queue
 * hands it out, keeps what was stored (and what the loaded checkpoint named), and commits
 * manifests that name them, deleting the pieces no manifest names any more.
 *
 * Pieces are put for the open boundary; `seal` closes it and returns its number, so that a
 * boundary can be flushed and committed while the pieces of the next one are being put: its
 * commit waits for, and deletes among, only the pieces put before it was sealed.
 */
export class JobCheckpoint {
  /** Stored pieces by name (block, kind, step), the latest write of each. */
  private readonly stored = new Map<string, KnownPiece>();
  /** Every stored piece not deleted yet (older writes of a name included). */
  private known: KnownPiece[] = [];
  /** The pieces the last committed (or loaded) manifest names (refKey). */
  private committed = new Set<string>();
  /** The open boundary: pieces put now belong to it. */
  private boundary = 0;
  private pending: { boundary: number; write: Promise<void> }[] = [];
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
    for (const p of loaded.pieces) this.remember(p, -1);
    this.committed = new Set(loaded.pieces.map(refKey));
    return loaded.state;
  }

  /**
   * Starts storing pieces for the open boundary; `flush` waits for them. Their values must stay
   * unchanged until then.
   */
  put(pieces: readonly PieceValues[]): void {
    if (pieces.length === 0) return;
    const boundary = this.boundary;
    const write = this.writes.putPieces(this.prefix, this.run, pieces, this.ttlSeconds).then(
      (refs) => refs.forEach((ref) => this.remember(ref, boundary)),
      (e: unknown) => {
        this.failure ??= e;
      },
    );
    this.pending.push({ boundary, write });
  }

  /** Closes the open boundary (the pieces put so far are its own) and returns its number. */
  seal(): number {
    return this.boundary++;
  }

  /**
   * Waits until every piece put for boundaries up to `sealed` (default: every piece put so far)
   * is stored; rejects with the first failed write.
   */
  async flush(sealed = Infinity): Promise<void> {
    for (;;) {
      const due = this.pending.filter((p) => p.boundary <= sealed);
      if (due.length === 0) break;
      this.pending = this.pending.filter((p) => p.boundary > sealed);
      await Promise.all(due.map((p) => p.write));
    }
    if (this.failure) throw this.failure;
  }

  /** A finished block (fenced). */
  putBlock(index: number, latents: Float32Array): Promise<void> {
    return this.writes.putBlock(this.prefix, index, latents, this.ttlSeconds, this.run);
  }

  /**
   * Stores what was put for the boundary `sealed` (default: seals the open one), then commits its
   * `manifest` (fenced; FencedWriteError once superseded), deleting every other piece this head
   * knows of from that boundary or before. Pieces put since it was sealed are left alone.
   */
  async commit(manifest: CheckpointManifest, sealed = this.seal()): Promise<void> {
    await this.flush(sealed);
    const named = await this.store.commit(this.prefix, this.run, manifest, (p) => this.stored.get(pieceName(p))?.ref, this.candidates(sealed), this.ttlSeconds);
    this.committed = new Set(named.map(refKey));
    this.keepOnly(this.committed, sealed);
  }

  /**
   * At a boundary without a commit (`--checkpoint-every` > 1): deletes the pieces stored since the
   * last commit that neither it nor `current` (the queue's state at boundary `sealed`, by default
   * the open one, sealed now) names, such as latents a later step has superseded, so that Redis
   * holds about two states' pieces, never the job's.
   */
  async prune(current: CheckpointManifest, sealed = this.seal()): Promise<void> {
    await this.flush(sealed);
    const keep = new Set(this.committed);
    for (const id of namedPieces(current)) {
      const known = this.stored.get(pieceName(id));
      if (known) keep.add(refKey(known.ref));
    }
    const drop = this.candidates(sealed).filter((p) => !keep.has(refKey(p)));
    if (drop.length === 0) return;
    await this.store.dropPieces(this.prefix, drop);
    this.keepOnly(keep, sealed);
  }

  /** The stored pieces a commit or prune of boundary `sealed` may delete: those put for it or before. */
  private candidates(sealed: number): PieceRef[] {
    return this.known.filter((p) => p.boundary <= sealed).map((p) => p.ref);
  }

  /** Forgets the pieces of boundary `sealed` or before that are not in `keep` (they were deleted). */
  private keepOnly(keep: ReadonlySet<string>, sealed: number): void {
    const kept = (p: KnownPiece) => p.boundary > sealed || keep.has(refKey(p.ref));
    this.known = this.known.filter(kept);
    for (const [name, p] of this.stored) if (!kept(p)) this.stored.delete(name);
  }

  private remember(ref: PieceRef, boundary: number): void {
    this.stored.set(pieceName(ref), { ref, boundary });
    this.known.push({ ref, boundary });
  }
}
