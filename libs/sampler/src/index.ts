/**
 * Flow-matching sampling as Wan2.1 does it: x_s = (1 - s) x0 + s noise, the model predicts
 * v = noise - x0, the timestep fed to the model is 1000 s. Pure functions, no I/O.
 *
 * Classifier-free guidance is combined on the tail stage by the engine's `cfg_combine` op (the
 * two halves never leave the worker), so this library only owns the schedule and the steps.
 */

/** Sigmas s_0 = 1 > s_1 > ... > s_T = 0 of the shifted schedule s' = k s / (1 + (k - 1) s). */
export function shiftedSigmas(steps: number, shift: number): Float64Array {
  if (!Number.isInteger(steps) || steps < 1) throw new RangeError(`steps must be a positive integer, got ${steps}`);
  if (!(shift > 0) || !Number.isFinite(shift)) throw new RangeError(`shift must be a positive number, got ${shift}`);
  const out = new Float64Array(steps + 1);
  for (let i = 0; i <= steps; i++) {
    const s = 1 - i / steps;
    out[i] = (shift * s) / (1 + (shift - 1) * s);
  }
  return out;
}

/** The model's timestep input for a sigma. */
export function timestepOf(sigma: number): number {
  return 1000 * sigma;
}

/**
 * One Euler step of the probability-flow ODE, in place: x += (s_next - s) v.
 * Computed in float64 and rounded once, so the result depends only on the operands.
 */
export function eulerStep(x: Float32Array, v: Float32Array, sigma: number, sigmaNext: number): void {
  if (x.length !== v.length) throw new RangeError(`velocity has ${v.length} elements, latents ${x.length}`);
  const dt = sigmaNext - sigma;
  for (let i = 0; i < x.length; i++) x[i] = x[i] + dt * v[i];
}

/** Reference defaults of Wan2.1 text-to-video. */
export const WAN_DEFAULTS = { steps: 50, guidance: 5.0, shift: 5.0 } as const;
