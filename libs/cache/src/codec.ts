import { endianness } from 'node:os';
import { crc32 } from 'node:zlib';

/**
 * Stored payloads end with the CRC-32 of everything before it (big-endian). It guards against
 * truncated or corrupted values, not against tampering (Redis is trusted); checkpoints of tens
 * of MB are written every iteration, where SHA-256 cost the head 4x more.
 */
export const CHECKSUM_BYTES = 4;

const HOST_IS_LE = endianness() === 'LE';

export function checksum(...parts: Uint8Array[]): Buffer {
  let c = 0;
  for (const p of parts) c = crc32(p, c);
  const out = Buffer.allocUnsafe(CHECKSUM_BYTES);
  out.writeUInt32BE(c >>> 0, 0);
  return out;
}

/**
 * Float32 values (or other 32-bit words: token ids) as little-endian bytes, copied byte for byte
 * (never through a JS number, which would canonicalise NaN payloads), so a stored tensor reads
 * back bit-identical.
 */
export function float32Bytes(values: Float32Array | Int32Array): Buffer {
  const src = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const out = Buffer.allocUnsafe(values.byteLength);
  if (HOST_IS_LE) out.set(src);
  else swap32(src, out);
  return out;
}

/** Like `float32Bytes`, but a view of the values' own memory (no copy) on little-endian hosts. */
export function float32View(values: Float32Array | Int32Array): Buffer {
  return HOST_IS_LE ? Buffer.from(values.buffer, values.byteOffset, values.byteLength) : float32Bytes(values);
}

/** Writes `values` as little-endian bytes into `dst` at `offset`; returns the offset after them. */
export function writeFloat32(dst: Buffer, offset: number, values: Float32Array): number {
  const src = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const into = dst.subarray(offset, offset + values.byteLength);
  if (HOST_IS_LE) into.set(src);
  else swap32(src, into);
  return offset + values.byteLength;
}

/**
 * The inverse of `float32Bytes`; `bytes` may sit at any offset (Redis replies are not aligned).
 * With `total` > count, the values are followed by zeros up to `total` (see `storedPart`).
 */
export function readFloat32(bytes: Uint8Array, count: number, total = count): Float32Array {
  if (bytes.byteLength !== count * 4) throw new RangeError(`expected ${count * 4} bytes for ${count} float32 values, got ${bytes.byteLength}`);
  if (total < count) throw new RangeError(`${count} values do not fit in ${total}`);
  const out = new Float32Array(total);
  const dst = new Uint8Array(out.buffer, 0, bytes.byteLength);
  if (HOST_IS_LE) dst.set(bytes);
  else swap32(bytes, dst);
  return out;
}

/**
 * The values up to the last one whose bits are not all zero (a view): the trailing +0.0 values
 * need not be stored, `readFloat32(bytes, stored, total)` puts them back bit for bit. Text
 * embeddings are mostly such zeros: the encoder's rows of the real tokens, then zero rows up to
 * the model's text length (512 for Wan2.1, so a 30-token prompt leaves 94% of its 8 MiB zero).
 * A -0.0 is kept: its sign bit is set.
 */
export function storedPart(values: Float32Array): Float32Array {
  const words = new Uint32Array(values.buffer, values.byteOffset, values.length);
  let n = words.length;
  while (n > 0 && words[n - 1] === 0) n--;
  return values.subarray(0, n);
}

function swap32(src: Uint8Array, dst: Uint8Array): void {
  for (let i = 0; i < src.length; i += 4) {
    dst[i] = src[i + 3];
    dst[i + 1] = src[i + 2];
    dst[i + 2] = src[i + 1];
    dst[i + 3] = src[i];
  }
}

/** A corrupt or foreign value under one of our keys; names the key so an operator can inspect or delete it. */
export class CorruptValueError extends Error {
  constructor(
    readonly key: string,
    reason: string,
  ) {
    super(`corrupt value at Redis key ${key}: ${reason}`);
    this.name = 'CorruptValueError';
  }
}

/** Time to live in whole milliseconds from a caller's seconds; rejects what Redis would reject or misread. */
export function ttlMillis(ttlSeconds: number, what = 'ttlSeconds'): number {
  if (typeof ttlSeconds !== 'number' || !Number.isFinite(ttlSeconds) || ttlSeconds <= 0) {
    throw new Error(`${what} must be a positive number of seconds, got ${ttlSeconds}`);
  }
  return Math.max(1, Math.round(ttlSeconds * 1000));
}
