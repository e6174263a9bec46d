import type { Redis } from 'ioredis';
import type { BlockState, NoiseState, QueueState } from '@longshot/planner';
import { SAMPLER_KINDS, type SamplerKind } from '@longshot/sampler';
import { CHECKSUM_BYTES, CorruptValueError, float32Bytes, readFloat32, checksum, writeFloat32 } from './codec';
import { JobKeyspace } from './job-keys';
import { DEFAULT_KEYS as defaultKeys, type KeySchema } from './keys';

export interface StoreOptions {
  keys?: KeySchema;
}

/*
 * Checkpoint value, version 3 (all integers uint32 LE):
 *   0     4   magic "LSCK"
 *   4     4   version
 *   8     4   header length h
 *   12    h   header, UTF-8 JSON (CheckpointHeader)
 *   12+h  ..  float32 LE payloads: for each block in header order its latents, then its solver
 *             history (the stored x0 predictions oldest first, then the last sample); then
 *             finishedTail's
 *   end-4     CRC-32 (big-endian) of all preceding bytes
 * The header carries every length, so a reader can tell truncation from corruption and never
 * trusts a size it has not checked against the bytes it has.
 */
const CHECKPOINT_MAGIC = Buffer.from('LSCK', 'latin1');
/** 3: the sampler and each block's solver history (UniPC) joined the state; 2 had neither. */
const CHECKPOINT_VERSION = 3;
const CHECKPOINT_PREAMBLE = 12;
/** Far above any real header (a few blocks); bounds what a corrupt length field can make us read. */
const MAX_HEADER_BYTES = 1 << 20;

interface HistoryHeader {
  /** Stored x0 predictions (each `length` values). */
  outputs: number;
  lastSample: boolean;
  lowerOrderNums: number;
  lastOrder: number;
}

interface CheckpointHeader {
  iteration: number;
  sampler: SamplerKind;
  blocks: { index: number; step: number; length: number; history: HistoryHeader }[];
  noise: { rng: number[]; previous: number[] };
  finishedTail: { index: number; length: number } | null;
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isU32 = (v: unknown): v is number => isCount(v) && v <= 0xffffffff;

/** Checks a state before it is written, so a bad caller fails here rather than on the resume that reads it. */
function checkState(state: QueueState): void {
  if (!isCount(state.iteration)) throw new Error(`checkpoint: iteration must be a non-negative integer, got ${state.iteration}`);
  for (const b of state.blocks) {
    if (!isCount(b.index) || !isCount(b.step)) throw new Error(`checkpoint: block index and step must be non-negative integers, got ${b.index}/${b.step}`);
    if (!(b.latents instanceof Float32Array)) throw new Error(`checkpoint: block ${b.index} latents must be a Float32Array`);
    const h = b.history;
    if (!h || !Array.isArray(h.modelOutputs) || !isCount(h.lowerOrderNums) || !isCount(h.lastOrder)) throw new Error(`checkpoint: block ${b.index} needs a solver history`);
    for (const t of [...h.modelOutputs, ...(h.lastSample ? [h.lastSample] : [])]) {
      if (!(t instanceof Float32Array) || t.length !== b.latents.length) throw new Error(`checkpoint: block ${b.index} solver history tensors must be Float32Arrays of its latents' length`);
    }
  }
  if (!SAMPLER_KINDS.includes(state.sampler)) throw new Error(`checkpoint: sampler must be one of ${SAMPLER_KINDS.join(', ')}, got ${String(state.sampler)}`);
  if (new Set(state.blocks.map((b) => b.index)).size !== state.blocks.length) throw new Error('checkpoint: block indices must be distinct');
  checkNoise(state.noise, (msg) => new Error(`checkpoint: ${msg}`));
  const tail = state.finishedTail;
  if (tail !== null) {
    if (!isCount(tail.index)) throw new Error(`checkpoint: finishedTail index must be a non-negative integer, got ${tail.index}`);
    if (!(tail.latents instanceof Float32Array)) throw new Error('checkpoint: finishedTail latents must be a Float32Array');
  }
}

function checkNoise(noise: unknown, fail: (msg: string) => Error): asserts noise is NoiseState {
  const n = noise as Partial<NoiseState> | null;
  if (typeof n !== 'object' || n === null) throw fail('noise state is missing');
  if (!Array.isArray(n.rng) || n.rng.length !== 4 || !n.rng.every(isU32)) throw fail('noise rng state must be four uint32 words');
  if (!Array.isArray(n.previous) || !n.previous.every(isCount)) throw fail('noise previous must be an array of non-negative integers');
}

export function encodeCheckpoint(state: QueueState): Buffer {
  checkState(state);
  const header: CheckpointHeader = {
    iteration: state.iteration,
    sampler: state.sampler,
    blocks: state.blocks.map((b) => ({
      index: b.index,
      step: b.step,
      length: b.latents.length,
      history: { outputs: b.history.modelOutputs.length, lastSample: b.history.lastSample !== null, lowerOrderNums: b.history.lowerOrderNums, lastOrder: b.history.lastOrder },
    })),
    noise: { rng: [...state.noise.rng], previous: [...state.noise.previous] },
    finishedTail: state.finishedTail ? { index: state.finishedTail.index, length: state.finishedTail.latents.length } : null,
  };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  if (json.length > MAX_HEADER_BYTES) throw new Error(`checkpoint: header is ${json.length} bytes, at most ${MAX_HEADER_BYTES}`);
  // One allocation and one copy of each tensor: checkpoints hold every queued block's latents
  // (tens of MB at 480p) and are written at every iteration boundary.
  const tensors = state.blocks.flatMap((b) => [b.latents, ...b.history.modelOutputs, ...(b.history.lastSample ? [b.history.lastSample] : [])]);
  if (state.finishedTail) tensors.push(state.finishedTail.latents);
  const bodyBytes = CHECKPOINT_PREAMBLE + json.length + tensors.reduce((n, t) => n + t.byteLength, 0);
  const out = Buffer.allocUnsafe(bodyBytes + CHECKSUM_BYTES);
  CHECKPOINT_MAGIC.copy(out, 0);
  out.writeUInt32LE(CHECKPOINT_VERSION, 4);
  out.writeUInt32LE(json.length, 8);
  json.copy(out, CHECKPOINT_PREAMBLE);
  let offset = CHECKPOINT_PREAMBLE + json.length;
  for (const t of tensors) offset = writeFloat32(out, offset, t);
  checksum(out.subarray(0, bodyBytes)).copy(out, bodyBytes);
  return out;
}

/** Decodes and validates a checkpoint value; every failure is a CorruptValueError naming `key`. */
export function decodeCheckpoint(key: string, buf: Buffer): QueueState {
  const fail = (reason: string): CorruptValueError => new CorruptValueError(key, `checkpoint ${reason}`);
  if (buf.length < CHECKPOINT_PREAMBLE + CHECKSUM_BYTES) throw fail(`is truncated: ${buf.length} bytes, shorter than the smallest checkpoint`);
  if (!buf.subarray(0, 4).equals(CHECKPOINT_MAGIC)) throw fail(`has bad magic ${JSON.stringify(buf.subarray(0, 4).toString('latin1'))} (not a Longshot checkpoint)`);
  const version = buf.readUInt32LE(4);
  if (version !== CHECKPOINT_VERSION) throw fail(`has version ${version}; this build reads version ${CHECKPOINT_VERSION}`);
  const headerLength = buf.readUInt32LE(8);
  if (headerLength > MAX_HEADER_BYTES) throw fail(`declares a ${headerLength}-byte header, at most ${MAX_HEADER_BYTES}`);
  if (buf.length < CHECKPOINT_PREAMBLE + headerLength + CHECKSUM_BYTES) {
    throw fail(`is truncated: ${buf.length} bytes, its header alone needs ${CHECKPOINT_PREAMBLE + headerLength + CHECKSUM_BYTES}`);
  }

  const bodyEnd = buf.length - CHECKSUM_BYTES;
  const checksumOk = checksum(buf.subarray(0, bodyEnd)).equals(buf.subarray(bodyEnd));
  let header: CheckpointHeader | null = null;
  let headerProblem = '';
  try {
    header = parseHeader(buf.subarray(CHECKPOINT_PREAMBLE, CHECKPOINT_PREAMBLE + headerLength));
  } catch (err) {
    headerProblem = (err as Error).message;
  }
  // With a readable header, the sizes tell a cut-off value (a partial copy, a full disk) from
  // flipped bits; without one, the checksum is all there is to go on.
  if (header) {
    const floats = header.blocks.reduce((n, b) => n + b.length * (1 + b.history.outputs + (b.history.lastSample ? 1 : 0)), 0) + (header.finishedTail?.length ?? 0);
    const expected = CHECKPOINT_PREAMBLE + headerLength + floats * 4 + CHECKSUM_BYTES;
    if (buf.length < expected) throw fail(`is truncated: ${buf.length} bytes, its header declares ${expected}`);
    if (buf.length > expected) throw fail(`has ${buf.length - expected} bytes after the declared payloads (${expected} bytes expected)`);
  }
  if (!checksumOk) throw fail('checksum mismatch (corrupt)');
  if (!header) throw fail(`has an invalid header: ${headerProblem}`);

  let offset = CHECKPOINT_PREAMBLE + headerLength;
  const take = (length: number): Float32Array => {
    const values = readFloat32(buf.subarray(offset, offset + length * 4), length);
    offset += length * 4;
    return values;
  };
  const blocks = header.blocks.map((b): BlockState => {
    const latents = take(b.length);
    const modelOutputs = Array.from({ length: b.history.outputs }, () => take(b.length));
    const lastSample = b.history.lastSample ? take(b.length) : null;
    return { index: b.index, step: b.step, latents, history: { modelOutputs, lastSample, lowerOrderNums: b.history.lowerOrderNums, lastOrder: b.history.lastOrder } };
  });
  const finishedTail = header.finishedTail ? { index: header.finishedTail.index, latents: take(header.finishedTail.length) } : null;
  return {
    iteration: header.iteration,
    sampler: header.sampler,
    blocks,
    noise: { rng: [header.noise.rng[0], header.noise.rng[1], header.noise.rng[2], header.noise.rng[3]], previous: header.noise.previous },
    finishedTail,
  };
}

function parseHeader(bytes: Buffer): CheckpointHeader {
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new Error('not JSON');
  }
  const h = raw as Partial<CheckpointHeader> | null;
  if (typeof h !== 'object' || h === null) throw new Error('not an object');
  if (!isCount(h.iteration)) throw new Error('iteration is not a non-negative integer');
  if (!SAMPLER_KINDS.includes(h.sampler as SamplerKind)) throw new Error(`sampler must be one of ${SAMPLER_KINDS.join(', ')}`);
  if (!Array.isArray(h.blocks)) throw new Error('blocks is not an array');
  const blocks = h.blocks.map((b: unknown, i) => {
    const x = b as Partial<CheckpointHeader['blocks'][number]> | null;
    if (typeof x !== 'object' || x === null || !isCount(x.index) || !isCount(x.step) || !isCount(x.length)) {
      throw new Error(`block ${i} needs non-negative integer index, step and length`);
    }
    const y = x.history as Partial<HistoryHeader> | undefined;
    if (typeof y !== 'object' || y === null || !isCount(y.outputs) || y.outputs > 8 || typeof y.lastSample !== 'boolean' || !isCount(y.lowerOrderNums) || !isCount(y.lastOrder)) {
      throw new Error(`block ${i} needs a solver history (outputs, lastSample, lowerOrderNums, lastOrder)`);
    }
    return { index: x.index, step: x.step, length: x.length, history: { outputs: y.outputs, lastSample: y.lastSample, lowerOrderNums: y.lowerOrderNums, lastOrder: y.lastOrder } };
  });
  checkNoise(h.noise, (msg) => new Error(msg));
  let finishedTail: CheckpointHeader['finishedTail'] = null;
  if (h.finishedTail !== null) {
    const t = h.finishedTail as Partial<NonNullable<CheckpointHeader['finishedTail']>> | undefined;
    if (typeof t !== 'object' || t === null || !isCount(t.index) || !isCount(t.length)) throw new Error('finishedTail needs non-negative integer index and length (or null)');
    finishedTail = { index: t.index, length: t.length };
  }
  return { iteration: h.iteration, sampler: h.sampler as SamplerKind, blocks, noise: { rng: [...h.noise.rng], previous: [...h.noise.previous] }, finishedTail };
}

/**
 * The head's resumable state per job. One value per job, replaced whole at each iteration
 * boundary: a reader sees the previous checkpoint or the new one, never a mix.
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

  /** With `run`, a fenced write: refused (FencedWriteError) unless `run` is the job's current run. */
  async save(prefix: string, state: QueueState, ttlSeconds: number, run?: string): Promise<void> {
    const key = this.keys.checkpointKey(prefix);
    await this.jobKeys.put(prefix, key, encodeCheckpoint(state), ttlSeconds, run);
  }

  /** The last checkpoint, or null when the job has none (never started, or expired). */
  async load(prefix: string): Promise<QueueState | null> {
    const key = this.keys.checkpointKey(prefix);
    const value = await this.redis.getBuffer(key);
    return value === null ? null : decodeCheckpoint(key, value);
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
  const body = Buffer.concat([preamble, float32Bytes(latents)]);
  return Buffer.concat([body, checksum(body)]);
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
