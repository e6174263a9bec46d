import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { CHECKSUM_BYTES, CorruptValueError, checksum, float32View, readFloat32, storedPart, ttlMillis } from './codec';
import { DEFAULT_KEYS as defaultKeys, type KeySchema } from './keys';

/** What identifies one text-encoder output: everything it is a pure function of. */
export interface TextEmbeddingKeyParts {
  /** The encoder's fingerprint: weights' bytes, tokenizer, text length (TextEncoder.fingerprint). */
  readonly encoder: string;
  /** Numerics of the worker that computes it: backend, storage dtype, SIMD level. */
  readonly numerics: string;
  readonly prompt: string;
  readonly negativePrompt: string;
}

/** A text encoder's output for one (prompt, negative prompt): what the DiT cross-attends to. */
export interface CachedTextEmbeddings {
  readonly cond: Float32Array;
  readonly uncond: Float32Array;
  /** Token ids (empty for an encoder without ids, the stand-in). */
  readonly condIds: Int32Array;
  readonly uncondIds: Int32Array;
  readonly truncated: number;
}

export interface TextEmbeddingCacheOptions {
  /** Seconds an entry lives after it is written (a hit does not extend it). */
  readonly ttlSeconds: number;
  /** Entries whose stored value would exceed this many bytes are not cached. */
  readonly maxEntryBytes: number;
  readonly keys?: KeySchema;
}

/** A day: long enough for retries, takeovers and a user iterating on seeds with one prompt. */
export const DEFAULT_TEXT_EMBEDDING_TTL_SECONDS = 24 * 3600;
/**
 * Wan2.1's cond + uncond ([512, 4096] float32 each) is 16 MiB with every row a token's; a little
 * room above that. The zero rows past the prompt's tokens are not stored, so most entries are
 * far smaller (about 0.5 MiB for 30 tokens).
 */
export const DEFAULT_TEXT_EMBEDDING_MAX_BYTES = 20 * 1024 * 1024;

/*
 * Value (integers uint32 LE): magic "LSTE", header length h, UTF-8 JSON header
 * {cond, uncond, condIds, uncondIds: element counts; condStored, uncondStored: the values of cond
 * and uncond stored, the rest being +0.0 (absent in entries written before: all); truncated}, the
 * four arrays' stored bytes (LE) in that order, CRC-32 (big-endian) of all preceding bytes.
 */
const MAGIC = Buffer.from('LSTE', 'latin1');
const PREAMBLE = 8;
const FIELDS = ['cond', 'uncond', 'condIds', 'uncondIds'] as const;

/**
 * Text-encoder outputs in Redis, so retries, takeovers and repeated prompts do not encode again.
 * The key is a SHA-256 of the parts (TextEmbeddingKeyParts) under `R:text-embedding:`.
 */
export class TextEmbeddingCache {
  private readonly keys: KeySchema;
  private readonly ttlMs: number;

  constructor(
    private readonly redis: Redis,
    private readonly options: TextEmbeddingCacheOptions,
  ) {
    this.keys = options.keys ?? defaultKeys;
    this.ttlMs = ttlMillis(options.ttlSeconds, 'text embedding ttlSeconds');
    if (!Number.isSafeInteger(options.maxEntryBytes) || options.maxEntryBytes < 0) throw new Error(`text embedding maxEntryBytes must be a non-negative integer, got ${options.maxEntryBytes}`);
  }

  keyOf(parts: TextEmbeddingKeyParts): string {
    const hash = createHash('sha256').update(JSON.stringify([parts.encoder, parts.numerics, parts.prompt, parts.negativePrompt])).digest('hex');
    return this.keys.textEmbeddingKey(hash);
  }

  async get(parts: TextEmbeddingKeyParts): Promise<CachedTextEmbeddings | null> {
    const key = this.keyOf(parts);
    const value = await this.redis.getBuffer(key);
    return value ? decode(key, value) : null;
  }

  /** Stores `e` unless it is larger than the cap; says whether it did. */
  async put(parts: TextEmbeddingKeyParts, e: CachedTextEmbeddings): Promise<boolean> {
    const value = encode(e);
    if (value.length > this.options.maxEntryBytes) return false;
    await this.redis.set(this.keyOf(parts), value, 'PX', this.ttlMs);
    return true;
  }
}

function encode(e: CachedTextEmbeddings): Buffer {
  const [cond, uncond] = [storedPart(e.cond), storedPart(e.uncond)];
  const header = Buffer.from(JSON.stringify({ cond: e.cond.length, uncond: e.uncond.length, condIds: e.condIds.length, uncondIds: e.uncondIds.length, condStored: cond.length, uncondStored: uncond.length, truncated: e.truncated }));
  const pre = Buffer.alloc(PREAMBLE);
  MAGIC.copy(pre, 0);
  pre.writeUInt32LE(header.length, 4);
  const parts = [pre, header, ...[cond, uncond, e.condIds, e.uncondIds].map(float32View)];
  return Buffer.concat([...parts, checksum(...parts)]);
}

function decode(key: string, v: Buffer): CachedTextEmbeddings {
  const bad = (why: string) => new CorruptValueError(key, why);
  if (v.length < PREAMBLE + CHECKSUM_BYTES || !v.subarray(0, 4).equals(MAGIC)) throw bad('not a text embedding value');
  const body = v.subarray(0, v.length - CHECKSUM_BYTES);
  if (!checksum(body).equals(v.subarray(v.length - CHECKSUM_BYTES))) throw bad('checksum mismatch');
  const h = v.readUInt32LE(4);
  if (PREAMBLE + h > body.length) throw bad('header runs past the value');
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(body.subarray(PREAMBLE, PREAMBLE + h).toString('utf8')) as Record<string, unknown>;
  } catch {
    throw bad('header is not JSON');
  }
  const counts = FIELDS.map((f) => header[f]);
  const isCount = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;
  if (!counts.every(isCount) || !Number.isSafeInteger(header.truncated)) throw bad('header fields are not counts');
  const [c, u, ci, ui] = counts;
  const [cs, us] = [header.condStored ?? c, header.uncondStored ?? u];
  if (!isCount(cs) || !isCount(us) || cs > c || us > u) throw bad(`header stores ${String(cs)} and ${String(us)} values of tensors of ${c} and ${u}`);
  const total = (cs + us + ci + ui) * 4;
  if (PREAMBLE + h + total !== body.length) throw bad(`payload is ${body.length - PREAMBLE - h} bytes, header says ${total}`);
  let at = PREAMBLE + h;
  // One copy per tensor, into aligned memory of its own (the reply is the Redis client's), with
  // the zeros that were not stored after it; token ids are the same 32-bit little-endian words,
  // read back as integers.
  const take = (stored: number, n = stored): Float32Array => {
    const out = readFloat32(body.subarray(at, at + stored * 4), stored, n);
    at += stored * 4;
    return out;
  };
  return {
    cond: take(cs, c),
    uncond: take(us, u),
    condIds: new Int32Array(take(ci).buffer),
    uncondIds: new Int32Array(take(ui).buffer),
    truncated: header.truncated as number,
  };
}
