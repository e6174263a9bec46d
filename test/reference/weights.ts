import { seededStageWeights, weightSpecs, type ModelConfig, type StageRange, type TensorSpec } from '@longshot/model';
import { Rng } from '@longshot/random';

/**
 * Seeded weights of `range` for the conformance suites, with the constant-initialised tensors
 * made random (see perturbConstants).
 */
export function testWeights(config: ModelConfig, range: StageRange, seed: number): Map<string, Float32Array> {
  return perturbConstants(seededStageWeights(config, range, seed), weightSpecs(config, range), seed);
}

/**
 * A copy of `weights` with the constant-initialised tensors of `specs` (norm weights of 1, biases
 * of 0) made random: with constants, a norm weight applied to the wrong tensor, or not at all,
 * would go unseen.
 */
export function perturbConstants(weights: ReadonlyMap<string, Float32Array>, specs: readonly TensorSpec[], seed: number): Map<string, Float32Array> {
  const w = new Map(weights);
  for (const spec of specs) {
    if (spec.init === 'ones' || spec.init === 'zeros') {
      const t = Rng.from(seed, 'perturb', spec.name).fillNormal(new Float32Array(w.get(spec.name)!.length), 0.2);
      if (spec.init === 'ones') for (let i = 0; i < t.length; i++) t[i] += 1;
      w.set(spec.name, t);
    }
  }
  return w;
}
