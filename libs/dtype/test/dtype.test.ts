import { describe, expect, it } from 'vitest';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, formatShape, numel } from '@longshot/dtype';

describe('half-precision conversions', () => {
  it('F16: every non-NaN bit pattern round-trips through float32', () => {
    for (let h = 0; h < 65536; h++) {
      const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (isNaN) expect(Number.isNaN(f16ToF32(h))).toBe(true);
      else expect(f32ToF16(f16ToF32(h))).toBe(h);
    }
  });

  it('F16 rounds to nearest, ties to even, with overflow and subnormals', () => {
    expect(f32ToF16(1)).toBe(0x3c00);
    expect(f32ToF16(-2)).toBe(0xc000);
    expect(f32ToF16(65504)).toBe(0x7bff);
    expect(f32ToF16(65519)).toBe(0x7bff);
    expect(f32ToF16(65520)).toBe(0x7c00); // tie between max and 2^16 goes to even = inf
    expect(f32ToF16(1e10)).toBe(0x7c00);
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00); // tie -> even (1.0)
    expect(f32ToF16(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie -> even (up)
    expect(f32ToF16(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01); // above the tie -> up
    expect(f32ToF16(2 ** -24)).toBe(0x0001);
    expect(f32ToF16(2 ** -25)).toBe(0x0000); // tie -> even (zero)
    expect(f32ToF16(3 * 2 ** -25)).toBe(0x0002);
    expect(f32ToF16(2 ** -14 - 2 ** -25)).toBe(0x0400); // rounds up out of subnormals
    expect(f32ToF16(1e-10)).toBe(0);
    expect(f32ToF16(-0)).toBe(0x8000);
    expect(f32ToF16(Infinity)).toBe(0x7c00);
    expect(Number.isNaN(f16ToF32(f32ToF16(NaN)))).toBe(true);
  });

  it('BF16 rounds to nearest, ties to even, and round-trips its own values', () => {
    expect(f32ToBf16(1)).toBe(0x3f80);
    expect(f32ToBf16(1 + 2 ** -8)).toBe(0x3f80); // tie -> even
    expect(f32ToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie -> even (up)
    expect(f32ToBf16(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(Number.isNaN(bf16ToF32(f32ToBf16(NaN)))).toBe(true);
    for (let h = 0; h < 65536; h++) {
      const v = bf16ToF32(h);
      if (!Number.isNaN(v)) expect(f32ToBf16(v)).toBe(h);
    }
  });
});

describe('shapes', () => {
  it('counts elements and prints shapes as errors name them', () => {
    expect(numel([16, 3, 4])).toBe(192);
    expect(numel([])).toBe(1);
    expect(numel([5, 0])).toBe(0);
    expect(formatShape([16, 3, 4])).toBe('[16, 3, 4]');
  });
});
