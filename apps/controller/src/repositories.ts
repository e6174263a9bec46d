import * as fs from 'node:fs';
import { randomUUID } from 'node:crypto';
import * as path from 'node:path';
import type { Redis } from 'ioredis';
import { BlockStore, checkTenant, FrameDigestStore, JobKeyspace, JobTextStore, type KeySchema } from '@longshot/cache';
import { SegmentDir } from '@longshot/media';
import { loadTextEmbeddings, SafetensorsFile, type ModelConfig, type TextEmbeddings } from '@longshot/model';
import { SpecError } from '@longshot/planner';

/**
 * A job's pipeline data in Redis (blocks, checkpoint, frame digests, text embeddings): the one
 * place the controller reads or writes it.
 */
export class JobDataRepository {
  readonly blocks: BlockStore;
  readonly text: JobTextStore;
  private readonly digests: FrameDigestStore;
  private readonly keyspace: JobKeyspace;

  constructor(
    private readonly redis: Redis,
    private readonly keys: KeySchema,
    private readonly ttlSeconds: number,
  ) {
    this.blocks = new BlockStore(redis, { keys });
    this.text = new JobTextStore(redis, { keys });
    this.digests = new FrameDigestStore(redis, { keys });
    this.keyspace = new JobKeyspace(redis, keys);
  }

  /** The job's key prefix; also checks that `jobId` can name a job. */
  prefix(jobId: string): string {
    return this.keys.jobPrefix(jobId);
  }

  /** Whether the head wrote a checkpoint, i.e. whether a new run must resume rather than start over. */
  async hasCheckpoint(jobId: string): Promise<boolean> {
    return (await this.redis.exists(this.keys.checkpointKey(this.prefix(jobId)))) === 1;
  }

  async hasAllBlocks(jobId: string, count: number): Promise<boolean> {
    for (let i = 0; i < count; i++) if (!(await this.blocks.has(this.prefix(jobId), i))) return false;
    return true;
  }

  block(jobId: string, index: number): Promise<Float32Array | null> {
    return this.blocks.get(this.prefix(jobId), index);
  }

  /** Block `index`'s decoded-frame digest, once stitched. */
  frameDigest(jobId: string, index: number): Promise<string | null> {
    return this.digests.load(this.prefix(jobId), index);
  }

  saveFrameDigest(jobId: string, index: number, sha256: string): Promise<void> {
    return this.digests.save(this.prefix(jobId), index, sha256, this.ttlSeconds);
  }

  /** Deletes the job's pipeline data (a deleted job). */
  async remove(jobId: string): Promise<void> {
    await this.keyspace.deleteJob(this.prefix(jobId));
  }

  /** After a job ends its pipeline data is only kept for the retention period. */
  async expire(jobId: string, seconds: number): Promise<void> {
    await this.keyspace.expireJob(this.prefix(jobId), seconds);
  }
}

/**
 * The file layer under the result store: how much room is left for results. The disk's own
 * (statfs), or a quota on top of it; tests inject one that says the store is full.
 */
export interface FileLayer {
  freeBytes(root: string): number;
}

export const diskFiles: FileLayer = {
  freeBytes(root) {
    fs.mkdirSync(root, { recursive: true });
    const s = fs.statfsSync(root);
    return s.bavail * s.bsize;
  },
};

/** At most `maxBytes` under the root (and no more than the disk has). */
export function quotaFiles(maxBytes: number, inner: FileLayer = diskFiles): FileLayer {
  return { freeBytes: (root) => Math.min(inner.freeBytes(root), maxBytes - usedBytes(root)) };
}

function usedBytes(dir: string): number {
  let total = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) total += usedBytes(p);
    else if (e.isFile()) total += fs.statSync(p, { throwIfNoEntry: false })?.size ?? 0;
  }
  return total;
}

/** ENOSPC from the results store: a clear message, and the code a caller can test. */
export class NoSpaceError extends Error {
  readonly code = 'ENOSPC';
}

/** Whether `e` (or its cause) is a results store out of space, ours or the OS's (ffmpeg's included). */
export function isNoSpace(e: unknown): boolean {
  for (let x = e, depth = 0; x instanceof Error && depth < 5; x = x.cause, depth++) {
    if ((x as NodeJS.ErrnoException).code === 'ENOSPC' || /No space left on device/i.test(x.message)) return true;
  }
  return false;
}

/** The request field that references an upload of text embeddings. */
const FIELD = 'textEmbeddingsId';

/**
 * Bytes clients upload (POST /v1/embeddings) for later requests to reference by id: kept in
 * Redis for the retention period, so every replica finds them and nothing is read from a path a
 * client names. Each upload belongs to the uploader's tenant:
 * another tenant's id is "no upload".
 */
export class UploadRepository {
  constructor(
    private readonly redis: Redis,
    private readonly keys: KeySchema,
    private readonly ttlSeconds: number,
  ) {}

  async put(bytes: Buffer, tenant: string): Promise<string> {
    const id = randomUUID();
    await this.redis.set(this.keys.uploadKey(checkTenant(tenant), id), bytes, 'EX', this.ttlSeconds);
    return id;
  }

  get(id: string, tenant: string): Promise<Buffer | null> {
    return this.redis.getBuffer(this.keys.uploadKey(checkTenant(tenant), id));
  }

  /**
   * The text embeddings of an upload, checked against the model. Errors are SpecErrors naming
   * the request field and saying what is wrong with the upload, never its bytes.
   */
  async textEmbeddings(id: string, tenant: string, model: ModelConfig): Promise<TextEmbeddings> {
    const bytes = await this.get(id, tenant);
    if (!bytes) throw new SpecError(FIELD, `no upload ${id} (POST /v1/embeddings first; uploads expire after the retention period)`);
    try {
      return loadTextEmbeddings(SafetensorsFile.fromBytes(bytes, FIELD), model);
    } catch (e) {
      throw new SpecError(FIELD, (e as Error).message);
    }
  }
}

/** The result store on disk (a volume all replicas share): one SegmentDir per job. */
export class ResultStore {
  constructor(
    readonly root: string,
    private readonly files: FileLayer = diskFiles,
    /** Writes need at least this much free; /readyz reports the store unready below it. */
    readonly minFreeBytes = 0,
  ) {}

  /** Free room and whether it is enough to write results. */
  space(): { freeBytes: number; ok: boolean } {
    const freeBytes = this.files.freeBytes(this.root);
    return { freeBytes, ok: freeBytes >= Math.max(1, this.minFreeBytes) };
  }

  /** Throws NoSpaceError (ENOSPC) unless there is room to write (called before each write). */
  ensureSpace(): void {
    const { freeBytes, ok } = this.space();
    if (!ok) throw new NoSpaceError(`the results store is out of space (ENOSPC): ${Math.max(0, freeBytes)} bytes free, at least ${Math.max(1, this.minFreeBytes)} needed`);
  }

  /** Removes everything a job wrote (a failed or canceled job's partial segments and previews). */
  remove(jobId: string): void {
    fs.rmSync(this.job(jobId).dir, { recursive: true, force: true });
  }

  job(jobId: string): SegmentDir {
    // Job ids are ours (uuid), but never let one name a path outside the store.
    if (!/^[A-Za-z0-9_-]+$/.test(jobId)) throw new Error(`job id ${JSON.stringify(jobId)} is not a safe file name`);
    return new SegmentDir(path.join(this.root, jobId));
  }
}
