import { validateSchedulerConfig, type SchedulerConfig } from './config';

/**
 * A sampling schedule: `steps + 1` sigmas (the last one after the final step) and the `steps`
 * timesteps fed to the model. Values are exactly what diffusers' schedulers hold for the same
 * config: sigmas are float32 (held in float64 arrays), UniPC's timesteps are integers (int64 in
 * diffusers), Euler's are float32 `sigma * num_train_timesteps`.
 */
export interface Schedule {
  readonly kind: SchedulerConfig['kind'];
  readonly flowShift: number;
  readonly sigmas: Float64Array;
  readonly timesteps: Float64Array;
}

/** numpy.linspace(start, stop, num) in float64, element for element as numpy computes it. */
function linspace(start: number, stop: number, num: number): Float64Array {
  const out = new Float64Array(num);
  if (num === 1) {
    out[0] = start;
    return out;
  }
  const step = (stop - start) / (num - 1);
  for (let i = 0; i < num; i++) out[i] = i * step + start;
  out[num - 1] = stop;
  return out;
}

const shifted = (k: number, s: number): number => (k * s) / (1 + (k - 1) * s);

/** Builds the schedule diffusers' `set_timesteps(steps)` builds for this config. */
export function buildSchedule(config: SchedulerConfig, steps: number): Schedule {
  if (!Number.isInteger(steps) || steps < 1) throw new RangeError(`steps must be a positive integer, got ${steps}`);
  const c = validateSchedulerConfig(config);
  const N = c.numTrainTimesteps;
  const k = c.flowShift;
  const sigmas = new Float64Array(steps + 1);
  const timesteps = new Float64Array(steps);
  if (c.kind === 'unipc') {
    // UniPCMultistepScheduler, use_flow_sigmas: alphas 1 .. 1/N, sigma = shift(1 - alpha),
    // reversed, the trailing 0 dropped; timesteps truncated to integers.
    const alphas = linspace(1, 1 / N, steps + 1);
    for (let i = 0; i < steps; i++) {
      const s = shifted(k, 1.0 - alphas[steps - i]);
      sigmas[i] = Math.fround(s);
      timesteps[i] = Math.trunc(s * N);
    }
    sigmas[steps] = c.finalSigmasType === 'zero' ? 0 : sigmas[steps - 1];
  } else {
    // FlowMatchEulerDiscreteScheduler: its training sigmas (float32, shifted once) bound a
    // linspace over timesteps, which is shifted again; timesteps are float32 sigma * N.
    const f = Math.fround;
    const lowest = f(1 / N);
    const sigmaMin = f(f(f(k) * lowest) / f(1 + f(f(k - 1) * lowest)));
    const sigmaMax = f(f(f(k) * 1) / f(1 + f(f(k - 1) * 1)));
    const ts = linspace(sigmaMax * N, sigmaMin * N, steps);
    for (let i = 0; i < steps; i++) {
      sigmas[i] = f(shifted(k, ts[i] / N));
      timesteps[i] = f(sigmas[i] * N);
    }
    sigmas[steps] = 0;
  }
  return { kind: c.kind, flowShift: k, sigmas, timesteps };
}
