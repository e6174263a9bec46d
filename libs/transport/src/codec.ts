/**
 * Tensor payload codec: float32 values <-> the little-endian bytes that travel in TensorChunk
 * frames. bf16 rounding is @longshot/dtype's, which the checkpoint reader uses too, so a tensor
 * bf16-encoded on the wire matches one stored bf16 in a checkpoint bit for bit.
 */
import { bf16ToF32, f32ToBf16 } from '@longshot/dtype';
import { WireDtype } from './gen/longshot/v1/worker';

export type PayloadDtype = 'f32' | 'bf16';

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function dtypeBytes(dtype: PayloadDtype): number {
  return dtype === 'f32' ? 4 : 2;
}

export function toWireDtype(dtype: PayloadDtype): WireDtype {
  return dtype === 'f32' ? WireDtype.WIRE_DTYPE_F32 : WireDtype.WIRE_DTYPE_BF16;
}

/** The codec dtype of a wire dtype, or null for UNSPECIFIED and values this build does not know. */
export function fromWireDtype(dtype: WireDtype): PayloadDtype | null {
  switch (dtype) {
    case WireDtype.WIRE_DTYPE_F32:
      return 'f32';
    case WireDtype.WIRE_DTYPE_BF16:
      return 'bf16';
    default:
      return null;
  }
}

/**
 * Float32 values as wire bytes. For f32 on a little-endian host the result is a view of `data`
 * (no copy): the caller must not modify `data` until the bytes have been sent.
 */
export function encodePayload(data: Float32Array, dtype: PayloadDtype): Buffer {
  if (dtype === 'f32') {
    if (LITTLE_ENDIAN_HOST) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const out = Buffer.allocUnsafe(data.length * 4);
    for (let i = 0; i < data.length; i++) out.writeFloatLE(data[i], i * 4);
    return out;
  }
  const out = Buffer.allocUnsafe(data.length * 2);
  if (LITTLE_ENDIAN_HOST && out.byteOffset % 2 === 0) {
    const u16 = new Uint16Array(out.buffer, out.byteOffset, data.length);
    for (let i = 0; i < data.length; i++) u16[i] = f32ToBf16(data[i]);
  } else {
    for (let i = 0; i < data.length; i++) out.writeUInt16LE(f32ToBf16(data[i]), i * 2);
  }
  return out;
}

/**
 * Wire bytes as float32 values. f32 bytes that are 4-byte aligned in their ArrayBuffer (the
 * common case for a reassembled tensor) are returned as a view, without a copy; unaligned bytes
 * are copied once.
 */
export function decodePayload(bytes: Buffer, dtype: PayloadDtype, elementCount: number): Float32Array {
  const expected = elementCount * dtypeBytes(dtype);
  if (!Number.isSafeInteger(elementCount) || elementCount < 0) {
    throw new RangeError(`decodePayload: element count ${elementCount} is not a non-negative integer`);
  }
  if (bytes.length !== expected) {
    throw new RangeError(`decodePayload: ${bytes.length} bytes do not hold ${elementCount} ${dtype} values (${expected} bytes)`);
  }
  if (dtype === 'f32') {
    if (!LITTLE_ENDIAN_HOST) {
      const out = new Float32Array(elementCount);
      for (let i = 0; i < elementCount; i++) out[i] = bytes.readFloatLE(i * 4);
      return out;
    }
    if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, elementCount);
    const out = new Float32Array(elementCount);
    new Uint8Array(out.buffer).set(bytes);
    return out;
  }
  const out = new Float32Array(elementCount);
  if (LITTLE_ENDIAN_HOST && bytes.byteOffset % 2 === 0) {
    const u16 = new Uint16Array(bytes.buffer, bytes.byteOffset, elementCount);
    for (let i = 0; i < elementCount; i++) out[i] = bf16ToF32(u16[i]);
  } else {
    for (let i = 0; i < elementCount; i++) out[i] = bf16ToF32(bytes.readUInt16LE(i * 2));
  }
  return out;
}
