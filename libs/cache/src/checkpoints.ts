import { crc32 } from 'node:zlib';
import type { Redis } from 'ioredis';
import { PIECE_KINDS, type BlockPieces, type BlockState, type CheckpointManifest, type NoiseState, type PieceId, type PieceKind, type QueueState } from '@longshot/planner';
import { SAMPLER_KINDS, type SamplerKind } from '@longshot/sampler';
import { CHECKSUM_BYTES, CorruptValueError, float32View, readFloat32, checksum } from './codec';
import { JobKeyspace } from './job-keys';
import { DEFAULT_KEYS as defaultKeys, type KeySchema } from './keys';

export interface StoreOptions {
  keys?: KeySchema;
}

/*
 * Incremental checkpoints. The head stores each tensor of a queued block once, when it is
 * computed, as a piece (its own key, the raw float32 LE bytes and nothing else):
 *
 *   R:job:{id}:piece:<run>:<block>:<kind>:<step>
 *     kind latents: the block's latents after <step> steps (0: its initial noise)
 *     kind x0:      the x0 prediction of step <step> (UniPC's history)
 *     kind sample:  the sample step <step> started from, as UniC corrected it (UniPC's last sample)
 *
 * and at an iteration boundary commits only a manifest naming the pieces that make up the state:
 *
 * Manifest value, version 4 (integers uint32 LE), at R:job:{id}:checkpoint:
 *   0     4   magic "LSCK"
 *   4     4   version
 *   8     4   header length h
 *   12    h   header, UTF-8 JSON (ManifestHeader): iteration, sampler, noise, finishedTail (the
 *             index of the finished block whose stored latents are the next prefix), pieces (each
 *             piece's run, block, kind, step, byte length and CRC-32), blocks (step, solver
 *             counters, and each tensor as an index into pieces)
 *   12+h  4   CRC-32 (big-endian) of all preceding bytes
 *
 * The commit is fenced like every write of the job (FencedWriteError), refused while a piece it
 * names is missing, and deletes the pieces the previous manifest named that this one does not.
 * Pieces written after the last manifest (a crash before the next one) are named by none: a
 * resume reads the previous manifest, whose pieces are all still there, and the orphans are
 * deleted by the next commit of the same run or expire with the job's keys.
 */
const CHECKPOINT_MAGIC = Buffer.from('LSCK', 'latin1');
/** 4: a manifest of pieces stored one by one; 3 held every tensor in one value. */
const CHECKPOINT_VERSION = 4;
const CHECKPOINT_PREAMBLE = 12;
/** Far above any real header (a few hundred pieces); bounds what a corrupt length field can make us read. */
const MAX_HEADER_BYTES = 1 << 20;
/** Far above any solver order; bounds what a corrupt header can make us read. */
const MAX_HISTORY = 8;

/** A stored piece: which tensor, the run that wrote it (part of its key), its length and checksum. */
export interface PieceRef extends PieceId {
  readonly run: string;
  readonly bytes: number;
  /** CRC-32 of the piece's bytes (zlib's, as the other stored values). */
  readonly crc: number;
}

interface ManifestHeader {
  iteration: number;
  sampler: SamplerKind;
  noise: NoiseState;
  finishedTail: number | null;
  pieces: PieceRef[];
  blocks: { index: number; step: number; lowerOrderNums: number; lastOrder: number; latents: number; modelOutputs: number[]; lastSample: number | null }[];
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isU32 = (v: unknown): v is number => isCount(v) && v <= 0xffffffff;

/** The piece's name within a checkpoint: block, kind and step (the run is where it is stored). */
export const pieceName = (p: PieceId): string => `${p.block}:${p.kind}:${p.step}`;

/** How errors name a piece: "the x0 of step 3 of block 5". */
const describePiece = (p: PieceId): string => `the ${p.kind} of step ${p.step} of block ${p.block}`;

function checkNoise(noise: unknown, fail: (msg: string) => Error): asserts noise is NoiseState {
  const n = noise as Partial<NoiseState> | null;
  if (typeof n !== 'object' || n === null) throw fail('noise state is missing');
  if (!Array.isArray(n.rng) || n.rng.length !== 4 || !n.rng.every(isU32)) throw fail('noise rng state must be four uint32 words');
  if (!Array.isArray(n.previous) || !n.previous.every(isCount)) throw fail('noise previous must be an array of non-negative integers');
}

function checkPieceId(p: unknown, what: string, fail: (msg: string) => Error): asserts p is PieceId {
  const x = p as Partial<PieceId> | null;
  if (typeof x !== 'object' || x === null || !isCount(x.block) || !isCount(x.step) || !PIECE_KINDS.includes(x.kind as PieceKind)) {
    throw fail(`${what} must name a piece (block, kind one of ${PIECE_KINDS.join(', ')}, step)`);
  }
}

/**
 * Encodes a manifest; `ref` gives the stored piece of each tensor it names (an error when one
 * was never stored: the manifest would name nothing).
 */
export function encodeManifest(m: CheckpointManifest, ref: (p: PieceId) => PieceRef | undefined): Buffer {
  return encodeManifestNaming(m, ref).value;
}

/** `encodeManifest`, and the pieces the value names. */
function encodeManifestNaming(m: CheckpointManifest, ref: (p: PieceId) => PieceRef | undefined): { value: Buffer; pieces: PieceRef[] } {
  const fail = (msg: string): Error => new Error(`checkpoint: ${msg}`);
  if (!isCount(m.iteration)) throw fail(`iteration must be a non-negative integer, got ${m.iteration}`);
  if (!SAMPLER_KINDS.includes(m.sampler)) throw fail(`sampler must be one of ${SAMPLER_KINDS.join(', ')}, got ${String(m.sampler)}`);
  checkNoise(m.noise, fail);
  if (m.finishedTail !== null && !isCount(m.finishedTail)) throw fail(`finishedTail must be a block index or null, got ${m.finishedTail}`);
  if (new Set(m.blocks.map((b) => b.index)).size !== m.blocks.length) throw fail('block indices must be distinct');
  const pieces: PieceRef[] = [];
  const indexOf = new Map<string, number>();
  const piece = (p: PieceId, what: string): number => {
    checkPieceId(p, what, fail);
    const name = pieceName(p);
    let i = indexOf.get(name);
    if (i === undefined) {
      const r = ref(p);
      if (!r) throw fail(`${what} is ${describePiece(p)}, which was never stored`);
      i = pieces.push({ run: r.run, block: r.block, kind: r.kind, step: r.step, bytes: r.bytes, crc: r.crc }) - 1;
      indexOf.set(name, i);
    }
    return i;
  };
  const blocks = m.blocks.map((b) => {
    if (!isCount(b.index) || !isCount(b.step) || !isCount(b.lowerOrderNums) || !isCount(b.lastOrder)) throw fail(`block ${b.index} needs non-negative integer index, step and solver counters`);
    return blockEntry(b, b.pieces, piece);
  });
  const header: ManifestHeader = { iteration: m.iteration, sampler: m.sampler, noise: { rng: [...m.noise.rng], previous: [...m.noise.previous] }, finishedTail: m.finishedTail, pieces, blocks };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  if (json.length > MAX_HEADER_BYTES) throw fail(`header is ${json.length} bytes, at most ${MAX_HEADER_BYTES}`);
  const body = Buffer.allocUnsafe(CHECKPOINT_PREAMBLE + json.length);
  CHECKPOINT_MAGIC.copy(body, 0);
  body.writeUInt32LE(CHECKPOINT_VERSION, 4);
  body.writeUInt32LE(json.length, 8);
  json.copy(body, CHECKPOINT_PREAMBLE);
  return { value: Buffer.concat([body, checksum(body)]), pieces };
}

/** A block's header entry: its counters, and each of its tensors as `index` numbers the piece (naming the tensor in errors). */
function blockEntry<T>(
  b: { index: number; step: number; lowerOrderNums: number; lastOrder: number },
  tensors: { latents: T; modelOutputs: readonly T[]; lastSample: T | null },
  index: (t: T, what: string) => number,
): ManifestHeader['blocks'][number] {
  return {
    index: b.index,
    step: b.step,
    lowerOrderNums: b.lowerOrderNums,
    lastOrder: b.lastOrder,
    latents: index(tensors.latents, `block ${b.index}'s latents`),
    modelOutputs: tensors.modelOutputs.map((t, j) => index(t, `block ${b.index}'s x0 history ${j}`)),
    lastSample: tensors.lastSample === null ? null : index(tensors.lastSample, `block ${b.index}'s last sample`),
  };
}

/** Decodes and validates a manifest; every failure is a CorruptValueError naming `key`. */
export function decodeManifest(key: string, buf: Buffer): ManifestHeader {
  const fail = (reason: string): CorruptValueError => new CorruptValueError(key, `checkpoint ${reason}`);
  if (buf.length < CHECKPOINT_PREAMBLE + CHECKSUM_BYTES) throw fail(`is truncated: ${buf.length} bytes, shorter than the smallest checkpoint`);
  if (!buf.subarray(0, 4).equals(CHECKPOINT_MAGIC)) throw fail(`has bad magic ${JSON.stringify(buf.subarray(0, 4).toString('latin1'))} (not a Longshot checkpoint)`);
  const version = buf.readUInt32LE(4);
  if (version !== CHECKPOINT_VERSION) throw fail(`has version ${version}; this build reads version ${CHECKPOINT_VERSION}`);
  const headerLength = buf.readUInt32LE(8);
  if (headerLength > MAX_HEADER_BYTES) throw fail(`declares a ${headerLength}-byte header, at most ${MAX_HEADER_BYTES}`);
  const expected = CHECKPOINT_PREAMBLE + headerLength + CHECKSUM_BYTES;
  if (buf.length < expected) throw fail(`is truncated: ${buf.length} bytes, its header declares ${expected}`);
  if (buf.length > expected) throw fail(`has ${buf.length - expected} bytes after the declared header (${expected} bytes expected)`);
  const bodyEnd = buf.length - CHECKSUM_BYTES;
  if (!checksum(buf.subarray(0, bodyEnd)).equals(buf.subarray(bodyEnd))) throw fail('checksum mismatch (corrupt)');
  try {
    return parseHeader(buf.subarray(CHECKPOINT_PREAMBLE, bodyEnd));
  } catch (err) {
    throw fail(`has an invalid header: ${(err as Error).message}`);
  }
}

function parseHeader(bytes: Buffer): ManifestHeader {
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new Error('not JSON');
  }
  const h = raw as Partial<ManifestHeader> | null;
  const fail = (msg: string): Error => new Error(msg);
  if (typeof h !== 'object' || h === null) throw fail('not an object');
  if (!isCount(h.iteration)) throw fail('iteration is not a non-negative integer');
  if (!SAMPLER_KINDS.includes(h.sampler as SamplerKind)) throw fail(`sampler must be one of ${SAMPLER_KINDS.join(', ')}`);
  checkNoise(h.noise, fail);
  if (h.finishedTail !== null && !isCount(h.finishedTail)) throw fail('finishedTail must be a block index or null');
  if (!Array.isArray(h.pieces) || !Array.isArray(h.blocks)) throw fail('pieces and blocks must be arrays');
  const pieces = h.pieces.map((p: unknown, i): PieceRef => {
    checkPieceId(p, `piece ${i}`, fail);
    const r = p as Partial<PieceRef>;
    if (typeof r.run !== 'string' || r.run.length === 0 || !isCount(r.bytes) || r.bytes % 4 !== 0 || !isU32(r.crc)) throw fail(`piece ${i} needs a run, a byte length (a multiple of 4) and a CRC-32`);
    return { run: r.run, block: p.block, kind: p.kind, step: p.step, bytes: r.bytes, crc: r.crc };
  });
  const at = (i: unknown, what: string): number => {
    if (!isCount(i) || i >= pieces.length) throw fail(`${what} must index one of the ${pieces.length} pieces`);
    return i;
  };
  const blocks = h.blocks.map((b: unknown, i) => {
    const x = b as Partial<ManifestHeader['blocks'][number]> | null;
    if (typeof x !== 'object' || x === null || !isCount(x.index) || !isCount(x.step) || !isCount(x.lowerOrderNums) || !isCount(x.lastOrder)) {
      throw fail(`block ${i} needs non-negative integer index, step, lowerOrderNums and lastOrder`);
    }
    if (!Array.isArray(x.modelOutputs) || x.modelOutputs.length > MAX_HISTORY) throw fail(`block ${x.index} needs at most ${MAX_HISTORY} x0 history pieces`);
    const block = blockEntry({ index: x.index, step: x.step, lowerOrderNums: x.lowerOrderNums, lastOrder: x.lastOrder }, { latents: x.latents, modelOutputs: x.modelOutputs, lastSample: x.lastSample as unknown }, at);
    const bytes = pieces[block.latents].bytes;
    for (const j of [...block.modelOutputs, ...(block.lastSample === null ? [] : [block.lastSample])]) {
      if (pieces[j].bytes !== bytes) throw fail(`block ${x.index}'s pieces differ in length (${pieces[j].bytes} and ${bytes} bytes)`);
    }
    return block;
  });
  if (new Set(blocks.map((b) => b.index)).size !== blocks.length) throw fail('block indices must be distinct');
  return { iteration: h.iteration, sampler: h.sampler as SamplerKind, noise: { rng: [...h.noise.rng], previous: [...h.noise.previous] }, finishedTail: h.finishedTail ?? null, pieces, blocks };
}


/**
 * The head's resumable state per job: pieces (each tensor stored once, by the run that computed
 * it) and a manifest per iteration boundary naming them. A reader sees the previous manifest or
 * the new one, never a mix, and every piece a committed manifest names exists.
 */
export class CheckpointStore {
  private readonly keys: KeySchema;
  private readonly jobKeys: JobKeyspace;

  constructor(
    private readonly redis: Redis,
    options: StoreOptions = {},
  ) {
    this.keys = options.keys ?? defaultKeys;
    this.jobKeys = new JobKeyspace(redis, this.keys);
  }

  /**
   * Stores one tensor of a queued block (unfenced: the key is `run`'s own, and only a manifest
   * of the job's current run makes it part of the job's checkpoint). The bytes go to Redis
   * straight from `values`' memory; returns what a manifest records of it.
   */
  async putPiece(prefix: string, run: string, piece: PieceId, values: Float32Array, ttlSeconds: number): Promise<PieceRef> {
    checkPieceId(piece, 'piece', (msg) => new Error(`checkpoint: ${msg}`));
    if (!(values instanceof Float32Array)) throw new Error(`checkpoint: ${describePiece(piece)} must be a Float32Array`);
    const bytes = float32View(values);
    const crc = crc32(bytes) >>> 0;
    await this.jobKeys.put(prefix, this.keys.pieceKey(prefix, run, piece), bytes, ttlSeconds);
    return { run, block: piece.block, kind: piece.kind, step: piece.step, bytes: bytes.length, crc };
  }

  /**
   * Commits `manifest` as the job's checkpoint (a fenced write of `run`: FencedWriteError once
   * another run owns the job). `ref` gives the stored piece of each tensor it names; `drop` the
   * pieces to delete with it (stored earlier, named by no manifest from now on). Returns the
   * pieces it names.
   */
  async commit(prefix: string, run: string, manifest: CheckpointManifest, ref: (p: PieceId) => PieceRef | undefined, drop: readonly PieceRef[], ttlSeconds: number): Promise<PieceRef[]> {
    const key = this.keys.checkpointKey(prefix);
    const { value, pieces: named } = encodeManifestNaming(manifest, ref);
    const keep = named.map((p) => this.keys.pieceKey(prefix, p.run, p));
    const keepSet = new Set(keep);
    const dropKeys = [...new Set(drop.map((p) => this.keys.pieceKey(prefix, p.run, p)))].filter((k) => !keepSet.has(k));
    await this.jobKeys.commitManifest(prefix, key, value, ttlSeconds, run, keep, dropKeys);
    return named;
  }

  /** Deletes (and untracks) stored pieces that no manifest names (unfenced: a run deletes only its own, superseded pieces). */
  async dropPieces(prefix: string, pieces: readonly PieceRef[]): Promise<void> {
    await this.jobKeys.deleteKeys(prefix, pieces.map((p) => this.keys.pieceKey(prefix, p.run, p)));
  }

  /**
   * The last checkpoint with every piece it names read back and checked, or null when the job
   * has none (never started, or expired). A missing or corrupt piece, or a missing finished
   * block, is a CorruptValueError naming the job, the block and the piece.
   */
  async load(prefix: string): Promise<{ state: QueueState; pieces: PieceRef[] } | null> {
    const key = this.keys.checkpointKey(prefix);
    const value = await this.redis.getBuffer(key);
    if (value === null) return null;
    const m = decodeManifest(key, value);
    const job = this.keys.jobIdOf(prefix);
    const keys = m.pieces.map((p) => this.keys.pieceKey(prefix, p.run, p));
    const values = keys.length ? await this.redis.mgetBuffer(...keys) : [];
    const tensors = m.pieces.map((p, i) => {
      const bad = (why: string) => new CorruptValueError(keys[i], `job ${job}: checkpoint piece ${describePiece(p)} ${why} (the checkpoint at ${key} names it)`);
      const v = values[i];
      if (v === null) throw bad('is missing');
      if (v.length !== p.bytes) throw bad(`has ${v.length} bytes, ${p.bytes} expected (truncated or replaced)`);
      if (crc32(v) >>> 0 !== p.crc) throw bad('fails its checksum (corrupt)');
      return readFloat32(v, p.bytes / 4);
    });
    const idOf = (i: number): PieceId => ({ block: m.pieces[i].block, kind: m.pieces[i].kind, step: m.pieces[i].step });
    const blocks = m.blocks.map((b): BlockState => {
      const pieces: BlockPieces = { latents: idOf(b.latents), modelOutputs: b.modelOutputs.map(idOf), lastSample: b.lastSample === null ? null : idOf(b.lastSample) };
      return {
        index: b.index,
        step: b.step,
        latents: tensors[b.latents],
        history: { modelOutputs: b.modelOutputs.map((i) => tensors[i]), lastSample: b.lastSample === null ? null : tensors[b.lastSample], lowerOrderNums: b.lowerOrderNums, lastOrder: b.lastOrder },
        pieces,
      };
    });
    let finishedTail: QueueState['finishedTail'] = null;
    if (m.finishedTail !== null) {
      const blockKey = this.keys.blockKey(prefix, m.finishedTail);
      const stored = await this.redis.getBuffer(blockKey);
      if (stored === null) throw new CorruptValueError(blockKey, `job ${job}: finished block ${m.finishedTail} is missing (the checkpoint at ${key} takes its prefix from it)`);
      finishedTail = { index: m.finishedTail, latents: decodeBlock(blockKey, m.finishedTail, stored) };
    }
    return { state: { iteration: m.iteration, sampler: m.sampler, blocks, noise: m.noise, finishedTail }, pieces: m.pieces };
  }
}

/*
 * Block value, version 1 (uint32 LE): magic "LSBK", version, block index, value count, then the
 * float32 LE latents and the CRC-32 of all preceding bytes. The index guards against a value
 * copied under the wrong key.
 */
const BLOCK_MAGIC = Buffer.from('LSBK', 'latin1');
const BLOCK_VERSION = 2;
const BLOCK_PREAMBLE = 16;

export function encodeBlock(index: number, latents: Float32Array): Buffer {
  if (!(latents instanceof Float32Array)) throw new Error(`block ${index}: latents must be a Float32Array`);
  const preamble = Buffer.alloc(BLOCK_PREAMBLE);
  BLOCK_MAGIC.copy(preamble, 0);
  preamble.writeUInt32LE(BLOCK_VERSION, 4);
  preamble.writeUInt32LE(index, 8);
  preamble.writeUInt32LE(latents.length, 12);
  const values = float32View(latents);
  return Buffer.concat([preamble, values, checksum(preamble, values)]);
}

export function decodeBlock(key: string, index: number, buf: Buffer): Float32Array {
  const fail = (reason: string): CorruptValueError => new CorruptValueError(key, `block ${reason}`);
  if (buf.length < BLOCK_PREAMBLE + CHECKSUM_BYTES) throw fail(`is truncated: ${buf.length} bytes, shorter than the smallest block`);
  if (!buf.subarray(0, 4).equals(BLOCK_MAGIC)) throw fail(`has bad magic ${JSON.stringify(buf.subarray(0, 4).toString('latin1'))} (not a Longshot block)`);
  const version = buf.readUInt32LE(4);
  if (version !== BLOCK_VERSION) throw fail(`has version ${version}; this build reads version ${BLOCK_VERSION}`);
  const count = buf.readUInt32LE(12);
  const expected = BLOCK_PREAMBLE + count * 4 + CHECKSUM_BYTES;
  if (buf.length < expected) throw fail(`is truncated: ${buf.length} bytes, ${count} values need ${expected}`);
  if (buf.length > expected) throw fail(`has ${buf.length - expected} bytes after its ${count} values`);
  const bodyEnd = buf.length - CHECKSUM_BYTES;
  if (!checksum(buf.subarray(0, bodyEnd)).equals(buf.subarray(bodyEnd))) throw fail('checksum mismatch (corrupt)');
  const stored = buf.readUInt32LE(8);
  if (stored !== index) throw fail(`holds block ${stored}, not block ${index}`);
  return readFloat32(buf.subarray(BLOCK_PREAMBLE, bodyEnd), count);
}

/** Finished block latents, kept for stitching and for re-decoding after a controller restart. */
export class BlockStore {
  private readonly keys: KeySchema;
  private readonly jobKeys: JobKeyspace;

  constructor(
    private readonly redis: Redis,
    options: StoreOptions = {},
  ) {
    this.keys = options.keys ?? defaultKeys;
    this.jobKeys = new JobKeyspace(redis, this.keys);
  }

  /** With `run`, a fenced write: refused (FencedWriteError) unless `run` is the job's current run. */
  async put(prefix: string, index: number, latents: Float32Array, ttlSeconds: number, run?: string): Promise<void> {
    const key = this.keys.blockKey(prefix, index);
    await this.jobKeys.put(prefix, key, encodeBlock(index, latents), ttlSeconds, run);
  }

  /** Makes `run` the job's current run (see JobKeyspace.claimRun): a superseded run's writes are refused from now on. */
  claimRun(prefix: string, run: string, ttlSeconds: number): Promise<void> {
    return this.jobKeys.claimRun(prefix, run, ttlSeconds);
  }

  async get(prefix: string, index: number): Promise<Float32Array | null> {
    const key = this.keys.blockKey(prefix, index);
    const value = await this.redis.getBuffer(key);
    return value === null ? null : decodeBlock(key, index, value);
  }

  async has(prefix: string, index: number): Promise<boolean> {
    return (await this.redis.exists(this.keys.blockKey(prefix, index))) === 1;
  }

  /** Sets the retention of every key of the job (blocks, checkpoint, frame digests); see JobKeyspace. */
  expireJob(prefix: string, seconds: number): Promise<number> {
    return this.jobKeys.expireJob(prefix, seconds);
  }
}

/**
 * Each stitched block's decoded-frame digest (SHA-256 of its frames, from the decoding worker),
 * so a run that resumes the stitch can finish the job's frameSha256 without the earlier frames.
 * The VAE's feature cache itself is never stored: it is rebuilt from the blocks (docs/vae.md).
 */
export class FrameDigestStore {
  private readonly keys: KeySchema;
  private readonly jobKeys: JobKeyspace;

  constructor(
    private readonly redis: Redis,
    options: StoreOptions = {},
  ) {
    this.keys = options.keys ?? defaultKeys;
    this.jobKeys = new JobKeyspace(redis, this.keys);
  }

  async save(prefix: string, index: number, sha256: string, ttlSeconds: number): Promise<void> {
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new Error(`frame digest of block ${index}: expected a SHA-256 hex digest, got ${JSON.stringify(sha256.slice(0, 80))}`);
    await this.jobKeys.put(prefix, this.keys.frameDigestKey(prefix, index), Buffer.from(sha256, 'hex'), ttlSeconds);
  }

  async load(prefix: string, index: number): Promise<string | null> {
    const key = this.keys.frameDigestKey(prefix, index);
    const b = await this.redis.getBuffer(key);
    if (b === null) return null;
    if (b.length !== 32) throw new CorruptValueError(key, `frame digest has ${b.length} bytes, expected 32`);
    return b.toString('hex');
  }
}
