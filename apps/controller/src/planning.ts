import { vaeDecodeCost, type ModelConfig, type VaeConfig } from '@longshot/model';
import { getProfile, jobTiming, planJob, predictPipelineSeconds, type JobSpec, type Link } from '@longshot/planner';

/** A larger K must beat the best smaller one by this much: each stage is a whole leased worker. */
const MIN_GAIN = 0.1;

/** The prediction walks every block-step: the job length it simulates is capped (the ratio between K values settles after a few hundred blocks). */
const SIMULATED = { blocks: 256, steps: 64 };

/**
 * The cost model's latency of a job on K stages of `profileName`: denoising through the pipeline
 * and decoding every finished block on the tail (docs/vae.md), up to the last block's frames
 * reaching the controller. (Simulated over at most SIMULATED blocks and steps.) `links`: each
 * hop's link where the placement is known (planner `placementLinks`); else the profile's default.
 */
export function predictJobSeconds(spec: JobSpec, config: ModelConfig, vae: VaeConfig, K: number, profileName: string, links?: readonly Link[]): number {
  const plan = planJob(spec);
  return predictPipelineSeconds(jobTiming(spec, config, K, getProfile(profileName), vaeDecodeCost(vae, plan.latentHeight, plan.latentWidth), SIMULATED, links));
}

/** The smallest K in 1..maxK whose latency (`seconds(K)`) is within MIN_GAIN of every smaller K's best. */
export function pickStages(maxK: number, seconds: (K: number) => number): number {
  let best = 1;
  let bestSeconds = seconds(1);
  for (let K = 2; K <= maxK; K++) {
    const s = seconds(K);
    if (s < bestSeconds * (1 - MIN_GAIN)) {
      best = K;
      bestSeconds = s;
    }
  }
  return best;
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
