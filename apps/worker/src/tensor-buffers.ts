/**
 * Buffers a stage session's tensors live in (the inputs it receives, the outputs its forwards
 * write), handed back once nothing reads them (forward done, output sent). Hidden states at
 * 832x480 are about 100 MB: a new buffer per block-step costs its page faults (some 25 000 first
 * touches) and, when the garbage collector frees it, the unmapping, on every stage, every
 * block-step. Spares are kept by exact byte length (a
 * window with a prefix and one without differ), at most `maxSpares` of them.
 */
export class TensorBuffers {
  private readonly spares = new Map<number, Buffer[]>();
  private count = 0;
  /** The buffers this pool allocated, to hand one back to the pool it came from. */
  private readonly mine = new WeakSet<ArrayBufferLike>();

  /**
   * `allocate`: memory for a new buffer, zeroed (default Buffer.alloc); a worker whose data-plane
   * listener takes shared memory gives its `allocateShared`, which a sender on this host writes
   * received tensors straight into.
   */
  constructor(
    private readonly maxSpares = 4,
    private readonly allocate: (bytes: number) => Buffer = Buffer.alloc,
  ) {
    if (!Number.isInteger(maxSpares) || maxSpares < 0) throw new RangeError(`maxSpares must be a non-negative integer, got ${maxSpares}`);
  }

  /**
   * A buffer of exactly `bytes` bytes, 8-byte aligned: a spare when one fits (holding what it
   * held), else a new one of zeros (of its own memory, which the kernel zeroes as it is touched).
   */
  take(bytes: number): Buffer {
    const list = this.spares.get(bytes);
    const spare = list?.pop();
    if (spare) {
      this.count--;
      if (list!.length === 0) this.spares.delete(bytes);
      return spare;
    }
    const b = this.allocate(bytes);
    this.mine.add(b.buffer);
    return b;
  }

  /** Whether `buffer` (or a view of the same memory) was allocated by this pool. */
  owns(buffer: Buffer): boolean {
    return this.mine.has(buffer.buffer);
  }

  /**
   * Hands a buffer back for a later tensor of its size. Its contents are overwritten from then
   * on: call only once nothing reads it. Buffers beyond `maxSpares` are dropped (oldest first).
   */
  give(buffer: Buffer): void {
    if (this.maxSpares === 0 || buffer.byteOffset !== 0 || buffer.length !== buffer.buffer.byteLength) return;
    const list = this.spares.get(buffer.length) ?? [];
    if (list.includes(buffer)) throw new Error('a receive buffer was handed back twice');
    list.push(buffer);
    this.spares.set(buffer.length, list);
    this.count++;
    while (this.count > this.maxSpares) this.dropOldest();
  }

  /** Spare buffers held now. */
  get spareCount(): number {
    return this.count;
  }

  /** Forgets every spare (the session ended). */
  clear(): void {
    this.spares.clear();
    this.count = 0;
  }

  private dropOldest(): void {
    // Map order is insertion order of sizes: the size given back longest ago goes first.
    const [bytes, list] = this.spares.entries().next().value as [number, Buffer[]];
    list.shift();
    if (list.length === 0) this.spares.delete(bytes);
    this.count--;
  }
}
