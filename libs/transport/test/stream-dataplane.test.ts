/**
 * Activations streams whose tensor bytes travel on the native data plane: gRPC carries the
 * headers and acknowledgements, the bytes go from the sender's buffer into one the receiver
 * allocated for them, in header order, with the receiver's back-pressure intact.
 */
import { status as Status } from '@grpc/grpc-js';
import { nativeDataPlane } from '@longshot/engine';
import { afterEach, describe, expect, it } from 'vitest';
import {
  DataPlaneListener,
  DataPlaneSender,
  DataPlaneTransport,
  TensorSender,
  TransportError,
  chooseHopTransport,
  DATA_PLANE_MODES,
  sameHostShm,
  fromWireTransport,
  toWireTransport,
  dataPlaneEndpoint,
  decodePayload,
  encodePayload,
  type ReceivedTensor,
  type TensorBytesSender,
  type TensorReceiverOptions,
} from '../src/index';
import { header, pattern, sleep, startServer, type TestServer } from './helpers';

const SESSION = 'session-a';
const TOKEN = 'token-a';

const open: { stop?(): Promise<void>; close?(): void }[] = [];
afterEach(async () => {
  for (const x of open.splice(0)) {
    await x.stop?.();
    x.close?.();
  }
});

/** A gRPC receiver whose data-plane bytes land through `listener`, counting what came that way. */
async function serve(
  listener: DataPlaneListener,
  options: Omit<TensorReceiverOptions, 'dataPlane'>,
): Promise<{ server: TestServer; landed: number[]; paths: Set<DataPlaneTransport>; ncclIds: Buffer[] }> {
  const landed: number[] = [];
  const paths = new Set<DataPlaneTransport>();
  const ncclIds: Buffer[] = [];
  const server = await startServer({
    ...options,
    dataPlane: async (h, transport, destination) => {
      ncclIds.push(h.ncclId);
      await listener.receive(h.sessionId, h.seq, destination, undefined, h.ncclId);
      landed.push(h.seq);
      paths.add(transport);
    },
  });
  open.push(server);
  return { server, landed, paths, ncclIds };
}

function listen(token = TOKEN): DataPlaneListener {
  // Long enough that a refusal on the stream always reaches the sender before the data plane's.
  const l = new DataPlaneListener({ stallMs: 10_000, shm: true });
  l.addSession(SESSION, token);
  open.push(l);
  return l;
}

/** Resolves once `done()` holds (checked every 10 ms); fails the test after 10 s. */
async function until(done: () => boolean): Promise<void> {
  for (let waited = 0; !done(); waited += 10) {
    if (waited > 10_000) throw new Error('condition not reached within 10 s');
    await sleep(10);
  }
}

const bytes = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('hop transport choice', () => {
  it('takes shared memory on one host, TCP between hosts, gRPC when either end has no data plane', () => {
    const both = dataPlaneEndpoint('auto', 'host-a', '10.0.0.1:7000', true);
    expect(chooseHopTransport('auto', 'host-a', both)).toBe('shm');
    expect(chooseHopTransport('auto', 'host-b', both)).toBe('tcp');
    expect(chooseHopTransport('tcp', 'host-a', both)).toBe('tcp');
    expect(chooseHopTransport('shm', 'host-b', both)).toBe('grpc');
    expect(chooseHopTransport('grpc', 'host-a', both)).toBe('grpc');
    expect(chooseHopTransport('auto', 'host-a', undefined)).toBe('grpc');
    // A receiver's mode limits what it advertises.
    expect(dataPlaneEndpoint('tcp', 'host-a', '10.0.0.1:7000', true, true)).toEqual({ tcpAddress: '10.0.0.1:7000', tcp: true, hostId: 'host-a', shm: false, nccl: false });
    // A shm-only receiver on another host: nothing native fits.
    expect(chooseHopTransport('auto', 'host-b', dataPlaneEndpoint('shm', 'host-a', '10.0.0.1:7000', true))).toBe('grpc');
    expect(chooseHopTransport('auto', 'host-a', dataPlaneEndpoint('grpc', 'host-a', '10.0.0.1:7000', true))).toBe('grpc');
    expect(chooseHopTransport('auto', '', dataPlaneEndpoint('auto', '', null, true))).toBe('grpc');
  });

  it('tells a receiver its hop comes by shared memory exactly when its sender takes it', () => {
    // Every pair of modes and hosts: the receiver's view (sameHostShm of the sender's record)
    // agrees with the sender's choice (chooseHopTransport of the receiver's record).
    for (const senderMode of DATA_PLANE_MODES) {
      for (const receiverMode of DATA_PLANE_MODES) {
        for (const [senderHost, receiverHost] of [['host-a', 'host-a'], ['host-a', 'host-b'], ['', '']]) {
          const sender = dataPlaneEndpoint(senderMode, senderHost, senderMode === 'grpc' ? null : '10.0.0.1:7000', true);
          const receiver = dataPlaneEndpoint(receiverMode, receiverHost, receiverMode === 'grpc' ? null : '10.0.0.2:7000', true);
          const chosen = chooseHopTransport(senderMode, senderHost, receiver) === 'shm';
          expect(sameHostShm(receiverMode, receiverHost, sender), `${senderMode}@${senderHost} -> ${receiverMode}@${receiverHost}`).toBe(chosen);
        }
      }
    }
    const sender = dataPlaneEndpoint('auto', 'host-a', '10.0.0.1:7000', true);
    expect(sameHostShm('auto', 'host-a', sender)).toBe(true);
    expect(sameHostShm('shm', 'host-a', sender)).toBe(true);
    expect(sameHostShm('auto', 'host-b', sender)).toBe(false);
    expect(sameHostShm('tcp', 'host-a', sender)).toBe(false);
    expect(sameHostShm('auto', 'host-a', dataPlaneEndpoint('tcp', 'host-a', '10.0.0.1:7000', true))).toBe(false);
    // No host id is no host: never one shared.
    expect(sameHostShm('auto', '', dataPlaneEndpoint('auto', '', '10.0.0.1:7000', true))).toBe(false);
    // A sender without a listener registered nothing to send by.
    expect(sameHostShm('auto', 'host-a', { ...sender, tcpAddress: '' })).toBe(false);
  });

  it('takes NCCL only between two CUDA workers that both have it, after shared memory on one host', () => {
    const cuda = dataPlaneEndpoint('auto', 'host-a', '10.0.0.1:7000', true, true);
    expect(cuda.nccl).toBe(true);
    expect(chooseHopTransport('auto', 'host-b', cuda, true)).toBe('nccl');
    expect(chooseHopTransport('auto', 'host-a', cuda, true)).toBe('shm');
    // Either end without NCCL: TCP.
    expect(chooseHopTransport('auto', 'host-b', cuda, false)).toBe('tcp');
    expect(chooseHopTransport('auto', 'host-b', dataPlaneEndpoint('auto', 'host-a', '10.0.0.1:7000', true, false), true)).toBe('tcp');
    // Only in 'auto': a forced mode is what it says, and a receiver with no listener takes nothing native.
    expect(chooseHopTransport('tcp', 'host-b', cuda, true)).toBe('tcp');
    expect(dataPlaneEndpoint('tcp', 'host-a', '10.0.0.1:7000', true, true).nccl).toBe(false);
    expect(dataPlaneEndpoint('auto', 'host-a', null, true, true).nccl).toBe(false);
    expect(fromWireTransport(toWireTransport('nccl'))).toBe('nccl');
  });
});

describe('TensorSender -> TensorReceiver over the native data plane', () => {
  it.each([
    ['TCP', false, DataPlaneTransport.DATA_PLANE_TRANSPORT_TCP],
    ['shared memory', true, DataPlaneTransport.DATA_PLANE_TRANSPORT_SHM],
  ] as const)('moves every tensor bit-exact and in order over %s; the stream carries only headers and acks', async (_, shm, wire) => {
    const l = listen();
    const received: ReceivedTensor[] = [];
    const { server, landed, paths } = await serve(l, { handler: (t) => void received.push(t) });
    const sender = TensorSender.open(server.client(), { bytes: new DataPlaneSender(`127.0.0.1:${l.port}`, { shm }) });
    expect(sender.transport).toBe(shm ? 'shm' : 'tcp');
    const tensors = [pattern(2 * 1_200_000, 1), pattern(3 * 7 * 11, 2), new Float32Array(0), pattern(1_000_003, 4)];
    for (const t of tensors) await sender.send(header([t.length]), encodePayload(t, 'f32'));
    await sender.close();
    expect(landed).toEqual([1, 2, 3, 4]);
    expect([...paths]).toEqual([wire]);
    expect(received.map((t) => t.header.seq)).toEqual([1, 2, 3, 4]);
    for (let i = 0; i < tensors.length; i++) {
      expect(received[i].header.transport).toBe(wire);
      expect(bytes(decodePayload(received[i].payload, 'f32', tensors[i].length)).equals(bytes(tensors[i]))).toBe(true);
    }
  });

  it('lands tensors in the buffers the receiver hands out (data plane and chunk frames alike), refusing one of the wrong size', async () => {
    const l = listen();
    const given: Buffer[] = [];
    const received: ReceivedTensor[] = [];
    const pool = new Map<number, Buffer>();
    const destination = (h: { byteLength: number }): Buffer => {
      const b = pool.get(h.byteLength) ?? Buffer.allocUnsafeSlow(h.byteLength);
      pool.set(h.byteLength, b);
      given.push(b);
      return b;
    };
    const { server } = await serve(l, { handler: (t) => void received.push({ ...t, payload: Buffer.from(t.payload) }), destination });
    const tensors = [pattern(300_000, 1), pattern(300_000, 2), pattern(1000, 3)];
    const native = TensorSender.open(server.client(), { bytes: new DataPlaneSender(`127.0.0.1:${l.port}`, { shm: true }) });
    const chunked = TensorSender.open(server.client(), { chunkBytes: 64 * 1024 });
    for (const sender of [native, chunked]) {
      for (const t of tensors) await sender.send(header([t.length]), encodePayload(t, 'f32'));
      await sender.close();
    }
    expect(received.length).toBe(6);
    received.forEach((r, i) => expect(r.payload.equals(bytes(tensors[i % 3])), `tensor ${i}`).toBe(true));
    // One buffer per size, handed out for every tensor that was not kept as its one frame.
    expect(new Set(given).size).toBe(2);
    expect(given.length).toBeGreaterThanOrEqual(5);

    const wrong = await serve(l, { handler: () => undefined, destination: (h) => Buffer.allocUnsafeSlow(h.byteLength + 4) });
    const refused = TensorSender.open(wrong.server.client(), { chunkBytes: 64 * 1024 });
    await expect(refused.send(header([300_000]), encodePayload(tensors[0], 'f32')).then(() => refused.close())).rejects.toMatchObject({ code: Status.INTERNAL, details: expect.stringMatching(/receive buffer has 1200004 bytes/) });
  });

  it('announces the NCCL rendezvous id in every header of an NCCL hop, and none on the others', async () => {
    // The NCCL path itself needs GPUs (deploy/gpu-check.sh); the control stream is the same on
    // any machine, so a TCP connection stands in for NCCL's bytes here while the headers say NCCL.
    const l = listen();
    const { server, landed, paths, ncclIds } = await serve(l, { handler: () => undefined });
    const id = Buffer.from(Array.from({ length: nativeDataPlane().constants.ncclIdBytes }, (_, i) => (i * 29 + 3) & 0xff));
    const tcp = new DataPlaneSender(`127.0.0.1:${l.port}`);
    const asNccl: TensorBytesSender = { transport: 'nccl', ncclId: id, send: (...a) => tcp.send(...a), close: () => tcp.close() };
    const sender = TensorSender.open(server.client(), { bytes: asNccl });
    for (const seed of [1, 2, 3]) await sender.send(header([500]), encodePayload(pattern(500, seed), 'f32'));
    await sender.close();
    expect(landed).toEqual([1, 2, 3]);
    expect([...paths]).toEqual([DataPlaneTransport.DATA_PLANE_TRANSPORT_NCCL]);
    expect(ncclIds.map((x) => x.equals(id))).toEqual([true, true, true]);

    const plain = TensorSender.open(server.client(), { bytes: new DataPlaneSender(`127.0.0.1:${l.port}`) });
    await plain.send(header([500]), encodePayload(pattern(500, 4), 'f32'));
    await plain.close();
    expect(ncclIds.at(-1)!.length).toBe(0);
  });

  it('holds the sender back while the handler is behind: acknowledgements wait for queue room', async () => {
    const l = listen();
    let open = (): void => undefined;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const handled: number[] = [];
    const { server, landed } = await serve(l, {
      maxQueued: 1,
      handler: async (t) => {
        await gate;
        handled.push(t.header.seq);
      },
    });
    const sender = TensorSender.open(server.client(), { window: 1, bytes: new DataPlaneSender(`127.0.0.1:${l.port}`) });
    const sends = [1, 2, 3, 4, 5].map((seed) => sender.send(header([1000]), encodePayload(pattern(1000, seed), 'f32')));
    // Tensor 1 is being handled, 2 acknowledged and queued, 3 landed but unacknowledged: the
    // window of 1 keeps tensor 4 from starting until the handler moves.
    await Promise.all(sends.slice(0, 3));
    await until(() => landed.length === 3 && sender.unacknowledged === 1);
    // Had tensor 4 been let through, it would have landed by now.
    await sleep(200);
    expect(landed).toEqual([1, 2, 3]);
    expect(sender.unacknowledged).toBe(1);
    open();
    await Promise.all(sends);
    await sender.close();
    expect(handled).toEqual([1, 2, 3, 4, 5]);
  });

  it('a receiver without a data plane refuses such headers', async () => {
    const server = await startServer({ handler: () => undefined });
    open.push(server);
    const l = listen();
    const sender = TensorSender.open(server.client(), { bytes: new DataPlaneSender(`127.0.0.1:${l.port}`) });
    const err = await sender.send(header([16]), encodePayload(pattern(16, 1), 'f32')).then(
      () => null,
      (e: unknown) => e as TransportError,
    );
    expect(err).toBeInstanceOf(TransportError);
    expect(err!.code).toBe(Status.FAILED_PRECONDITION);
    expect(err!.details).toMatch(/takes tensor bytes over gRPC only, not DATA_PLANE_TRANSPORT_TCP/);
  });

  it('bytes refused by the data plane (keys of another token) fail the stream with its status on both ends', async () => {
    const l = listen('the-token-the-receiver-granted');
    const received: ReceivedTensor[] = [];
    const { server } = await serve(l, { handler: (t) => void received.push(t) });
    const sender = TensorSender.open(server.client(), { bytes: new DataPlaneSender(`127.0.0.1:${l.port}`) });
    const err = await sender.send({ ...header([64]), sessionId: SESSION, token: TOKEN }, encodePayload(pattern(64, 1), 'f32')).then(
      () => null,
      (e: unknown) => e as TransportError,
    );
    expect(err).toBeInstanceOf(TransportError);
    expect(err!.code).toBe(Status.UNAUTHENTICATED);
    expect(err!.details).toMatch(/wrong grant/);
    expect(received).toEqual([]);
    await expect(sender.close()).rejects.toBeInstanceOf(TransportError);
  });
});
