/**
 * The configuration files of a diffusers Wan2.1 text-to-video pipeline directory, parsed and
 * checked against what Longshot runs. Pure functions of the parsed JSON: the adapter that reads
 * the files is ./pipeline-dir. Every refusal names the file (relative to the model directory)
 * and the field, and says what is supported.
 *
 * Layout (what `WanPipeline.save_pretrained` writes):
 *   model_index.json                     pipeline class and its components
 *   transformer/config.json              WanTransformer3DModel
 *   transformer/diffusion_pytorch_model.safetensors            (or -0000i-of-0000n shards
 *   transformer/diffusion_pytorch_model.safetensors.index.json  with a weight_map)
 *   text_encoder/config.json             UMT5EncoderModel
 *   text_encoder/model.safetensors       (or model-0000i-of-0000n + model.safetensors.index.json)
 *   tokenizer/tokenizer.json             T5TokenizerFast (Unigram)
 *   scheduler/scheduler_config.json      UniPCMultistepScheduler | FlowMatchEulerDiscreteScheduler
 *   vae/config.json                      AutoencoderKLWan
 *   vae/diffusion_pytorch_model.safetensors   (encoder and decoder; the decoder's tensors are read)
 */
import { MODEL_CONFIGS, validateConfig, weightSpecs, type ModelConfig } from './config';
import { umt5TensorSpecs, type Umt5Config } from './umt5-config';
import { isVaeEncoderTensor, SEEDED_VAE, validateVaeConfig, vaeDecoderTensorSpecs, WAN21_VAE, type VaeConfig } from './vae-config';

/** A refusal of a pipeline directory: the message names the file and what is wrong. */
export class PipelineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PipelineError';
  }
}

type Json = Record<string, unknown>;

export const MODEL_INDEX_FILE = 'model_index.json';
export const TRANSFORMER_CONFIG_FILE = 'transformer/config.json';
export const TEXT_ENCODER_CONFIG_FILE = 'text_encoder/config.json';
export const TOKENIZER_FILE = 'tokenizer/tokenizer.json';
export const TOKENIZER_CONFIG_FILE = 'tokenizer/tokenizer_config.json';
export const SCHEDULER_CONFIG_FILE = 'scheduler/scheduler_config.json';
export const VAE_CONFIG_FILE = 'vae/config.json';

/** Weight file names of the components with weights, single-file and sharded. */
export const WEIGHT_FILES = {
  transformer: { dir: 'transformer', single: 'diffusion_pytorch_model.safetensors', stem: 'diffusion_pytorch_model' },
  text_encoder: { dir: 'text_encoder', single: 'model.safetensors', stem: 'model' },
  vae: { dir: 'vae', single: 'diffusion_pytorch_model.safetensors', stem: 'diffusion_pytorch_model' },
} as const;
export type WeightComponent = keyof typeof WEIGHT_FILES;

/** The file name of shard i (0-based) of n, as transformers / diffusers name them. */
export function shardFileName(component: WeightComponent, i: number, n: number): string {
  const pad = (k: number) => String(k).padStart(5, '0');
  return `${WEIGHT_FILES[component].stem}-${pad(i + 1)}-of-${pad(n)}.safetensors`;
}

/** Wan's text length: umT5 output is cut or zero-padded to 512 tokens. */
export const WAN_TEXT_LEN = 512;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function show(v: unknown): string {
  return JSON.stringify(v) ?? String(v);
}

/** Parses a JSON file's text; `file` is the name relative to the model directory. */
export function parseJsonFile(file: string, text: string): Json {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new PipelineError(`${file}: not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(parsed)) throw new PipelineError(`${file}: must be a JSON object`);
  return parsed;
}

// ---------------------------------------------------------------------------------------------
// model_index.json

/** The components WanPipeline has, with the one class Longshot accepts for each. */
const PIPELINE_COMPONENTS: Readonly<Record<string, readonly [string, string]>> = {
  transformer: ['diffusers', 'WanTransformer3DModel'],
  text_encoder: ['transformers', 'UMT5EncoderModel'],
  tokenizer: ['transformers', 'T5TokenizerFast'],
  scheduler: ['diffusers', 'UniPCMultistepScheduler|FlowMatchEulerDiscreteScheduler'],
  vae: ['diffusers', 'AutoencoderKLWan'],
};

/** Entries that other Wan pipelines set; Longshot refuses any of them unless null / off. */
const UNSUPPORTED_INDEX_ENTRIES: Readonly<Record<string, string>> = {
  transformer_2: 'a second transformer (Wan2.2 two-expert denoising)',
  image_encoder: 'an image encoder (image-to-video)',
  image_processor: 'an image processor (image-to-video)',
  boundary_ratio: 'boundary_ratio (Wan2.2 switches experts at a timestep boundary)',
  expand_timesteps: 'expand_timesteps (Wan2.2 TI2V per-token timesteps)',
};

export interface ModelIndex {
  readonly pipelineClass: 'WanPipeline';
  readonly diffusersVersion: string | null;
  /** Component name -> [library, class]. */
  readonly components: Readonly<Record<string, readonly [string, string]>>;
}

export function parseModelIndex(json: Json): ModelIndex {
  const f = MODEL_INDEX_FILE;
  if (json._class_name !== 'WanPipeline') {
    throw new PipelineError(`${f}: pipeline class ${show(json._class_name)} is not supported (Longshot runs WanPipeline, Wan2.1 text-to-video)`);
  }
  const components: Record<string, readonly [string, string]> = {};
  for (const [key, value] of Object.entries(json)) {
    if (key === '_class_name' || key === '_diffusers_version' || key === '_name_or_path') continue;
    const unsupported = UNSUPPORTED_INDEX_ENTRIES[key];
    if (unsupported !== undefined) {
      const off = value === null || value === false || (Array.isArray(value) && value.every((v) => v === null));
      if (!off) throw new PipelineError(`${f}: '${key}' = ${show(value)}: ${unsupported} is not supported`);
      continue;
    }
    const expected = PIPELINE_COMPONENTS[key];
    if (!expected) throw new PipelineError(`${f}: unknown entry '${key}' (WanPipeline has ${Object.keys(PIPELINE_COMPONENTS).join(', ')})`);
    if (!Array.isArray(value) || value.length !== 2 || typeof value[1] !== 'string') {
      throw new PipelineError(`${f}: '${key}' must be [library, class], got ${show(value)}`);
    }
    if (!expected[1].split('|').includes(value[1])) {
      throw new PipelineError(`${f}: component '${key}' has class ${value[1]}; supported: ${expected[1].split('|').join(' or ')}`);
    }
    components[key] = [String(value[0]), value[1]];
  }
  for (const key of Object.keys(PIPELINE_COMPONENTS)) {
    if (!components[key]) throw new PipelineError(`${f}: component '${key}' is missing`);
  }
  return { pipelineClass: 'WanPipeline', diffusersVersion: typeof json._diffusers_version === 'string' ? json._diffusers_version : null, components };
}

// ---------------------------------------------------------------------------------------------
// transformer/config.json

/** Every key WanTransformer3DModel's config may have, and the values Longshot runs. */
const TRANSFORMER_KEYS = [
  '_class_name', '_diffusers_version', '_name_or_path',
  'patch_size', 'num_attention_heads', 'attention_head_dim', 'in_channels', 'out_channels', 'text_dim', 'freq_dim', 'ffn_dim',
  'num_layers', 'cross_attn_norm', 'qk_norm', 'eps', 'image_dim', 'added_kv_proj_dim', 'rope_max_seq_len', 'pos_embed_seq_len',
] as const;

function positiveInt(file: string, json: Json, key: string): number {
  const v = json[key];
  if (!Number.isInteger(v) || (v as number) <= 0) throw new PipelineError(`${file}: '${key}' must be a positive integer, got ${show(v)}`);
  return v as number;
}

function requireValue(file: string, json: Json, key: string, allowed: readonly unknown[], why: string, optional = false): void {
  if (optional && !(key in json)) return;
  const v = json[key];
  if (!allowed.some((a) => JSON.stringify(a) === JSON.stringify(v))) {
    throw new PipelineError(`${file}: '${key}' = ${show(v)} is not supported (${why}; supported: ${allowed.map(show).join(' or ')})`);
  }
}

/**
 * The DiT config of a WanTransformer3DModel config.json. Nothing is inferred from tensor
 * shapes; `textLen` comes from the tokenizer (see textLenOf). A config whose widths and depth
 * are those of a known config takes that config's name.
 */
export function parseTransformerConfig(json: Json, textLen: number, fallbackName: string): ModelConfig {
  const f = TRANSFORMER_CONFIG_FILE;
  if (json._class_name !== 'WanTransformer3DModel') throw new PipelineError(`${f}: class ${show(json._class_name)} is not supported (WanTransformer3DModel)`);
  for (const key of Object.keys(json)) {
    if (!(TRANSFORMER_KEYS as readonly string[]).includes(key)) throw new PipelineError(`${f}: unknown key '${key}' (Longshot does not know what it changes)`);
  }
  requireValue(f, json, 'in_channels', [16], 'text-to-video latents have 16 channels; image-to-video adds conditioning channels');
  requireValue(f, json, 'out_channels', [16, null], 'the velocity has the 16 latent channels', true);
  requireValue(f, json, 'image_dim', [null], 'image conditioning is image-to-video', true);
  requireValue(f, json, 'added_kv_proj_dim', [null], 'added key/value projections are for image conditioning', true);
  requireValue(f, json, 'pos_embed_seq_len', [null], 'learned position embeddings are for first-last-frame video', true);
  requireValue(f, json, 'patch_size', [[1, 2, 2]], "Wan2.1's patch");
  requireValue(f, json, 'qk_norm', ['rms_norm_across_heads'], "Wan2.1's query/key norm");
  requireValue(f, json, 'cross_attn_norm', [true], "Wan2.1 normalises the cross-attention input (norm2 with weight and bias)");
  requireValue(f, json, 'rope_max_seq_len', [1024], "Wan2.1's RoPE table length", true);
  const heads = positiveInt(f, json, 'num_attention_heads');
  const headDim = positiveInt(f, json, 'attention_head_dim');
  const eps = json.eps;
  if (typeof eps !== 'number' || !(eps > 0)) throw new PipelineError(`${f}: 'eps' must be a positive number, got ${show(eps)}`);
  const fields = {
    dim: heads * headDim,
    ffnDim: positiveInt(f, json, 'ffn_dim'),
    layers: positiveInt(f, json, 'num_layers'),
    heads,
    textDim: positiveInt(f, json, 'text_dim'),
    textLen,
    freqDim: positiveInt(f, json, 'freq_dim'),
    latentChannels: 16,
    eps,
    ropeTheta: 10000,
  };
  const known = Object.values(MODEL_CONFIGS).find((c) => (Object.keys(fields) as (keyof typeof fields)[]).every((k) => c[k] === fields[k]));
  const config: ModelConfig = { name: known?.name ?? fallbackName, ...fields };
  try {
    return validateConfig(config);
  } catch (e) {
    throw new PipelineError(`${f}: ${(e as Error).message}`);
  }
}

/** The transformer config.json that describes `c` (what `model write` emits). */
export function transformerConfigJson(c: ModelConfig): Json {
  return {
    _class_name: 'WanTransformer3DModel',
    _diffusers_version: '0.33.0',
    added_kv_proj_dim: null,
    attention_head_dim: c.dim / c.heads,
    cross_attn_norm: true,
    eps: c.eps,
    ffn_dim: c.ffnDim,
    freq_dim: c.freqDim,
    image_dim: null,
    in_channels: c.latentChannels,
    num_attention_heads: c.heads,
    num_layers: c.layers,
    out_channels: c.latentChannels,
    patch_size: [1, 2, 2],
    qk_norm: 'rms_norm_across_heads',
    rope_max_seq_len: 1024,
    text_dim: c.textDim,
  };
}

// ---------------------------------------------------------------------------------------------
// text_encoder/config.json (a transformers UMT5Config)

/** The encoder config of a UMT5 config.json (the decoder fields of a full UMT5 config are unused). */
export function parseUmt5Config(json: Json, name: string): Umt5Config {
  const f = TEXT_ENCODER_CONFIG_FILE;
  requireValue(f, json, 'model_type', ['umt5'], 'the text encoder is umT5');
  if ('architectures' in json) requireValue(f, json, 'architectures', [['UMT5EncoderModel']], 'only the encoder is used');
  requireValue(f, json, 'feed_forward_proj', ['gated-gelu'], "umT5's feed-forward is gated GELU (tanh)");
  requireValue(f, json, 'is_gated_act', [true], 'gated-gelu', true);
  requireValue(f, json, 'dense_act_fn', ['gelu_new'], 'gated-gelu uses the tanh GELU', true);
  const eps = json.layer_norm_epsilon;
  if (typeof eps !== 'number' || !(eps > 0)) throw new PipelineError(`${f}: 'layer_norm_epsilon' must be a positive number, got ${show(eps)}`);
  return {
    name,
    vocabSize: positiveInt(f, json, 'vocab_size'),
    dModel: positiveInt(f, json, 'd_model'),
    dKv: positiveInt(f, json, 'd_kv'),
    dFf: positiveInt(f, json, 'd_ff'),
    layers: positiveInt(f, json, 'num_layers'),
    heads: positiveInt(f, json, 'num_heads'),
    relativeBuckets: positiveInt(f, json, 'relative_attention_num_buckets'),
    relativeMaxDistance: positiveInt(f, json, 'relative_attention_max_distance'),
    eps,
  };
}

/** The text_encoder config.json for `c`, with the fields google/umt5-xxl's config has. */
export function umt5ConfigJson(c: Umt5Config): Json {
  return {
    architectures: ['UMT5EncoderModel'],
    classifier_dropout: 0.0,
    d_ff: c.dFf,
    d_kv: c.dKv,
    d_model: c.dModel,
    decoder_start_token_id: 0,
    dense_act_fn: 'gelu_new',
    dropout_rate: 0.1,
    eos_token_id: 1,
    feed_forward_proj: 'gated-gelu',
    initializer_factor: 1.0,
    is_encoder_decoder: true,
    is_gated_act: true,
    layer_norm_epsilon: c.eps,
    model_type: 'umt5',
    num_decoder_layers: c.layers,
    num_heads: c.heads,
    num_layers: c.layers,
    pad_token_id: 0,
    relative_attention_max_distance: c.relativeMaxDistance,
    relative_attention_num_buckets: c.relativeBuckets,
    scalable_attention: true,
    tie_word_embeddings: false,
    tokenizer_class: 'T5Tokenizer',
    vocab_size: c.vocabSize,
  };
}

// ---------------------------------------------------------------------------------------------
// vae/config.json

/** Keys of AutoencoderKLWan's config.json (diffusers' register_to_config arguments). */
const VAE_KEYS = [
  '_class_name', '_diffusers_version', '_name_or_path',
  'base_dim', 'decoder_base_dim', 'z_dim', 'dim_mult', 'num_res_blocks', 'attn_scales', 'temperal_downsample', 'dropout',
  'latents_mean', 'latents_std', 'is_residual', 'in_channels', 'out_channels', 'patch_size', 'scale_factor_temporal', 'scale_factor_spatial', 'clip_output',
] as const;

function numberList(file: string, json: Json, key: string, fallback: readonly number[], integers: boolean): readonly number[] {
  if (!(key in json)) return fallback;
  const v = json[key];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && (!integers || (Number.isInteger(x) && x > 0)))) {
    throw new PipelineError(`${file}: '${key}' must be a list of ${integers ? 'positive integers' : 'numbers'}, got ${show(v)}`);
  }
  return v as number[];
}

/**
 * The decoder config of a Wan2.1 AutoencoderKLWan config.json. Absent keys take diffusers'
 * defaults (Wan2.1's values), as from_pretrained does; Wan2.2's residual VAE, patching and other
 * channel counts are refused. A config equal to a known one takes its name.
 */
export function parseVaeConfig(json: Json): VaeConfig {
  const f = VAE_CONFIG_FILE;
  if (json._class_name !== 'AutoencoderKLWan') throw new PipelineError(`${f}: class ${show(json._class_name)} is not supported (AutoencoderKLWan)`);
  for (const key of Object.keys(json)) {
    if (!(VAE_KEYS as readonly string[]).includes(key)) throw new PipelineError(`${f}: unknown key '${key}' (Longshot does not know what it changes)`);
  }
  requireValue(f, json, 'z_dim', [16], "Wan2.1's VAE has 16 latent channels (Wan2.2's TI2V VAE has 48)");
  requireValue(f, json, 'is_residual', [false], "Wan2.1's VAE (Wan2.2's residual up blocks are not supported)", true);
  requireValue(f, json, 'patch_size', [null], "Wan2.1's VAE does not patchify", true);
  requireValue(f, json, 'in_channels', [3], 'RGB video', true);
  requireValue(f, json, 'out_channels', [3], 'RGB video', true);
  requireValue(f, json, 'clip_output', [true], 'the decoder clamps its output to [-1, 1]', true);
  const baseDim = json.base_dim === undefined ? WAN21_VAE.baseDim : positiveInt(f, json, 'base_dim');
  const decoderBaseDim = json.decoder_base_dim === undefined || json.decoder_base_dim === null ? baseDim : positiveInt(f, json, 'decoder_base_dim');
  const dimMult = numberList(f, json, 'dim_mult', WAN21_VAE.dimMult, true);
  const numResBlocks = json.num_res_blocks === undefined ? WAN21_VAE.numResBlocks : positiveInt(f, json, 'num_res_blocks');
  let temporalDownsample = WAN21_VAE.temporalDownsample;
  if ('temperal_downsample' in json) {
    const v = json.temperal_downsample;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'boolean')) throw new PipelineError(`${f}: 'temperal_downsample' must be a list of booleans, got ${show(v)}`);
    temporalDownsample = v as boolean[];
  }
  const fields = {
    baseDim: decoderBaseDim,
    zDim: 16,
    dimMult,
    numResBlocks,
    temporalDownsample,
    latentsMean: numberList(f, json, 'latents_mean', WAN21_VAE.latentsMean, false),
    latentsStd: numberList(f, json, 'latents_std', WAN21_VAE.latentsStd, false),
  };
  const same = (c: VaeConfig) => (Object.keys(fields) as (keyof typeof fields)[]).every((k) => JSON.stringify(c[k]) === JSON.stringify(fields[k]));
  const known = [WAN21_VAE, ...Object.values(SEEDED_VAE)].find(same);
  const config: VaeConfig = { name: known?.name ?? 'vae', ...fields };
  try {
    validateVaeConfig(config);
  } catch (e) {
    throw new PipelineError(`${f}: ${(e as Error).message}`);
  }
  const spatial = 2 ** (dimMult.length - 1);
  const temporal = 2 ** temporalDownsample.filter(Boolean).length;
  requireValue(f, json, 'scale_factor_spatial', [spatial], `dim_mult has ${dimMult.length} stages`, true);
  requireValue(f, json, 'scale_factor_temporal', [temporal], `temperal_downsample has ${temporalDownsample.filter(Boolean).length} temporal stages`, true);
  return config;
}

/** The AutoencoderKLWan config.json for `c` (Wan2.1's layout; diffusers' keys). */
export function vaeConfigJson(c: VaeConfig): Json {
  return {
    _class_name: 'AutoencoderKLWan',
    _diffusers_version: '0.33.0',
    attn_scales: [],
    base_dim: c.baseDim,
    dim_mult: [...c.dimMult],
    dropout: 0.0,
    latents_mean: [...c.latentsMean],
    latents_std: [...c.latentsStd],
    num_res_blocks: c.numResBlocks,
    temperal_downsample: [...c.temporalDownsample],
    z_dim: c.zDim,
  };
}

/**
 * Checks the VAE's tensor names and shapes against the config: every decoder tensor present with
 * its shape; the encoder's tensors (unused by decoding) accepted; anything else refused.
 */
export function checkVaeTensors(file: string, c: VaeConfig, shapes: ReadonlyMap<string, readonly number[]>): void {
  const specs = vaeDecoderTensorSpecs(c);
  const expected = new Map(specs.map((s) => [s.name, s.shape]));
  for (const [name, shape] of shapes) {
    const want = expected.get(name);
    if (!want) {
      if (isVaeEncoderTensor(name)) continue;
      throw new PipelineError(`${file}: unknown tensor '${name}' (not part of an AutoencoderKLWan with this config)`);
    }
    if (want.length !== shape.length || want.some((d, i) => d !== shape[i])) {
      throw new PipelineError(`${file}: tensor '${name}': expected [${want.join(', ')}], file has [${shape.join(', ')}]`);
    }
  }
  const missing = specs.map((s) => s.name).filter((n) => !shapes.has(n));
  if (missing.length > 0) throw new PipelineError(`${file}: missing tensor${missing.length > 1 ? 's' : ''} ${missing.slice(0, 4).map((n) => `'${n}'`).join(', ')}${missing.length > 4 ? ` and ${missing.length - 4} more` : ''}`);
}

/** The model_index.json of a Wan2.1 text-to-video pipeline. */
export function modelIndexJson(): Json {
  return {
    _class_name: 'WanPipeline',
    _diffusers_version: '0.33.0',
    scheduler: ['diffusers', 'UniPCMultistepScheduler'],
    text_encoder: ['transformers', 'UMT5EncoderModel'],
    tokenizer: ['transformers', 'T5TokenizerFast'],
    transformer: ['diffusers', 'WanTransformer3DModel'],
    vae: ['diffusers', 'AutoencoderKLWan'],
  };
}

// ---------------------------------------------------------------------------------------------
// tokenizer_config.json

/**
 * Tokens the text encoder sees: Wan's 512, or fewer when tokenizer_config.json's
 * model_max_length says so (the small seeded pipelines use their DiT's textLen).
 */
export function textLenOf(tokenizerConfig: Json | null): number {
  const m = tokenizerConfig?.model_max_length;
  if (m === undefined || m === null) return WAN_TEXT_LEN;
  if (typeof m !== 'number' || !(m >= 2)) throw new PipelineError(`${TOKENIZER_CONFIG_FILE}: 'model_max_length' must be a number >= 2, got ${show(m)}`);
  return Math.min(WAN_TEXT_LEN, Math.floor(m));
}

// ---------------------------------------------------------------------------------------------
// Weight index (*.safetensors.index.json) and tensor names

/** Tensor name -> shard file name (relative to the component directory). */
export function parseWeightIndex(file: string, json: Json): ReadonlyMap<string, string> {
  const map = json.weight_map;
  if (!isObject(map)) throw new PipelineError(`${file}: 'weight_map' must be an object of tensor name -> file name`);
  const out = new Map<string, string>();
  for (const [name, shard] of Object.entries(map)) {
    if (typeof shard !== 'string' || shard === '' || shard.includes('/') || shard.includes('\\') || shard.startsWith('.')) {
      throw new PipelineError(`${file}: weight_map['${name}'] must be a file name in the same directory, got ${show(shard)}`);
    }
    out.set(name, shard);
  }
  if (out.size === 0) throw new PipelineError(`${file}: weight_map is empty`);
  return out;
}

/** Tensor-name fragments of image-to-video checkpoints, and what they are. */
const IMAGE_TO_VIDEO_TENSORS: readonly [RegExp, string][] = [
  [/(^|\.)image_embedder\./, 'image embedder'],
  [/\.add_[kv]_proj\./, 'image key/value projection'],
  [/\.norm_added_[kq]\./, 'image key norm'],
];

/**
 * Checks the transformer's tensor names against the config: every expected tensor present, no
 * tensor unknown. Image-to-video tensors get their own reason. Shapes are checked when a stage
 * loads (from the header, before reading data).
 */
export function checkTransformerTensors(file: string, config: ModelConfig, names: Iterable<string>): void {
  const expected = new Set(weightSpecs(config, { l0: 0, l1: config.layers, head: true, tail: true }).map((s) => s.name));
  const present = new Set(names);
  for (const name of present) {
    if (expected.has(name)) continue;
    const i2v = IMAGE_TO_VIDEO_TENSORS.find(([re]) => re.test(name));
    if (i2v) throw new PipelineError(`${file}: tensor '${name}' (${i2v[1]}) belongs to an image-to-video checkpoint, which is not supported`);
    throw new PipelineError(`${file}: unknown tensor '${name}' (not part of a ${config.layers}-layer WanTransformer3DModel with this config)`);
  }
  const missing = [...expected].filter((n) => !present.has(n));
  if (missing.length > 0) {
    throw new PipelineError(`${file}: missing tensor${missing.length > 1 ? 's' : ''} ${missing.slice(0, 4).map((n) => `'${n}'`).join(', ')}${missing.length > 4 ? ` and ${missing.length - 4} more` : ''}`);
  }
}

/**
 * The tied copy of the token embedding some UMT5 exports carry next to `shared.weight`; when
 * present it must be the same shape (and is not read: `shared.weight` is the table).
 */
export const TIED_EMBEDDING = 'encoder.embed_tokens.weight';

export function checkTextEncoderTensors(file: string, c: Umt5Config, shapes: ReadonlyMap<string, readonly number[]>): void {
  const specs = umt5TensorSpecs(c);
  const expected = new Map(specs.map((s) => [s.name, s.shape]));
  for (const [name, shape] of shapes) {
    if (name === TIED_EMBEDDING) {
      const table = expected.get('shared.weight')!;
      if (shape.length !== 2 || shape[0] !== table[0] || shape[1] !== table[1]) {
        throw new PipelineError(`${file}: tensor '${name}' (tied to 'shared.weight') has shape [${shape.join(', ')}], expected [${table.join(', ')}]`);
      }
      continue;
    }
    const want = expected.get(name);
    if (!want) throw new PipelineError(`${file}: unknown tensor '${name}' (not part of a ${c.layers}-layer UMT5EncoderModel with this config)`);
    if (want.length !== shape.length || want.some((d, i) => d !== shape[i])) {
      throw new PipelineError(`${file}: tensor '${name}': expected [${want.join(', ')}], file has [${shape.join(', ')}]`);
    }
  }
  const missing = specs.map((s) => s.name).filter((n) => !shapes.has(n) && !(n === 'shared.weight' && shapes.has(TIED_EMBEDDING)));
  if (missing.length > 0) throw new PipelineError(`${file}: missing tensor${missing.length > 1 ? 's' : ''} ${missing.slice(0, 4).map((n) => `'${n}'`).join(', ')}${missing.length > 4 ? ` and ${missing.length - 4} more` : ''}`);
}
