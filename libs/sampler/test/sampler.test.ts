import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildSchedule, eulerStepSize, historyCountersAt, jobSchedulerConfig, parseSchedulerConfig, schedulerConfigJson, unipcStep, WAN_SCHEDULER_CONFIG, type SchedulerConfig } from '@longshot/sampler';

/** Expectations written by test/reference/schedules.py from diffusers' set_timesteps (numpy). */
const fixture = JSON.parse(fs.readFileSync(path.join(__dirname, '../../../test/reference/fixtures/schedules.json'), 'utf8')) as {
  numTrainTimesteps: number;
  cases: { kind: 'unipc' | 'euler'; shift: number; steps: number; sigmas: number[]; timesteps: number[] }[];
};

/** What Wan2.1's Diffusers checkpoints ship in scheduler/scheduler_config.json. */
const WAN_SCHEDULER_JSON = {
  _class_name: 'UniPCMultistepScheduler',
  _diffusers_version: '0.33.0.dev0',
  beta_end: 0.02,
  beta_schedule: 'linear',
  beta_start: 0.0001,
  disable_corrector: [],
  dynamic_thresholding_ratio: 0.995,
  final_sigmas_type: 'zero',
  flow_shift: 3.0,
  lower_order_final: true,
  num_train_timesteps: 1000,
  predict_x0: true,
  prediction_type: 'flow_prediction',
  rescale_betas_zero_snr: false,
  sample_max_value: 1.0,
  solver_order: 2,
  solver_p: null,
  solver_type: 'bh2',
  steps_offset: 0,
  thresholding: false,
  timestep_spacing: 'linspace',
  trained_betas: null,
  use_beta_sigmas: false,
  use_exponential_sigmas: false,
  use_flow_sigmas: true,
  use_karras_sigmas: false,
};

describe('schedule', () => {
  it.each(fixture.cases.map((c) => [`${c.kind} shift ${c.shift} ${c.steps} steps`, c] as const))('matches diffusers: %s', (_, c) => {
    const config = jobSchedulerConfig(WAN_SCHEDULER_CONFIG, { sampler: c.kind, shift: c.shift });
    expect(config.numTrainTimesteps).toBe(fixture.numTrainTimesteps);
    const s = buildSchedule(config, c.steps);
    // Bit for bit: float32 sigmas, integer (UniPC) or float32 (Euler) timesteps.
    expect([...s.sigmas]).toEqual(c.sigmas);
    expect([...s.timesteps]).toEqual(c.timesteps);
    if (c.kind === 'unipc') expect(s.timesteps.every(Number.isInteger)).toBe(true);
  });

  it('reads the scheduler_config.json Wan ships into the built-in config', () => {
    expect(parseSchedulerConfig(WAN_SCHEDULER_JSON)).toEqual(WAN_SCHEDULER_CONFIG);
    expect(parseSchedulerConfig({ _class_name: 'FlowMatchEulerDiscreteScheduler', num_train_timesteps: 1000, shift: 5.0, use_dynamic_shifting: false })).toMatchObject({ kind: 'euler', flowShift: 5 });
  });

  it('names the field of a scheduler config it cannot run', () => {
    expect(() => parseSchedulerConfig({ ...WAN_SCHEDULER_JSON, prediction_type: 'epsilon' })).toThrow(/^prediction_type: must be "flow_prediction"/);
    expect(() => parseSchedulerConfig({ ...WAN_SCHEDULER_JSON, use_karras_sigmas: true })).toThrow(/^use_karras_sigmas: /);
    expect(() => parseSchedulerConfig({ ...WAN_SCHEDULER_JSON, flow_shift: -1 })).toThrow(/^flow_shift: must be a positive number/);
    expect(() => parseSchedulerConfig({ ...WAN_SCHEDULER_JSON, solver_order: 7 })).toThrow(/^solver_order: /);
    expect(() => parseSchedulerConfig({ ...WAN_SCHEDULER_JSON, lower_order_final: false })).toThrow(/^lower_order_final: must be true when final_sigmas_type is zero/);
    expect(() => parseSchedulerConfig({ _class_name: 'DDIMScheduler' })).toThrow(/^_class_name: /);
    expect(() => parseSchedulerConfig([])).toThrow(/must be a JSON object/);
    expect(() => parseSchedulerConfig({ ...WAN_SCHEDULER_JSON, timestep_spacing: 'trailing' })).toThrow(/^timestep_spacing: /);
    expect(() => parseSchedulerConfig({ ...WAN_SCHEDULER_JSON, sigma_schedule: 'cosine' })).toThrow(/^sigma_schedule: unknown setting for UniPCMultistepScheduler/);
  });

  it('writes the scheduler_config.json it reads back', () => {
    expect(schedulerConfigJson(WAN_SCHEDULER_CONFIG)).toEqual({ ...WAN_SCHEDULER_JSON, _diffusers_version: '0.33.0' });
    for (const c of [WAN_SCHEDULER_CONFIG, jobSchedulerConfig(WAN_SCHEDULER_CONFIG, { sampler: 'euler', shift: 5 }), { ...WAN_SCHEDULER_CONFIG, solverOrder: 3, solverType: 'bh1' as const }]) {
      expect(parseSchedulerConfig(schedulerConfigJson(c))).toEqual(c);
    }
    expect(() => buildSchedule(WAN_SCHEDULER_CONFIG, 0)).toThrow(/steps must be a positive integer/);
  });
});

describe('UniPC coefficients', () => {
  const config: SchedulerConfig = WAN_SCHEDULER_CONFIG;
  const schedule = buildSchedule(config, 10);

  it('warms up from order 1, runs order 2, and ends with order 1 onto sigma 0', () => {
    const orders: number[] = [];
    for (let i = 0; i < 10; i++) {
      const c = historyCountersAt(config, 10, i);
      const u = unipcStep(config, schedule, i, c);
      orders.push(u.order);
      expect(u.corrector === null).toBe(i === 0);
      expect(u.predictor.outputs.length).toBe(c.outputs);
    }
    expect(orders).toEqual([1, 2, 2, 2, 2, 2, 2, 2, 2, 1]);
    // The last step lands on sigma 0: the next sample is exactly the x0 prediction.
    expect(unipcStep(config, schedule, 9, historyCountersAt(config, 10, 9)).predictor).toEqual({ base: 0, outputs: [0, 0], current: 1 });
  });

  // With x = x0 = c the update is (sigma_t/sigma_s - alpha_t (e^-h - 1)) c = (sigma_t + alpha_t) c = c,
  // and the divided differences vanish: every combination's coefficients sum to 1.
  it('preserves a sample that already is its x0 prediction (coefficients sum to 1)', () => {
    for (let i = 0; i < 10; i++) {
      const u = unipcStep(config, schedule, i, historyCountersAt(config, 10, i));
      for (const c of [u.predictor, u.corrector].filter((x) => x !== null)) {
        const sum = c.base + c.current + c.outputs.reduce((a, b) => a + b, 0);
        expect(Math.abs(sum - 1)).toBeLessThan(1e-6);
      }
    }
  });

  it('steps Euler along the exact velocity', () => {
    const x0 = [0.5, -1, 2];
    const noise = [1, 0.25, -0.5];
    const s = 0.8;
    const h = eulerStepSize(s, 0);
    expect(h).toBe(Math.fround(-0.8));
    x0.forEach((x, i) => {
      const xs = (1 - s) * x + s * noise[i];
      expect(xs + h * (noise[i] - x)).toBeCloseTo(x, 6);
    });
    expect(() => eulerStepSize(Number.NaN, 0)).toThrow(/finite/);
  });
});
