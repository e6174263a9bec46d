/**
 * Flow-matching sampling as Wan2.1 does it: x_s = (1 - s) x0 + s noise, the model predicts
 * v = noise - x0. The scheduler config (diffusers' scheduler_config.json) decides the sigmas,
 * the timesteps the model sees and the solver: UniPC (what Wan ships) or Euler. Pure functions
 * and data, no I/O.
 *
 * Classifier-free guidance is combined on the tail stage by the engine's `cfg_combine` op (the
 * two halves never leave the worker), so this library only owns the schedule and the steps.
 */
export * from './config';
export * from './schedule';
export * from './unipc';

/**
 * The step size h of one Euler step of the probability-flow ODE: x_next = x + h v. The update
 * itself is the engine's `axpy` op (a tensor loop does not belong on the JS thread), rounded to
 * float32 as the engine receives it so every caller applies the same bits.
 */
export function eulerStepSize(sigma: number, sigmaNext: number): number {
  if (!Number.isFinite(sigma) || !Number.isFinite(sigmaNext)) throw new RangeError(`sigmas must be finite, got ${sigma} -> ${sigmaNext}`);
  return Math.fround(sigmaNext - sigma);
}

