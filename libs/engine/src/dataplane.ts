/**
 * Types of the addon's data plane (native/src/dataplane.h): tensor bytes between stages moved by
 * native threads, from a sender's buffer straight into a receiver's preallocated buffer. Only
 * @longshot/transport's adapter (libs/transport/src/dataplane.ts) uses these directly.
 */

/** Settles a data-plane operation: bytes moved and the seconds from first to last byte. */
export interface DataPlaneTransfer {
  bytes: number;
  seconds: number;
  /**
   * The sender wrote the tensor straight into a shared destination (path 1, one copy) rather
   * than through the ring or a socket. The native side always sets it; optional for transfers
   * made up elsewhere.
   */
  direct?: boolean;
}

/** A failed data-plane operation: `code` is the gRPC status it maps to. */
export interface DataPlaneError extends Error {
  code: number;
  codeName: string;
}

export interface NativeDataPlaneListener {
  readonly port: number;
  /** Shared-memory segments of processes killed by a signal that this listener unlinked when it started (shm only). */
  readonly swept: number;
  addSession(session: Uint8Array, grant: Uint8Array): void;
  removeSession(session: Uint8Array): void;
  /** `ncclId`: the rendezvous id the control plane announced with an NCCL tensor. */
  expect(session: Uint8Array, seq: number, destination: ArrayBufferView, ncclId?: Uint8Array): Promise<DataPlaneTransfer>;
  cancel(session: Uint8Array, seq: number, why: string): void;
  /**
   * A zeroed destination buffer of `bytes` bytes in POSIX shared memory (a listener created with
   * shm only): a sender on this host offering direct transfers copies a tensor whose destination
   * lies in it (whole or a subarray) straight there, once. Freed (unmapped, unlinked) when the
   * buffer is garbage-collected, even after the listener closed. Throws an Error saying why when
   * shared memory is unusable (/dev/shm missing or full).
   */
  allocateShared(bytes: number): Buffer;
  close(): void;
}

export interface NativeDataPlaneSender {
  send(session: Uint8Array, grant: Uint8Array, seq: number, payload: ArrayBufferView): Promise<DataPlaneTransfer>;
  close(): void;
  /** The NCCL communicator's rendezvous id (128 bytes) on the NCCL path, else null. */
  readonly ncclId: Buffer | null;
}

/** A data-plane path by name, as the native side takes it. */
export type NativeDataPlanePath = 'tcp' | 'shm' | 'nccl' | 'cuda-ipc';

/** What the device paths would find on this machine: '' or why not, per part. */
export interface DeviceLinks {
  cuda: string;
  nccl: { library: string; version?: string; reason?: string };
}

export interface NativeDataPlane {
  /**
   * `shm`: also take tensors through a sender's shared-memory ring (same host only); `nccl`,
   * `cudaIpc`: through those, on CUDA device `device` (throws why when this machine cannot).
   */
  Listener: new (host: string, port: number, stallMs: number, shm: boolean, nccl?: boolean, cudaIpc?: boolean, device?: number) => NativeDataPlaneListener;
  /**
   * `slotBytes` > 0: send through shared memory, a ring of `slots` slots of that many bytes or,
   * for a receiver's shared destination, straight into it (unless `offerDirect` is false);
   * `devicePath` 'nccl' or 'cuda-ipc': through that, on CUDA device `device` (throws why when it cannot).
   */
  Sender: new (
    host: string,
    port: number,
    stallMs: number,
    slotBytes?: number,
    slots?: number,
    devicePath?: 'nccl' | 'cuda-ipc',
    device?: number,
    offerDirect?: boolean,
  ) => NativeDataPlaneSender;
  encodeHeader(h: { seq: number; byteLength: number; session: Uint8Array; grant: Uint8Array; shm?: boolean; path?: NativeDataPlanePath }): Buffer;
  /** The 128-byte descriptor that follows the header on the device paths. */
  encodeDeviceDescriptor(d: { seq: number; byteLength: number; path: 'nccl' | 'cuda-ipc'; offset?: number; handle?: Uint8Array }): Buffer;
  /** '' when `descriptor` belongs to that header, else why a listener refuses it. */
  checkDeviceDescriptor(header: { seq: number; byteLength: number; path: 'nccl' | 'cuda-ipc' }, descriptor: Uint8Array): string;
  /** CUDA device `device` (default 0) and NCCL (`library`, default libnccl.so.2) as the device paths would find them. */
  deviceLinks(device?: number, library?: string): DeviceLinks;
  /** CRC-32C of `bytes` (the TCP trailer's checksum), by the fastest implementation or the named one. */
  checksum(bytes: ArrayBufferView, variant?: string): number;
  /** The checksum implementations this CPU runs, fastest first ('avx512', 'sse42', 'table'). */
  checksumVariants(): string[];
  constants: {
    headerBytes: number;
    trailerBytes: number;
    replyBytes: number;
    keyBytes: number;
    trailerMagic: number;
    replyMagic: number;
    ringBytes: number;
    ringMagic: number;
    directMagic: number;
    directBytes: number;
    directPieceBytes: number;
    deviceDescriptorBytes: number;
    ncclIdBytes: number;
  };
}
