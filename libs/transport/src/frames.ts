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

/**
 * Tensor data in a chunk that carries a whole tensor is placed at a multiple of this many bytes
 * from the start of the gRPC message, so that the receiver can hand the message's own buffer to
 * its handler as the tensor (and `decodePayload` can view it as a Float32Array) without a copy.
 */
export const PAYLOAD_ALIGNMENT = 4;
/** gRPC's length prefix in front of every message: compressed flag (1) + length (4). */
const GRPC_MESSAGE_PREFIX_BYTES = 5;
/** The longest varint protobuf allows (a uint64). */
const MAX_VARINT_BYTES = 10;

function chunkInnerLength(seq: number, offset: number, dataLength: number, seqBytes: number): number {
  // proto3 omits fields at their default value; the generated encoder does the same.
  let n = 0;
  if (seq !== 0) n += 1 + seqBytes;
  if (offset !== 0) n += 1 + varintSize(offset);
  if (dataLength !== 0) n += 1 + varintSize(dataLength) + dataLength;
  return n;
}

/**
 * Bytes to spend on the seq varint: its minimal size, or, with `align`, the smallest size (an
 * over-long varint, padded with 0x80 continuation bytes, which every protobuf parser reads as the
 * same value) that puts the data at a multiple of PAYLOAD_ALIGNMENT in the gRPC message.
 */
function seqVarintBytes(seq: number, offset: number, dataLength: number, align: boolean): number {
  const minimal = varintSize(seq);
  if (!align || seq === 0 || dataLength === 0) return minimal;
  for (let seqBytes = minimal; seqBytes <= MAX_VARINT_BYTES; seqBytes++) {
    const inner = chunkInnerLength(seq, offset, dataLength, seqBytes);
    const dataAt = GRPC_MESSAGE_PREFIX_BYTES + 1 + varintSize(inner) + inner - dataLength;
    if (dataAt % PAYLOAD_ALIGNMENT === 0) return seqBytes;
  }
  return minimal;
}

/** Encoded size of a chunk frame (`align` as for `encodeChunkFrameInto`). */
export function chunkFrameLength(seq: number, offset: number, dataLength: number, align = false): number {
  const inner = chunkInnerLength(seq, offset, dataLength, seqVarintBytes(seq, offset, dataLength, align));
  return 1 + varintSize(inner) + inner;
}

function encodeChunkFrame(chunk: TensorChunk): Buffer {
  return encodeChunkFrameInto(Buffer.allocUnsafe(chunkFrameLength(chunk.seq, chunk.offset, chunk.data.length)), chunk);
}

/** Writes `v` as a varint of exactly `size` bytes (at least its minimal size). */
function writePaddedVarint(buf: Buffer, pos: number, v: number, size: number): number {
  for (let i = 1; i < size; i++) {
    buf[pos++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  buf[pos++] = v;
  return pos;
}

/**
 * Encodes a chunk frame at the start of `target` (at least `chunkFrameLength` bytes) and returns
 * the encoded bytes as a view of it; lets a sender reuse frame buffers instead of allocating
 * (and page-faulting) a fresh megabyte per frame. With `align`, the data lands at a multiple of
 * PAYLOAD_ALIGNMENT from the start of the gRPC message that will carry the frame (see
 * `seqVarintBytes`); without, the encoding is the generated encoder's, byte for byte.
 */
export function encodeChunkFrameInto(target: Buffer, chunk: TensorChunk, align = false): Buffer {
  const { seq, offset, data } = chunk;
  const seqBytes = seqVarintBytes(seq, offset, data.length, align);
  const inner = chunkInnerLength(seq, offset, data.length, seqBytes);
  const out = target.subarray(0, 1 + varintSize(inner) + inner);
  let pos = 0;
  out[pos++] = TAG_FRAME_CHUNK;
  pos = writeVarint(out, pos, inner);
  if (seq !== 0) {
    out[pos++] = TAG_CHUNK_SEQ;
    pos = writePaddedVarint(out, pos, seq, seqBytes);
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

