import { endianness } from 'node:os';
import type { Redis } from 'ioredis';
import { CHECKSUM_BYTES, CorruptValueError, checksum, float32View, readFloat32, storedPart } from './codec';
import { JOB_RUN_TTL_SECONDS, JobKeyspace } from './job-keys';
import { DEFAULT_KEYS as defaultKeys, type KeySchema } from './keys';

/** The text embeddings every stage of a job cross-attends to: the prompt's and the negative prompt's. */
export interface JobText {
  readonly cond: Float32Array;
  readonly uncond: Float32Array;
}

/** What a stage is told of the stored text, to check what it reads against. */
export interface StoredTextRef {
  /** Bytes of the stored value. */
  readonly byteLength: number;
  /** Its trailing CRC-32. */
  readonly crc32: number;
}

/*
 * Value (uint32 LE): magic "LSJT", version, values per tensor n, then per version:
 *  1: cond and uncond, n float32 LE each;
 *  2: the values cond and uncond store (s_c and s_u, each at most n: the rest are +0.0), then
 *     s_c and s_u float32 LE;
 * and the CRC-32 (big-endian) of all preceding bytes. Version 2 is written; both are read.
 */
const MAGIC = Buffer.from('LSJT', 'latin1');
const VERSION = 2;
const PREAMBLE = { 1: 12, 2: 20 } as const;
const HOST_IS_LE = endianness() === 'LE';

/**
 * A job's text embeddings in its keyspace: the driver stores them once per run (fenced by it),
 * and each stage reads them when its session opens, instead of the driver sending one copy per
 * stage inside OpenSession. Wan2.1's cond and uncond are [512, 4096] float32 each (16 MiB), but
 * past the prompt's tokens their rows are zeros, which are not stored: a 30-token prompt and no
 * negative prompt store about 0.5 MiB. Written once and read by every attempt, they live as long
 * as the run's claim (JOB_RUN_TTL_SECONDS) and expire with the job's other keys.
 */
export class JobTextStore {
  private readonly keys: KeySchema;
  private readonly jobKeys: JobKeyspace;

  constructor(
    private readonly redis: Redis,
    options: { keys?: KeySchema } = {},
  ) {
    this.keys = options.keys ?? defaultKeys;
    this.jobKeys = new JobKeyspace(redis, this.keys);
  }

  /** A fenced write (FencedWriteError once `run` no longer owns the job); returns what stages check. */
  async put(prefix: string, text: JobText, run: string): Promise<StoredTextRef> {
    if (text.cond.length !== text.uncond.length) throw new RangeError(`text embeddings: cond has ${text.cond.length} values, uncond ${text.uncond.length}`);
    // Only what precedes each tensor's trailing zeros (the padding rows past the prompt's tokens).
    const [cond, uncond] = [storedPart(text.cond), storedPart(text.uncond)];
    const preamble = Buffer.alloc(PREAMBLE[VERSION]);
    MAGIC.copy(preamble, 0);
    preamble.writeUInt32LE(VERSION, 4);
    preamble.writeUInt32LE(text.cond.length, 8);
    preamble.writeUInt32LE(cond.length, 12);
    preamble.writeUInt32LE(uncond.length, 16);
    const body = [preamble, float32View(cond), float32View(uncond)];
    const crc = checksum(...body);
    const value = Buffer.concat([...body, crc]);
    await this.jobKeys.put(prefix, this.keys.jobTextKey(prefix), value, JOB_RUN_TTL_SECONDS, run);
    return { byteLength: value.length, crc32: crc.readUInt32BE(0) };
  }

  /**
   * The job's stored text and its reference (to compare with the one a session was opened with),
   * or null when none is stored. A corrupt value is refused with a CorruptValueError naming the key.
   */
  async get(prefix: string): Promise<{ text: JobText; ref: StoredTextRef } | null> {
    const key = this.keys.jobTextKey(prefix);
    const buf = await this.redis.getBuffer(key);
    if (buf === null) return null;
    const fail = (reason: string) => new CorruptValueError(key, `text embeddings ${reason}`);
    if (buf.length < PREAMBLE[1] + CHECKSUM_BYTES || !buf.subarray(0, 4).equals(MAGIC)) throw fail('are not a Longshot text value (bad magic or truncated)');
    const version = buf.readUInt32LE(4);
    if (version !== 1 && version !== 2) throw fail(`have version ${version}; this build reads versions 1 and 2`);
    if (buf.length < PREAMBLE[version] + CHECKSUM_BYTES) throw fail(`have ${buf.length} bytes, fewer than a version ${version} value's preamble`);
    const n = buf.readUInt32LE(8);
    const [storedCond, storedUncond] = version === 1 ? [n, n] : [buf.readUInt32LE(12), buf.readUInt32LE(16)];
    if (storedCond > n || storedUncond > n) throw fail(`store ${storedCond} and ${storedUncond} values of tensors of ${n}`);
    const at = PREAMBLE[version];
    const need = at + 4 * (storedCond + storedUncond) + CHECKSUM_BYTES;
    if (buf.length !== need) throw fail(`have ${buf.length} bytes, ${n} values per tensor (${storedCond} and ${storedUncond} stored) need ${need}`);
    const bodyEnd = buf.length - CHECKSUM_BYTES;
    if (!checksum(buf.subarray(0, bodyEnd)).equals(buf.subarray(bodyEnd))) throw fail('fail their checksum (corrupt)');
    // Views of the reply where a tensor is whole and aligned (Redis replies of this size have a
    // buffer of their own), else copies followed by the zeros that were not stored.
    const values = (from: number, stored: number): Float32Array =>
      stored === n && HOST_IS_LE && (buf.byteOffset + from) % 4 === 0 ? new Float32Array(buf.buffer, buf.byteOffset + from, n) : readFloat32(buf.subarray(from, from + 4 * stored), stored, n);
    const text = { cond: values(at, storedCond), uncond: values(at + 4 * storedCond, storedUncond) };
    return { text, ref: { byteLength: buf.length, crc32: buf.readUInt32BE(bodyEnd) } };
  }
}
