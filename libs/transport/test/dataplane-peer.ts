/**
 * The other process of the data-plane tests: `node --import tsx dataplane-peer.ts HOST:PORT
 * SESSION TOKEN COUNT FLOATS [SLOT_BYTES SLOTS]` sends COUNT tensors of FLOATS float32 values
 * (`pattern`) as seqs 1..COUNT, through shared memory when SLOT_BYTES is given (a ring, or
 * straight into the receiver's shared destinations), then prints one JSON line with the
 * transfers and exits. `both-ends` and `shared-gc` are the self-contained checks below.
 */
import * as fs from 'node:fs';
import { DataPlaneListener, DataPlaneSender } from '../src/dataplane';

/** Tensor `seq` of the tests: distinct per seq and per element, exactly representable. */
export function pattern(seq: number, floats: number): Float32Array {
  const a = new Float32Array(floats);
  for (let i = 0; i < floats; i++) a[i] = ((i * 2654435761 + seq * 40503) % 1_000_003) / 1024 - 400;
  return a;
}

async function main(argv: string[]): Promise<void> {
  const [address, session, token, count, floats, slotBytes, slots] = argv;
  const sender = new DataPlaneSender(address, { shm: slotBytes ? { slotBytes: Number(slotBytes), slots: Number(slots) } : false });
  const transfers = [];
  for (let seq = 1; seq <= Number(count); seq++) transfers.push(await sender.send(session, token, seq, pattern(seq, Number(floats))));
  sender.close();
  process.stdout.write(`${JSON.stringify({ transfers })}\n`);
}

/** Both ends in this process, one tensor, then a natural exit, which must be clean (exit code 0). */
async function bothEnds(): Promise<void> {
  const token = 'both-ends-token-0123456789';
  const listener = new DataPlaneListener({});
  listener.addSession('both-ends', token);
  const sender = new DataPlaneSender(`127.0.0.1:${listener.port}`);
  const [got] = await Promise.all([listener.receive('both-ends', 1, new Float32Array(1024)), sender.send('both-ends', token, 1, pattern(1, 1024))]);
  sender.close();
  listener.close();
  process.stdout.write(`${JSON.stringify({ bytes: got.bytes })}\n`);
}

/** This process's shared destinations in /dev/shm (the native side names them /longshot-dd-<pid>-<random>). */
function sharedSegments(): string[] {
  return fs.readdirSync('/dev/shm').filter((f) => f.startsWith(`longshot-dd-${process.pid}-`));
}

/**
 * Run with --expose-gc: shared destinations (one written by a direct transfer) outlive their
 * listener, which is closed first; collecting them then must not crash and must unlink their
 * segments. Then one more is left allocated at process.exit, which must unlink it too (the parent
 * looks). Prints {allocated, afterGc, direct}.
 */
async function sharedGc(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('shared-gc needs node --expose-gc');
  const token = 'shared-gc-token-0123456789';
  let direct = false;
  let allocated = 0;
  await (async () => {
    const listener = new DataPlaneListener({ shm: true });
    listener.addSession('gc', token);
    const buffers = [listener.allocateShared(1 << 20), listener.allocateShared(4096), listener.allocateShared(0)];
    const sender = new DataPlaneSender(`127.0.0.1:${listener.port}`, { shm: true });
    const [got] = await Promise.all([listener.receive('gc', 1, buffers[0]), sender.send('gc', token, 1, pattern(1, (1 << 20) / 4))]);
    direct = got.direct === true;
    allocated = sharedSegments().length;
    sender.close();
    listener.close();
    buffers.length = 0;
  })();
  let afterGc = -1;
  for (let i = 0; i < 50 && afterGc !== 0; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 20));
    afterGc = sharedSegments().length;
  }
  const last = new DataPlaneListener({ shm: true });
  const kept = last.allocateShared(8192);
  process.stdout.write(`${JSON.stringify({ allocated, afterGc, direct, kept: kept.length })}\n`);
  process.exit(0);
}

/**
 * Allocates one shared destination, prints its segment's name and waits to be killed: what a
 * worker killed by a signal leaves in /dev/shm (its exit handler never runs).
 */
async function holdShared(): Promise<void> {
  const listener = new DataPlaneListener({ shm: true });
  const held = listener.allocateShared(4096);
  process.stdout.write(`${JSON.stringify({ segments: sharedSegments(), bytes: held.length })}\n`);
  // Killed by the test; should the test fail first, it does not linger: a minute at most.
  await new Promise((resolve) => setTimeout(resolve, 60_000));
  process.stdout.write(`${held.length}\n`);
  process.exit(1);
}

if (require.main === module) {
  const mode = process.argv[2];
  (mode === 'both-ends' ? bothEnds() : mode === 'shared-gc' ? sharedGc() : mode === 'hold-shared' ? holdShared() : main(process.argv.slice(2))).catch((e: Error) => {
    process.stderr.write(`${e.message}\n`);
    process.exit(1);
  });
}
