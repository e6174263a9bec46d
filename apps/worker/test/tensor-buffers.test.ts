import { describe, expect, it } from 'vitest';
import { TensorBuffers } from '../src/tensor-buffers';

describe('TensorBuffers', () => {
  it('hands back a buffer of the size asked, reusing the one given back', () => {
    const pool = new TensorBuffers(4);
    const a = pool.take(4096);
    expect(a.length).toBe(4096);
    expect(a.byteOffset % 8).toBe(0);
    pool.give(a);
    expect(pool.spareCount).toBe(1);
    expect(pool.take(4096)).toBe(a);
    expect(pool.spareCount).toBe(0);
    expect(pool.take(4096)).not.toBe(a);
  });

  it('takes new buffers from the allocator it was given (a worker gives its shared memory), and reuses them like any', () => {
    const made: number[] = [];
    const pool = new TensorBuffers(4, (bytes) => {
      made.push(bytes);
      return Buffer.alloc(bytes);
    });
    const a = pool.take(4096);
    pool.give(a);
    expect(pool.take(4096)).toBe(a);
    pool.take(512);
    expect(made).toEqual([4096, 512]);
    // A session keeps two pools (received tensors in shared memory, outputs in its own): a buffer goes back to its own.
    const other = new TensorBuffers(4);
    expect(pool.owns(a)).toBe(true);
    expect(pool.owns(a.subarray(16))).toBe(true);
    expect(other.owns(a)).toBe(false);
    expect(pool.owns(other.take(4096))).toBe(false);
  });

  it('keeps spares by exact size: a window with a prefix and one without do not mix', () => {
    const pool = new TensorBuffers(4);
    const small = pool.take(1024);
    const large = pool.take(2048);
    pool.give(small);
    pool.give(large);
    expect(pool.take(2048)).toBe(large);
    expect(pool.take(1024)).toBe(small);
  });

  it('keeps at most maxSpares, dropping the size given back longest ago first', () => {
    const pool = new TensorBuffers(2);
    const old = pool.take(8);
    const a = pool.take(16);
    const b = pool.take(16);
    pool.give(old);
    pool.give(a);
    pool.give(b);
    expect(pool.spareCount).toBe(2);
    expect(pool.take(8)).not.toBe(old);
    expect([pool.take(16), pool.take(16)]).toEqual(expect.arrayContaining([a, b]));
  });

  it('refuses a buffer given back twice, ignores views into larger memory, forgets all on clear', () => {
    const pool = new TensorBuffers(4);
    const a = pool.take(64);
    pool.give(a);
    expect(() => pool.give(a)).toThrow(/handed back twice/);
    pool.give(Buffer.allocUnsafeSlow(128).subarray(0, 64));
    expect(pool.spareCount).toBe(1);
    pool.clear();
    expect(pool.spareCount).toBe(0);
    expect(new TensorBuffers(0).take(8).length).toBe(8);
    expect(() => new TensorBuffers(-1)).toThrow(RangeError);
  });
});
