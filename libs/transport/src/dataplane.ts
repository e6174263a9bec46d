/**
 * The data plane's adapter: tensor bytes between stages over the addon's native TCP path or,
 * between processes of one host, shared memory: a ring, or one copy straight into a destination
 * the listener allocated in shared memory (`allocateShared`) (libs/engine/native/src/dataplane.h), while gRPC carries the control messages (the tensor
 * header with its seq and byte length, acknowledgements, errors). Native threads write from the
 * sender's buffer and read into the receiver's preallocated buffer; no JavaScript runs per chunk.
 *
 * Data-plane connections authenticate per tensor with keys derived from the session grant: a
 * session key (which session) and a grant key (proof of its token), both checked by the receiver
 * before any payload byte reaches a buffer. Failures are TransportErrors with the gRPC status
 * the native side chose (NOT_FOUND unknown session, UNAUTHENTICATED wrong token,
 * INVALID_ARGUMENT wrong length, DEADLINE_EXCEEDED a peer that stopped, DATA_LOSS checksum).
 */
import { createHash } from 'node:crypto';
import { status as Status } from '@grpc/grpc-js';
import { nativeDataPlane, type DataPlaneError, type DataPlaneTransfer, type NativeDataPlaneListener, type NativeDataPlaneSender } from '@longshot/engine';
import { TransportError } from './errors';
import { DataPlaneTransport, type DataPlaneEndpoint } from './gen/longshot/v1/worker';

export type { DataPlaneTransfer };

/** Longest a peer may stop mid-tensor, or a tensor may wait for its announcement (default). */
export const DEFAULT_DATA_PLANE_STALL_MS = 10_000;

export interface DataPlaneKeys {
  session: Buffer;
  grant: Buffer;
}

const KEY_BYTES = 16;

/** The keys a data-plane frame of session `sessionId` carries; derived, so the token never travels. */
export function dataPlaneKeys(sessionId: string, token: string): DataPlaneKeys {
  const digest = (...parts: string[]): Buffer => createHash('sha256').update(parts.join('\0')).digest().subarray(0, KEY_BYTES);
  return { session: digest('longshot.dataplane.session', sessionId), grant: digest('longshot.dataplane.grant', sessionId, token) };
}

function transportError(e: unknown, peer: string): TransportError {
  const d = e as Partial<DataPlaneError>;
  const code = typeof d.code === 'number' ? (d.code as Status) : Status.INTERNAL;
  return new TransportError(code, d.message ?? String(e), peer, { cause: e });
}

export interface DataPlaneListenerOptions {
  /** Address to bind (default 127.0.0.1); port 0 (default) picks a free one. */
  host?: string;
  port?: number;
  stallMs?: number;
  /**
   * Also take tensors through shared memory from senders on this host: through their rings, or,
   * into a buffer from `allocateShared`, straight from the sender (one copy).
   */
  shm?: boolean;
  /**
   * Also take tensors by NCCL on CUDA device `device` (default 0); the constructor throws why
   * (no CUDA device, libnccl.so.2 missing or too old) when this machine cannot.
   */
  nccl?: boolean;
  device?: number;
}

/** Accepts data-plane connections and lands announced tensors in the buffers given for them. */
export class DataPlaneListener {
  private readonly native: NativeDataPlaneListener;
  private readonly sessions = new Map<string, DataPlaneKeys>();
  /** Takes tensors through shared memory (DataPlaneListenerOptions.shm). */
  readonly shm: boolean;
  private sharedUnusable: string | null = null;
  readonly host: string;

  constructor(options: DataPlaneListenerOptions = {}) {
    const DP = nativeDataPlane();
    this.host = options.host ?? '127.0.0.1';
    this.shm = options.shm ?? false;
    this.native = new DP.Listener(this.host, options.port ?? 0, options.stallMs ?? DEFAULT_DATA_PLANE_STALL_MS, options.shm ?? false, options.nccl ?? false, false, options.device ?? 0);
  }

  get port(): number {
    return this.native.port;
  }

  /**
   * Shared-memory segments that processes killed by a signal left behind (their owners' locks
   * gone), unlinked when this listener started; only a listener that takes shm looks.
   */
  get sweptSegments(): number {
    return this.native.swept;
  }

  /** Accepts frames of this session from now on. */
  addSession(sessionId: string, token: string): void {
    const keys = dataPlaneKeys(sessionId, token);
    this.sessions.set(sessionId, keys);
    this.native.addSession(keys.session, keys.grant);
  }

  /** Refuses the session's frames from now on; its pending receives reject with CANCELLED. */
  removeSession(sessionId: string): void {
    const keys = this.sessions.get(sessionId);
    if (!keys) return;
    this.sessions.delete(sessionId);
    this.native.removeSession(keys.session);
  }

  /**
   * Receives tensor `seq` of a session straight into `destination`, whose byte length must be
   * the announced one. Rejects with DEADLINE_EXCEEDED if it has not started within `timeoutMs`;
   * once it settles, `destination` is never written again. `ncclId`: the rendezvous id the
   * control plane announced with an NCCL tensor (TensorHeader.nccl_id).
   */
  async receive(sessionId: string, seq: number, destination: ArrayBufferView, timeoutMs = DEFAULT_DATA_PLANE_STALL_MS, ncclId?: Uint8Array): Promise<DataPlaneTransfer> {
    const keys = this.sessions.get(sessionId);
    if (!keys) throw new TransportError(Status.FAILED_PRECONDITION, `session ${sessionId} is not open on this data-plane listener`, 'data plane');
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      this.native.cancel(keys.session, seq, `tensor seq ${seq} did not arrive within ${timeoutMs} ms`);
    }, timeoutMs);
    try {
      return await this.native.expect(keys.session, seq, destination, ncclId && ncclId.length > 0 ? ncclId : undefined);
    } catch (e) {
      const err = transportError(e, 'data plane');
      if (timedOut && err.code === Status.CANCELLED) throw new TransportError(Status.DEADLINE_EXCEEDED, err.details, err.peer, { cause: e });
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * A destination buffer of `bytes` bytes for `receive`: in shared memory when this listener
   * takes shm, so that a sender on this host writes a tensor landing in it (the whole buffer or
   * any subarray) straight there, one copy instead of the ring's two. Otherwise, and when shared
   * memory is unusable here (the native call says why: no /dev/shm, or full), ordinary memory
   * (`Buffer.alloc`): tensors then take the ring. After one failure it stops trying
   * (`sharedUnavailable` says why). Zeroed either way, like `Buffer.alloc` (a stage's pool hands
   * out new buffers as zeros). Shared memory is freed when the buffer is garbage-collected, also
   * after the listener is closed.
   */
  allocateShared(bytes: number): Buffer {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`bytes must be a non-negative safe integer, got ${bytes}`);
    if (!this.shm || this.sharedUnusable !== null) return Buffer.alloc(bytes);
    try {
      return this.native.allocateShared(bytes);
    } catch (e) {
      this.sharedUnusable = e instanceof Error ? e.message : String(e);
      return Buffer.alloc(bytes);
    }
  }

  /** Why `allocateShared` returns ordinary memory (null while it still allocates shared memory, or never tried). */
  get sharedUnavailable(): string | null {
    return this.shm ? this.sharedUnusable : 'this data-plane listener does not take shared memory';
  }

  close(): void {
    this.native.close();
  }
}

/** Slots of a shared-memory ring and their size: chunks copied in while others are copied out. */
export const DEFAULT_SHM_RING = { slotBytes: 4 * 1024 * 1024, slots: 4 };

export interface DataPlaneSenderOptions {
  stallMs?: number;
  /**
   * Send through shared memory instead of the socket (a listener on this host that takes shm):
   * the connection then only rings doorbells. Into a destination the listener allocated with
   * `allocateShared` the sender copies each tensor straight (the transfer reports `direct`),
   * into any other through a ring of `slots` slots of `slotBytes`. true: DEFAULT_SHM_RING.
   * `direct: false` never offers the direct copy (the ring for every tensor; for measurements).
   */
  shm?: boolean | { slotBytes: number; slots: number; direct?: boolean };
  /**
   * Send by NCCL from CUDA device `device` (a listener that takes NCCL): the connection carries
   * the header and the checks, NCCL the bytes. The constructor throws why when it cannot.
   */
  nccl?: { device?: number };
}

/** One data-plane connection to a listener at `host:port`; sends tensors in call order. */
export class DataPlaneSender {
  readonly transport: 'tcp' | 'shm' | 'nccl';
  /** NCCL: the communicator's rendezvous id, announced with each tensor on the control plane. */
  readonly ncclId: Buffer | null;
  private readonly native: NativeDataPlaneSender;
  private readonly keys = new Map<string, DataPlaneKeys>();

  constructor(
    readonly address: string,
    options: DataPlaneSenderOptions = {},
  ) {
    const at = address.lastIndexOf(':');
    const host = address.slice(0, at).replace(/^\[|\]$/g, '');
    const port = Number(address.slice(at + 1));
    if (at < 1 || !Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`data-plane address must be host:port, got '${address}'`);
    const ring = options.shm === true ? DEFAULT_SHM_RING : options.shm || null;
    if (ring && options.nccl) throw new RangeError('a data-plane sender uses shared memory or NCCL, not both');
    this.transport = options.nccl ? 'nccl' : ring ? 'shm' : 'tcp';
    const stallMs = options.stallMs ?? DEFAULT_DATA_PLANE_STALL_MS;
    const Sender = nativeDataPlane().Sender;
    this.native = options.nccl
      ? new Sender(host, port, stallMs, 0, 0, 'nccl', options.nccl.device ?? 0)
      : new Sender(host, port, stallMs, ring?.slotBytes ?? 0, ring?.slots ?? 0, undefined, undefined, typeof options.shm === 'object' ? (options.shm.direct ?? true) : true);
    this.ncclId = this.native.ncclId;
  }

  /**
   * Sends `payload` as tensor `seq` of the session; resolves once the receiver has it whole and
   * checked. `payload` must not change until then.
   */
  async send(sessionId: string, token: string, seq: number, payload: ArrayBufferView): Promise<DataPlaneTransfer> {
    let keys = this.keys.get(sessionId);
    if (!keys) this.keys.set(sessionId, (keys = dataPlaneKeys(sessionId, token)));
    try {
      return await this.native.send(keys.session, keys.grant, seq, payload);
    } catch (e) {
      throw transportError(e, this.address);
    }
  }

  close(): void {
    this.native.close();
  }
}

/**
 * How a worker moves tensor bytes (`--data-plane`): 'grpc' only in chunk frames; 'tcp' or 'shm'
 * over that path where the peer accepts it; 'auto' the best the peer accepts (shm on one host,
 * tcp otherwise). Whatever the choice, gRPC carries the tensor header and the acknowledgements.
 */
export const DATA_PLANE_MODES = ['grpc', 'tcp', 'shm', 'auto'] as const;
export type DataPlaneMode = (typeof DATA_PLANE_MODES)[number];

/** How one hop's tensor bytes travel, as the job result and metrics name it. */
export const HOP_TRANSPORTS = ['grpc', 'tcp', 'shm', 'nccl'] as const;
export type HopTransport = (typeof HOP_TRANSPORTS)[number];

const ACCEPTS: Record<DataPlaneMode, readonly HopTransport[]> = { grpc: [], tcp: ['tcp'], shm: ['shm'], auto: ['shm', 'tcp'] };

/**
 * What a worker in `mode` with these listeners advertises (registry, then OpenSession of its
 * upstream). `nccl`: its listener takes NCCL transfers (a CUDA worker that loaded NCCL; 'auto' only).
 */
export function dataPlaneEndpoint(mode: DataPlaneMode, hostId: string, tcpAddress: string | null, shm: boolean, nccl = false): DataPlaneEndpoint {
  // The listener's address serves shared memory and NCCL too (its connection carries the doorbells, headers and checks).
  const listening = tcpAddress !== null;
  return {
    tcpAddress: ACCEPTS[mode].length > 0 && tcpAddress ? tcpAddress : '',
    tcp: ACCEPTS[mode].includes('tcp') && listening,
    hostId,
    shm: ACCEPTS[mode].includes('shm') && shm && listening,
    nccl: mode === 'auto' && nccl && listening,
  };
}

/**
 * Whether a hop between a worker in `mode` on host `hostId` and one advertising `peer` moves its
 * bytes by shared memory, whichever end sends: both take shm and report the same host id. The
 * sender asks it of the next stage (chooseHopTransport), the receiver of the previous one (whether
 * to allocate what it receives in shared memory at all).
 */
export function sameHostShm(mode: DataPlaneMode, hostId: string, peer: DataPlaneEndpoint): boolean {
  return ACCEPTS[mode].includes('shm') && peer.shm && peer.tcpAddress !== '' && peer.hostId !== '' && peer.hostId === hostId;
}

/**
 * The transport of a hop from a worker in `mode` on host `hostId` to one advertising `next`:
 * the first of shm (same host only), nccl (both ends CUDA workers with NCCL: `ncclHere` for this
 * one, 'auto' only), tcp, grpc that both ends accept. gRPC is always possible. Shared memory
 * comes before NCCL while stage tensors are host buffers: on one host two memcpys beat staging
 * through both devices.
 */
export function chooseHopTransport(mode: DataPlaneMode, hostId: string, next: DataPlaneEndpoint | undefined, ncclHere = false): HopTransport {
  const mine = ACCEPTS[mode];
  if (!next || next.tcpAddress === '') return 'grpc';
  if (sameHostShm(mode, hostId, next)) return 'shm';
  if (mode === 'auto' && ncclHere && next.nccl) return 'nccl';
  if (mine.includes('tcp') && next.tcp) return 'tcp';
  return 'grpc';
}

/** Whether this machine can move tensors by NCCL on CUDA device `device`, and if not, why. */
export interface NcclAvailability {
  available: boolean;
  /** NCCL's version when available ("2.21.5"). */
  version: string;
  /** Why not, naming what is missing (the device, or the library and what was wrong with it). */
  reason: string;
}

export function ncclAvailability(device = 0, library?: string): NcclAvailability {
  const links = nativeDataPlane().deviceLinks(device, library);
  if (links.cuda !== '') return { available: false, version: links.nccl.version ?? '', reason: `no NCCL data plane: ${links.cuda}` };
  if (links.nccl.reason) return { available: false, version: '', reason: links.nccl.reason };
  return { available: true, version: links.nccl.version ?? '', reason: '' };
}

const WIRE_TRANSPORTS: Record<HopTransport, DataPlaneTransport> = {
  grpc: DataPlaneTransport.DATA_PLANE_TRANSPORT_GRPC,
  tcp: DataPlaneTransport.DATA_PLANE_TRANSPORT_TCP,
  shm: DataPlaneTransport.DATA_PLANE_TRANSPORT_SHM,
  nccl: DataPlaneTransport.DATA_PLANE_TRANSPORT_NCCL,
};

export function toWireTransport(t: HopTransport): DataPlaneTransport {
  return WIRE_TRANSPORTS[t];
}

/** The hop transport of a wire value, or null for one this build does not know. */
export function fromWireTransport(t: DataPlaneTransport): HopTransport | null {
  return HOP_TRANSPORTS.find((h) => WIRE_TRANSPORTS[h] === t) ?? null;
}
