import { Command, type Redis } from 'ioredis';

/**
 * `SET key value PX ms` whose value goes to the socket from the caller's memory. ioredis encodes a
 * command with a Buffer argument by concatenating every part into one new Buffer: for a tensor of
 * megabytes that is a copy into freshly mapped pages (page faults included) on every write, the
 * largest CPU cost of a checkpoint piece. This command writes the RESP framing around the value
 * and hands the value's own bytes to the socket, which keeps a reference until they are sent.
 *
 * ioredis calls `toWritable(stream)` just before it writes the result to that stream, also when
 * it flushes its offline queue; what is written here precedes the returned tail. Not for use in
 * a pipeline or MULTI (they concatenate commands elsewhere): `setFromMemory` sends it alone.
 *
 * The caller must leave `value` unchanged until the returned promise settles (the reply comes
 * after Redis has read every byte).
 */
class SetFromMemory extends Command {
  constructor(
    private readonly key: string,
    private readonly value: Buffer,
    private readonly ttlMs: number,
  ) {
    super('set', [key, value, 'PX', String(ttlMs)], { replyEncoding: 'utf8' });
  }

  override toWritable(stream: object): string {
    const socket = stream as NodeJS.WritableStream;
    socket.write(`*5\r\n$3\r\nset\r\n$${Buffer.byteLength(this.key)}\r\n${this.key}\r\n$${this.value.length}\r\n`);
    if (this.value.length > 0) socket.write(this.value);
    const ms = String(this.ttlMs);
    return `\r\n$2\r\nPX\r\n$${ms.length}\r\n${ms}\r\n`;
  }
}

/** `SET key value PX ttlMs` without copying `value` (see SetFromMemory); resolves to Redis's 'OK'. */
export function setFromMemory(redis: Redis, key: string, value: Buffer, ttlMs: number): Promise<unknown> {
  if (!Number.isInteger(ttlMs) || ttlMs < 1) throw new RangeError(`ttl must be a positive number of milliseconds, got ${ttlMs}`);
  const command = new SetFromMemory(key, value, ttlMs);
  void redis.sendCommand(command);
  return command.promise;
}
