/**
 * Element types of tensors at rest and on the wire: float32 <-> float16 / bfloat16 conversions
 * (round to nearest, ties to even, like torch's .half() / .bfloat16(); NaN stays NaN) and shape
 * helpers. Pure, no I/O: the checkpoint reader (libs/model) and the activation codec
 * (libs/transport) share these, so a tensor bf16-encoded on the wire matches one stored bf16 in
 * a checkpoint bit for bit.
 */

export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Half-precision conversions. F16 decode goes through a 64K-entry table built on first use;
// encoding rounds to nearest, ties to even, like torch's .half() / .bfloat16().

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

let f16ToF32Values: Float32Array | null = null;

function f16ToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp === 0) {
    if (mant === 0) return sign >>> 0;
    // Subnormal half: normalise the mantissa into an f32 normal.
    let e = -1;
    do {
      mant <<= 1;
      e++;
    } while ((mant & 0x400) === 0);
    return (sign | ((127 - 15 - e) << 23) | ((mant & 0x3ff) << 13)) >>> 0;
  }
  return (sign | ((exp - 15 + 127) << 23) | (mant << 13)) >>> 0;
}

/** Half-precision bits -> float32 value, for all 65536 bit patterns (built on first use). */
export function f16Table(): Float32Array {
  if (!f16ToF32Values) {
    const bits = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) bits[h] = f16ToF32Bits(h);
    f16ToF32Values = new Float32Array(bits.buffer);
  }
  return f16ToF32Values;
}

/** Half-precision bits -> float32 value. */
export function f16ToF32(h: number): number {
  return f16Table()[h & 0xffff];
}

/** Float32 bits -> half bits, round to nearest even; overflow -> inf, NaN stays NaN. */
export function f32BitsToF16(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Result is a half subnormal (or zero): value / 2^-24, rounded.
    const shift = 126 - exp;
    if (shift > 24) return sign;
    const m = mant | 0x800000;
    const q = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    const up = rem > half || (rem === half && (q & 1) === 1) ? 1 : 0;
    return sign | (q + up);
  }
  const q = mant >>> 13;
  const rem = mant & 0x1fff;
  const up = rem > 0x1000 || (rem === 0x1000 && (q & 1) === 1) ? 1 : 0;
  // A carry out of the mantissa correctly bumps the exponent (and reaches inf at the top).
  return sign | ((e << 10) + q + up);
}

export function f32ToF16(x: number): number {
  f32Scratch[0] = x;
  return f32BitsToF16(u32Scratch[0]);
}

export function f32BitsToBf16(bits: number): number {
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x7fffff) !== 0) return ((bits >>> 16) | 0x40) & 0xffff;
  const rounding = 0x7fff + ((bits >>> 16) & 1);
  return ((bits + rounding) >>> 16) & 0xffff;
}

export function f32ToBf16(x: number): number {
  f32Scratch[0] = x;
  return f32BitsToBf16(u32Scratch[0]);
}

export function bf16ToF32(h: number): number {
  u32Scratch[0] = (h & 0xffff) << 16;
  return f32Scratch[0];
}
