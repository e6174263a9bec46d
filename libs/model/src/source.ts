import * as fs from 'node:fs';
import { WAN_SCHEDULER_CONFIG, type SchedulerConfig } from '@longshot/sampler';
import { getConfig, type ModelConfig, type StageRange } from './config';
import { loadStageWeights, readModelConfig, seededStageWeights } from './weights';
import type { StageWeights } from './weights-types';

/** Seed of the built-in seeded models: `--model tiny` always means the same weights. */
export const SEEDED_MODEL_SEED = 0;

/**
 * Where a job's weights come from: a known config name (seeded init, no file) or a safetensors
 * checkpoint. Each stage loads only its own layer range from it.
 */
export interface ModelSource {
  readonly id: string;
  readonly kind: 'seeded' | 'file';
  readonly config: ModelConfig;
  /**
   * The checkpoint's scheduler (diffusers' scheduler_config.json). Every built-in model and
   * single-file checkpoint is a Wan2.1 text-to-video DiT and gets the scheduler Wan ships.
   */
  readonly scheduler: SchedulerConfig;
  loadStage(range: StageRange): StageWeights;
}

export function resolveModel(nameOrFile: string): ModelSource {
  const looksLikeFile = nameOrFile.endsWith('.safetensors') || nameOrFile.includes('/');
  if (looksLikeFile || (fs.existsSync(nameOrFile) && fs.statSync(nameOrFile).isFile())) {
    const config = readModelConfig(nameOrFile);
    return { id: nameOrFile, kind: 'file', config, scheduler: WAN_SCHEDULER_CONFIG, loadStage: (range) => loadStageWeights(nameOrFile, range).weights };
  }
  const config = getConfig(nameOrFile);
  return { id: nameOrFile, kind: 'seeded', config, scheduler: WAN_SCHEDULER_CONFIG, loadStage: (range) => seededStageWeights(config, range, SEEDED_MODEL_SEED) };
}
