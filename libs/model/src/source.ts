import * as fs from 'node:fs';
import * as path from 'node:path';
import { WAN_SCHEDULER_CONFIG, type SchedulerConfig } from '@longshot/sampler';
import { getConfig, type ModelConfig, type StageRange } from './config';
import { isPipelineDir, loadPipelineStage, loadPipelineVae, openPipelineDir, seededVaeConfig } from './pipeline-dir';
import { StandInTextEncoder, Umt5TextEncoder, type TextEncoder } from './text-conditioning';
import { loadStageWeights, readModelConfig, seededStageWeights } from './weights';
import type { StageWeights } from './weights-types';
import { seededVaeWeights, type VaeWeights } from './vae';
import type { VaeConfig } from './vae-config';

/**
 * Pipelines shipped in this repository (libs/model/pipelines), served by name like the seeded
 * ones: `longshot-shapes` is the model trained here (apps/trainer), the demo's default.
 */
export const SHIPPED_PIPELINES: Readonly<Record<string, string>> = {
  'longshot-shapes': path.resolve(__dirname, '..', 'pipelines', 'longshot-shapes'),
};

/** Seed of the built-in seeded models: `--model tiny` always means the same weights. */
export const SEEDED_MODEL_SEED = 0;

/**
 * Where a job's weights come from: a known config name (seeded init, no file), a safetensors
 * checkpoint of the transformer alone, or a diffusers pipeline directory. Each stage loads only
 * its own layer range.
 */
export interface ModelSource {
  readonly id: string;
  readonly kind: 'seeded' | 'file' | 'pipeline';
  readonly config: ModelConfig;
  /**
   * The checkpoint's scheduler (diffusers' scheduler_config.json). Every built-in model and
   * single-file checkpoint is a Wan2.1 text-to-video DiT and gets the scheduler Wan ships.
   */
  readonly scheduler: SchedulerConfig;
  loadStage(range: StageRange): StageWeights;
  /**
   * The prompt's encoder: a pipeline directory's tokenizer and umT5; the stand-in for a seeded
   * name or a bare transformer file, which have no text encoder of their own.
   */
  readonly textEncoder: TextEncoder;
  /** The VAE decoder: a pipeline directory's own, else the seeded one of the config (vae-config.ts). */
  readonly vae: VaeConfig;
  loadVae(): VaeWeights;
}

export function resolveModel(nameOrPath: string): ModelSource {
  if (Object.hasOwn(SHIPPED_PIPELINES, nameOrPath)) return { ...pipelineSource(SHIPPED_PIPELINES[nameOrPath]), id: nameOrPath };
  if (isPipelineDir(nameOrPath)) return pipelineSource(nameOrPath);
  const looksLikeFile = nameOrPath.endsWith('.safetensors') || nameOrPath.includes('/');
  if (looksLikeFile || (fs.existsSync(nameOrPath) && fs.statSync(nameOrPath).isFile())) {
    const config = readModelConfig(nameOrPath);
    return { id: nameOrPath, kind: 'file', config, scheduler: WAN_SCHEDULER_CONFIG, loadStage: (range) => loadStageWeights(nameOrPath, range).weights, textEncoder: new StandInTextEncoder(config), ...seededVae(config) };
  }
  const config = getConfig(nameOrPath);
  return { id: nameOrPath, kind: 'seeded', config, scheduler: WAN_SCHEDULER_CONFIG, loadStage: (range) => seededStageWeights(config, range, SEEDED_MODEL_SEED), textEncoder: new StandInTextEncoder(config), ...seededVae(config) };
}

function pipelineSource(dir: string): ModelSource {
  const p = openPipelineDir(dir);
  return { id: dir, kind: 'pipeline', config: p.config, scheduler: p.scheduler, loadStage: (range) => loadPipelineStage(p, range), textEncoder: new Umt5TextEncoder(dir, p), vae: p.vae, loadVae: () => loadPipelineVae(p) };
}

/** A seeded name or a bare transformer file has no VAE of its own: the seeded one of its config. */
function seededVae(config: ModelConfig): Pick<ModelSource, 'vae' | 'loadVae'> {
  const vae = seededVaeConfig(config);
  return { vae, loadVae: () => seededVaeWeights(vae, SEEDED_MODEL_SEED) };
}
