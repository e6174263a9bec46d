import { describe, expect, it } from 'vitest';
import { float32View, readFloat32, storedPart } from '../src/codec';

const words = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

describe('stored values: trailing zeros left out, put back bit for bit', () => {
  it('storedPart ends at the last value whose bits are not all zero; readFloat32 pads with +0.0', () => {
    const padded = new Float32Array(12);
    padded.set([1.5, 0, -2, Number.NaN]);
    new Uint32Array(padded.buffer)[3] = 0x7fc00001; // a NaN payload
    expect(storedPart(padded)).toHaveLength(4);
    expect(storedPart(padded).buffer).toBe(padded.buffer); // a view, no copy
    const back = readFloat32(float32View(storedPart(padded)), 4, 12);
    expect(words(back)).toEqual(words(padded));
    // -0.0 has its sign bit set: it is stored.
    const negativeZero = Float32Array.of(3, -0, 0, 0);
    expect(storedPart(negativeZero)).toHaveLength(2);
    expect(Object.is(readFloat32(float32View(storedPart(negativeZero)), 2, 4)[1], -0)).toBe(true);
    expect(storedPart(new Float32Array(5))).toHaveLength(0);
    expect(words(readFloat32(new Uint8Array(0), 0, 3))).toEqual([0, 0, 0]);
    expect(storedPart(Float32Array.of(0, 0, 7))).toHaveLength(3);
    expect(() => readFloat32(new Uint8Array(8), 2, 1)).toThrow(/2 values do not fit in 1/);
  });
});
