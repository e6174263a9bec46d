/**
 * The conformance suites' error measure: max |got - ref| / max(1e-6, max |ref|). Normalising by
 * the largest reference value keeps near-zero outputs from giving meaningless ratios; a length
 * mismatch or a non-finite difference is an infinite error.
 */
export function relError(got: Float32Array, ref: Float32Array | Float64Array): number {
  if (got.length !== ref.length) return Infinity;
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(got[i] - ref[i]);
    if (!Number.isFinite(d)) return Infinity;
    maxDiff = Math.max(maxDiff, d);
    maxRef = Math.max(maxRef, Math.abs(ref[i]));
  }
  return maxDiff / Math.max(1e-6, maxRef);
}
