import * as fs from 'node:fs';
import { getConfig, type ModelConfig, type StageRange } from './config';
import { isPipelineDir, loadPipelineStage, loadPipelineVae, openPipelineDir, seededVaeConfig, type PipelineDir } from './pipeline-dir';
import { InterimEmbeddingEncoder, padEmbeddings, type PromptEmbeddings, type TokenEncoder } from './text-conditioning';
import { encodePrompt, STAND_IN_TEXT_ENCODER } from './text';
import type { PromptTokens } from './tokenizer';
import { loadStageWeights, readModelConfig, seededStageWeights } from './weights';
import type { StageWeights } from './weights-types';
import { seededVaeWeights, type VaeWeights } from './vae';
import type { VaeConfig } from './vae-config';

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
  loadStage(range: StageRange): StageWeights;
  /** Which text encoder `promptEmbeddings` runs (stand-in, interim or umT5). */
  readonly textEncoder: string;
  /** Embeddings of `prompt` (cond) and of "" (uncond), [textLen, textDim] each. */
  promptEmbeddings(prompt: string): PromptEmbeddings & { tokens: PromptTokens | null };
  /** The VAE decoder: a pipeline directory's own, else the seeded one of the config (vae-config.ts). */
  readonly vae: VaeConfig;
  loadVae(): VaeWeights;
}

export function resolveModel(nameOrPath: string): ModelSource {
  if (isPipelineDir(nameOrPath)) return pipelineSource(nameOrPath, openPipelineDir(nameOrPath));
  const looksLikeFile = nameOrPath.endsWith('.safetensors') || nameOrPath.includes('/');
  if (looksLikeFile || (fs.existsSync(nameOrPath) && fs.statSync(nameOrPath).isFile())) {
    const config = readModelConfig(nameOrPath);
    return { id: nameOrPath, kind: 'file', config, loadStage: (range) => loadStageWeights(nameOrPath, range).weights, ...standInText(config), ...seededVae(config) };
  }
  const config = getConfig(nameOrPath);
  return { id: nameOrPath, kind: 'seeded', config, loadStage: (range) => seededStageWeights(config, range, SEEDED_MODEL_SEED), ...standInText(config), ...seededVae(config) };
}

/** A seeded name or a bare transformer file has no VAE of its own: the seeded one of its config. */
function seededVae(config: ModelConfig): Pick<ModelSource, 'vae' | 'loadVae'> {
  const vae = seededVaeConfig(config);
  return { vae, loadVae: () => seededVaeWeights(vae, SEEDED_MODEL_SEED) };
}

/** A seeded name or a bare transformer file has no text encoder: the stand-in stands in (see ./text). */
function standInText(config: ModelConfig): Pick<ModelSource, 'textEncoder' | 'promptEmbeddings'> {
  return {
    textEncoder: STAND_IN_TEXT_ENCODER,
    promptEmbeddings: (prompt) => ({ cond: encodePrompt(prompt, config), uncond: encodePrompt('', config), tokens: null }),
  };
}

/**
 * The text encoder a pipeline directory uses. The native umT5 encoder plugs in here: return it
 * (a TokenEncoder over `p.textEncoder`'s weights) instead of the interim one.
 */
export function pipelineTextEncoder(p: PipelineDir): TokenEncoder {
  return new InterimEmbeddingEncoder(p.textEncoderConfig, {
    rows: (ids) => p.textEncoder.readRows(p.embeddingTable, ids),
    finalNorm: () => p.textEncoder.read([{ name: 'encoder.final_layer_norm.weight', shape: [p.textEncoderConfig.dModel] }]).get('encoder.final_layer_norm.weight')!,
  });
}

function pipelineSource(dir: string, p: PipelineDir): ModelSource {
  const encoder = pipelineTextEncoder(p);
  const embed = (prompt: string): { embeddings: Float32Array; tokens: PromptTokens } => {
    const tokens = p.tokenizer.tokenize(prompt);
    return { embeddings: padEmbeddings(encoder.encodeTokens(tokens), tokens.ids.length, p.config), tokens };
  };
  return {
    id: dir,
    kind: 'pipeline',
    config: p.config,
    loadStage: (range) => loadPipelineStage(p, range),
    textEncoder: encoder.description,
    promptEmbeddings: (prompt) => {
      const cond = embed(prompt);
      return { cond: cond.embeddings, uncond: embed('').embeddings, tokens: cond.tokens };
    },
    vae: p.vae,
    loadVae: () => loadPipelineVae(p),
  };
}
