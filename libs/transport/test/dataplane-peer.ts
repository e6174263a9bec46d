/**
 * The other process of the data-plane tests: `node --import tsx dataplane-peer.ts HOST:PORT
 * SESSION TOKEN COUNT FLOATS [SLOT_BYTES SLOTS]` sends COUNT tensors of FLOATS float32 values
 * (`pattern`) as seqs 1..COUNT, through a shared-memory ring when SLOT_BYTES is given, then
 * prints one JSON line with the transfers and exits.
 */
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

if (require.main === module) {
  (process.argv[2] === 'both-ends' ? bothEnds() : main(process.argv.slice(2))).catch((e: Error) => {
    process.stderr.write(`${e.message}\n`);
    process.exit(1);
  });
}
