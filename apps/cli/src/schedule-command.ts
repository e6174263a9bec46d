import { resolveModel } from '@longshot/model';
import { DEFAULT_LIMITS, SPEC_DEFAULTS } from '@longshot/planner';
import { buildSchedule, jobSchedulerConfig, SAMPLER_KINDS, SchedulerConfigError, type SamplerKind, type SchedulerConfig } from '@longshot/sampler';
import { intFlag, numberFlag, parseFlags, UsageError } from './args';

export const SCHEDULE_HELP = `longshot schedule: the sigmas and model timesteps a job samples with

  --model NAME|FILE        model whose scheduler config to use (tiny)
  --steps N                sampling steps (20)
  --sampler unipc|euler    solver (unipc)
  --shift K                overrides the scheduler's flow_shift
  --json                   print one JSON object
`;

export interface ScheduleReport {
  model: string;
  sampler: SamplerKind;
  shift: number;
  steps: number;
  numTrainTimesteps: number;
  /** steps + 1 values: the sigma of each step, then the one after the last step. */
  sigmas: number[];
  /** The timestep the model is fed at each step. */
  timesteps: number[];
}

/** The schedule of a scheduler config (a built-in one or a parsed scheduler_config.json). */
export function scheduleReport(model: string, scheduler: SchedulerConfig, steps: number): ScheduleReport {
  const s = buildSchedule(scheduler, steps);
  return { model, sampler: scheduler.kind, shift: scheduler.flowShift, steps, numTrainTimesteps: scheduler.numTrainTimesteps, sigmas: [...s.sigmas], timesteps: [...s.timesteps] };
}

export async function scheduleCommand(argv: string[]): Promise<void> {
  const f = parseFlags(argv, { model: { type: 'string' }, steps: { type: 'string' }, sampler: { type: 'string' }, shift: { type: 'string' }, json: { type: 'boolean', default: false } });
  const steps = intFlag('steps', f.steps) ?? SPEC_DEFAULTS.steps;
  if (steps < 1 || steps > DEFAULT_LIMITS.maxSteps) throw new UsageError(`--steps: must be in 1..${DEFAULT_LIMITS.maxSteps}, got ${steps}`);
  if (f.sampler !== undefined && !SAMPLER_KINDS.includes(f.sampler as SamplerKind)) throw new UsageError(`--sampler: must be one of ${SAMPLER_KINDS.join(', ')}, got '${f.sampler}'`);
  const modelName = f.model ?? SPEC_DEFAULTS.model;
  let base: SchedulerConfig;
  try {
    base = resolveModel(modelName).scheduler;
  } catch (e) {
    throw new UsageError(`--model: ${(e as Error).message}`);
  }
  let scheduler: SchedulerConfig;
  try {
    scheduler = jobSchedulerConfig(base, { sampler: f.sampler as SamplerKind | undefined, shift: numberFlag('shift', f.shift) });
  } catch (e) {
    if (e instanceof SchedulerConfigError && e.field === 'flow_shift') throw new UsageError(`--shift: ${e.message.slice(e.field.length + 2)}`);
    throw e;
  }
  const r = scheduleReport(modelName, scheduler, steps);
  if (f.json) {
    process.stdout.write(`${JSON.stringify(r)}\n`);
    return;
  }
  process.stdout.write(`${r.sampler}, shift ${r.shift}, ${r.steps} steps (num_train_timesteps ${r.numTrainTimesteps})\nstep  sigma        timestep\n`);
  r.timesteps.forEach((t, i) => process.stdout.write(`${String(i).padStart(4)}  ${r.sigmas[i].toFixed(8)}  ${t}\n`));
  process.stdout.write(` end  ${r.sigmas[r.steps].toFixed(8)}\n`);
}
