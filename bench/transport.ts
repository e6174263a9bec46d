/**
 * Transport benchmark: activation bytes per second through a stage link (TensorSender over an
 * Activations stream into a TensorReceiver) against a plain TCP socket moving the same bytes,
 * both on loopback into a child process, measured interleaved in one run so both see the same
 * machine state. Receivers live in a child process so that sender and receiver do not share an
 * event loop, as they do not in a cluster.
 *
 * The stream path does what a stage does per tensor: header frame, ~1 MiB chunk frames,
 * reassembly into one contiguous buffer, acknowledgement, handler. The raw path is the floor a
 * stage link cannot beat: the bytes written to a socket and discarded on arrival.
 *
 * Second section, at real tensor sizes (100 MB, the hidden states of one wan2.1-1.3b 832x480
 * block-step): the native data plane (libs/transport DataPlaneSender -> DataPlaneListener, a
 * persistent connection, each tensor landing in the child's preallocated buffer and checked)
 * over TCP and through shared memory, next to the raw socket moving the same bytes and to a
 * memcpy of them (Buffer.copy into a preallocated buffer), all in the same run. The child's
 * buffer comes from the listener's allocateShared, so shared memory is measured as a stage with
 * shared destinations gets it (one copy, straight into the buffer) and, by a sender that does
 * not offer that, through the ring (two copies).
 *
 * This file is also the child: `node --import tsx bench/transport.ts stream|raw|native`.
 */
import { spawn, type ChildProcess } from 'child_process';
import * as net from 'net';
import * as grpc from '@grpc/grpc-js';
import {
  DEFAULT_CHUNK_BYTES,
  DataPlaneListener,
  DataPlaneSender,
  DEFAULT_SHM_RING,
  PayloadKind,
  TensorSender,
  WireDtype,
  activationsHandler,
  createWorkerClient,
  encodePayload,
  serverOptions,
  workerServiceDefinition,
  type DataPlaneTransfer,
  type TensorSendHeader,
} from '../libs/transport/src/index';

export interface TransportReport {
  stream: { bytesPerSecond: number; seconds: number[]; window: number; chunkBytes: number };
  rawTcp: { bytesPerSecond: number; seconds: number[] };
  ratio: number;
  tensorBytes: number;
  tensors: number;
  repetitions: number;
  dtype: 'f32';
  /** Real-size tensors: the native data plane against raw TCP and memcpy of the same bytes. */
  dataPlane: {
    tensorBytes: number;
    tensors: number;
    nativeTcp: { bytesPerSecond: number; seconds: number[] };
    /**
     * Shared memory into another process of this host, as a stage sends: straight into the
     * child's shared destination (`direct`: every transfer went that way), else through a ring
     * of slots of ring.slotBytes.
     */
    shm: { bytesPerSecond: number; seconds: number[]; ring: { slotBytes: number; slots: number }; direct: boolean };
    /** The same through the ring (a sender that does not offer the direct copy). */
    shmRing: { bytesPerSecond: number; seconds: number[] };
    rawTcp: { bytesPerSecond: number; seconds: number[] };
    memcpy: { bytesPerSecond: number; seconds: number[] };
    /** nativeTcp / rawTcp (target >= 0.9). */
    tcpRatio: number;
    /** shm / memcpy (target >= 0.8). */
    shmRatio: number;
    /** shmRing / memcpy. */
    shmRingRatio: number;
  };
}

const DP_TENSOR_BYTES = 100 * 1000 * 1000;
const DP_TENSORS = 4;
const DP_SESSION = 'bench-session';
const DP_TOKEN = 'bench-token-0123456789';

const TENSORS = 64;
const TENSOR_BYTES = 8 * 1024 * 1024;
const REPS = 5;
const WINDOW = 4;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

// ---------------------------------------------------------------------------------------------
// Children

async function childStream(): Promise<void> {
  const server = new grpc.Server(serverOptions());
  // The handler does nothing with the tensor: the figure is the link's, not a stage's compute.
  server.addService(workerServiceDefinition, { activations: activationsHandler({ handler: () => undefined }) } as grpc.UntypedServiceImplementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  process.stdout.write(`${JSON.stringify({ port })}\n`);
}

function childRaw(): void {
  // Each connection announces how many bytes follow (8-byte LE), and gets one byte back once
  // they have all arrived, so the sender times delivery, not just handing bytes to the kernel.
  const server = net.createServer((socket) => {
    let expected = -1;
    let received = 0;
    let prefix = Buffer.alloc(0);
    socket.on('data', (data: Buffer) => {
      if (expected < 0) {
        prefix = Buffer.concat([prefix, data]);
        if (prefix.length < 8) return;
        expected = Number(prefix.readBigUInt64LE(0));
        received = prefix.length - 8;
      } else {
        received += data.length;
      }
      if (received >= expected) socket.end(Buffer.from([1]));
    });
    socket.on('error', () => undefined);
  });
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`${JSON.stringify({ port: (server.address() as net.AddressInfo).port })}\n`);
  });
}

function childNative(): void {
  // Receives seqs 1, 2, ... forever, each into the same preallocated buffer (as a stage would
  // into its input buffer, from its listener's shared memory), and acknowledges nothing beyond
  // the data plane's own reply.
  const listener = new DataPlaneListener({ shm: true });
  listener.addSession(DP_SESSION, DP_TOKEN);
  const shared = listener.allocateShared(DP_TENSOR_BYTES);
  if (listener.sharedUnavailable !== null) process.stderr.write(`transport bench child (native): no shared destination, the ring it is: ${listener.sharedUnavailable}\n`);
  const destination = new Float32Array(shared.buffer, shared.byteOffset, DP_TENSOR_BYTES / 4);
  void (async () => {
    for (let seq = 1; ; seq++) await listener.receive(DP_SESSION, seq, destination, 24 * 3600 * 1000);
  })().catch((e: unknown) => {
    process.stderr.write(`transport bench child (native): ${String(e)}\n`);
    process.exit(1);
  });
  process.stdout.write(`${JSON.stringify({ port: listener.port })}\n`);
}

interface Child {
  port: number;
  proc: ChildProcess;
}

function startChild(role: 'stream' | 'raw' | 'native'): Promise<Child> {
  const proc = spawn(process.execPath, ['--import', 'tsx', __filename, role], { stdio: ['pipe', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    proc.once('error', reject);
    proc.once('exit', (code) => reject(new Error(`transport bench child (${role}) exited with ${code} before listening`)));
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve({ port: (JSON.parse(out.slice(0, nl)) as { port: number }).port, proc });
    });
  });
}

function stopChild(child: Child): void {
  // Closing stdin ends the child (see the bottom of this file) without signalling by name.
  child.proc.stdin!.end();
}

// ---------------------------------------------------------------------------------------------
// Measurements

async function timeStream(address: string, client: ReturnType<typeof createWorkerClient>, payload: Buffer, header: TensorSendHeader): Promise<number> {
  const t0 = process.hrtime.bigint();
  const sender = TensorSender.open(client, { window: WINDOW, peer: address });
  for (let i = 0; i < TENSORS; i++) await sender.send(header, payload);
  await sender.close();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function timeRaw(port: number, payload: Buffer, tensors = TENSORS): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const socket = net.connect(port, '127.0.0.1');
    socket.setNoDelay(true);
    socket.on('error', reject);
    socket.once('data', () => {
      resolve(Number(process.hrtime.bigint() - t0) / 1e9);
      socket.destroy();
    });
    socket.once('connect', async () => {
      const total = Buffer.alloc(8);
      total.writeBigUInt64LE(BigInt(tensors * payload.length));
      socket.write(total);
      for (let i = 0; i < tensors; i++) {
        if (!socket.write(payload)) await new Promise((r) => socket.once('drain', r));
      }
    });
  });
}

/**
 * Sends DP_TENSORS tensors on the persistent data-plane connection; each send resolves on
 * delivery. `direct`: whether each went straight into the child's shared destination.
 */
async function timeNative(sender: DataPlaneSender, payload: Float32Array, nextSeq: () => number): Promise<{ seconds: number; direct: boolean }> {
  const t0 = process.hrtime.bigint();
  const sends: Promise<DataPlaneTransfer>[] = [];
  for (let i = 0; i < DP_TENSORS; i++) sends.push(sender.send(DP_SESSION, DP_TOKEN, nextSeq(), payload));
  const done = await Promise.all(sends);
  return { seconds: Number(process.hrtime.bigint() - t0) / 1e9, direct: done.every((t) => t.direct === true) };
}

function timeMemcpy(source: Buffer, destination: Buffer): number {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < DP_TENSORS; i++) source.copy(destination);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function dataPlaneBench(rawPort: number): Promise<TransportReport['dataPlane']> {
  const values = new Float32Array(DP_TENSOR_BYTES / 4);
  for (let i = 0; i < values.length; i++) values[i] = Math.sin(i * 0.001);
  const bytes = Buffer.from(values.buffer);
  const destination = Buffer.alloc(DP_TENSOR_BYTES, 1);
  const child = await startChild('native');
  const sender = new DataPlaneSender(`127.0.0.1:${child.port}`);
  // The child takes seqs in order whichever connection brings them: sends never overlap.
  const shmSender = new DataPlaneSender(`127.0.0.1:${child.port}`, { shm: DEFAULT_SHM_RING });
  const ringSender = new DataPlaneSender(`127.0.0.1:${child.port}`, { shm: { ...DEFAULT_SHM_RING, direct: false } });
  let seq = 0;
  const nextSeq = (): number => ++seq;
  try {
    await timeNative(sender, values, nextSeq);
    await timeNative(shmSender, values, nextSeq);
    await timeNative(ringSender, values, nextSeq);
    await timeRaw(rawPort, bytes, DP_TENSORS);
    timeMemcpy(bytes, destination);
    const native: number[] = [];
    const shm: number[] = [];
    const ring: number[] = [];
    const raw: number[] = [];
    const memcpy: number[] = [];
    let direct = true;
    for (let r = 0; r < REPS; r++) {
      // Alternate the order so no path always runs on a machine another just warmed.
      const runs = [
        async () => native.push((await timeNative(sender, values, nextSeq)).seconds),
        async () => raw.push(await timeRaw(rawPort, bytes, DP_TENSORS)),
        async () => {
          const t = await timeNative(shmSender, values, nextSeq);
          shm.push(t.seconds);
          direct &&= t.direct;
        },
        async () => ring.push((await timeNative(ringSender, values, nextSeq)).seconds),
        async () => memcpy.push(timeMemcpy(bytes, destination)),
      ];
      for (const run of r % 2 === 0 ? runs : runs.reverse()) await run();
    }
    const total = DP_TENSORS * DP_TENSOR_BYTES;
    const bps = (xs: number[]): number => Math.round(total / median(xs));
    return {
      tensorBytes: DP_TENSOR_BYTES,
      tensors: DP_TENSORS,
      nativeTcp: { bytesPerSecond: bps(native), seconds: native },
      rawTcp: { bytesPerSecond: bps(raw), seconds: raw },
      shm: { bytesPerSecond: bps(shm), seconds: shm, ring: DEFAULT_SHM_RING, direct },
      shmRing: { bytesPerSecond: bps(ring), seconds: ring },
      memcpy: { bytesPerSecond: bps(memcpy), seconds: memcpy },
      tcpRatio: Number((bps(native) / bps(raw)).toFixed(3)),
      shmRatio: Number((bps(shm) / bps(memcpy)).toFixed(3)),
      shmRingRatio: Number((bps(ring) / bps(memcpy)).toFixed(3)),
    };
  } finally {
    sender.close();
    shmSender.close();
    ringSender.close();
    stopChild(child);
  }
}

export async function transportBench(opts: { json: boolean }): Promise<TransportReport> {
  const elements = TENSOR_BYTES / 4;
  const values = new Float32Array(elements);
  for (let i = 0; i < elements; i++) values[i] = Math.sin(i * 0.001);
  const payload = encodePayload(values, 'f32');
  // Laid out like hidden states [2 (cond/uncond), tokens, dim].
  const dim = 1024;
  const header: TensorSendHeader = {
    sessionId: 'bench',
    token: 'bench',
    kind: PayloadKind.PAYLOAD_KIND_HIDDEN,
    step: undefined,
    shape: [2, elements / (2 * dim), dim],
    dtype: WireDtype.WIRE_DTYPE_F32,
  };

  const [streamChild, rawChild] = await Promise.all([startChild('stream'), startChild('raw')]);
  const address = `127.0.0.1:${streamChild.port}`;
  const client = createWorkerClient(address);
  try {
    // Warm-up: connection setup, JIT, socket buffers; not counted.
    await timeStream(address, client, payload, header);
    await timeRaw(rawChild.port, payload);
    const streamSeconds: number[] = [];
    const rawSeconds: number[] = [];
    for (let r = 0; r < REPS; r++) {
      // Alternate which goes first so neither always runs on a machine the other just warmed.
      if (r % 2 === 0) {
        streamSeconds.push(await timeStream(address, client, payload, header));
        rawSeconds.push(await timeRaw(rawChild.port, payload));
      } else {
        rawSeconds.push(await timeRaw(rawChild.port, payload));
        streamSeconds.push(await timeStream(address, client, payload, header));
      }
    }
    const bytes = TENSORS * TENSOR_BYTES;
    const streamBps = bytes / median(streamSeconds);
    const rawBps = bytes / median(rawSeconds);
    const dataPlane = await dataPlaneBench(rawChild.port);
    const report: TransportReport = {
      stream: { bytesPerSecond: Math.round(streamBps), seconds: streamSeconds, window: WINDOW, chunkBytes: DEFAULT_CHUNK_BYTES },
      rawTcp: { bytesPerSecond: Math.round(rawBps), seconds: rawSeconds },
      ratio: Number((streamBps / rawBps).toFixed(3)),
      tensorBytes: TENSOR_BYTES,
      tensors: TENSORS,
      repetitions: REPS,
      dtype: 'f32',
      dataPlane,
    };
    if (!opts.json) {
      const gb = (x: number): string => `${(x / 1e9).toFixed(2)} GB/s`;
      process.stdout.write(
        `transport: ${TENSORS} x ${TENSOR_BYTES / 2 ** 20} MiB f32, median of ${REPS}\n` +
          `  stage stream  ${gb(streamBps)}\n  raw tcp       ${gb(rawBps)}\n  ratio         ${report.ratio}\n` +
          `data plane: ${DP_TENSORS} x ${DP_TENSOR_BYTES / 1e6} MB f32, median of ${REPS}\n` +
          `  native tcp    ${gb(dataPlane.nativeTcp.bytesPerSecond)}\n  raw tcp       ${gb(dataPlane.rawTcp.bytesPerSecond)}\n` +
          `  shm           ${gb(dataPlane.shm.bytesPerSecond)}${dataPlane.shm.direct ? ' (direct)' : ' (NOT direct: the ring)'}\n` +
          `  shm ring      ${gb(dataPlane.shmRing.bytesPerSecond)}\n  memcpy        ${gb(dataPlane.memcpy.bytesPerSecond)}\n` +
          `  tcp ratio     ${dataPlane.tcpRatio}\n  shm ratio     ${dataPlane.shmRatio}\n  ring ratio    ${dataPlane.shmRingRatio}\n`,
      );
    }
    return report;
  } finally {
    client.close();
    stopChild(streamChild);
    stopChild(rawChild);
  }
}

if (require.main === module) {
  const role = process.argv[2];
  if (role !== 'stream' && role !== 'raw' && role !== 'native') {
    process.stderr.write('usage: node --import tsx bench/transport.ts stream|raw|native (started by transportBench)\n');
    process.exit(2);
  }
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
  if (role === 'stream') {
    childStream().catch((e: unknown) => {
      process.stderr.write(`transport bench child: ${String(e)}\n`);
      process.exit(1);
    });
  } else if (role === 'native') {
    childNative();
  } else {
    childRaw();
  }
}
