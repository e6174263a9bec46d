import * as grpc from '@grpc/grpc-js';
import { bf16ToF32, f32ToBf16 } from '@longshot/dtype';
import { afterEach, describe, expect, it } from 'vitest';
import {
  PayloadKind,
  TensorSender,
  TransportError,
  WireDtype,
  DataPlaneTransport,
  GRPC_LIMITS,
  activationsHandler,
  addHealthService,
  raiseReceiveWindow,
  receiveWindowOf,
  checkHealth,
  decodePayload,
  encodePayload,
  type ActivationAck,
  type ActivationFrame,
  type ReceivedTensor,
  type TensorHeader,
  type TensorReceiverOptions,
} from '../src/index';
import { header, pattern, sleep, startServer, type TestServer } from './helpers';

const servers: TestServer[] = [];
afterEach(async () => {
  while (servers.length) await servers.pop()!.stop();
});

async function serve(options: TensorReceiverOptions): Promise<TestServer> {
  const s = await startServer(options);
  servers.push(s);
  return s;
}

function collector(): { received: ReceivedTensor[]; options: TensorReceiverOptions } {
  const received: ReceivedTensor[] = [];
  return { received, options: { handler: (t) => void received.push(t) } };
}

describe('TensorSender -> TensorReceiver', () => {
  it('round-trips f32 bit-exactly and bf16 within rounding, across many chunks and > 4 MiB', async () => {
    const { received, options } = collector();
    const s = await serve(options);
    const sender = TensorSender.open(s.client());
    const big = pattern(2 * 1_200_000, 1); // 9.6 MB as f32: 10 chunk frames
    const odd = pattern(3 * 7 * 11, 2);
    const bf = pattern(2 * 1_100_001, 3); // 4.4 MB as bf16
    await sender.send(header([2, 1_200_000]), encodePayload(big, 'f32'));
    await sender.send(header([3, 7, 11]), encodePayload(odd, 'f32'));
    await sender.send(header([2, 1_100_001], 'bf16'), encodePayload(bf, 'bf16'));
    await sender.send(header([0, 5]), Buffer.alloc(0));
    await sender.close();

    expect(received.map((t) => t.header.seq)).toEqual([1, 2, 3, 4]);
    expect(received[0].header.byteLength).toBe(big.byteLength);
    // Byte comparison of the float32 images: bit-exact, NaN payloads and -0 included.
    const bytes = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    expect(bytes(decodePayload(received[0].payload, 'f32', big.length)).equals(bytes(big))).toBe(true);
    expect(bytes(decodePayload(received[1].payload, 'f32', odd.length)).equals(bytes(odd))).toBe(true);
    const back = decodePayload(received[2].payload, 'bf16', bf.length);
    for (let i = 0; i < bf.length; i += 997) {
      expect(back[i]).toBe(bf16ToF32(f32ToBf16(bf[i])));
      expect(Math.abs(back[i] - bf[i])).toBeLessThanOrEqual(Math.abs(bf[i]) * 2 ** -8);
    }
    expect(received[3].payload.length).toBe(0);
  });

  it('preserves order and content over many tensors', async () => {
    const seen: Array<{ seq: number; first: number; length: number }> = [];
    const s = await serve({
      handler: async (t) => {
        const v = decodePayload(t.payload, 'f32', t.payload.length / 4);
        seen.push({ seq: t.header.seq, first: v[0], length: v.length });
        if (t.header.seq % 7 === 0) await sleep(1);
      },
    });
    const sender = TensorSender.open(s.client(), { window: 3 });
    const sends: Promise<void>[] = [];
    for (let i = 0; i < 300; i++) {
      const n = 1 + ((i * 7919) % 70_000);
      const data = new Float32Array(n).fill(i);
      // Deliberately not awaited: the sender must keep call order on its own.
      sends.push(sender.send(header([n]), encodePayload(data, 'f32')));
    }
    await Promise.all(sends);
    await sender.close();
    expect(seen.map((e) => e.seq)).toEqual(Array.from({ length: 300 }, (_, i) => i + 1));
    expect(seen.map((e) => e.first)).toEqual(Array.from({ length: 300 }, (_, i) => i));
    expect(seen.map((e) => e.length)).toEqual(Array.from({ length: 300 }, (_, i) => 1 + ((i * 7919) % 70_000)));
  });

  it('hands a tensor that arrives in one chunk to the handler as its message buffer, aligned', async () => {
    const { received, options } = collector();
    const s = await serve(options);
    const sender = TensorSender.open(s.client());
    // Seqs past 127 take a longer varint; sizes vary so that every alignment case occurs.
    const sizes = Array.from({ length: 140 }, (_, i) => 1024 + ((i * 7919) % 9000));
    for (let i = 0; i < sizes.length; i++) await sender.send(header([sizes[i]]), encodePayload(pattern(sizes[i], i), 'f32'));
    await sender.close();
    expect(received.length).toBe(sizes.length);
    for (let i = 0; i < sizes.length; i++) {
      const { payload } = received[i];
      expect(decodePayload(payload, 'f32', sizes[i])).toEqual(pattern(sizes[i], i));
      // A view of the gRPC message (a copy would sit at the start of a buffer of its own), at
      // an offset decodePayload can view without copying, in a buffer that holds little else.
      // If this fails after a grpc-js upgrade, the receiver copies every tensor again.
      expect(payload.byteOffset).toBeGreaterThan(0);
      expect(payload.byteOffset % 4).toBe(0);
      expect(payload.buffer.byteLength - payload.length).toBeLessThanOrEqual(64);
    }
  });

  it('holds the sender back when the handler is slow (window and flow control)', async () => {
    let handled = 0;
    const s = await serve({
      maxQueued: 1,
      handler: async () => {
        await sleep(40);
        handled++;
      },
    });
    const window = 2;
    const sender = TensorSender.open(s.client(), { window });
    const payload = Buffer.alloc(3 * 1024 * 1024);
    let maxAhead = 0;
    let maxUnacked = 0;
    const t0 = Date.now();
    for (let i = 0; i < 12; i++) {
      await sender.send(header([payload.length / 4]), payload);
      maxAhead = Math.max(maxAhead, i + 1 - handled);
      maxUnacked = Math.max(maxUnacked, sender.unacknowledged);
    }
    await sender.close();
    expect(handled).toBe(12);
    expect(maxUnacked).toBeLessThanOrEqual(window);
    // In flight at most: `window` unacknowledged, `maxQueued` acknowledged and waiting, one in
    // the handler; a sender that ignored backpressure would be ~12 ahead.
    expect(maxAhead).toBeLessThanOrEqual(window + 1 + 1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(12 * 40 - 20);
  });

  it('raises the HTTP/2 receive window of the server session', async () => {
    let found: boolean | null = null;
    let window: number | null = null;
    const s = await startServer(
      activationsHandler((call) => {
        found = raiseReceiveWindow(call);
        return { handler: () => void (window = receiveWindowOf(call)) };
      }),
    );
    servers.push(s);
    const sender = TensorSender.open(s.client());
    await sender.send(header([1 << 20]), Buffer.alloc(4 << 20));
    await sender.close();
    // If this fails after a grpc-js upgrade, window.ts no longer finds the session: links work
    // but run at a fraction of their throughput.
    expect(found).toBe(true);
    expect(window).toBe(GRPC_LIMITS.flowControlWindowBytes);
  });

  it('fails the sender when a tensor is not acknowledged in time', async () => {
    // A receiver that reads everything and never acknowledges.
    const s = await startServer((call: grpc.ServerDuplexStream<unknown, unknown>) => {
      call.on('data', () => undefined);
      call.on('error', () => undefined);
    });
    servers.push(s);
    const sender = TensorSender.open(s.client(), { ackTimeoutMs: 300, window: 1 });
    await sender.send(header([4]), Buffer.alloc(16));
    const t0 = Date.now();
    const err = await sender.send(header([4]), Buffer.alloc(16)).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(TransportError);
    const te = err as TransportError;
    expect(te.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(te.message).toMatch(/tensor seq 1 was not acknowledged within 300 ms/);
    expect(te.peer).toBe(s.address);
    expect(Date.now() - t0).toBeLessThan(5_000);
    await expect(sender.send(header([1]), Buffer.alloc(4))).rejects.toBe(te);
    await expect(sender.close()).rejects.toBe(te);
  });

  it('holds each tensor to its own acknowledgement deadline, not the first one sent', async () => {
    // Acknowledges the first tensor only: the deadline check armed when it was sent must move
    // on to the second, and fail the stream for that one.
    const s = await startServer((call: grpc.ServerDuplexStream<{ frame?: { $case: string; value: { seq: number } } }, unknown>) => {
      call.on('data', (f) => {
        if (f.frame?.$case === 'header' && f.frame.value.seq === 1) call.write({ seq: 1 });
      });
      call.on('error', () => undefined);
    });
    servers.push(s);
    const sender = TensorSender.open(s.client(), { ackTimeoutMs: 300, window: 1 });
    await sender.send(header([4]), Buffer.alloc(16));
    await sleep(100);
    await sender.send(header([4]), Buffer.alloc(16));
    const err = await sender.send(header([4]), Buffer.alloc(16)).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(TransportError);
    expect((err as TransportError).code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect((err as TransportError).message).toMatch(/tensor seq 2 was not acknowledged within 300 ms/);
  });

  it('rejects pending and later sends with the status and peer when the receiver fails', async () => {
    const s = await serve({
      handler: (t) => {
        if (t.header.seq === 2) throw Object.assign(new Error('stage out of memory'), { code: grpc.status.RESOURCE_EXHAUSTED });
      },
    });
    const sender = TensorSender.open(s.client());
    await sender.send(header([4]), Buffer.alloc(16));
    await sender.send(header([4]), Buffer.alloc(16));
    let err: unknown = null;
    for (let i = 0; i < 50 && !err; i++) {
      err = await sender.send(header([4]), Buffer.alloc(16)).then(() => null, (e: unknown) => e);
      if (!err) await sleep(10);
    }
    expect(err).toBeInstanceOf(TransportError);
    expect((err as TransportError).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect((err as TransportError).details).toBe('tensor seq 2: handler failed: stage out of memory');
    expect((err as TransportError).peer).toBe(s.address);
    await expect(sender.close()).rejects.toBe(err);
  });
});

/** Writes raw frames on a fresh stream and returns the status the server ended it with. */
async function rawStream(s: TestServer, frames: ActivationFrame[], endAfter = true): Promise<{ status: grpc.StatusObject; acks: number[] }> {
  const call = s.client().activations();
  const acks: number[] = [];
  call.on('data', (a: ActivationAck) => acks.push(a.seq));
  call.on('error', () => undefined);
  const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
  for (const f of frames) call.write(f);
  if (endAfter) call.end();
  return { status: await status, acks };
}

function h(seq: number, shape: number[], over: Partial<TensorHeader> = {}): ActivationFrame {
  return {
    frame: { $case: 'header', value: { ...header(shape), seq, byteLength: shape.reduce((a, b) => a * b, 1) * 4, transport: DataPlaneTransport.DATA_PLANE_TRANSPORT_GRPC, ncclId: Buffer.alloc(0), ...over } },
  };
}

function c(seq: number, offset: number, length: number): ActivationFrame {
  return { frame: { $case: 'chunk', value: { seq, offset, data: Buffer.alloc(length, 1) } } };
}

describe('TensorReceiver protocol validation', () => {
  const cases: Array<{ name: string; frames: ActivationFrame[]; code: grpc.status; details: string | RegExp; end?: boolean }> = [
    { name: 'empty frame', frames: [{ frame: undefined }], code: grpc.status.INVALID_ARGUMENT, details: 'frame carries neither a header nor a chunk' },
    { name: 'chunk before header', frames: [c(1, 0, 8)], code: grpc.status.INVALID_ARGUMENT, details: 'chunk of tensor seq 1 without a header' },
    { name: 'seq 0', frames: [h(0, [2])], code: grpc.status.INVALID_ARGUMENT, details: 'tensor seq 0: seq must be at least 1' },
    {
      name: 'seq not increasing',
      frames: [h(5, [2]), c(5, 0, 8), h(5, [2])],
      code: grpc.status.INVALID_ARGUMENT,
      details: 'tensor seq 5: seq must be strictly increasing (previous 5)',
    },
    {
      name: 'header inside a tensor',
      frames: [h(1, [4]), c(1, 0, 8), h(2, [4])],
      code: grpc.status.INVALID_ARGUMENT,
      details: 'tensor seq 1: header of seq 2 arrived after 8 of 16 bytes',
    },
    {
      name: 'chunk seq mismatch',
      frames: [h(1, [4]), c(2, 0, 8)],
      code: grpc.status.INVALID_ARGUMENT,
      details: 'tensor seq 1: chunk of seq 2 arrived before it was complete',
    },
    {
      name: 'gap in offsets',
      frames: [h(1, [4]), c(1, 0, 4), c(1, 8, 8)],
      code: grpc.status.INVALID_ARGUMENT,
      details: 'tensor seq 1: chunk at offset 8, expected 4 (chunks must be contiguous)',
    },
    {
      name: 'overrun',
      frames: [h(1, [4]), c(1, 0, 12), c(1, 12, 8)],
      code: grpc.status.INVALID_ARGUMENT,
      details: 'tensor seq 1: chunk [12, 20) overruns byte_length 16',
    },
    {
      name: 'stream ends inside a tensor',
      frames: [h(1, [4]), c(1, 0, 12)],
      code: grpc.status.INVALID_ARGUMENT,
      details: 'tensor seq 1: stream ended after 12 of 16 bytes',
    },
    {
      name: 'byte_length does not match shape',
      frames: [h(3, [2, 5, 8], { dtype: WireDtype.WIRE_DTYPE_BF16, byteLength: 100 })],
      code: grpc.status.INVALID_ARGUMENT,
      details: 'tensor seq 3: byte_length 100 does not match shape [2, 5, 8] as bf16 (160 bytes)',
    },
    {
      name: 'unknown dtype',
      frames: [h(1, [2], { dtype: WireDtype.WIRE_DTYPE_UNSPECIFIED })],
      code: grpc.status.INVALID_ARGUMENT,
      details: 'tensor seq 1: unknown wire dtype 0',
    },
    {
      name: 'unknown kind',
      frames: [h(1, [2], { kind: 9 as PayloadKind })],
      code: grpc.status.INVALID_ARGUMENT,
      details: 'tensor seq 1: unknown payload kind 9',
    },
    {
      name: 'tensor beyond the size limit',
      frames: [h(1, [1024, 1024, 1024])],
      code: grpc.status.RESOURCE_EXHAUSTED,
      details: /tensor seq 1: 4294967296 bytes exceed this receiver's limit of \d+/,
    },
    { name: 'unknown session', frames: [h(1, [2], { sessionId: 'nope' })], code: grpc.status.NOT_FOUND, details: 'unknown session nope' },
    { name: 'bad token', frames: [h(1, [2], { token: 'forged' })], code: grpc.status.UNAUTHENTICATED, details: 'bad token for session session-a' },
    {
      name: 'shape the session does not expect',
      frames: [h(1, [3, 3])],
      code: grpc.status.INVALID_ARGUMENT,
      details: 'session session-a expects rank-1 tensors, got [3, 3]',
    },
  ];

  it.each(cases)('$name -> $code, while a concurrent stream keeps working', async ({ frames, code, details }) => {
    const received: number[] = [];
    const s = await serve({
      handler: (t) => void received.push(t.header.seq),
      authorize: (hd) => {
        if (hd.sessionId !== 'session-a') return { code: grpc.status.NOT_FOUND, message: `unknown session ${hd.sessionId}` };
        if (hd.token !== 'token-a') return { code: grpc.status.UNAUTHENTICATED, message: `bad token for session ${hd.sessionId}` };
        if (hd.shape.length !== 1) {
          return { code: grpc.status.INVALID_ARGUMENT, message: `session ${hd.sessionId} expects rank-1 tensors, got [${hd.shape.join(', ')}]` };
        }
        return null;
      },
    });
    // A healthy stream on the same server, opened before and used after the bad one.
    const good = TensorSender.open(s.client());
    await good.send(header([300_000]), Buffer.alloc(1_200_000, 2));

    const { status } = await rawStream(s, frames);
    expect(status.code).toBe(code);
    if (typeof details === 'string') expect(status.details).toBe(details);
    else expect(status.details).toMatch(details);

    await good.send(header([300_000]), Buffer.alloc(1_200_000, 3));
    await good.close();
    expect(received.filter((seq) => seq <= 2)).toEqual([1, 2]);
  });

  it('acknowledges tensors before a later violation ends the stream', async () => {
    const s = await serve({ handler: () => undefined });
    const { status, acks } = await rawStream(s, [h(1, [2]), c(1, 0, 8), h(2, [2]), c(2, 4, 4)]);
    expect(acks).toEqual([1]);
    expect(status.code).toBe(grpc.status.INVALID_ARGUMENT);
  });
});

describe('health', () => {
  it('reports SERVING overall and per-service statuses', async () => {
    let health: ReturnType<typeof addHealthService> | null = null;
    const s = await startServer({ handler: () => undefined }, (server) => {
      health = addHealthService(server, { 'longshot.v1.Worker': 'SERVING' });
    });
    servers.push(s);
    expect(await checkHealth(s.address)).toBe('SERVING');
    expect(await checkHealth(s.address, { service: 'longshot.v1.Worker' })).toBe('SERVING');
    health!.setStatus('longshot.v1.Worker', 'NOT_SERVING');
    expect(await checkHealth(s.address, { service: 'longshot.v1.Worker' })).toBe('NOT_SERVING');
    await expect(checkHealth(s.address, { service: 'no.such.Service' })).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
  });

  it('rejects with UNAVAILABLE when nothing listens', async () => {
    await expect(checkHealth('127.0.0.1:1', { timeoutMs: 2_000 })).rejects.toMatchObject({ code: expect.any(Number) });
  });
});
