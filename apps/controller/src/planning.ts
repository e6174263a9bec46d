import { vaeDecodeCost, type ModelConfig, type VaeConfig } from '@longshot/model';
import { candidateLayouts, getProfile, jobTiming, pickLayout, planJob, predictPipelineSeconds, SINGLE_STAGE_GROUP, type JobSpec, type Link, type PipelineLayout, type StageGroupShape } from '@longshot/planner';

/** A layout with more workers must beat the best smaller one by this much: each is a whole leased worker. */
export const MIN_GAIN = 0.1;

/** The prediction walks every block-step: the job length it simulates is capped (the ratio between K values settles after a few hundred blocks). */
const SIMULATED = { blocks: 256, steps: 64 };

/**
 * The cost model's latency of a job on K stages (or a layout of stage groups) of `profileName`:
 * denoising through the pipeline and decoding every finished block on the tail (docs/vae.md), up
 * to the last block's frames reaching the controller. (Simulated over at most SIMULATED blocks
 * and steps.) `links`: each hop's link where the placement is known (planner `placementLinks`);
 * else the profile's default.
 */
export function predictJobSeconds(spec: JobSpec, config: ModelConfig, vae: VaeConfig, layout: number | PipelineLayout, profileName: string, links?: readonly Link[]): number {
  const plan = planJob(spec);
  return predictPipelineSeconds(jobTiming(spec, config, layout, getProfile(profileName), vaeDecodeCost(vae, plan.latentHeight, plan.latentWidth), SIMULATED, links));
}

/** The smallest K in 1..maxK whose latency (`seconds(K)`) is within MIN_GAIN of every smaller K's best. */
export function pickStages(maxK: number, seconds: (K: number) => number): number {
  const candidates = Array.from({ length: maxK }, (_, i) => ({ stages: i + 1, ulysses: 1, cfgParallel: false }));
  return pickLayout(candidates, (l) => seconds(l.stages), MIN_GAIN).layout.stages;
}

/** What the request fixed of a job's layout, and what the leased workers' links are. */
export interface LayoutChoice {
  /** The group shape's fields the request set (`ulysses`, `cfgParallel`); the planner chooses the others. */
  readonly fixed?: Partial<StageGroupShape>;
  /**
   * The links between the stages' rank-0 workers that leasing `layoutWorkers(layout)` workers
   * would give (planner `placementLinks`); without, every hop takes the profile's default link.
   */
  readonly linksFor?: (layout: PipelineLayout) => readonly Link[];
}

/**
 * K stages of U-member Ulysses groups (and CFG parallel or not) for a job that left `stages` open
 * (docs/parallelism.md): the cost model's latency (predictJobSeconds, decoding included) of every
 * candidate layout of at most `freeWorkers` workers, keeping the one with the fewest workers
 * within MIN_GAIN of the best. Deterministic output does not depend on the layout, so this is
 * purely a speed/fleet trade-off. When the free workers are too few for the request's fixed
 * group shape, one stage of that shape (the job waits for its workers).
 */
export function chooseLayout(spec: JobSpec, config: ModelConfig, vae: VaeConfig, freeWorkers: number, profileName: string, choice: LayoutChoice = {}): PipelineLayout {
  const fixed = choice.fixed ?? {};
  const candidates = candidateLayouts(Math.max(1, freeWorkers), config.layers, config.heads, fixed);
  if (candidates.length === 0) return { stages: 1, ulysses: fixed.ulysses ?? 1, cfgParallel: fixed.cfgParallel ?? false };
  return pickLayout(candidates, (l) => predictJobSeconds(spec, config, vae, l, profileName, choice.linksFor?.(l)), MIN_GAIN).layout;
}

/** K single-worker stages for a job that left `stages` open (chooseLayout with one worker per stage). `linksFor(K)`: as LayoutChoice.linksFor. */
export function chooseStages(spec: JobSpec, config: ModelConfig, vae: VaeConfig, freeWorkers: number, profileName: string, linksFor?: (K: number) => readonly Link[]): number {
  return chooseLayout(spec, config, vae, freeWorkers, profileName, { fixed: SINGLE_STAGE_GROUP, linksFor: linksFor && ((l) => linksFor(l.stages)) }).stages;
}
