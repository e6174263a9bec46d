import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BlockQueue } from '@longshot/pipeline';
import { normalizeSpec, planJob } from '@longshot/planner';
import { WAN_SCHEDULER_CONFIG } from '@longshot/sampler';
import { ReferenceUniPc } from '../reference/unipc';

/**
 * The head's UniPC (libs/sampler coefficients applied by the engine's axpy ops in the block
 * queue) against the float64 reference in test/reference/unipc.ts, on one block covering the
 * whole video (plain sampling), with a nonlinear stand-in model. The sigmas and timesteps the
 * reference uses come from test/reference/fixtures/schedules.json (diffusers, via numpy).
 */
const fixture = JSON.parse(fs.readFileSync(path.join(__dirname, '../reference/fixtures/schedules.json'), 'utf8')) as {
  cases: { kind: string; shift: number; steps: number; sigmas: number[]; timesteps: number[] }[];
};

/** A smooth nonlinear velocity field that depends on the timestep, as a DiT's output does. */
function model(x: ArrayLike<number>, timestep: number): Float64Array {
  const t = timestep / 1000;
  return Float64Array.from(x, (v, i) => Math.tanh(v) * (0.6 + 0.4 * t) + 0.3 * Math.sin(1.7 * v + i) - 0.2 * t);
}

describe('UniPC against the float64 reference', () => {
  it.each([
    [3.0, 20, 2, 'bh2'],
    [5.0, 10, 2, 'bh2'],
    [3.0, 3, 2, 'bh2'],
    [5.0, 50, 2, 'bh2'],
    // Beyond what Wan ships: the general order conditions and the other B(h).
    [3.0, 20, 3, 'bh2'],
    [5.0, 10, 2, 'bh1'],
    [3.0, 10, 1, 'bh2'],
  ] as const)('flow_shift %d, %d steps, order %d %s', (shift, steps, solverOrder, solverType) => {
    const scheduler = { ...WAN_SCHEDULER_CONFIG, solverOrder, solverType };
    const spec = normalizeSpec({ prompt: 'x', width: 16, height: 16, frames: 4 * (3 - 1) + 1, block: 3, context: 0, steps, shift, sampler: 'unipc', seed: 5 });
    const plan = planJob(spec);
    expect(plan.blocks).toBe(1);
    const expected = fixture.cases.find((c) => c.kind === 'unipc' && c.shift === shift && c.steps === steps)!;
    const queue = new BlockQueue(spec, plan, { channels: 16, scheduler });
    const reference = new ReferenceUniPc({ solverOrder, solverType, lowerOrderFinal: true }, expected.sigmas);
    let ref: Float64Array | null = null;
    let out: Float32Array | null = null;
    let maxError = 0;
    for (let issued = queue.issue(); issued; issued = queue.issue()) {
      expect(issued.step.timestep).toBe(expected.timesteps[issued.step.step]);
      // One block without context: the window is the block's own latents.
      ref ??= Float64Array.from(issued.window.latents);
      // Each side evaluates the model on its own sample, so errors would compound if a step were wrong.
      const v = model(issued.window.latents, issued.step.timestep);
      ref = reference.step(model(ref, issued.step.timestep), ref);
      const applied = queue.apply(issued.step.iteration, issued.step.block, Float32Array.from(v));
      if (applied.finished) out = applied.finished.latents;
    }
    expect(out).not.toBeNull();
    for (let i = 0; i < ref!.length; i++) maxError = Math.max(maxError, Math.abs(out![i] - ref![i]) / Math.max(1, Math.abs(ref![i])));
    console.log(`UniPC shift ${shift}, ${steps} steps, order ${solverOrder} ${solverType}: max relative error vs float64 ${maxError.toExponential(2)}`);
    expect(maxError).toBeLessThan(5e-6);

    // The comparison can fail: first-order Euler over the same sigmas lands measurably elsewhere.
    let euler = Float64Array.from(new BlockQueue(spec, plan, { channels: 16, scheduler: WAN_SCHEDULER_CONFIG }).issue()!.window.latents);
    for (let i = 0; i < steps; i++) euler = euler.map((x, j, a) => x + (expected.sigmas[i + 1] - expected.sigmas[i]) * model(a, expected.timesteps[i])[j]);
    const gap = Math.max(...ref!.map((r, i) => Math.abs(r - euler[i])));
    expect(gap).toBeGreaterThan(1e-3);
  });
});
