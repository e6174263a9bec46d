/**
 * The native data plane through its adapter: tensors land bit-exact in preallocated buffers,
 * from this process and from another one, and malformed traffic (unknown session, wrong token,
 * wrong length, a peer that stops mid-tensor, corrupted bytes) is refused with a clear error
 * without touching any other session's buffer. Hand-built traffic goes over real sockets; a
 * hand-built listener checks what a sender accepts from a receiver (direct descriptors).
 */
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { status as Status } from '@grpc/grpc-js';
import { hostCpuSeconds, nativeDataPlane } from '@longshot/engine';
import { afterAll, afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { DataPlaneListener, DataPlaneSender, TransportError, chooseHopTransport, dataPlaneEndpoint, dataPlaneKeys, ncclAvailability } from '../src/index';
import { pattern } from './dataplane-peer';

const DP = nativeDataPlane();
const TOKEN = 'a-token-of-sixteen-chars';
const OTHER = 'another-token-of-16-chars';

const open: { close(): void }[] = [];
function track<T extends { close(): void }>(x: T): T {
  open.push(x);
  return x;
}
afterEach(() => {
  for (const x of open.splice(0)) x.close();
});

/** Small slots, so tensors wrap around the ring many times and end mid-slot. */
const SHM_RING = { slotBytes: 64 * 1024, slots: 3 };

function listener(stallMs = 2000): DataPlaneListener {
  return track(new DataPlaneListener({ stallMs }));
}

async function rejection(p: Promise<unknown>): Promise<TransportError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TransportError);
  return err as TransportError;
}

/** CRC-32C bit by bit: every native implementation must agree with it. */
function crc32cReference(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return ~c >>> 0;
}

/** A deterministic xorshift byte stream. */
function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Resolves with everything `socket` received once that is at least `n` bytes (rejects if it closes first). */
function collector(socket: net.Socket): (n: number) => Promise<Buffer> {
  const chunks: Buffer[] = [];
  const waiters: (() => void)[] = [];
  let closed = false;
  const wake = (): void => {
    for (const w of waiters.splice(0)) w();
  };
  socket.on('data', (d: Buffer) => {
    chunks.push(d);
    wake();
  });
  socket.on('close', () => {
    closed = true;
    wake();
  });
  return (n) =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const all = Buffer.concat(chunks);
        if (all.length >= n) resolve(all);
        else if (closed) reject(new Error(`connection closed after ${all.length} of ${n} bytes`));
        else waiters.push(check);
      };
      check();
    });
}

/** A hand-built connection to a listener: the header, then whatever the test writes. */
async function rawPeer(l: DataPlaneListener): Promise<{ socket: net.Socket; reply: Promise<Buffer>; until: (n: number) => Promise<Buffer> }> {
  const socket = net.connect(l.port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  socket.on('error', () => undefined);
  const until = collector(socket);
  const reply = new Promise<Buffer>((resolve) => socket.on('close', () => resolve(Buffer.concat(chunks))));
  return { socket, reply, until };
}

function replyOf(bytes: Buffer): { code: number; seq: number; message: string } {
  const { replyBytes, replyMagic } = DP.constants;
  expect(bytes.length).toBeGreaterThanOrEqual(replyBytes);
  expect(bytes.readUInt32LE(0)).toBe(replyMagic);
  const len = bytes.readUInt32LE(16);
  return { code: bytes.readUInt16LE(6), seq: Number(bytes.readBigUInt64LE(8)), message: bytes.subarray(replyBytes, replyBytes + len).toString() };
}

describe('framing', () => {
  it('the native checksum is CRC-32C in every implementation the CPU runs', () => {
    const variants = DP.checksumVariants();
    expect(variants.at(-1)).toBe('table'); // the portable one is always there
    const check = Buffer.from('123456789');
    for (const v of variants) {
      expect(DP.checksum(check, v)).toBe(0xe3069283); // the published check value
      expect(DP.checksum(new Uint8Array(0), v)).toBe(0);
    }
    expect(DP.checksum(check)).toBe(0xe3069283);
    // Random lengths (below, around and well above each implementation's block sizes) at every
    // alignment modulo 64.
    const pool = randomBytes(70_000, 12345);
    const lengths = [1, 7, 8, 15, 16, 255, 256, 767, 768, 1023, 1024, 1025, 12_287, 12_288, 12_289, 65_536];
    const rnd = randomBytes(200, 99);
    for (let i = 0; i < 40; i++) lengths.push(((rnd[2 * i] << 8) | rnd[2 * i + 1]) % 69_000);
    lengths.forEach((n, i) => {
      const offset = i % 64;
      const bytes = pool.subarray(offset, offset + n);
      const want = crc32cReference(bytes);
      for (const v of variants) expect([v, n, offset, DP.checksum(bytes, v)]).toEqual([v, n, offset, want]);
    });
    // Any change to the bytes or their length changes it.
    const flipped = pool.slice(0, 5000);
    flipped[2500] ^= 1;
    expect(DP.checksum(flipped)).not.toBe(DP.checksum(pool.subarray(0, 5000)));
    expect(DP.checksum(new Uint8Array(33))).not.toBe(DP.checksum(new Uint8Array(32)));
    expect(() => DP.checksum(check, 'no-such')).toThrow(/variant 'no-such' is not available/);
  });

  it('keys identify the session and prove its token without carrying it', () => {
    const a = dataPlaneKeys('s1', TOKEN);
    expect(a.session.length).toBe(DP.constants.keyBytes);
    expect(dataPlaneKeys('s1', OTHER).session.equals(a.session)).toBe(true);
    expect(dataPlaneKeys('s1', OTHER).grant.equals(a.grant)).toBe(false);
    expect(dataPlaneKeys('s2', TOKEN).session.equals(a.session)).toBe(false);
  });
});

describe('native TCP data plane', () => {
  it('moves tensors bit-exact into preallocated buffers, in order, announced before or after the bytes', async () => {
    const l = listener();
    l.addSession('s1', TOKEN);
    const s = track(new DataPlaneSender(`127.0.0.1:${l.port}`));
    const floats = 3 * 1024 * 1024 + 5; // not a multiple of the checksum block
    const dst = [new Float32Array(floats), new Float32Array(floats), new Float32Array(floats)];
    const cpuBefore = hostCpuSeconds().dataPlane;
    const recv1 = l.receive('s1', 1, dst[0]);
    const sends = [1, 2, 3].map((seq) => s.send('s1', TOKEN, seq, pattern(seq, floats)));
    // Seqs 2 and 3 are announced after their bytes started arriving.
    await new Promise((r) => setTimeout(r, 100));
    const recvs = [recv1, l.receive('s1', 2, dst[1]), l.receive('s1', 3, dst[2])];
    const got = await Promise.all([...sends, ...recvs]);
    for (const t of got) expect(t.bytes).toBe(floats * 4);
    for (let i = 0; i < 3; i++) expect(Buffer.from(dst[i].buffer).equals(Buffer.from(pattern(i + 1, floats).buffer))).toBe(true);
    // Both ends' threads are this process's: their CPU time is the data plane's (checksums and copies of 38 MB).
    expect(hostCpuSeconds().dataPlane - cpuBefore).toBeGreaterThan(0.001);
  });

  it('sends from and receives into tensors over a SharedArrayBuffer (the head keeps its block latents in one)', async () => {
    const l = listener();
    l.addSession('s1', TOKEN);
    const s = track(new DataPlaneSender(`127.0.0.1:${l.port}`));
    const floats = 256 * 1024 + 3;
    const shared = (n: number) => new Float32Array(new SharedArrayBuffer((n + 2) * 4)).subarray(1, n + 1);
    const src = shared(floats);
    src.set(pattern(7, floats));
    const dst = shared(floats);
    const [sent, received] = await Promise.all([s.send('s1', TOKEN, 1, src), l.receive('s1', 1, dst)]);
    expect(sent.bytes).toBe(floats * 4);
    expect(received.bytes).toBe(floats * 4);
    expect(Buffer.from(dst.buffer, dst.byteOffset, dst.byteLength).equals(Buffer.from(pattern(7, floats).buffer))).toBe(true);
    expect([dst.buffer.slice(0, 4), dst.buffer.slice((floats + 1) * 4)].map((b) => new Float32Array(b)[0])).toEqual([0, 0]);
  });

  it('receives from another process', async () => {
    const l = listener();
    l.addSession('job-7/stage-1', TOKEN);
    const floats = 2 * 1024 * 1024;
    const dst = [1, 2, 3, 4].map(() => new Float32Array(floats));
    const child = promisify(execFile)(process.execPath, ['--import', 'tsx', path.join(__dirname, 'dataplane-peer.ts'), `127.0.0.1:${l.port}`, 'job-7/stage-1', TOKEN, '4', String(floats)]);
    const got = await Promise.all(dst.map((d, i) => l.receive('job-7/stage-1', i + 1, d)));
    const { stdout } = await child;
    expect((JSON.parse(stdout) as { transfers: unknown[] }).transfers).toHaveLength(4);
    for (let i = 0; i < 4; i++) {
      expect(got[i].bytes).toBe(floats * 4);
      expect(Buffer.from(dst[i].buffer).equals(Buffer.from(pattern(i + 1, floats).buffer))).toBe(true);
    }
  });

  it('a process with both ends exits cleanly after a transfer (no abort in the addon at exit)', async () => {
    // Node may delete a completion function before the object that owns it at exit.
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', path.join(__dirname, 'dataplane-peer.ts'), 'both-ends']);
    expect(JSON.parse(stdout)).toEqual({ bytes: 4096 });
  });

  it('refuses bytes no control-plane header announced', async () => {
    const l = listener(300);
    l.addSession('s1', TOKEN);
    const s = track(new DataPlaneSender(`127.0.0.1:${l.port}`));
    const err = await rejection(s.send('s1', TOKEN, 9, new Float32Array(16)));
    expect(err.code).toBe(Status.FAILED_PRECONDITION);
    expect(err.details).toMatch(/tensor seq 9 .* was not announced/);
  });

  it('times out a peer that stops mid-tensor, with a clear error on both sides', async () => {
    const l = listener(300);
    l.addSession('s1', TOKEN);
    const dst = new Float32Array(1024);
    const mine = rejection(l.receive('s1', 1, dst));
    const { socket, reply } = await rawPeer(l);
    const keys = dataPlaneKeys('s1', TOKEN);
    socket.write(DP.encodeHeader({ seq: 1, byteLength: 4096, ...keys }));
    socket.write(Buffer.alloc(1000, 1));
    const err = await mine;
    expect(err.code).toBe(Status.DEADLINE_EXCEEDED);
    expect(err.details).toMatch(/stopped mid-tensor/);
    socket.end();
    const r = replyOf(await reply);
    expect(r.code).toBe(Status.DEADLINE_EXCEEDED);
    expect(r.seq).toBe(1);
  });

  it('refuses corrupted bytes (checksum) and frames that are not the protocol', async () => {
    const l = listener();
    l.addSession('s1', TOKEN);
    const keys = dataPlaneKeys('s1', TOKEN);
    const payload = Buffer.from(pattern(1, 64).buffer);
    const mine = rejection(l.receive('s1', 1, new Float32Array(64)));
    const a = await rawPeer(l);
    const trailer = Buffer.alloc(DP.constants.trailerBytes);
    trailer.writeUInt32LE((DP.checksum(payload) ^ 1) >>> 0, 0);
    trailer.writeUInt32LE(DP.constants.trailerMagic, 4);
    a.socket.end(Buffer.concat([DP.encodeHeader({ seq: 1, byteLength: payload.length, ...keys }), payload, trailer]));
    expect((await mine).code).toBe(Status.DATA_LOSS);
    expect(replyOf(await a.reply).message).toMatch(/checksum mismatch/);

    const b = await rawPeer(l);
    b.socket.end(Buffer.alloc(DP.constants.headerBytes, 0x41));
    const r = replyOf(await b.reply);
    expect(r.code).toBe(Status.INVALID_ARGUMENT);
    expect(r.message).toMatch(/bad magic/);
  });

  it('refuses a header of another wire version, naming both (version 3 added the direct shared-memory transfer)', async () => {
    const l = listener();
    l.addSession('s1', TOKEN);
    const { socket, reply } = await rawPeer(l);
    const old = DP.encodeHeader({ seq: 1, byteLength: 16, ...dataPlaneKeys('s1', TOKEN) });
    old.writeUInt16LE(2, 4);
    socket.end(old);
    const r = replyOf(await reply);
    expect(r.code).toBe(Status.INVALID_ARGUMENT);
    expect(r.message).toMatch(/data-plane version 2 is not supported \(this build speaks 3; both ends of a hop must run the same build\)/);
  });

  it('a receive that nothing answers times out; a closed session cancels its receives', async () => {
    const l = listener();
    l.addSession('s1', TOKEN);
    const late = await rejection(l.receive('s1', 1, new Float32Array(4), 200));
    expect(late.code).toBe(Status.DEADLINE_EXCEEDED);
    expect(late.details).toMatch(/did not arrive within 200 ms/);
    const pending = rejection(l.receive('s1', 2, new Float32Array(4)));
    l.removeSession('s1');
    expect((await pending).code).toBe(Status.CANCELLED);
    expect((await rejection(l.receive('s1', 3, new Float32Array(4)))).code).toBe(Status.FAILED_PRECONDITION);
  });

  it('a sender that cannot connect says so', async () => {
    const l = listener();
    const port = l.port;
    l.close();
    const s = track(new DataPlaneSender(`127.0.0.1:${port}`));
    const err = await rejection(s.send('s1', TOKEN, 1, new Float32Array(4)));
    expect(err.code).toBe(Status.UNAVAILABLE);
    expect(err.details).toMatch(/cannot connect/);
  });
});

/** Both paths of the data plane refuse the same way before any byte reaches a buffer. */
describe.each([
  { name: 'TCP', shm: false as const },
  { name: 'shared memory', shm: SHM_RING },
])('refusals over $name', (via) => {
  it('refuses an unknown session and a wrong token, leaving the real session untouched', async () => {
    const l = track(new DataPlaneListener({ stallMs: 2000, shm: via.shm !== false }));
    l.addSession('s1', TOKEN);
    const dst = new Float32Array(1024).fill(7);
    const mine = l.receive('s1', 1, dst);

    const stranger = track(new DataPlaneSender(`127.0.0.1:${l.port}`, { shm: via.shm }));
    const unknown = await rejection(stranger.send('nobody', TOKEN, 1, new Float32Array(1024)));
    expect(unknown.code).toBe(Status.NOT_FOUND);
    expect(unknown.details).toMatch(/unknown session/);

    const thief = track(new DataPlaneSender(`127.0.0.1:${l.port}`, { shm: via.shm }));
    const wrong = await rejection(thief.send('s1', OTHER, 1, new Float32Array(1024)));
    expect(wrong.code).toBe(Status.UNAUTHENTICATED);
    expect(wrong.details).toMatch(/wrong grant/);
    // A refused connection is not used again.
    const again = await rejection(thief.send('s1', TOKEN, 2, new Float32Array(1024)));
    expect(again.code).toBe(Status.UNAVAILABLE);

    expect(dst.every((v) => v === 7)).toBe(true);
    const honest = track(new DataPlaneSender(`127.0.0.1:${l.port}`, { shm: via.shm }));
    await honest.send('s1', TOKEN, 1, pattern(1, 1024));
    await mine;
    expect(Buffer.from(dst.buffer).equals(Buffer.from(pattern(1, 1024).buffer))).toBe(true);
  });

  it('refuses a byte length other than the announced one before writing', async () => {
    const l = track(new DataPlaneListener({ stallMs: 2000, shm: via.shm !== false }));
    l.addSession('s1', TOKEN);
    const dst = new Float32Array(256).fill(7);
    const mine = rejection(l.receive('s1', 1, dst));
    const s = track(new DataPlaneSender(`127.0.0.1:${l.port}`, { shm: via.shm }));
    const sent = await rejection(s.send('s1', TOKEN, 1, new Float32Array(512)));
    expect(sent.code).toBe(Status.INVALID_ARGUMENT);
    expect(sent.details).toMatch(/byte_length 2048 does not match the 1024 bytes announced/);
    expect((await mine).code).toBe(Status.INVALID_ARGUMENT);
    expect(dst.every((v) => v === 7)).toBe(true);
  });
});

describe('native shared-memory data plane', () => {
  const ring = SHM_RING;

  function shmListener(stallMs = 2000): DataPlaneListener {
    return track(new DataPlaneListener({ stallMs, shm: true }));
  }

  /** A sender's segment made by hand (POSIX shared memory is a file of /dev/shm on Linux). */
  function handMadeSegment(name: string, slots: number, slotBytes: number, fill: number): string {
    const bytes = Buffer.alloc(64 + slots * slotBytes, fill);
    bytes.writeUInt32LE(0x4d44534c, 0); // "LSDM"
    bytes.writeUInt32LE(slots, 4);
    bytes.writeBigUInt64LE(BigInt(slotBytes), 8);
    bytes.fill(0, 16, 64);
    const file = `/dev/shm/${name}`;
    fs.writeFileSync(file, bytes, { mode: 0o600 });
    return file;
  }

  /** `offerDirect`: the flag by which a sender offers to write straight into a shared destination. */
  function ringDescriptor(name: string, slots: number, slotBytes: number, offerDirect = false): Buffer {
    const d = Buffer.alloc(DP.constants.ringBytes);
    d.writeUInt32LE(DP.constants.ringMagic, 0);
    d.writeUInt32LE(slots, 4);
    d.writeBigUInt64LE(BigInt(slotBytes), 8);
    d.write(`/${name}`, 16, 'latin1');
    d.writeUInt32LE(offerDirect ? 1 : 0, 56);
    return d;
  }

  it('moves tensors bit-exact through the ring, in process and from another process, and leaves no segment behind', async () => {
    const l = shmListener();
    l.addSession('s1', TOKEN);
    const s = track(new DataPlaneSender(`127.0.0.1:${l.port}`, { shm: ring }));
    expect(s.transport).toBe('shm');
    // The first is large enough to leave the ring through streaming stores, into a destination
    // 4 bytes past a 32-byte boundary (an unaligned head) and with a tail of 28 bytes.
    const sizes = [4 * 1024 * 1024 + 7, 3 * 1024 * 1024 + 5, 16 * 1024, 1, 0];
    const dst = sizes.map((n, i) => (i === 0 ? new Float32Array(n + 1).subarray(1) : new Float32Array(n)));
    const got = await Promise.all([...sizes.map((n, i) => s.send('s1', TOKEN, i + 1, pattern(i + 1, n))), ...dst.map((d, i) => l.receive('s1', i + 1, d))]);
    for (let i = 0; i < sizes.length; i++) {
      expect(got[i].bytes).toBe(sizes[i] * 4);
      expect(Buffer.from(dst[i].buffer, dst[i].byteOffset, dst[i].byteLength).equals(Buffer.from(pattern(i + 1, sizes[i]).buffer))).toBe(true);
    }

    l.addSession('job-8/stage-2', TOKEN);
    const floats = 1024 * 1024 + 3;
    const far = [1, 2, 3].map(() => new Float32Array(floats));
    const child = promisify(execFile)(process.execPath, ['--import', 'tsx', path.join(__dirname, 'dataplane-peer.ts'), `127.0.0.1:${l.port}`, 'job-8/stage-2', TOKEN, '3', String(floats), String(ring.slotBytes), String(ring.slots)]);
    await Promise.all(far.map((d, i) => l.receive('job-8/stage-2', i + 1, d)));
    await child;
    for (let i = 0; i < 3; i++) expect(Buffer.from(far[i].buffer).equals(Buffer.from(pattern(i + 1, floats).buffer))).toBe(true);
    // The receiver unlinks a segment's name once mapped: nothing of the child's is left in
    // /dev/shm (only its own segments: other processes of this machine may be using theirs).
    expect(fs.readdirSync('/dev/shm').filter((f) => f.startsWith(`longshot-dp-${child.child.pid}-`))).toEqual([]);
  });

  it('a listener without shared memory refuses it, and a segment that is not there is named', async () => {
    const tcpOnly = listener();
    tcpOnly.addSession('s1', TOKEN);
    const s = track(new DataPlaneSender(`127.0.0.1:${tcpOnly.port}`, { shm: ring }));
    const refused = await rejection(s.send('s1', TOKEN, 1, new Float32Array(64)));
    expect(refused.code).toBe(Status.FAILED_PRECONDITION);
    expect(refused.details).toMatch(/does not take shared memory/);

    const l = shmListener();
    l.addSession('s1', TOKEN);
    const mine = rejection(l.receive('s1', 1, new Float32Array(64)));
    const { socket, reply } = await rawPeer(l);
    socket.write(DP.encodeHeader({ seq: 1, byteLength: 256, ...dataPlaneKeys('s1', TOKEN), shm: true }));
    socket.write(ringDescriptor(`longshot-test-missing-${process.pid}`, 2, 4096));
    expect((await mine).code).toBe(Status.FAILED_PRECONDITION);
    socket.end();
    expect(replyOf(await reply).message).toMatch(/cannot open the sender's shared memory .* \(not on this host\?\)/);
  });

  it('a peer that dies mid-tensor fails the receive at once (UNAVAILABLE), not after the stall time', async () => {
    const l = shmListener(60_000);
    l.addSession('s1', TOKEN);
    const mine = rejection(l.receive('s1', 1, new Uint8Array(3 * 4096)));
    const name = `longshot-test-${process.pid}-death`;
    const file = handMadeSegment(name, 2, 4096, 1);
    try {
      const { socket } = await rawPeer(l);
      socket.write(DP.encodeHeader({ seq: 1, byteLength: 3 * 4096, ...dataPlaneKeys('s1', TOKEN), shm: true }));
      socket.write(ringDescriptor(name, 2, 4096));
      socket.end(Buffer.from('D')); // one chunk, then the process is gone
      const err = await mine;
      expect(err.code).toBe(Status.UNAVAILABLE);
      expect(err.details).toMatch(/the peer closed the connection mid-tensor/);
    } finally {
      fs.rmSync(file, { force: true });
    }
  });

  it('times out a peer that stops mid-tensor; chunks already copied stay in its own buffer only', async () => {
    const l = shmListener(300);
    l.addSession('s1', TOKEN);
    l.addSession('s2', TOKEN);
    const slotBytes = 4096;
    const dst = new Uint8Array(3 * slotBytes);
    const bystander = new Uint8Array(slotBytes).fill(5);
    const theirs = l.receive('s2', 1, bystander);
    const mine = rejection(l.receive('s1', 1, dst));
    const name = `longshot-test-${process.pid}-stall`;
    const file = handMadeSegment(name, 2, slotBytes, 0xab);
    try {
      const { socket, reply } = await rawPeer(l);
      socket.write(DP.encodeHeader({ seq: 1, byteLength: dst.length, ...dataPlaneKeys('s1', TOKEN), shm: true }));
      socket.write(ringDescriptor(name, 2, slotBytes));
      socket.write(Buffer.from('D')); // one chunk of three, then silence
      const err = await mine;
      expect(err.code).toBe(Status.DEADLINE_EXCEEDED);
      expect(err.details).toMatch(/stopped mid-tensor/);
      socket.end();
      const r = replyOf((await reply).subarray(1)); // after the one 'C' that freed the slot
      expect(r.code).toBe(Status.DEADLINE_EXCEEDED);
      expect(dst.subarray(0, slotBytes).every((v) => v === 0xab)).toBe(true);
      expect(bystander.every((v) => v === 5)).toBe(true);
      // The receiver unlinked the name as soon as it mapped the segment.
      expect(fs.existsSync(file)).toBe(false);
    } finally {
      fs.rmSync(file, { force: true });
    }
    const s = track(new DataPlaneSender(`127.0.0.1:${l.port}`, { shm: ring }));
    await s.send('s2', TOKEN, 1, new Uint8Array(slotBytes).fill(6));
    await theirs;
    expect(bystander.every((v) => v === 6)).toBe(true);
  });
  describe('single copy into a shared destination (direct)', () => {
    // The test runner ends its worker processes by a signal, which runs neither finalizers nor
    // exit handlers: unlink this process's shared destinations by hand (their mappings stay).
    afterAll(() => {
      for (const f of fs.readdirSync('/dev/shm')) if (f.startsWith(`longshot-dd-${process.pid}-`)) fs.rmSync(`/dev/shm/${f}`, { force: true });
    });

    /** The listener's answer to a direct offer: 'W' and the 64-byte direct descriptor. */
    function directAnswer(bytes: Buffer): { offset: number; length: number; name: string } {
      expect(bytes[0]).toBe('W'.charCodeAt(0));
      const d = bytes.subarray(1, 1 + DP.constants.directBytes);
      expect(d.readUInt32LE(0)).toBe(DP.constants.directMagic);
      const name = d.subarray(24, 64);
      return { offset: Number(d.readBigUInt64LE(8)), length: Number(d.readBigUInt64LE(16)), name: name.subarray(0, name.indexOf(0)).toString('latin1') };
    }

    it('a sender writes straight into a shared destination, bit-exact, from this process and from another one', async () => {
      const l = shmListener();
      l.addSession('s1', TOKEN);
      expect(l.sharedUnavailable).toBeNull();
      const s = track(new DataPlaneSender(`127.0.0.1:${l.port}`, { shm: ring }));
      // 16 MiB + 28 bytes: a full piece through streaming stores and a 28-byte one; and 1000 bytes.
      const floats = [(16 * 1024 * 1024 + 28) / 4, 250];
      const dst = floats.map((n) => l.allocateShared(n * 4));
      for (const d of dst) expect(d.every((b) => b === 0)).toBe(true);
      const got = await Promise.all([...floats.map((n, i) => s.send('s1', TOKEN, i + 1, pattern(i + 1, n))), ...dst.map((d, i) => l.receive('s1', i + 1, d))]);
      for (const [i, t] of got.entries()) expect([i, t.bytes, t.direct]).toEqual([i, floats[i % 2] * 4, true]);
      for (let i = 0; i < 2; i++) expect(dst[i].equals(Buffer.from(pattern(i + 1, floats[i]).buffer))).toBe(true);

      l.addSession('job-9/stage-3', TOKEN);
      const far = [1, 2].map(() => l.allocateShared(floats[0] * 4));
      const child = promisify(execFile)(process.execPath, [
        '--import',
        'tsx',
        path.join(__dirname, 'dataplane-peer.ts'),
        `127.0.0.1:${l.port}`,
        'job-9/stage-3',
        TOKEN,
        '2',
        String(floats[0]),
        String(ring.slotBytes),
        String(ring.slots),
      ]);
      const mine = await Promise.all(far.map((d, i) => l.receive('job-9/stage-3', i + 1, d)));
      const { stdout } = await child;
      expect((JSON.parse(stdout) as { transfers: { direct: boolean }[] }).transfers.map((t) => t.direct)).toEqual([true, true]);
      expect(mine.map((t) => t.direct)).toEqual([true, true]);
      for (let i = 0; i < 2; i++) expect(far[i].equals(Buffer.from(pattern(i + 1, floats[0]).buffer))).toBe(true);
    });

    it('ordinary memory takes the ring; a subarray of a shared buffer goes direct and nothing around it changes', async () => {
      const l = shmListener();
      l.addSession('s1', TOKEN);
      const s = track(new DataPlaneSender(`127.0.0.1:${l.port}`, { shm: ring }));
      const plain = new Uint8Array(3 * ring.slotBytes + 100);
      const bytes = randomBytes(plain.length, 7);
      const [sent, got] = await Promise.all([s.send('s1', TOKEN, 1, bytes), l.receive('s1', 1, plain)]);
      expect([sent.direct, got.direct]).toEqual([false, false]);
      expect(Buffer.from(plain).equals(Buffer.from(bytes))).toBe(true);

      const shared = l.allocateShared(200_000).fill(0x5a);
      const sub = shared.subarray(777, 777 + 70_003);
      const inner = randomBytes(sub.length, 8);
      const [, into] = await Promise.all([s.send('s1', TOKEN, 2, inner), l.receive('s1', 2, sub)]);
      expect(into.direct).toBe(true);
      expect(sub.equals(Buffer.from(inner))).toBe(true);
      expect(shared.subarray(0, 777).every((b) => b === 0x5a)).toBe(true);
      expect(shared.subarray(777 + 70_003).every((b) => b === 0x5a)).toBe(true);

      // A sender that does not offer the direct copy takes the ring into a shared buffer too.
      const ringOnly = track(new DataPlaneSender(`127.0.0.1:${l.port}`, { shm: { ...ring, direct: false } }));
      const again = randomBytes(sub.length, 9);
      const [, viaRing] = await Promise.all([ringOnly.send('s1', TOKEN, 3, again), l.receive('s1', 3, sub)]);
      expect(viaRing.direct).toBe(false);
      expect(sub.equals(Buffer.from(again))).toBe(true);
    });

    it('allocateShared falls back to ordinary memory, once and saying why, when shared memory is unusable', () => {
      const tcpOnly = listener();
      const plain = tcpOnly.allocateShared(4096);
      expect(plain.length).toBe(4096);
      expect(tcpOnly.sharedUnavailable).toMatch(/does not take shared memory/);
      // The native call says why it cannot: here a segment larger than /dev/shm can hold.
      const native = track(new DP.Listener('127.0.0.1', 0, 1000, true));
      expect(() => native.allocateShared(2 ** 50)).toThrow(/cannot allocate a shared destination of 1125899906842624 bytes: .*(posix_fallocate|too large)/);
      expect(() => new DP.Listener('127.0.0.1', 0, 1000, false).allocateShared(16)).toThrow(/does not take shared memory/);
      // The adapter remembers a failure and stops asking.
      const l = shmListener();
      // (A /dev/shm full at this size cannot be arranged here: the native call fails by hand.)
      const inner = (l as unknown as { native: object }).native;
      let calls = 0;
      Object.defineProperty(inner, 'allocateShared', {
        value: () => {
          calls++;
          throw new Error('data plane: cannot allocate a shared destination of 64 bytes: shm_open: No space left on device');
        },
      });
      expect(l.allocateShared(64).length).toBe(64);
      expect(l.allocateShared(128).length).toBe(128);
      expect(calls).toBe(1);
      expect(l.sharedUnavailable).toMatch(/shm_open: No space left on device/);
      expect(() => l.allocateShared(-1)).toThrow(RangeError);
    });

    it('a cancelled direct receive first stops the sender (it settles only after the sender said so); a silent sender times out', async () => {
      const l = shmListener(5000);
      l.addSession('s1', TOKEN);
      const dst = l.allocateShared(3 * 4096);
      let settled = false;
      const mine = rejection(l.receive('s1', 1, dst, 60_000)).finally(() => (settled = true));
      const name = `longshot-test-${process.pid}-dstop`;
      const file = handMadeSegment(name, 2, 4096, 0);
      try {
        const peer = await rawPeer(l);
        peer.socket.write(DP.encodeHeader({ seq: 1, byteLength: dst.length, ...dataPlaneKeys('s1', TOKEN), shm: true }));
        peer.socket.write(ringDescriptor(name, 2, 4096, true));
        const answer = directAnswer(await peer.until(1 + DP.constants.directBytes));
        expect([answer.offset, answer.length]).toEqual([0, dst.length]);
        expect(fs.existsSync(`/dev/shm${answer.name}`)).toBe(true);
        // Mid-transfer the receive is cancelled: the listener asks the sender to stop ('S')...
        l.removeSession('s1');
        const stop = await peer.until(1 + DP.constants.directBytes + 1);
        expect(String.fromCharCode(stop[1 + DP.constants.directBytes])).toBe('S');
        await new Promise((r) => setTimeout(r, 200));
        expect(settled).toBe(false); // ...and waits for its answer before settling
        peer.socket.write(Buffer.from('A'));
        const err = await mine;
        expect(err.code).toBe(Status.CANCELLED);
        expect(err.details).toMatch(/session closed/);
        peer.socket.end();
        const r = replyOf((await peer.reply).subarray(1 + DP.constants.directBytes + 1));
        expect(r.code).toBe(Status.CANCELLED);
      } finally {
        fs.rmSync(file, { force: true });
      }

      // A sender that rings the first of two pieces and then goes silent: DEADLINE_EXCEEDED on
      // both sides, as on the ring.
      const quick = shmListener(300);
      quick.addSession('s1', TOKEN);
      const other = quick.allocateShared(DP.constants.directPieceBytes + 1);
      const stalled = rejection(quick.receive('s1', 1, other));
      const file2 = handMadeSegment(`${name}2`, 2, 4096, 0);
      try {
        const peer = await rawPeer(quick);
        peer.socket.write(DP.encodeHeader({ seq: 1, byteLength: other.length, ...dataPlaneKeys('s1', TOKEN), shm: true }));
        peer.socket.write(ringDescriptor(`${name}2`, 2, 4096, true));
        expect(directAnswer(await peer.until(1 + DP.constants.directBytes)).length).toBe(other.length);
        peer.socket.write(Buffer.from('D'));
        const err = await stalled;
        expect(err.code).toBe(Status.DEADLINE_EXCEEDED);
        expect(err.details).toMatch(/stopped mid-tensor \(no direct-transfer doorbell for 300 ms\)/);
        peer.socket.end();
        expect(replyOf((await peer.reply).subarray(1 + DP.constants.directBytes)).code).toBe(Status.DEADLINE_EXCEEDED);
      } finally {
        fs.rmSync(file2, { force: true });
      }
    });

    it('a sender refuses a direct descriptor outside the segment, with a bad name or for a segment it cannot open, and writes nothing', async () => {
      // A hand-made listener: it reads the header and ring descriptor of a real sender, then
      // answers each connection with the next direct descriptor of the list.
      const segment = `longshot-test-${process.pid}-target`;
      const file = `/dev/shm/${segment}`;
      fs.writeFileSync(file, Buffer.alloc(8192, 0x11), { mode: 0o600 });
      const n = 1000;
      const answers: { offset: bigint; length?: number; name: string; magic?: number }[] = [
        { offset: 7500n, name: `/${segment}` }, // 7500 + 1000 > 8192
        { offset: 2n ** 64n - 10n, name: `/${segment}` }, // offset + length overflows
        { offset: 0n, name: `${segment}` }, // not a POSIX name
        { offset: 0n, name: `/no/${segment}` },
        { offset: 0n, name: `/${segment}-missing` },
        { offset: 0n, length: 999, name: `/${segment}` },
        { offset: 0n, name: `/${segment}`, magic: 0x12345678 },
        { offset: 100n, name: `/${segment}` }, // the one honest answer
      ];
      // Per connection: what the sender wrote up to its first byte after the direct descriptor.
      const seen: Promise<Buffer>[] = [];
      const server = net.createServer((socket) => {
        const answer = answers[seen.length];
        const until = collector(socket);
        socket.on('error', () => undefined);
        seen.push(until(129));
        void (async () => {
          await until(128);
          const d = Buffer.alloc(1 + DP.constants.directBytes);
          d[0] = 'W'.charCodeAt(0);
          d.writeUInt32LE(answer.magic ?? DP.constants.directMagic, 1);
          d.writeBigUInt64LE(answer.offset, 9);
          d.writeBigUInt64LE(BigInt(answer.length ?? n), 17);
          d.write(answer.name, 25, 'latin1');
          socket.write(d);
          const rest = await until(129);
          if (rest[128] === 'D'.charCodeAt(0)) {
            await until(129 + DP.constants.trailerBytes);
            const reply = Buffer.alloc(DP.constants.replyBytes);
            reply.writeUInt32LE(DP.constants.replyMagic, 0);
            reply.writeBigUInt64LE(1n, 8);
            socket.end(reply);
          } else {
            socket.end();
          }
        })().catch(() => socket.destroy());
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server.address() as net.AddressInfo).port;
      const why = [
        [Status.INVALID_ARGUMENT, /bytes \[7500, 7500 \+ 1000\) are not inside the 8192 bytes of segment/],
        [Status.INVALID_ARGUMENT, /are not inside the 8192 bytes/],
        [Status.INVALID_ARGUMENT, /segment name is not a POSIX shared-memory name/],
        [Status.INVALID_ARGUMENT, /segment name is not a POSIX shared-memory name/],
        [Status.FAILED_PRECONDITION, /cannot open the receiver's shared destination .*-missing: No such file or directory/],
        [Status.INVALID_ARGUMENT, /its byte_length 999 is not the tensor's 1000/],
        [Status.INVALID_ARGUMENT, /not a direct descriptor \(bad magic\)/],
      ] as const;
      try {
        for (const [i, [code, message]] of why.entries()) {
          const s = track(new DataPlaneSender(`127.0.0.1:${port}`, { shm: ring }));
          const err = await rejection(s.send('s1', TOKEN, 1, new Uint8Array(n).fill(0xee)));
          expect([i, err.code]).toEqual([i, code]);
          expect(err.details).toMatch(message);
          expect(err.details).toMatch(/the receiver's direct descriptor was refused/);
          // It offered direct, and said 'A' (refused) rather than writing.
          const wrote = await seen[i];
          expect(wrote.readUInt32LE(64 + 56)).toBe(1);
          expect(String.fromCharCode(wrote[128])).toBe('A');
          expect(fs.readFileSync(file).every((b) => b === 0x11)).toBe(true);
        }
        const s = track(new DataPlaneSender(`127.0.0.1:${port}`, { shm: ring }));
        const ok = await s.send('s1', TOKEN, 1, new Uint8Array(n).fill(0xee));
        expect(ok.direct).toBe(true);
        const after = fs.readFileSync(file);
        expect(after.subarray(100, 100 + n).every((b) => b === 0xee)).toBe(true);
        expect(after.subarray(0, 100).every((b) => b === 0x11)).toBe(true);
        expect(after.subarray(100 + n).every((b) => b === 0x11)).toBe(true);
      } finally {
        server.close();
        fs.rmSync(file, { force: true });
      }
    });

    it('shared destinations outlive a closed listener: collecting them unlinks them without a crash, and so does process.exit', async () => {
      // global.gc in a child of its own (node --expose-gc): the test runner does not expose it.
      const child = promisify(execFile)(process.execPath, ['--expose-gc', '--import', 'tsx', path.join(__dirname, 'dataplane-peer.ts'), 'shared-gc']);
      const { stdout } = await child;
      expect(JSON.parse(stdout)).toEqual({ allocated: 3, afterGc: 0, direct: true, kept: 8192 });
      expect(fs.readdirSync('/dev/shm').filter((f) => f.startsWith(`longshot-dd-${child.child.pid}-`))).toEqual([]);
    });

    it('a listener that takes shm unlinks what a process killed by a signal left in shared memory, and nothing a live one holds', async () => {
      const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, 'dataplane-peer.ts'), 'hold-shared'], { stdio: ['ignore', 'pipe', 'inherit'] });
      const line = await new Promise<string>((resolve, reject) => {
        child.stdout.once('data', (d: Buffer) => resolve(d.toString()));
        child.once('exit', (code) => reject(new Error(`hold-shared exited (${code})`)));
      });
      onTestFinished(() => {
        child.kill('SIGKILL');
      });
      const [orphan] = (JSON.parse(line) as { segments: string[] }).segments;
      expect(orphan).toMatch(/^longshot-dd-\d+-[0-9a-f]{16}$/);
      const live = new DataPlaneListener({ shm: true });
      const mine = live.allocateShared(4096);
      const [ours] = fs.readdirSync('/dev/shm').filter((f) => f.startsWith(`longshot-dd-${process.pid}-`));
      // Segments younger than a minute are left alone (their creator may not hold its lock yet): age both.
      const old = new Date(Date.now() - 10 * 60_000);
      fs.utimesSync(`/dev/shm/${orphan}`, old, old);
      fs.utimesSync(`/dev/shm/${ours}`, old, old);
      // Alive, its lock held: a sweep now leaves its segment.
      const early = new DataPlaneListener({ shm: true });
      early.close();
      expect(fs.existsSync(`/dev/shm/${orphan}`)).toBe(true);
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
      expect(fs.existsSync(`/dev/shm/${orphan}`)).toBe(true);
      const sweeper = new DataPlaneListener({ shm: true });
      try {
        expect(sweeper.sweptSegments).toBeGreaterThanOrEqual(1);
        expect(fs.existsSync(`/dev/shm/${orphan}`)).toBe(false);
        expect(fs.existsSync(`/dev/shm/${ours}`)).toBe(true);
        expect(mine.length).toBe(4096);
        // Not a listener that takes shm: it does not look.
        const tcpOnly = new DataPlaneListener({});
        expect(tcpOnly.sweptSegments).toBe(0);
        tcpOnly.close();
      } finally {
        sweeper.close();
        live.close();
      }
    });
  });
});

describe('device paths (NCCL, CUDA IPC) on a machine without them', () => {
  const links = DP.deviceLinks();
  const ipcHeader = { seq: 3, byteLength: 4096, path: 'cuda-ipc' as const };

  it('the device descriptor names its tensor: seq, byte_length and path must be the header\'s', () => {
    const handle = Buffer.alloc(64, 7);
    const d = DP.encodeDeviceDescriptor({ ...ipcHeader, offset: 256, handle });
    expect(d.length).toBe(DP.constants.deviceDescriptorBytes);
    expect(DP.checkDeviceDescriptor(ipcHeader, d)).toBe('');
    expect(DP.checkDeviceDescriptor({ ...ipcHeader, seq: 4 }, d)).toMatch(/descriptor is for seq 3, the header for 4/);
    expect(DP.checkDeviceDescriptor({ ...ipcHeader, byteLength: 4097 }, d)).toMatch(/byte_length 4096 is not the header's 4097/);
    expect(DP.checkDeviceDescriptor({ ...ipcHeader, path: 'nccl' }, d)).toMatch(/descriptor is for CUDA IPC handles, the header for NCCL/);
    const nccl = { seq: 1, byteLength: 100, path: 'nccl' as const };
    expect(DP.checkDeviceDescriptor(nccl, DP.encodeDeviceDescriptor(nccl))).toBe('');
    expect(DP.checkDeviceDescriptor(nccl, DP.encodeDeviceDescriptor({ ...nccl, handle }))).toMatch(/NCCL descriptor carries no offset or handle/);
    const reserved = Buffer.from(d);
    reserved[40] = 1;
    expect(DP.checkDeviceDescriptor(ipcHeader, reserved)).toMatch(/reserved device-descriptor bytes/);
    const magic = Buffer.from(d);
    magic[0] ^= 1;
    expect(DP.checkDeviceDescriptor(ipcHeader, magic)).toMatch(/bad magic/);
  });

  it('NCCL loading fails with an error naming the library, and the hop falls back to shared memory or TCP', () => {
    expect(links.nccl.library).toBe('libnccl.so.2');
    expect(links.nccl.reason).toMatch(/^NCCL is not available: cannot load libnccl\.so\.2 \(/);
    expect(DP.deviceLinks(0, 'libc.so.6').nccl.reason).toMatch(/libc\.so\.6 has no ncclGetVersion/);
    expect(links.cuda).toMatch(/no CUDA device/);
    const here = ncclAvailability();
    expect(here.available).toBe(false);
    expect(here.reason).toMatch(/no CUDA device/);
    // A peer that takes NCCL gets TCP (another host) or shared memory (this host) from this worker.
    const peer = dataPlaneEndpoint('auto', 'host-a', '10.0.0.1:7000', true, true);
    expect(peer.nccl).toBe(true);
    expect(chooseHopTransport('auto', 'host-b', peer, here.available)).toBe('tcp');
    expect(chooseHopTransport('auto', 'host-a', peer, here.available)).toBe('shm');
    expect(() => listener().close()).not.toThrow();
    expect(() => new DataPlaneListener({ nccl: true })).toThrow(/cannot take NCCL transfers: no CUDA device/);
    expect(() => new DataPlaneSender('127.0.0.1:9', { nccl: {} })).toThrow(/cannot send through NCCL: no CUDA device/);
    expect(() => new DP.Sender('127.0.0.1', 9, 1000, 0, 0, 'cuda-ipc', 0)).toThrow(/cannot send through CUDA IPC handles: no CUDA device/);
    expect(() => new DP.Listener('127.0.0.1', 0, 1000, false, false, true, 0)).toThrow(/cannot take CUDA IPC transfers: no CUDA device/);
  });

  it('a listener without a device refuses NCCL and CUDA IPC frames after the key check, before any byte lands', async () => {
    const l = listener();
    l.addSession('s1', TOKEN);
    l.addSession('other', OTHER);
    const keys = dataPlaneKeys('s1', TOKEN);
    const bystander = new Uint8Array(4096).fill(0x5a);
    const untouched = l.receive('other', 3, bystander, 60_000).catch((e: unknown) => e);
    for (const path of ['cuda-ipc', 'nccl'] as const) {
      const header = { ...ipcHeader, path };
      const wrong = await rawPeer(l);
      wrong.socket.write(DP.encodeHeader({ ...header, ...dataPlaneKeys('s1', OTHER) }));
      wrong.socket.end(DP.encodeDeviceDescriptor(header));
      const r1 = replyOf(await wrong.reply);
      expect([r1.code, r1.seq]).toEqual([Status.UNAUTHENTICATED, 3]);
      const right = await rawPeer(l);
      right.socket.write(DP.encodeHeader({ ...header, ...keys }));
      right.socket.end(DP.encodeDeviceDescriptor({ ...header, handle: path === 'cuda-ipc' ? Buffer.alloc(64, 1) : undefined }));
      const r2 = replyOf(await right.reply);
      expect([r2.code, r2.seq]).toEqual([Status.FAILED_PRECONDITION, 3]);
      expect(r2.message).toMatch(new RegExp(`does not take ${path === 'nccl' ? 'NCCL' : 'CUDA IPC handles'} \\(it has no CUDA device or NCCL`));
    }
    l.removeSession('other');
    expect(((await untouched) as TransportError).code).toBe(Status.CANCELLED);
    expect(bystander.every((b) => b === 0x5a)).toBe(true);
  });
});
