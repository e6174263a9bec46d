/**
 * A flow-matching scheduler's configuration, field for field the part of diffusers'
 * `scheduler_config.json` that decides the sigmas, the model timesteps and the solver. Pure data:
 * a parsed `scheduler_config.json` (`parseSchedulerConfig`) and the built-in configs are the same
 * shape, so a model directory's scheduler plugs in where a built-in one does today.
 */
export type SamplerKind = 'unipc' | 'euler';
export const SAMPLER_KINDS: readonly SamplerKind[] = ['unipc', 'euler'];

export interface SchedulerConfig {
  /** 'unipc': diffusers UniPCMultistepScheduler with use_flow_sigmas; 'euler': FlowMatchEulerDiscreteScheduler. */
  readonly kind: SamplerKind;
  /** `num_train_timesteps`: timestep = sigma * this. */
  readonly numTrainTimesteps: number;
  /** `flow_shift` (UniPC) / `shift` (Euler): sigma' = k sigma / (1 + (k - 1) sigma). */
  readonly flowShift: number;
  /** `solver_order` (UniPC): model outputs the predictor combines. */
  readonly solverOrder: number;
  /** `solver_type` (UniPC): B(h) = h (bh1) or e^h - 1 (bh2). */
  readonly solverType: 'bh1' | 'bh2';
  /** `lower_order_final` (UniPC): the last steps drop to the order the remaining steps allow. */
  readonly lowerOrderFinal: boolean;
  /** `final_sigmas_type` (UniPC): the sigma after the last step, 0 or the last step's own. */
  readonly finalSigmasType: 'zero' | 'sigma_min';
  /** `disable_corrector` (UniPC): step indices whose corrector is skipped. */
  readonly disableCorrector: readonly number[];
}

/**
 * What the Wan2.1 text-to-video checkpoints ship (scheduler/scheduler_config.json of the
 * Diffusers releases): UniPC, flow prediction, bh2, order 2, lower-order final step, final sigma
 * 0, flow_shift 3.0. Wan recommends shift 3.0 at 480p and 5.0 at 720p (`--shift 5`).
 */
export const WAN_SCHEDULER_CONFIG: SchedulerConfig = {
  kind: 'unipc',
  numTrainTimesteps: 1000,
  flowShift: 3.0,
  solverOrder: 2,
  solverType: 'bh2',
  lowerOrderFinal: true,
  finalSigmasType: 'zero',
  disableCorrector: [],
};

export class SchedulerConfigError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = 'SchedulerConfigError';
  }
}

/** Throws SchedulerConfigError naming the field when a config cannot drive a schedule. */
export function validateSchedulerConfig(c: SchedulerConfig): SchedulerConfig {
  if (!SAMPLER_KINDS.includes(c.kind)) throw new SchedulerConfigError('kind', `must be one of ${SAMPLER_KINDS.join(', ')}, got ${show(c.kind)}`);
  if (!Number.isInteger(c.numTrainTimesteps) || c.numTrainTimesteps < 2 || c.numTrainTimesteps > 1e6) {
    throw new SchedulerConfigError('num_train_timesteps', `must be an integer in 2..1000000, got ${show(c.numTrainTimesteps)}`);
  }
  if (typeof c.flowShift !== 'number' || !Number.isFinite(c.flowShift) || c.flowShift <= 0) throw new SchedulerConfigError('flow_shift', `must be a positive number, got ${show(c.flowShift)}`);
  if (!Number.isInteger(c.solverOrder) || c.solverOrder < 1 || c.solverOrder > 3) throw new SchedulerConfigError('solver_order', `must be 1, 2 or 3, got ${show(c.solverOrder)}`);
  if (c.solverType !== 'bh1' && c.solverType !== 'bh2') throw new SchedulerConfigError('solver_type', `must be bh1 or bh2, got ${show(c.solverType)}`);
  if (typeof c.lowerOrderFinal !== 'boolean') throw new SchedulerConfigError('lower_order_final', `must be a boolean, got ${show(c.lowerOrderFinal)}`);
  if (c.finalSigmasType !== 'zero' && c.finalSigmasType !== 'sigma_min') throw new SchedulerConfigError('final_sigmas_type', `must be zero or sigma_min, got ${show(c.finalSigmasType)}`);
  if (!Array.isArray(c.disableCorrector) || !c.disableCorrector.every((i) => Number.isInteger(i) && i >= 0)) {
    throw new SchedulerConfigError('disable_corrector', 'must be a list of non-negative step indices');
  }
  if (c.kind === 'unipc' && c.finalSigmasType === 'zero' && !c.lowerOrderFinal && c.solverOrder > 1) {
    // The last predictor would divide by the zero log-SNR gap of sigma 0 (infinite lambda).
    throw new SchedulerConfigError('lower_order_final', 'must be true when final_sigmas_type is zero and solver_order > 1');
  }
  return c;
}

/**
 * The job's scheduler: the model's config with the job's choices applied (`--sampler` picks the
 * solver over the same sigmas' family, `--shift` overrides flow_shift).
 */
export function jobSchedulerConfig(base: SchedulerConfig, overrides: { sampler?: SamplerKind | null; shift?: number | null }): SchedulerConfig {
  return validateSchedulerConfig({ ...base, kind: overrides.sampler ?? base.kind, flowShift: overrides.shift ?? base.flowShift });
}

/** Keys that only matter for the DDPM-style schedule that flow sigmas replace: accepted, unused. */
const UNUSED_KEYS = [
  '_diffusers_version', 'beta_start', 'beta_end', 'beta_schedule', 'trained_betas', 'dynamic_thresholding_ratio', 'sample_max_value',
  'rescale_betas_zero_snr', 'base_shift', 'max_shift', 'base_image_seq_len', 'max_image_seq_len', 'time_shift_type',
];
/** Keys each scheduler reads (its own numbers, or settings that must keep the one value implemented). */
const READ_KEYS: Readonly<Record<string, readonly string[]>> = {
  UniPCMultistepScheduler: [
    'num_train_timesteps', 'flow_shift', 'solver_order', 'solver_type', 'lower_order_final', 'final_sigmas_type', 'disable_corrector',
    'use_flow_sigmas', 'prediction_type', 'predict_x0', 'thresholding', 'solver_p', 'timestep_spacing', 'steps_offset',
    'use_karras_sigmas', 'use_exponential_sigmas', 'use_beta_sigmas', 'use_dynamic_shifting',
  ],
  FlowMatchEulerDiscreteScheduler: [
    'num_train_timesteps', 'shift', 'shift_terminal', 'use_dynamic_shifting', 'invert_sigmas', 'stochastic_sampling',
    'use_karras_sigmas', 'use_exponential_sigmas', 'use_beta_sigmas',
  ],
};

/**
 * Reads a diffusers `scheduler_config.json` (already JSON-parsed). Only the settings Longshot
 * implements are accepted; an unknown key, or a known one with a value that would change the math
 * and is not implemented, is an error naming the field, never silently ignored.
 */
export function parseSchedulerConfig(json: unknown): SchedulerConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new SchedulerConfigError('scheduler_config', 'must be a JSON object');
  const j = json as Record<string, unknown>;
  const cls = j._class_name;
  const read = typeof cls === 'string' ? READ_KEYS[cls] : undefined;
  if (!read) throw new SchedulerConfigError('_class_name', `must be UniPCMultistepScheduler or FlowMatchEulerDiscreteScheduler, got ${show(cls)}`);
  for (const key of Object.keys(j)) {
    if (key !== '_class_name' && !read.includes(key) && !UNUSED_KEYS.includes(key)) {
      throw new SchedulerConfigError(key, `unknown setting for ${cls as string} (Longshot does not know what it changes)`);
    }
  }
  const num = (field: string, fallback: number): number => {
    const v = j[field] ?? fallback;
    if (typeof v !== 'number') throw new SchedulerConfigError(field, `must be a number, got ${show(v)}`);
    return v;
  };
  const expect = (field: string, wanted: unknown, fallback: unknown) => {
    const v = j[field] === undefined ? fallback : j[field];
    if (JSON.stringify(v) !== JSON.stringify(wanted)) throw new SchedulerConfigError(field, `must be ${JSON.stringify(wanted)} (the only setting implemented), got ${show(v)}`);
  };
  for (const f of ['use_karras_sigmas', 'use_exponential_sigmas', 'use_beta_sigmas', 'use_dynamic_shifting']) expect(f, false, false);
  if (cls === 'UniPCMultistepScheduler') {
    expect('use_flow_sigmas', true, false);
    expect('prediction_type', 'flow_prediction', 'epsilon');
    expect('predict_x0', true, true);
    expect('thresholding', false, false);
    expect('solver_p', null, null);
    expect('timestep_spacing', 'linspace', 'linspace');
    expect('steps_offset', 0, 0);
    const disable = j.disable_corrector ?? [];
    return validateSchedulerConfig({
      kind: 'unipc',
      numTrainTimesteps: num('num_train_timesteps', 1000),
      flowShift: num('flow_shift', 1.0),
      solverOrder: num('solver_order', 2),
      solverType: (j.solver_type ?? 'bh2') as SchedulerConfig['solverType'],
      lowerOrderFinal: (j.lower_order_final ?? true) as boolean,
      finalSigmasType: (j.final_sigmas_type ?? 'zero') as SchedulerConfig['finalSigmasType'],
      disableCorrector: disable as number[],
    });
  }
  for (const f of ['invert_sigmas', 'stochastic_sampling']) expect(f, false, false);
  expect('shift_terminal', null, null);
  return validateSchedulerConfig({ ...WAN_SCHEDULER_CONFIG, kind: 'euler', numTrainTimesteps: num('num_train_timesteps', 1000), flowShift: num('shift', 1.0) });
}

/**
 * The `scheduler_config.json` diffusers would write for a config (what `parseSchedulerConfig`
 * reads back to the same config); the UniPC one is field for field Wan2.1-T2V's.
 */
export function schedulerConfigJson(c: SchedulerConfig): Record<string, unknown> {
  if (c.kind === 'euler') {
    return { _class_name: 'FlowMatchEulerDiscreteScheduler', _diffusers_version: '0.33.0', num_train_timesteps: c.numTrainTimesteps, shift: c.flowShift, use_dynamic_shifting: false };
  }
  return {
    _class_name: 'UniPCMultistepScheduler',
    _diffusers_version: '0.33.0',
    beta_end: 0.02,
    beta_schedule: 'linear',
    beta_start: 0.0001,
    disable_corrector: [...c.disableCorrector],
    dynamic_thresholding_ratio: 0.995,
    final_sigmas_type: c.finalSigmasType,
    flow_shift: c.flowShift,
    lower_order_final: c.lowerOrderFinal,
    num_train_timesteps: c.numTrainTimesteps,
    predict_x0: true,
    prediction_type: 'flow_prediction',
    rescale_betas_zero_snr: false,
    sample_max_value: 1.0,
    solver_order: c.solverOrder,
    solver_p: null,
    solver_type: c.solverType,
    steps_offset: 0,
    thresholding: false,
    timestep_spacing: 'linspace',
    trained_betas: null,
    use_beta_sigmas: false,
    use_exponential_sigmas: false,
    use_flow_sigmas: true,
    use_karras_sigmas: false,
  };
}

function show(v: unknown): string {
  return v === undefined ? 'nothing' : (JSON.stringify(v) ?? String(v));
}
