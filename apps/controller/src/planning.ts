import type { ModelConfig } from '@longshot/model';
import { getProfile, hiddenBytes, partitionLayers, planJob, predictPipelineSeconds, stageFlops, velocityBytes, type JobSpec } from '@longshot/planner';

/** A larger K must beat the best smaller one by this much: each stage is a whole leased worker. */
const MIN_GAIN = 0.1;

/**
 * K for a job that left `stages` open: the cost model's predicted latency for every K the free
 * workers allow (at most the layer count), keeping the smallest K within MIN_GAIN of the best.
 * Deterministic output does not depend on K, so this is purely a speed/fleet trade-off.
 */
export function chooseStages(spec: JobSpec, config: ModelConfig, freeWorkers: number, profileName: string): number {
  const maxK = Math.min(config.layers, freeWorkers);
  if (maxK <= 1) return 1;
  const profile = getProfile(profileName);
  const plan = planJob(spec);
  const tokensPerFrame = (plan.latentHeight / 2) * (plan.latentWidth / 2);
  const window = { tokensPerFrame, prefixFrames: spec.context, ownFrames: spec.block, successorFrames: spec.context };
  const hop = hiddenBytes(config, window) / profile.linkBytesPerSecond + profile.linkLatencySeconds;
  const back = velocityBytes(config, window, plan.latentHeight, plan.latentWidth) / profile.linkBytesPerSecond + profile.linkLatencySeconds;
  // The prediction walks every block-step; cap the job length it simulates (the ratio between
  // K values settles after a few hundred blocks).
  const timing = (K: number) => {
    const stageSeconds = partitionLayers(config.layers, K).map((r) => stageFlops(config, r.l1 - r.l0, window, r.head, r.tail) / profile.flopsPerSecond);
    const hopSeconds = K === 1 ? [] : [...Array<number>(K - 1).fill(hop), back];
    return predictPipelineSeconds({ blocks: Math.min(plan.blocks, 256), steps: Math.min(spec.steps, 64), stageSeconds, hopSeconds });
  };
  let best = 1;
  let bestSeconds = timing(1);
  for (let K = 2; K <= maxK; K++) {
    const s = timing(K);
    if (s < bestSeconds * (1 - MIN_GAIN)) {
      best = K;
      bestSeconds = s;
    }
  }
  return best;
}
