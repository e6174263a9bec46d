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
 * The step size h of one Euler step of the probability-flow ODE: x_next = x + h v. The update
 * itself is the engine's `axpy` op (a tensor loop does not belong on the JS thread), rounded to
 * float32 as the engine receives it so every caller applies the same bits.
 */
export function eulerStepSize(sigma: number, sigmaNext: number): number {
  if (!Number.isFinite(sigma) || !Number.isFinite(sigmaNext)) throw new RangeError(`sigmas must be finite, got ${sigma} -> ${sigmaNext}`);
  return Math.fround(sigmaNext - sigma);
}

/** Reference defaults of Wan2.1 text-to-video. */
export const WAN_DEFAULTS = { steps: 50, guidance: 5.0, shift: 5.0 } as const;
