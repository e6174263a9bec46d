/**
 * Client side of an Activations stream: one header frame, then the payload as chunk frames,
 * per tensor; at most `window` tensors unacknowledged at a time.
 *
 * Throughput comes from never copying the payload on this side until grpc-js serialises a
 * frame (frames carry `subarray` views) and from writing as long as the stream accepts; memory
 * stays bounded by the window plus the HTTP/2 flow-control window, because a full window stops
 * new tensors and a full flow-control window makes `write()` return false until 'drain'.
 */
import { status as Status, type ClientDuplexStream, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import type { ActivationAck, ActivationFrame, TensorHeader } from './gen/longshot/v1/worker';
import type { WorkerClient } from './gen/longshot/v1/worker';
import { TransportError } from './errors';
import { GRPC_LIMITS } from './limits';
import { PRE_ENCODED, chunkFrameLength, encodeChunkFrameInto, type PreEncodedFrame } from './frames';
import { DataPlaneTransport } from './gen/longshot/v1/worker';
import { toWireTransport, type HopTransport } from './dataplane';

/**
 * Moves a tensor's bytes outside the gRPC stream (DataPlaneSender: the native data plane),
 * keyed by the receiving session and the tensor's seq; resolves once the receiver has them whole.
 */
export interface TensorBytesSender {
  readonly transport: Exclude<HopTransport, 'grpc'>;
  /** NCCL: the communicator's rendezvous id, announced in every header (TensorHeader.nccl_id). */
  readonly ncclId?: Buffer | null;
  send(sessionId: string, token: string, seq: number, payload: Buffer): Promise<unknown>;
  close(): void;
}

/** Room for a chunk frame's tag, length and seq/offset varints at their largest. */
const CHUNK_FRAME_MAX_OVERHEAD = 32;

/** Payload bytes per chunk frame: the largest that keeps the encoded frame within the frame limit. */
export const DEFAULT_CHUNK_BYTES = GRPC_LIMITS.maxFrameBytes - CHUNK_FRAME_MAX_OVERHEAD;
export const DEFAULT_SEND_WINDOW = 4;
export const DEFAULT_ACK_TIMEOUT_MS = 60_000;

/**
 * Bytes of frame buffers kept for reuse: enough for the frames a stream holds between write()
 * and its callback (at most one tensor's, since a send waits for its last frame's callback).
 */
const FRAME_POOL_BYTES = 32 * 1024 * 1024;
const EMPTY = Buffer.alloc(0);

export type TensorSendHeader = Omit<TensorHeader, 'seq' | 'byteLength' | 'transport' | 'ncclId'>;

export interface TensorSenderOptions {
  /** Tensors sent but not yet acknowledged before `send` waits (default 4). */
  window?: number;
  /**
   * Time from a tensor's first frame to its acknowledgement before the sender fails (default
   * 60 s). The receiver acknowledges on arrival, not after processing, but stops reading while
   * its handler is behind, so this must cover the receiver's queue times its step time.
   */
  ackTimeoutMs?: number;
  /** Payload bytes per chunk frame (default: the most that fits `GRPC_LIMITS.maxFrameBytes`). */
  chunkBytes?: number;
  /** Names the peer in errors; defaults to the call's peer as grpc-js reports it. */
  peer?: string;
  /**
   * Sends tensor bytes over this instead of chunk frames: the stream then carries only headers
   * and acknowledgements. The sender owns it (closes it with the stream).
   */
  bytes?: TensorBytesSender;
}

interface Outstanding {
  seq: number;
  /** performance.now() when its header was written. */
  sentAt: number;
}

export class TensorSender {
  /** Opens an Activations stream on `client` and wraps it. */
  static open(client: WorkerClient, options: TensorSenderOptions = {}): TensorSender {
    const peer = options.peer ?? client.getChannel().getTarget().replace(/^dns:/, '');
    return new TensorSender(client.activations(), { ...options, peer });
  }

  private readonly window: number;
  private readonly ackTimeoutMs: number;
  private readonly chunkBytes: number;
  private readonly peerName: string | undefined;
  private readonly bytes: TensorBytesSender | null;
  private nextSeq = 1;
  /** Unacknowledged tensors, oldest first (Map keeps insertion order). */
  private readonly outstanding = new Map<number, Outstanding>();
  /**
   * One timer for every outstanding tensor's acknowledgement deadline, not one per tensor: a
   * timer armed and cleared per tensor costs the sending thread more than the header it guards.
   * It fires at the oldest tensor's deadline as of when it was armed; acknowledgements leave it
   * be, and on firing it fails the stream only if the oldest tensor then outstanding is overdue,
   * otherwise re-arms for that one.
   */
  private ackTimer: NodeJS.Timeout | null = null;
  /** Woken on every acknowledgement and on failure. */
  private wakers: Array<() => void> = [];
  /** Serialises `send` calls so tensors go out whole and in call order. */
  private tail: Promise<void> = Promise.resolve();
  private failure: TransportError | null = null;
  private closing: Promise<void> | null = null;
  private finalStatus: StatusObject | null = null;
  private statusWaiters: Array<() => void> = [];
  private readonly failureListeners = new Set<() => void>();
  /**
   * Frame buffers whose frames grpc-js has finished with (their write callback ran). grpc-js
   * copies each serialised message into its own framed buffer, so ours are only scratch;
   * reusing them keeps the hot path on warm memory instead of a fresh 1 MiB allocation (page
   * faults, external-memory GC pressure) per frame.
   */
  private readonly framePool: Buffer[] = [];
  private readonly framePoolSize: number;

  constructor(
    private readonly stream: ClientDuplexStream<ActivationFrame, ActivationAck>,
    options: TensorSenderOptions = {},
  ) {
    this.window = options.window ?? DEFAULT_SEND_WINDOW;
    this.ackTimeoutMs = options.ackTimeoutMs ?? DEFAULT_ACK_TIMEOUT_MS;
    this.chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    this.peerName = options.peer;
    this.bytes = options.bytes ?? null;
    this.framePoolSize = Math.max(2, Math.floor(FRAME_POOL_BYTES / (this.chunkBytes + CHUNK_FRAME_MAX_OVERHEAD)));
    if (!Number.isInteger(this.window) || this.window < 1) throw new RangeError(`window must be a positive integer, got ${this.window}`);
    if (!(this.ackTimeoutMs > 0)) throw new RangeError(`ackTimeoutMs must be positive, got ${this.ackTimeoutMs}`);
    if (!Number.isInteger(this.chunkBytes) || this.chunkBytes < 1 || this.chunkBytes > DEFAULT_CHUNK_BYTES) {
      throw new RangeError(`chunkBytes must be an integer in [1, ${DEFAULT_CHUNK_BYTES}], got ${this.chunkBytes}`);
    }

    stream.on('data', (ack: ActivationAck) => this.onAck(ack.seq));
    stream.on('error', (err: ServiceError) => this.fail(new TransportError(err.code ?? Status.UNKNOWN, err.details ?? err.message, this.peer, { cause: err })));
    stream.on('status', (status: StatusObject) => this.onStatus(status));
  }

  /** The receiving end, for messages and metrics. */
  get peer(): string {
    return this.peerName ?? this.stream.getPeer();
  }

  /** Tensors sent and not yet acknowledged. */
  get unacknowledged(): number {
    return this.outstanding.size;
  }

  /** How tensor bytes travel on this stream. */
  get transport(): HopTransport {
    return this.bytes?.transport ?? 'grpc';
  }

  /** The error that ended the stream, if it has failed. */
  get error(): TransportError | null {
    return this.failure;
  }

  /**
   * Sends one tensor; `seq` and `byteLength` are filled in. Resolves once every frame has been
   * handed to grpc-js and serialised, so `payload` may be reused afterwards; acknowledgement is
   * not awaited here but bounds how many later sends may start. Rejects if the stream has
   * failed (before or during the send) or the sender is closed.
   */
  send(header: TensorSendHeader, payload: Buffer): Promise<void> {
    if (this.closing) return Promise.reject(new Error('TensorSender: send after close'));
    const run = this.tail.then(() => this.sendNow(header, payload));
    // A failed send fails the stream; later sends see `this.failure`, so the chain itself
    // must not reject or every later send would report the first one's error twice.
    this.tail = run.catch(() => undefined);
    return run;
  }

  /**
   * Half-closes the stream after pending sends and resolves when the receiver has processed
   * every tensor and ended the call with OK. Rejects with the stream's error otherwise.
   */
  close(): Promise<void> {
    this.closing ??= this.closeNow();
    return this.closing;
  }

  /** Abandons the stream: the receiver sees CANCELLED, pending and later sends reject. */
  cancel(reason = 'cancelled by sender'): void {
    this.fail(new TransportError(Status.CANCELLED, reason, this.peer));
  }

  private async sendNow(header: TensorSendHeader, payload: Buffer): Promise<void> {
    while (this.outstanding.size >= this.window) {
      this.throwIfFailed();
      await this.nextWake();
    }
    this.throwIfFailed();

    const seq = this.nextSeq++;
    const byteLength = payload.length;
    this.outstanding.set(seq, { seq, sentAt: performance.now() });
    this.ackTimer ??= this.armAckTimer(this.ackTimeoutMs);

    if (this.bytes) {
      // The header announces the tensor on the control plane; its bytes go straight from
      // `payload` to the receiver's buffer, and this resolves once they are there.
      this.stream.write({ frame: { $case: 'header', value: { ...header, seq, byteLength, transport: toWireTransport(this.bytes.transport), ncclId: this.bytes.ncclId ?? EMPTY } } });
      const sent = this.bytes.send(header.sessionId, header.token, seq, payload).then(
        () => undefined,
        (e: unknown) => this.fail(e instanceof TransportError ? e : new TransportError(Status.INTERNAL, String(e), this.peer, { cause: e })),
      );
      await this.race(sent);
      this.throwIfFailed();
      return;
    }
    let ok = this.stream.write({ frame: { $case: 'header', value: { ...header, seq, byteLength, transport: DataPlaneTransport.DATA_PLANE_TRANSPORT_GRPC, ncclId: EMPTY } } });
    let lastWritten: Promise<void> | null = null;
    for (let offset = 0; offset < byteLength; offset += this.chunkBytes) {
      if (!ok) await this.drain();
      this.throwIfFailed();
      const end = Math.min(offset + this.chunkBytes, byteLength);
      const chunk = { seq, offset, data: payload.subarray(offset, end) };
      // A chunk that is the whole tensor is laid out so that the receiver can keep the message
      // as the payload instead of copying it out (see TensorReceiver.onChunk).
      const whole = offset === 0 && end === byteLength;
      const scratch = this.takeFrameBuffer(chunkFrameLength(seq, offset, end - offset, whole));
      const frame: PreEncodedFrame = { frame: { $case: 'chunk', value: chunk } };
      frame[PRE_ENCODED] = encodeChunkFrameInto(scratch, chunk, whole);
      // Encoded above: the frame must not keep the payload (or the caller's view of it) alive.
      chunk.data = EMPTY;
      const release = (): void => {
        if (this.framePool.length < this.framePoolSize) this.framePool.push(scratch);
      };
      if (end === byteLength) {
        // The last frame's callback marks the point where every frame of this tensor has been
        // serialised (Writable processes writes in order), i.e. where `payload` is released.
        lastWritten = new Promise<void>((resolve) => {
          ok = this.stream.write(frame, () => {
            release();
            resolve();
          });
        });
      } else {
        ok = this.stream.write(frame, release);
      }
    }
    if (lastWritten) await this.race(lastWritten);
    this.throwIfFailed();
  }

  private takeFrameBuffer(length: number): Buffer {
    const pooled = this.framePool.pop();
    if (pooled && pooled.length >= length) return pooled;
    return Buffer.allocUnsafeSlow(this.chunkBytes + CHUNK_FRAME_MAX_OVERHEAD);
  }

  private async closeNow(): Promise<void> {
    try {
      await this.closeStream();
    } finally {
      this.clearAckTimer();
      this.bytes?.close();
    }
  }

  private async closeStream(): Promise<void> {
    await this.tail;
    this.throwIfFailed();
    this.stream.end();
    while (!this.finalStatus) {
      this.throwIfFailed();
      await this.race(new Promise<void>((resolve) => this.statusWaiters.push(resolve)));
    }
    this.throwIfFailed();
    if (this.outstanding.size > 0) {
      const seqs = [...this.outstanding.keys()];
      this.fail(new TransportError(Status.DATA_LOSS, `stream ended OK with tensors ${seqs.join(', ')} unacknowledged`, this.peer));
      this.throwIfFailed();
    }
  }

  private onAck(seq: number): void {
    const oldest = this.outstanding.keys().next();
    if (oldest.done || seq < oldest.value || !this.outstanding.has(seq)) {
      this.fail(new TransportError(Status.INTERNAL, `acknowledgement for tensor seq ${seq}, which is not outstanding`, this.peer));
      this.stream.cancel();
      return;
    }
    // Acknowledgements arrive in order; one for seq covers every earlier tensor too.
    for (const s of this.outstanding.keys()) {
      if (s > seq) break;
      this.outstanding.delete(s);
    }
    this.wake();
  }

  /** The acknowledgement timer fired: fail if the oldest outstanding tensor is overdue, else wait for it. */
  private checkAckDeadline(): void {
    this.ackTimer = null;
    if (this.failure) return;
    const oldest = this.outstanding.values().next();
    if (oldest.done) return;
    const left = oldest.value.sentAt + this.ackTimeoutMs - performance.now();
    if (left <= 0) {
      this.fail(new TransportError(Status.DEADLINE_EXCEEDED, `tensor seq ${oldest.value.seq} was not acknowledged within ${this.ackTimeoutMs} ms`, this.peer));
      return;
    }
    this.ackTimer = this.armAckTimer(left);
  }

  /** The stream's own socket keeps the process alive while tensors are outstanding, not this timer. */
  private armAckTimer(ms: number): NodeJS.Timeout {
    return setTimeout(() => this.checkAckDeadline(), ms).unref();
  }

  private clearAckTimer(): void {
    if (this.ackTimer) clearTimeout(this.ackTimer);
    this.ackTimer = null;
  }

  private onStatus(status: StatusObject): void {
    this.finalStatus = status;
    if (status.code !== Status.OK) {
      this.fail(new TransportError(status.code, status.details, this.peer));
    } else if (!this.closing) {
      // The receiver may end the call only after our half-close; OK before it is a broken peer.
      this.fail(new TransportError(Status.UNAVAILABLE, 'receiver ended the stream before the sender closed it', this.peer));
    }
    const waiters = this.statusWaiters;
    this.statusWaiters = [];
    for (const w of waiters) w();
  }

  private fail(error: TransportError): void {
    if (this.failure) return;
    this.failure = error;
    this.bytes?.close();
    this.clearAckTimer();
    if (!this.finalStatus) this.stream.cancel();
    this.wake();
    const waiters = this.statusWaiters;
    this.statusWaiters = [];
    for (const w of waiters) w();
    const listeners = [...this.failureListeners];
    this.failureListeners.clear();
    for (const l of listeners) l();
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  private wake(): void {
    const wakers = this.wakers;
    this.wakers = [];
    for (const w of wakers) w();
  }

  /** Resolves on the next acknowledgement or failure. */
  private nextWake(): Promise<void> {
    return new Promise((resolve) => this.wakers.push(resolve));
  }

  /**
   * Resolves when `register`'s event fires or the stream fails, whichever is first; the caller
   * checks `failure` afterwards. Listeners are removed either way, so waits that end normally
   * leave nothing behind on a stream that lives for a whole job.
   */
  private until(register: (done: () => void) => () => void): Promise<void> {
    if (this.failure) return Promise.resolve();
    return new Promise((resolve) => {
      let unregister: (() => void) | null = null;
      const done = (): void => {
        this.failureListeners.delete(done);
        unregister?.();
        resolve();
      };
      this.failureListeners.add(done);
      unregister = register(done);
    });
  }

  private race(p: Promise<void>): Promise<void> {
    return this.until((done) => {
      void p.then(done, done);
      return () => undefined;
    });
  }

  private drain(): Promise<void> {
    return this.until((done) => {
      this.stream.once('drain', done);
      return () => this.stream.off('drain', done);
    });
  }
}

