import { endianness } from 'node:os';
import type { Redis } from 'ioredis';
import { CHECKSUM_BYTES, CorruptValueError, checksum, float32View, readFloat32 } from './codec';
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
 * Value, version 1 (uint32 LE): magic "LSJT", version, values per tensor n, then cond and uncond
 * (n float32 LE each) and the CRC-32 (big-endian) of all preceding bytes.
 */
const MAGIC = Buffer.from('LSJT', 'latin1');
const VERSION = 1;
const PREAMBLE = 12;
const HOST_IS_LE = endianness() === 'LE';

/**
 * A job's text embeddings in its keyspace: the driver stores them once per run (fenced by it),
 * and each stage reads them when its session opens, instead of the driver sending one copy per
 * stage inside OpenSession (16 MiB for Wan2.1's [512, 4096] cond and uncond). Written once and
 * read by every attempt, they live as long as the run's claim (JOB_RUN_TTL_SECONDS) and expire with
 * the job's other keys.
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
    const preamble = Buffer.alloc(PREAMBLE);
    MAGIC.copy(preamble, 0);
    preamble.writeUInt32LE(VERSION, 4);
    preamble.writeUInt32LE(text.cond.length, 8);
    const [cond, uncond] = [float32View(text.cond), float32View(text.uncond)];
    const crc = checksum(preamble, cond, uncond);
    const value = Buffer.concat([preamble, cond, uncond, crc]);
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
    if (buf.length < PREAMBLE + CHECKSUM_BYTES || !buf.subarray(0, 4).equals(MAGIC)) throw fail('are not a Longshot text value (bad magic or truncated)');
    const version = buf.readUInt32LE(4);
    if (version !== VERSION) throw fail(`have version ${version}; this build reads version ${VERSION}`);
    const n = buf.readUInt32LE(8);
    if (buf.length !== PREAMBLE + 8 * n + CHECKSUM_BYTES) throw fail(`have ${buf.length} bytes, ${n} values per tensor need ${PREAMBLE + 8 * n + CHECKSUM_BYTES}`);
    const bodyEnd = buf.length - CHECKSUM_BYTES;
    if (!checksum(buf.subarray(0, bodyEnd)).equals(buf.subarray(bodyEnd))) throw fail('fail their checksum (corrupt)');
    // Views of the reply where it is aligned (Redis replies of this size have a buffer of their own), else copies.
    const values = (at: number): Float32Array =>
      HOST_IS_LE && (buf.byteOffset + at) % 4 === 0 ? new Float32Array(buf.buffer, buf.byteOffset + at, n) : readFloat32(buf.subarray(at, at + 4 * n), n);
    const text = { cond: values(PREAMBLE), uncond: values(PREAMBLE + 4 * n) };
    return { text, ref: { byteLength: buf.length, crc32: buf.readUInt32BE(bodyEnd) } };
  }
}
