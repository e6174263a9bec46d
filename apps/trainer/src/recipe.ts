/**
 * The training recipe (apps/trainer/recipe.json) and what it implies for the pipeline directory:
 * the DiT, text-encoder and VAE configs of the shipped model. Pure, apart from reading the file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { validateConfig, validateUmt5Config, validateVaeConfig, type ModelConfig, type Umt5Config, type VaeConfig } from '@longshot/model';

export const TRAINER_DIR = path.resolve(__dirname, '..');
export const RECIPE_FILE = path.join(TRAINER_DIR, 'recipe.json');

export interface Recipe {
  readonly name: string;
  readonly seed: number;
  /** What fixes the bits besides the seeds: PyTorch's threads and the libraries' kernel choices. */
  readonly reproducibility: { readonly threads: number; readonly environment: Readonly<Record<string, string>> };
  readonly vae: { readonly config: { base_dim: number; z_dim: number; dim_mult: number[]; num_res_blocks: number; temperal_downsample: boolean[] }; readonly steps: number; readonly decoderSteps: number; readonly decoderClipFrames: number; readonly colourSteps?: number; readonly colourWeight?: number };
  readonly text_encoder: {
    vocab_size: number;
    d_model: number;
    d_kv: number;
    d_ff: number;
    num_layers: number;
    num_heads: number;
    relative_attention_num_buckets: number;
    relative_attention_max_distance: number;
    layer_norm_epsilon: number;
    seed: number;
  };
  readonly transformer: { num_attention_heads: number; attention_head_dim: number; ffn_dim: number; num_layers: number; text_dim: number; freq_dim: number; eps: number; text_len: number };
  readonly dit: {
    readonly steps: number;
    readonly clips: number;
    readonly flowShift: number;
    /** Extra weight of the object's latent cells in the loss (0 or absent: none). */
    readonly objectWeight?: number;
    /** Decay of the weights' moving average that ships (0 or absent: the last step's weights). */
    readonly ema?: number;
    /** A second DiT phase (stage dit-more): from the first's weights, its own schedule (absent: none). */
    readonly more?: { readonly steps: number; readonly lr: number; readonly finalLr: number; readonly clips?: number; readonly startShare?: number };
  };
  readonly shippedDtype: 'F16' | 'BF16' | 'F32';
}

export function loadRecipe(file = RECIPE_FILE): Recipe {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as Recipe;
}

export function transformerConfig(r: Recipe): ModelConfig {
  const t = r.transformer;
  return validateConfig({
    name: r.name,
    dim: t.num_attention_heads * t.attention_head_dim,
    ffnDim: t.ffn_dim,
    layers: t.num_layers,
    heads: t.num_attention_heads,
    textDim: t.text_dim,
    textLen: t.text_len,
    freqDim: t.freq_dim,
    latentChannels: 16,
    eps: t.eps,
    ropeTheta: 10000,
  });
}

export function textEncoderConfig(r: Recipe): Umt5Config {
  const c = r.text_encoder;
  return validateUmt5Config({
    name: `${r.name}-umt5`,
    vocabSize: c.vocab_size,
    dModel: c.d_model,
    dKv: c.d_kv,
    dFf: c.d_ff,
    layers: c.num_layers,
    heads: c.num_heads,
    relativeBuckets: c.relative_attention_num_buckets,
    relativeMaxDistance: c.relative_attention_max_distance,
    eps: c.layer_norm_epsilon,
  });
}

/** The VAE config with the latent statistics the trainer measured (vae-stats.json). */
export function vaeConfig(r: Recipe, stats: { latents_mean: number[]; latents_std: number[] }): VaeConfig {
  const c = r.vae.config;
  return validateVaeConfig({
    name: `${r.name}-vae`,
    baseDim: c.base_dim,
    zDim: c.z_dim,
    dimMult: c.dim_mult,
    numResBlocks: c.num_res_blocks,
    temporalDownsample: c.temperal_downsample,
    latentsMean: stats.latents_mean,
    latentsStd: stats.latents_std,
  });
}
