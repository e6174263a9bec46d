import { vaeDecodeCost, type ModelConfig, type VaeConfig } from '@longshot/model';
import { candidateLayouts, getProfile, jobTiming, pickLayout, planJob, predictPipelineSeconds, type JobSpec, type Link, type PipelineLayout } from '@longshot/planner';

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

/**
 * K stages of U-member Ulysses groups (and CFG parallel or not) for `freeWorkers` workers
 * (docs/parallelism.md): the cost model's latency of every candidate layout, keeping the one with
 * the fewest workers within MIN_GAIN of the best. Not yet what the controller's jobs run with:
 * they lease K single workers (chooseStages); a layout runs through the driver's
 * `DistributedJob.layout` (the embedded driver, the pipeline bench).
 */
export function chooseLayout(spec: JobSpec, config: ModelConfig, vae: VaeConfig, freeWorkers: number, profileName: string): PipelineLayout {
  const candidates = candidateLayouts(Math.max(1, freeWorkers), config.layers, config.heads);
  return pickLayout(candidates, (l) => predictJobSeconds(spec, config, vae, l, profileName), MIN_GAIN).layout;
}

/**
 * K for a job that left `stages` open: the cost model's predicted latency (predictJobSeconds,
 * decoding included) for every K the free workers allow (at most the layer count), keeping the
 * smallest K within MIN_GAIN of the best. Deterministic output does not depend on K, so this is
 * purely a speed/fleet trade-off. `linksFor(K)`: the links between the K workers a job of K
 * stages would lease; without, every hop takes the profile's default link.
 */
export function chooseStages(spec: JobSpec, config: ModelConfig, vae: VaeConfig, freeWorkers: number, profileName: string, linksFor?: (K: number) => readonly Link[]): number {
  const maxK = Math.min(config.layers, freeWorkers);
  if (maxK <= 1) return 1;
  return pickStages(maxK, (K) => predictJobSeconds(spec, config, vae, K, profileName, linksFor?.(K)));
}
