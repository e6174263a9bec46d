/**
 * Types of the addon's data plane (native/src/dataplane.h): tensor bytes between stages moved by
 * native threads, from a sender's buffer straight into a receiver's preallocated buffer. Only
 * @longshot/transport's adapter (libs/transport/src/dataplane.ts) uses these directly.
 */

/** Settles a data-plane operation: bytes moved and the seconds from first to last byte. */
export interface DataPlaneTransfer {
  bytes: number;
  seconds: number;
}

/** A failed data-plane operation: `code` is the gRPC status it maps to. */
export interface DataPlaneError extends Error {
  code: number;
  codeName: string;
}

export interface NativeDataPlaneListener {
  readonly port: number;
  addSession(session: Uint8Array, grant: Uint8Array): void;
  removeSession(session: Uint8Array): void;
  expect(session: Uint8Array, seq: number, destination: ArrayBufferView): Promise<DataPlaneTransfer>;
  cancel(session: Uint8Array, seq: number, why: string): void;
  close(): void;
}

export interface NativeDataPlaneSender {
  send(session: Uint8Array, grant: Uint8Array, seq: number, payload: ArrayBufferView): Promise<DataPlaneTransfer>;
  close(): void;
}

export interface NativeDataPlane {
  /** `shm`: also take tensors through a sender's shared-memory ring (same host only). */
  Listener: new (host: string, port: number, stallMs: number, shm: boolean) => NativeDataPlaneListener;
  /** `slotBytes` > 0: send through a shared-memory ring of `slots` slots of that many bytes. */
  Sender: new (host: string, port: number, stallMs: number, slotBytes?: number, slots?: number) => NativeDataPlaneSender;
  encodeHeader(h: { seq: number; byteLength: number; session: Uint8Array; grant: Uint8Array; shm?: boolean }): Buffer;
  /** CRC-32C of `bytes` (the TCP trailer's checksum), by the fastest implementation or the named one. */
  checksum(bytes: ArrayBufferView, variant?: string): number;
  /** The checksum implementations this CPU runs, fastest first ('avx512', 'sse42', 'table'). */
  checksumVariants(): string[];
  constants: { headerBytes: number; trailerBytes: number; replyBytes: number; keyBytes: number; trailerMagic: number; replyMagic: number; ringBytes: number; ringMagic: number };
}
