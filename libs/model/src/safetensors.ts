/**
 * Reader and writer of the safetensors format (https://github.com/huggingface/safetensors):
 * an 8-byte little-endian header length, a JSON header mapping tensor names to
 * {dtype, shape, data_offsets: [begin, end]} (offsets relative to the data section) plus an
 * optional "__metadata__" string map, then the raw little-endian tensor bytes.
 *
 * The reader parses only the header on open and reads each requested tensor with a positioned
 * read, so a pipeline stage that holds layers 10..19 of a 28 GB checkpoint touches only the
 * bytes of those layers. Everything is returned as Float32Array whatever the stored dtype.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { f32BitsToBf16, f32BitsToF16, f16Table, formatShape, numel } from '@longshot/dtype';

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16';

/** Dtypes we decode; the rest of the format's dtypes are recognised only to validate sizes. */
const SUPPORTED: readonly SafetensorsDtype[] = ['F32', 'F16', 'BF16'];

const DTYPE_BYTES: Readonly<Record<string, number>> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1,
  U16: 2, I16: 2, F16: 2, BF16: 2,
  U32: 4, I32: 4, F32: 4,
  U64: 8, I64: 8, F64: 8,
};

/**
 * The reference implementation refuses headers over 100 MB; a real 14B checkpoint's header is
 * well under 1 MB, so anything larger means a corrupt or foreign file, not a big model.
 */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** Node's readSync/writeSync take int32 lengths; large tensors go through in chunks. */
const IO_CHUNK = 1 << 30;

/** Half-precision tensors are read and widened this many bytes at a time. */
const DECODE_CHUNK_BYTES = 4 << 20;

const LITTLE_ENDIAN_HOST = os.endianness() === 'LE';

export interface TensorInfo {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  /** Absolute byte offsets in the file (header included), [begin, end). */
  readonly begin: number;
  readonly end: number;
}

/** Encodes float32 values as little-endian bytes of `dtype`. */
export function encodeTensor(data: Float32Array, dtype: SafetensorsDtype): Buffer {
  if (dtype === 'F32') {
    if (LITTLE_ENDIAN_HOST) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const out = Buffer.allocUnsafe(data.length * 4);
    for (let i = 0; i < data.length; i++) out.writeFloatLE(data[i], i * 4);
    return out;
  }
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = Buffer.allocUnsafe(data.length * 2);
  const enc = dtype === 'F16' ? f32BitsToF16 : f32BitsToBf16;
  for (let i = 0; i < data.length; i++) out.writeUInt16LE(enc(bits[i]), i * 2);
  return out;
}

function decodeInto(raw: Buffer, dtype: SafetensorsDtype, out: Float32Array): void {
  if (dtype === 'F32') {
    for (let i = 0; i < out.length; i++) out[i] = raw.readFloatLE(i * 4);
    return;
  }
  if (dtype === 'F16') {
    const table = f16Table();
    for (let i = 0; i < out.length; i++) out[i] = table[raw[2 * i] | (raw[2 * i + 1] << 8)];
    return;
  }
  const bits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < out.length; i++) bits[i] = ((raw[2 * i] | (raw[2 * i + 1] << 8)) << 16) >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Reader

/** Where a SafetensorsFile's bytes come from: an open file, or bytes already in memory (an upload). */
interface ByteSource {
  /** Copies up to dst.length bytes from `position` into dst; returns how many (0 at the end). */
  read(dst: Buffer, offset: number, length: number, position: number): number;
  close(): void;
}

const fileSource = (fd: number): ByteSource => ({
  read: (dst, offset, length, position) => fs.readSync(fd, dst, offset, length, position),
  close: () => fs.closeSync(fd),
});

const bytesSource = (bytes: Uint8Array): ByteSource => ({
  read: (dst, offset, length, position) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).copy(dst, offset, position, Math.min(bytes.byteLength, position + length)),
  close: () => undefined,
});

export class SafetensorsFile {
  readonly path: string;
  /** How errors name the file: the path unless the caller gave a shorter, shareable name. */
  readonly label: string;
  readonly metadata: Readonly<Record<string, string>>;
  /** Bytes in the file. */
  readonly size: number;
  private src: ByteSource | null;
  private readonly infos: ReadonlyMap<string, TensorInfo>;

  private constructor(file: string, label: string, src: ByteSource, size: number, infos: Map<string, TensorInfo>, metadata: Record<string, string>) {
    this.path = file;
    this.label = label;
    this.src = src;
    this.size = size;
    this.infos = infos;
    this.metadata = metadata;
  }

  /**
   * Opens the file and validates the header (structure, offsets, byte lengths); reads no data.
   * `label` names the file in every error (e.g. its name inside a model directory, so a message
   * shown to a client does not reveal where the server keeps it).
   */
  static open(file: string, label: string = file): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new Error(`${label}: cannot open (${code === 'ENOENT' ? 'no such file' : (code ?? 'error')})`);
    }
    const src = fileSource(fd);
    try {
      const size = fs.fstatSync(fd).size;
      const { infos, metadata } = parseHeader(label, src, size);
      return new SafetensorsFile(file, label, src, size, infos, metadata);
    } catch (e) {
      src.close();
      throw e;
    }
  }

  /**
   * The same reader over bytes in memory (e.g. an uploaded file): the header is validated exactly
   * as for a file; `label` names it in every error (`path` is the label too).
   */
  static fromBytes(bytes: Uint8Array, label: string): SafetensorsFile {
    const src = bytesSource(bytes);
    const { infos, metadata } = parseHeader(label, src, bytes.byteLength);
    return new SafetensorsFile(label, label, src, bytes.byteLength, infos, metadata);
  }

  /** Tensor names in file order (by data offset). */
  tensorNames(): string[] {
    return [...this.infos.keys()];
  }

  has(name: string): boolean {
    return this.infos.has(name);
  }

  /** Header entry of one tensor; throws naming the file and tensor when absent. */
  info(name: string): TensorInfo {
    const t = this.infos.get(name);
    if (!t) throw new Error(`${this.label}: tensor '${name}' not found (file has ${this.infos.size} tensors)`);
    return t;
  }

  /** Throws unless the tensor exists with exactly this shape. Header-only, reads no data. */
  checkShape(name: string, expectedShape: readonly number[]): TensorInfo {
    const t = this.info(name);
    if (t.shape.length !== expectedShape.length || t.shape.some((d, i) => d !== expectedShape[i])) {
      throw new Error(`${this.label}: tensor '${name}': expected ${formatShape(expectedShape)}, file has ${formatShape(t.shape)}`);
    }
    return t;
  }

  /** Reads one tensor (only its bytes) as float32, optionally checking its shape first. */
  read(name: string, expectedShape?: readonly number[]): Float32Array {
    const t = expectedShape ? this.checkShape(name, expectedShape) : this.info(name);
    const out = new Float32Array(numel(t.shape));
    this.readElements(t, 0, out);
    return out;
  }

  close(): void {
    if (this.src !== null) {
      this.src.close();
      this.src = null;
    }
  }

  /** Decodes out.length elements of `t` starting at element `first` into `out`. */
  private readElements(t: TensorInfo, first: number, out: Float32Array): void {
    const dtype = this.decodableDtype(t);
    const width = DTYPE_BYTES[dtype];
    const begin = t.begin + first * width;
    if (dtype === 'F32' && LITTLE_ENDIAN_HOST) {
      // Read straight into the result: no intermediate copy for the common case.
      this.readExact(t, begin, Buffer.from(out.buffer, out.byteOffset, out.byteLength));
      return;
    }
    // Half precision goes through one bounded scratch buffer, so loading a stage never holds a
    // second copy of its weights: resident memory stays at the float32 result.
    const perChunk = Math.max(1, Math.floor(DECODE_CHUNK_BYTES / width));
    const scratch = Buffer.allocUnsafe(Math.min(out.length, perChunk) * width);
    for (let done = 0; done < out.length; done += perChunk) {
      const n = Math.min(perChunk, out.length - done);
      const raw = scratch.subarray(0, n * width);
      this.readExact(t, begin + done * width, raw);
      decodeInto(raw, dtype, out.subarray(done, done + n));
    }
  }

  private decodableDtype(t: TensorInfo): SafetensorsDtype {
    if (!(SUPPORTED as readonly string[]).includes(t.dtype)) {
      throw new Error(`${this.label}: tensor '${t.name}' has unsupported dtype ${t.dtype} (supported: ${SUPPORTED.join(', ')})`);
    }
    return t.dtype as SafetensorsDtype;
  }

  private readExact(t: TensorInfo, position: number, dst: Buffer): void {
    if (this.src === null) throw new Error(`${this.label}: file is closed (reading tensor '${t.name}')`);
    let done = 0;
    while (done < dst.length) {
      const n = this.src.read(dst, done, Math.min(IO_CHUNK, dst.length - done), position + done);
      if (n === 0) {
        throw new Error(`${this.label}: tensor '${t.name}': file truncated while reading (got ${done} of ${dst.length} bytes; was the file modified after open?)`);
      }
      done += n;
    }
  }
}

function parseHeader(file: string, src: ByteSource, size: number): { infos: Map<string, TensorInfo>; metadata: Record<string, string> } {
  if (size < 8) throw new Error(`${file}: not a safetensors file: ${size} bytes, shorter than the 8-byte header length`);
  const lenBuf = Buffer.alloc(8);
  src.read(lenBuf, 0, 8, 0);
  const headerLen64 = lenBuf.readBigUInt64LE(0);
  if (headerLen64 > BigInt(MAX_HEADER_BYTES)) {
    throw new Error(`${file}: header length ${headerLen64} is absurd (limit ${MAX_HEADER_BYTES} bytes): not a safetensors file or corrupt`);
  }
  const headerLen = Number(headerLen64);
  if (headerLen < 2) throw new Error(`${file}: header length ${headerLen} is too small for a JSON object`);
  if (8 + headerLen > size) {
    throw new Error(`${file}: truncated: header claims ${headerLen} bytes but the file has only ${size - 8} after the length`);
  }
  const headerBuf = Buffer.alloc(headerLen);
  let got = 0;
  while (got < headerLen) {
    const n = src.read(headerBuf, got, headerLen - got, 8 + got);
    if (n === 0) throw new Error(`${file}: truncated while reading the header`);
    got += n;
  }
  let header: unknown;
  try {
    header = JSON.parse(headerBuf.toString('utf8'));
  } catch (e) {
    throw new Error(`${file}: header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new Error(`${file}: header must be a JSON object`);
  }
  const dataStart = 8 + headerLen;
  const dataLen = size - dataStart;
  const metadata: Record<string, string> = {};
  const list: TensorInfo[] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error(`${file}: __metadata__ must be an object of strings`);
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') throw new Error(`${file}: __metadata__['${k}'] must be a string, got ${typeof v}`);
        metadata[k] = v;
      }
      continue;
    }
    const where = `${file}: tensor '${name}'`;
    if (typeof raw !== 'object' || raw === null) throw new Error(`${where}: header entry must be an object`);
    const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e.dtype !== 'string') throw new Error(`${where}: missing dtype`);
    if (!Array.isArray(e.shape) || e.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      throw new Error(`${where}: shape must be an array of non-negative integers, got ${JSON.stringify(e.shape)}`);
    }
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || off.some((o) => !Number.isSafeInteger(o) || o < 0)) {
      throw new Error(`${where}: data_offsets must be [begin, end] non-negative integers, got ${JSON.stringify(off)}`);
    }
    const [b, en] = off as [number, number];
    if (en < b) throw new Error(`${where}: data_offsets [${b}, ${en}] are misordered (end before begin)`);
    if (en > dataLen) {
      throw new Error(`${where}: truncated file: data_offsets end ${en} is past the end of the data section (${dataLen} bytes)`);
    }
    const shape = e.shape as number[];
    const width = DTYPE_BYTES[e.dtype];
    if (width === undefined) {
      // Unknown even to the format: we cannot check its size, and reading it will fail clearly.
    } else if (en - b !== numel(shape) * width) {
      throw new Error(`${where}: byte length ${en - b} does not match dtype ${e.dtype} x shape ${formatShape(shape)} = ${numel(shape) * width} bytes`);
    }
    list.push({ name, dtype: e.dtype, shape, begin: dataStart + b, end: dataStart + en });
  }
  list.sort((x, y) => x.begin - y.begin || x.end - y.end);
  for (let i = 1; i < list.length; i++) {
    const p = list[i - 1];
    const c = list[i];
    if (c.begin < p.end) {
      throw new Error(
        `${file}: tensors '${p.name}' [${p.begin - dataStart}, ${p.end - dataStart}) and '${c.name}' [${c.begin - dataStart}, ${c.end - dataStart}) overlap`,
      );
    }
  }
  return { infos: new Map(list.map((t) => [t.name, t])), metadata };
}

// ---------------------------------------------------------------------------------------------
// Writer

export type TensorInput = FloatTensorInput | IntTensorInput;

export interface FloatTensorInput {
  readonly name: string;
  readonly shape: readonly number[];
  /** The values, or a producer called once when this tensor is written (streams big models). */
  readonly data: Float32Array | (() => Float32Array);
  /** Stored dtype; default F32. */
  readonly dtype?: SafetensorsDtype;
}

/** Integer data (token ids), stored as I32 little-endian. */
export interface IntTensorInput {
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: Int32Array;
  readonly dtype: 'I32';
}

/** The 8-byte length and the padded JSON header of `tensors` laid out in order. */
function encodeHeader(file: string, tensors: readonly TensorInput[], metadata?: Readonly<Record<string, string>>): { head: Buffer; dataBytes: number } {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new Error(`writeSafetensors ${file}: metadata '${k}' must be a string`);
    }
    header.__metadata__ = { ...metadata };
  }
  let offset = 0;
  const seen = new Set<string>();
  for (const t of tensors) {
    const where = `writeSafetensors ${file}: tensor '${t.name}'`;
    if (!t.name || t.name === '__metadata__') throw new Error(`${where}: invalid name`);
    if (seen.has(t.name)) throw new Error(`${where}: duplicate name`);
    seen.add(t.name);
    const dtype = t.dtype ?? 'F32';
    if (dtype !== 'I32' && !SUPPORTED.includes(dtype)) throw new Error(`${where}: unsupported dtype ${dtype} (supported: ${SUPPORTED.join(', ')})`);
    if (t.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) throw new Error(`${where}: bad shape ${formatShape(t.shape)}`);
    const bytes = numel(t.shape) * DTYPE_BYTES[dtype];
    header[t.name] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  // Pad the header with spaces to 8 bytes so the data section is aligned, as the reference does.
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const lenBuf = Buffer.alloc(8);
  lenBuf.writeBigUInt64LE(BigInt(headerBytes.length));
  return { head: Buffer.concat([lenBuf, headerBytes]), dataBytes: offset };
}

/** Writes through a temp file in the same directory, fsync, rename: readers never see half a file. */
function writeAtomically(file: string, fill: (fd: number) => void): void {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
  const fd = fs.openSync(tmp, 'w');
  let open = true;
  try {
    fill(fd);
    fs.fsyncSync(fd);
    open = false;
    fs.closeSync(fd);
    fs.renameSync(tmp, file);
  } catch (e) {
    if (open) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * Writes a safetensors file atomically. Data producers run one at a time in order, so a
 * multi-gigabyte model never sits in memory whole.
 */
export function writeSafetensors(file: string, tensors: readonly TensorInput[], metadata?: Readonly<Record<string, string>>): void {
  const { head } = encodeHeader(file, tensors, metadata);
  writeAtomically(file, (fd) => {
    writeAll(fd, head);
    for (const t of tensors) {
      const data = typeof t.data === 'function' ? t.data() : t.data;
      if (data.length !== numel(t.shape)) {
        throw new Error(`writeSafetensors ${file}: tensor '${t.name}': ${data.length} values do not fill shape ${formatShape(t.shape)} (${numel(t.shape)})`);
      }
      writeAll(fd, t.dtype === 'I32' ? int32Bytes(t.data) : encodeTensor(data as Float32Array, t.dtype ?? 'F32'));
    }
  });
}

/**
 * Writes only the layout of a safetensors file: the header, then the file extended to its full
 * size without writing the data, so every tensor reads as zeros. On a filesystem with sparse
 * files a 28 GB checkpoint costs a few kilobytes: enough to inspect a real model's layout or
 * measure what a stage loads, without its values. Tensor producers are never called.
 */
export function writeSafetensorsLayout(file: string, tensors: readonly Omit<TensorInput, 'data'>[], metadata?: Readonly<Record<string, string>>): void {
  const withData = tensors.map((t): TensorInput => (t.dtype === 'I32' ? { ...t, dtype: 'I32', data: new Int32Array(0) } : { ...t, dtype: t.dtype, data: () => new Float32Array(0) }));
  const { head, dataBytes } = encodeHeader(file, withData, metadata);
  writeAtomically(file, (fd) => {
    writeAll(fd, head);
    fs.ftruncateSync(fd, head.length + dataBytes);
  });
}

function int32Bytes(data: Int32Array): Buffer {
  const out = Buffer.from(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return LITTLE_ENDIAN_HOST ? out : Buffer.from(out).swap32();
}

function writeAll(fd: number, buf: Buffer): void {
  let done = 0;
  while (done < buf.length) done += fs.writeSync(fd, buf, done, Math.min(IO_CHUNK, buf.length - done));
}
