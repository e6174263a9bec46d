import { windowLatents } from '@longshot/model';
import type { IssuedStep } from '@longshot/pipeline';

/**
 * A deterministic stand-in for a model's velocity: enough to exercise the queue without one. It
 * reads the whole window, prefix frames included, as a forward would.
 */
export function standInVelocity(s: IssuedStep): Float32Array {
  const window = windowLatents(s.step, s.window);
  const own = s.window.latents.length;
  const v = new Float32Array(own);
  for (let i = 0; i < own; i++) v[i] = window[window.length - own + i] * 0.5 + 0.01 * window[i];
  return v;
}
