/**
 * Wire (de)serialisation of ActivationFrame that avoids copying tensor bytes.
 *
 * The generated codec copies `bytes` fields twice on encode (into the writer's chunk list, then
 * into the finished buffer) and once on decode (`Buffer.from(reader.bytes())`). For a stage link
 * that moves gigabytes per job those copies dominate, so chunk frames are encoded by hand with
 * one copy and decoded as views into the received message. The bytes produced are ordinary
 * protobuf, identical in meaning to the generated encoder's; header frames go through the
 * generated code unchanged.
 */
import { BinaryReader } from '@bufbuild/protobuf/wire';
import { ActivationFrame, TensorChunk, TensorHeader } from './gen/longshot/v1/worker';

// Tags: (field number << 3) | wire type; 0 = varint, 2 = length-delimited.
const TAG_FRAME_CHUNK = (2 << 3) | 2;
const TAG_CHUNK_SEQ = (1 << 3) | 0;
const TAG_CHUNK_OFFSET = (2 << 3) | 0;
const TAG_CHUNK_DATA = (3 << 3) | 2;

function varintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 0x80);
    n++;
  }
  return n;
}

function writeVarint(buf: Buffer, pos: number, v: number): number {
  // Numbers, not 32-bit ints: offsets and seqs may exceed 2^31.
  while (v >= 0x80) {
    buf[pos++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  buf[pos++] = v;
  return pos;
}

function chunkInnerLength(seq: number, offset: number, dataLength: number): number {
  // proto3 omits fields at their default value; the generated encoder does the same.
  let n = 0;
  if (seq !== 0) n += 1 + varintSize(seq);
  if (offset !== 0) n += 1 + varintSize(offset);
  if (dataLength !== 0) n += 1 + varintSize(dataLength) + dataLength;
  return n;
}

/** Encoded size of a chunk frame. */
export function chunkFrameLength(seq: number, offset: number, dataLength: number): number {
  const inner = chunkInnerLength(seq, offset, dataLength);
  return 1 + varintSize(inner) + inner;
}

function encodeChunkFrame(chunk: TensorChunk): Buffer {
  return encodeChunkFrameInto(Buffer.allocUnsafe(chunkFrameLength(chunk.seq, chunk.offset, chunk.data.length)), chunk);
}

/**
 * Encodes a chunk frame at the start of `target` (at least `chunkFrameLength` bytes) and returns
 * the encoded bytes as a view of it; lets a sender reuse frame buffers instead of allocating
 * (and page-faulting) a fresh megabyte per frame.
 */
export function encodeChunkFrameInto(target: Buffer, chunk: TensorChunk): Buffer {
  const { seq, offset, data } = chunk;
  const inner = chunkInnerLength(seq, offset, data.length);
  const out = target.subarray(0, 1 + varintSize(inner) + inner);
  let pos = 0;
  out[pos++] = TAG_FRAME_CHUNK;
  pos = writeVarint(out, pos, inner);
  if (seq !== 0) {
    out[pos++] = TAG_CHUNK_SEQ;
    pos = writeVarint(out, pos, seq);
  }
  if (offset !== 0) {
    out[pos++] = TAG_CHUNK_OFFSET;
    pos = writeVarint(out, pos, offset);
  }
  if (data.length !== 0) {
    out[pos++] = TAG_CHUNK_DATA;
    pos = writeVarint(out, pos, data.length);
    pos += data.copy(out, pos);
  }
  return out;
}

/**
 * A frame may carry its own encoding under this key (set by TensorSender on the frames it
 * encoded into pooled buffers); the serializer then returns it as is.
 */
export const PRE_ENCODED: unique symbol = Symbol('longshot.preEncodedFrame');

export type PreEncodedFrame = ActivationFrame & { [PRE_ENCODED]?: Buffer };

export function serializeActivationFrame(frame: PreEncodedFrame): Buffer {
  const pre = frame[PRE_ENCODED];
  if (pre) return pre;
  if (frame.frame?.$case === 'chunk') return encodeChunkFrame(frame.frame.value);
  const bytes = ActivationFrame.encode(frame).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function safeNumber(v: bigint | string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new RangeError(`uint64 ${v} does not fit a JavaScript number`);
  return n;
}

function decodeChunk(bytes: Uint8Array): TensorChunk {
  const reader = new BinaryReader(bytes);
  const chunk: TensorChunk = { seq: 0, offset: 0, data: Buffer.alloc(0) };
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === 0) chunk.seq = safeNumber(reader.uint64());
    else if (field === 2 && wireType === 0) chunk.offset = safeNumber(reader.uint64());
    else if (field === 3 && wireType === 2) chunk.data = asBuffer(reader.bytes());
    else reader.skip(wireType, field);
  }
  return chunk;
}

/**
 * Decodes a frame; chunk data is a view into `bytes` (grpc-js hands each message its own
 * buffer, so the view pins only that message). Accepts any valid encoding: fields in any order,
 * unknown fields skipped, the last oneof member present wins.
 */
export function deserializeActivationFrame(bytes: Buffer): ActivationFrame {
  const reader = new BinaryReader(bytes);
  const frame: ActivationFrame = { frame: undefined };
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === 2) {
      frame.frame = { $case: 'header', value: TensorHeader.decode(reader.bytes()) };
    } else if (field === 2 && wireType === 2) {
      frame.frame = { $case: 'chunk', value: decodeChunk(reader.bytes()) };
    } else {
      reader.skip(wireType, field);
    }
  }
  return frame;
}

