/**
 * Server side of an Activations stream: validates the frame protocol, reassembles tensors,
 * acknowledges each one as it arrives whole and hands tensors to an async handler one at a
 * time, in arrival order (a stage's K/V cache depends on that order).
 *
 * Each stream has its own receiver and state; a protocol violation, a refused header or a
 * failing handler ends only that stream, with a status that names the problem.
 */
import { status as Status, type handleBidiStreamingCall, type ServerDuplexStream } from '@grpc/grpc-js';
import {
  DataPlaneTransport,
  PayloadKind,
  type ActivationAck,
  type ActivationFrame,
  type TensorChunk,
  type TensorHeader,
} from './gen/longshot/v1/worker';
import { dtypeBytes, fromWireDtype } from './codec';
import type { StreamRejection } from './errors';
import { formatShape } from '@longshot/dtype';
import { raiseReceiveWindow } from './window';
import { PAYLOAD_ALIGNMENT } from './frames';

export interface ReceivedTensor {
  header: TensorHeader;
  /** Exactly `header.byteLength` bytes, owned by the handler. */
  payload: Buffer;
}

export interface TensorReceiverOptions {
  /** Called once per tensor, in arrival order, never concurrently within a stream. */
  handler: (tensor: ReceivedTensor) => Promise<void> | void;
  /**
   * Checks each header before any of its payload is accepted: unknown session (NOT_FOUND), bad
   * token (UNAUTHENTICATED), a shape the session does not expect (INVALID_ARGUMENT). Returning a
   * rejection ends the stream with it; null accepts.
   */
  authorize?: (header: TensorHeader) => StreamRejection | null;
  /**
   * Whole tensors waiting for the handler before the stream stops reading (default 2). Once it
   * stops, HTTP/2 flow control and then the sender's window hold the sender back, which bounds
   * this stage's memory whatever the upstream's pace.
   */
  maxQueued?: number;
  /** Largest tensor accepted (default 2 GiB); a header beyond it is refused before allocating. */
  maxTensorBytes?: number;
  /**
   * Receives the bytes of a tensor whose header says they travel on a data plane (TCP, shared
   * memory) straight into `destination` (exactly byte_length bytes, then the handler's payload);
   * resolves once they are in and checked. Without it such headers are refused.
   */
  dataPlane?: (header: TensorHeader, transport: DataPlaneTransport, destination: Buffer) => Promise<unknown>;
  /**
   * The buffer a tensor of `header` lands in (its byte_length exactly, 8-byte aligned), e.g. one
   * its session reuses; undefined for a new one. Asked only for a header that passed `authorize`.
   */
  destination?: (header: TensorHeader) => Buffer | undefined;
}

export interface StreamOutcome {
  code: Status;
  details: string;
}

export const DEFAULT_MAX_QUEUED = 2;
export const DEFAULT_MAX_TENSOR_BYTES = 2 * 1024 * 1024 * 1024;

const KNOWN_KINDS: ReadonlySet<PayloadKind> = new Set([PayloadKind.PAYLOAD_KIND_HIDDEN, PayloadKind.PAYLOAD_KIND_VELOCITY, PayloadKind.PAYLOAD_KIND_GROUP, PayloadKind.PAYLOAD_KIND_GROUP_FAILURE]);

class StreamRefused extends Error {
  constructor(readonly code: Status, message: string) {
    super(message);
  }
}

function invalid(message: string): StreamRefused {
  return new StreamRefused(Status.INVALID_ARGUMENT, message);
}

interface OpenTensor {
  header: TensorHeader;
  /** Null until the first chunk: a chunk that is the whole tensor may become the payload. */
  payload: Buffer | null;
  received: number;
}

/**
 * Whether chunk data (a view into the gRPC message that carried it) can be handed to the handler
 * as the tensor itself instead of being copied: it must be aligned for a typed-array view of
 * any wire dtype (what `decodePayload` needs to avoid its own copy), and the message buffer must
 * hold little besides it, so that keeping the payload pins no unrelated memory (grpc-js gives
 * each message above a few KiB a buffer of its own; a small one may sit in Node's shared pool).
 */
function ownsAlignedBuffer(data: Buffer): boolean {
  return data.byteOffset % PAYLOAD_ALIGNMENT === 0 && data.buffer.byteLength - data.length <= MAX_MESSAGE_SLACK;
}
const MAX_MESSAGE_SLACK = 64;

/** A thrown error's gRPC status: its own when it has one, else INTERNAL. */
function statusOf(code: unknown): Status {
  return typeof code === 'number' && Number.isInteger(code) && code > 0 && code <= 16 ? (code as Status) : Status.INTERNAL;
}

export class TensorReceiver {
  /** Settles when the stream has ended, with the status this side ended it with. */
  readonly finished: Promise<StreamOutcome>;

  private readonly handler: TensorReceiverOptions['handler'];
  private readonly authorize: TensorReceiverOptions['authorize'];
  private readonly maxQueued: number;
  private readonly maxTensorBytes: number;
  private readonly dataPlane: TensorReceiverOptions['dataPlane'];
  private readonly destination: TensorReceiverOptions['destination'];
  private lastSeq = 0;
  /** Tensors land in header order, whichever way their bytes travel: each waits for this. */
  private landed: Promise<void> = Promise.resolve();
  /** Data-plane tensors landing now (their bytes are being received). */
  private landing = 0;
  /**
   * Seqs queued but not yet acknowledged, oldest first. A data-plane tensor's header and bytes
   * do not wait for the stream to be read, so its stage is held back by acknowledging it only
   * once fewer than maxQueued acknowledged tensors wait for the handler: the sender's window
   * then stops it (as a paused stream does for chunk frames).
   */
  private readonly heldAcks: number[] = [];
  private open: OpenTensor | null = null;
  private readonly queue: ReceivedTensor[] = [];
  private handling = false;
  private paused = false;
  private inputEnded = false;
  private done = false;
  private resolveFinished!: (outcome: StreamOutcome) => void;

  constructor(
    private readonly call: ServerDuplexStream<ActivationFrame, ActivationAck>,
    options: TensorReceiverOptions,
  ) {
    this.handler = options.handler;
    this.authorize = options.authorize;
    this.maxQueued = options.maxQueued ?? DEFAULT_MAX_QUEUED;
    this.maxTensorBytes = options.maxTensorBytes ?? DEFAULT_MAX_TENSOR_BYTES;
    this.dataPlane = options.dataPlane;
    this.destination = options.destination;
    if (!Number.isInteger(this.maxQueued) || this.maxQueued < 1) throw new RangeError(`maxQueued must be a positive integer, got ${this.maxQueued}`);
    this.finished = new Promise((resolve) => (this.resolveFinished = resolve));
    raiseReceiveWindow(call);

    call.on('data', (frame: ActivationFrame) => this.onFrame(frame));
    call.on('end', () => {
      this.inputEnded = true;
      this.maybeFinish();
    });
    call.on('cancelled', () => this.settle({ code: Status.CANCELLED, details: 'cancelled by the sender' }));
    // Without a listener an 'error' (e.g. a failed ack write on a torn-down stream) would be
    // an uncaught exception that takes every other stream of the worker down with it.
    call.on('error', (err: Error) => this.settle({ code: Status.UNKNOWN, details: err.message }));
  }

  private onFrame(frame: ActivationFrame): void {
    if (this.done) return;
    try {
      const f = frame.frame;
      if (f === undefined) throw invalid('frame carries neither a header nor a chunk');
      if (f.$case === 'header') this.onHeader(f.value);
      else this.onChunk(f.value);
    } catch (err) {
      if (err instanceof StreamRefused) this.refuse(err.code, err.message);
      else this.refuse(Status.INTERNAL, `receiver failed: ${(err as Error).message}`);
    }
  }

  private onHeader(header: TensorHeader): void {
    const seq = header.seq;
    if (this.open) {
      const o = this.open;
      throw invalid(`tensor seq ${o.header.seq}: header of seq ${seq} arrived after ${o.received} of ${o.header.byteLength} bytes`);
    }
    if (seq < 1) throw invalid(`tensor seq ${seq}: seq must be at least 1`);
    if (seq <= this.lastSeq) throw invalid(`tensor seq ${seq}: seq must be strictly increasing (previous ${this.lastSeq})`);
    if (!KNOWN_KINDS.has(header.kind)) throw invalid(`tensor seq ${seq}: unknown payload kind ${header.kind}`);
    const dtype = fromWireDtype(header.dtype);
    if (dtype === null) throw invalid(`tensor seq ${seq}: unknown wire dtype ${header.dtype}`);

    let elements = 1;
    for (const d of header.shape) elements *= d;
    const expected = elements * dtypeBytes(dtype);
    if (header.byteLength !== expected) {
      throw invalid(`tensor seq ${seq}: byte_length ${header.byteLength} does not match shape ${formatShape(header.shape)} as ${dtype} (${expected} bytes)`);
    }
    if (header.byteLength > this.maxTensorBytes) {
      throw new StreamRefused(Status.RESOURCE_EXHAUSTED, `tensor seq ${seq}: ${header.byteLength} bytes exceed this receiver's limit of ${this.maxTensorBytes}`);
    }
    const transport = header.transport;
    if (transport !== DataPlaneTransport.DATA_PLANE_TRANSPORT_GRPC) {
      if (DataPlaneTransport[transport] === undefined) throw invalid(`tensor seq ${seq}: unknown transport ${transport}`);
      if (!this.dataPlane) throw new StreamRefused(Status.FAILED_PRECONDITION, `tensor seq ${seq}: this receiver takes tensor bytes over gRPC only, not ${DataPlaneTransport[transport]}`);
    }
    const rejection = this.authorize?.(header) ?? null;
    if (rejection) throw new StreamRefused(rejection.code, rejection.message);

    this.lastSeq = seq;
    if (transport !== DataPlaneTransport.DATA_PLANE_TRANSPORT_GRPC) {
      this.receiveDataPlane(header, transport);
      return;
    }
    this.open = { header, payload: null, received: 0 };
    if (header.byteLength === 0) {
      this.open.payload = Buffer.alloc(0);
      this.complete();
    }
  }

  private onChunk(chunk: TensorChunk): void {
    const o = this.open;
    if (!o) throw invalid(`chunk of tensor seq ${chunk.seq} without a header`);
    const seq = o.header.seq;
    if (chunk.seq !== seq) throw invalid(`tensor seq ${seq}: chunk of seq ${chunk.seq} arrived before it was complete`);
    if (chunk.offset !== o.received) throw invalid(`tensor seq ${seq}: chunk at offset ${chunk.offset}, expected ${o.received} (chunks must be contiguous)`);
    const end = chunk.offset + chunk.data.length;
    if (end > o.header.byteLength) throw invalid(`tensor seq ${seq}: chunk [${chunk.offset}, ${end}) overruns byte_length ${o.header.byteLength}`);
    if (o.payload === null) {
      if (end === o.header.byteLength && ownsAlignedBuffer(chunk.data)) {
        // The tensor arrived in one chunk: its message buffer becomes the payload, no copy.
        o.payload = chunk.data;
        o.received = end;
        this.complete();
        return;
      }
      o.payload = this.destinationFor(o.header);
    }
    chunk.data.copy(o.payload, chunk.offset);
    o.received = end;
    if (end === o.header.byteLength) this.complete();
  }

  /**
   * Bytes of `header` over a data plane, into a buffer of their own that becomes the handler's
   * payload (no copy on this side). The stream keeps being read meanwhile: the next header must
   * be seen for its bytes to be taken.
   */
  private receiveDataPlane(header: TensorHeader, transport: DataPlaneTransport): void {
    const destination = this.destinationFor(header);
    this.landing++;
    const bytes = this.dataPlane!(header, transport, destination);
    const previous = this.landed;
    this.landed = (async () => {
      let failure: { code?: unknown; details?: string; message?: string } | null = null;
      try {
        await bytes;
      } catch (err) {
        // A TransportError's details are the data plane's own words (they name the tensor).
        failure = err as { code?: unknown; details?: string; message?: string };
        this.refuse(statusOf(failure.code), failure.details ?? failure.message ?? `tensor seq ${header.seq}: ${String(err)}`);
      }
      await previous;
      // Counted as landing until queued, so the stream cannot end OK in between.
      this.landing--;
      if (!failure && !this.done) this.enqueue(header, destination, true);
      this.maybeFinish();
    })();
  }

  /**
   * Where a tensor's bytes go: the caller's buffer, or a new one. allocUnsafeSlow: aligned and
   * tensor-sized, never a slice of the shared pool, so decodePayload views it without a copy and
   * the handler may keep it without pinning unrelated memory.
   */
  private destinationFor(header: TensorHeader): Buffer {
    const given = this.destination?.(header);
    if (!given) return Buffer.allocUnsafeSlow(header.byteLength);
    if (given.length !== header.byteLength || given.byteOffset % 8 !== 0) {
      throw new StreamRefused(Status.INTERNAL, `tensor seq ${header.seq}: the receive buffer has ${given.length} bytes at offset ${given.byteOffset}, expected ${header.byteLength}, 8-byte aligned`);
    }
    return given;
  }

  private complete(): void {
    const o = this.open!;
    this.open = null;
    const previous = this.landed;
    if (this.landing === 0) {
      this.enqueue(o.header, o.payload!, false);
      return;
    }
    // Behind a data-plane tensor still landing: keep the order.
    this.landed = previous.then(() => {
      if (!this.done) this.enqueue(o.header, o.payload!, false);
    });
  }

  private enqueue(header: TensorHeader, payload: Buffer, viaDataPlane: boolean): void {
    this.queue.push({ header, payload });
    if (viaDataPlane || this.heldAcks.length > 0) {
      this.heldAcks.push(header.seq);
      this.releaseAcks();
    } else {
      this.call.write({ seq: header.seq });
    }
    if (!viaDataPlane && this.queue.length >= this.maxQueued && !this.paused) {
      this.paused = true;
      this.call.pause();
    }
    void this.pump();
  }

  /** Acknowledges held tensors while fewer than maxQueued acknowledged ones wait for the handler. */
  private releaseAcks(): void {
    while (this.heldAcks.length > 0 && this.queue.length - this.heldAcks.length < this.maxQueued) this.call.write({ seq: this.heldAcks.shift()! });
  }

  private async pump(): Promise<void> {
    if (this.handling) return;
    this.handling = true;
    try {
      while (!this.done && this.queue.length > 0) {
        const tensor = this.queue.shift()!;
        this.releaseAcks();
        if (this.paused && this.queue.length < this.maxQueued) {
          this.paused = false;
          this.call.resume();
        }
        try {
          await this.handler(tensor);
        } catch (err) {
          const e = err as { code?: unknown; message?: string };
          this.refuse(statusOf(e.code), `tensor seq ${tensor.header.seq}: handler failed: ${e.message ?? String(err)}`);
          return;
        }
      }
    } finally {
      this.handling = false;
    }
    this.maybeFinish();
  }

  private maybeFinish(): void {
    if (this.done || !this.inputEnded || this.handling || this.queue.length > 0 || this.landing > 0) return;
    if (this.open) {
      const o = this.open;
      this.refuse(Status.INVALID_ARGUMENT, `tensor seq ${o.header.seq}: stream ended after ${o.received} of ${o.header.byteLength} bytes`);
      return;
    }
    this.settle({ code: Status.OK, details: 'OK' });
    this.call.end();
  }

  /** Ends the stream with `code`; later frames and queued tensors are dropped. */
  private refuse(code: Status, details: string): void {
    if (this.done) return;
    this.settle({ code, details });
    this.open = null;
    this.queue.length = 0;
    this.heldAcks.length = 0;
    // grpc-js turns an 'error' with {code, details} into the call's final status.
    this.call.emit('error', { code, details });
    // Keep draining so the sender is not stalled on flow control while the status goes out.
    if (this.paused) this.call.resume();
  }

  private settle(outcome: StreamOutcome): void {
    if (this.done) return;
    this.done = true;
    this.queue.length = 0;
    this.resolveFinished(outcome);
  }
}

/**
 * The `activations` method of a Worker service implementation: one TensorReceiver per stream.
 * `options` may depend on the call (e.g. to log the peer).
 */
export function activationsHandler(
  options: TensorReceiverOptions | ((call: ServerDuplexStream<ActivationFrame, ActivationAck>) => TensorReceiverOptions),
): handleBidiStreamingCall<ActivationFrame, ActivationAck> {
  return (call) => {
    new TensorReceiver(call, typeof options === 'function' ? options(call) : options);
  };
}
