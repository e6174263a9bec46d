import { describe, expect, it } from 'vitest';
import { eulerStepSize, shiftedSigmas, timestepOf } from '@longshot/sampler';

describe('flow-matching sampler', () => {
  it('builds the shifted schedule from 1 to 0, decreasing', () => {
    const s = shiftedSigmas(10, 5);
    expect(s.length).toBe(11);
    expect(s[0]).toBe(1);
    expect(s[10]).toBe(0);
    for (let i = 1; i < s.length; i++) expect(s[i]).toBeLessThan(s[i - 1]);
    // s' = k s / (1 + (k - 1) s) at s = 0.5, k = 5.
    expect(s[5]).toBeCloseTo((5 * 0.5) / (1 + 4 * 0.5), 12);
    expect(shiftedSigmas(4, 1)).toEqual(Float64Array.from([1, 0.75, 0.5, 0.25, 0]));
    expect(timestepOf(0.25)).toBe(250);
  });

  it('steps from any sigma to x0 along the exact velocity', () => {
    const x0 = [0.5, -1, 2];
    const noise = [1, 0.25, -0.5];
    const s = 0.8;
    const h = eulerStepSize(s, 0);
    expect(h).toBe(Math.fround(-0.8));
    x0.forEach((x, i) => {
      const xs = (1 - s) * x + s * noise[i];
      expect(xs + h * (noise[i] - x)).toBeCloseTo(x, 6);
    });
  });

  it('rejects bad arguments', () => {
    expect(() => shiftedSigmas(0, 5)).toThrow(/steps/);
    expect(() => shiftedSigmas(4, -1)).toThrow(/shift/);
    expect(() => eulerStepSize(Number.NaN, 0)).toThrow(/finite/);
  });
});
