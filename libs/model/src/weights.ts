/**
 * Model weights for a pipeline stage: either drawn from a seed (so a cluster can run a model
 * nobody downloaded, and every stage agrees on it without shipping bytes) or loaded from a
 * diffusers-named safetensors checkpoint, reading only the stage's own layer range.
 */
import * as path from 'path';
import { Rng } from '@longshot/random';
import { MODEL_CONFIGS, ModelConfig, StageRange, TensorSpec, validateConfig, weightSpecs } from './config';
import { formatShape } from '@longshot/dtype';
import { SafetensorsDtype, SafetensorsFile, TensorInput, writeSafetensors } from './safetensors';
import { StageWeights } from './weights-types';

/** Metadata key holding the JSON ModelConfig of a checkpoint written by Longshot. */
export const CONFIG_METADATA_KEY = 'longshot.config';
/** Metadata key holding the seed a seeded checkpoint was drawn from. */
export const SEED_METADATA_KEY = 'longshot.seed';

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * The seeded init of one tensor. It depends only on (seed, tensor name), never on which stage
 * asks or in which order, so two stages sharing the condition embedders hold identical copies.
 * 'table' follows Wan, which inits scale_shift_table as randn / sqrt(dim).
 */
export function seededTensor(spec: TensorSpec, seed: number): Float32Array {
  if (!Number.isFinite(seed)) throw new Error(`seededTensor ${spec.name}: seed must be a finite number, got ${seed}`);
  const out = new Float32Array(numel(spec.shape));
  switch (spec.init) {
    case 'ones':
      return out.fill(1);
    case 'zeros':
      return out;
    case 'normal':
    case 'table': {
      if (!spec.fanIn || !(spec.fanIn > 0)) throw new Error(`seededTensor ${spec.name}: init '${spec.init}' needs a positive fanIn`);
      return Rng.from(seed, 'weights', spec.name).fillNormal(out, 1 / Math.sqrt(spec.fanIn));
    }
    default: {
      const never: never = spec.init;
      throw new Error(`seededTensor ${spec.name}: unknown init '${String(never)}'`);
    }
  }
}

function checkRange(config: ModelConfig, range: StageRange, where: string): void {
  if (!Number.isInteger(range.l0) || !Number.isInteger(range.l1) || range.l0 < 0 || range.l1 < range.l0 || range.l1 > config.layers) {
    throw new Error(`${where}: stage layers [${range.l0}, ${range.l1}) are not within the model's ${config.layers} layers`);
  }
}

/** The seeded weights of one stage: exactly the tensors of weightSpecs(config, range). */
export function seededStageWeights(config: ModelConfig, range: StageRange, seed: number): StageWeights {
  validateConfig(config);
  checkRange(config, range, `seeded weights of ${config.name}`);
  const m = new Map<string, Float32Array>();
  for (const spec of weightSpecs(config, range)) m.set(spec.name, seededTensor(spec, seed));
  return m;
}

/**
 * Writes the whole model (every layer, head and tail) drawn from `seed`, with the config and
 * seed in the metadata so loadStageWeights needs nothing else. Tensors are generated one at a
 * time while writing, so even the 14B config streams to disk.
 */
export function writeSeededModel(file: string, config: ModelConfig, seed: number, dtype: SafetensorsDtype = 'F32'): void {
  validateConfig(config);
  const specs = weightSpecs(config, { l0: 0, l1: config.layers, head: true, tail: true });
  const tensors: TensorInput[] = specs.map((spec) => ({ name: spec.name, shape: spec.shape, dtype, data: () => seededTensor(spec, seed) }));
  writeSafetensors(file, tensors, {
    format: 'pt',
    [CONFIG_METADATA_KEY]: JSON.stringify(config),
    [SEED_METADATA_KEY]: String(seed),
  });
}

function configFromMetadata(file: string, json: string): ModelConfig {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (e) {
    throw new Error(`${file}: metadata '${CONFIG_METADATA_KEY}' is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null) throw new Error(`${file}: metadata '${CONFIG_METADATA_KEY}' must be a JSON object`);
  const c = parsed as Record<string, unknown>;
  const numeric = ['dim', 'ffnDim', 'layers', 'heads', 'textDim', 'textLen', 'freqDim', 'latentChannels', 'eps', 'ropeTheta'] as const;
  for (const k of numeric) {
    if (typeof c[k] !== 'number') throw new Error(`${file}: metadata '${CONFIG_METADATA_KEY}' lacks numeric field '${k}'`);
  }
  const config: ModelConfig = {
    name: typeof c.name === 'string' ? c.name : path.basename(file),
    dim: c.dim as number,
    ffnDim: c.ffnDim as number,
    layers: c.layers as number,
    heads: c.heads as number,
    textDim: c.textDim as number,
    textLen: c.textLen as number,
    freqDim: c.freqDim as number,
    latentChannels: c.latentChannels as number,
    eps: c.eps as number,
    ropeTheta: c.ropeTheta as number,
  };
  try {
    return validateConfig(config);
  } catch (e) {
    throw new Error(`${file}: metadata '${CONFIG_METADATA_KEY}': ${(e as Error).message}`);
  }
}

/**
 * Infers the config of a checkpoint without Longshot metadata (e.g. a diffusers Wan2.1 export)
 * from tensor shapes. Heads cannot be read from shapes; Wan always uses head dim 128, so a
 * checkpoint whose widths and depth match a known config takes that config (heads, textLen
 * included), and any other takes heads = dim / 128 and umT5's 512 text tokens.
 */
export function inferConfig(st: SafetensorsFile): ModelConfig {
  const file = st.path;
  const need = (name: string, rank: number): readonly number[] => {
    if (!st.has(name)) {
      throw new Error(`${file}: cannot infer the model config: no '${CONFIG_METADATA_KEY}' metadata and no tensor '${name}'`);
    }
    const s = st.info(name).shape;
    if (s.length !== rank) throw new Error(`${file}: cannot infer the model config: tensor '${name}' has shape ${formatShape(s)}, expected rank ${rank}`);
    return s;
  };
  const dim = need('condition_embedder.time_embedder.linear_2.weight', 2)[0];
  const freqDim = need('condition_embedder.time_embedder.linear_1.weight', 2)[1];
  const textDim = need('condition_embedder.text_embedder.linear_1.weight', 2)[1];
  const blockIdx = new Set<number>();
  for (const n of st.tensorNames()) {
    const m = /^blocks\.(\d+)\.scale_shift_table$/.exec(n);
    if (m) blockIdx.add(Number(m[1]));
  }
  const layers = blockIdx.size;
  if (layers === 0) throw new Error(`${file}: cannot infer the model config: no blocks.N.scale_shift_table tensors`);
  for (let i = 0; i < layers; i++) {
    if (!blockIdx.has(i)) throw new Error(`${file}: cannot infer the model config: blocks are not numbered 0..${layers - 1} (block ${i} missing)`);
  }
  const ffnDim = need('blocks.0.ffn.net.0.proj.weight', 2)[0];
  let latentChannels = 16;
  if (st.has('patch_embedding.weight')) latentChannels = need('patch_embedding.weight', 5)[1];
  else if (st.has('proj_out.weight')) latentChannels = need('proj_out.weight', 2)[0] / 4;

  const known = Object.values(MODEL_CONFIGS).find(
    (c) => c.dim === dim && c.ffnDim === ffnDim && c.layers === layers && c.textDim === textDim && c.freqDim === freqDim && c.latentChannels === latentChannels,
  );
  if (known) return known;
  if (dim % 128 !== 0) {
    throw new Error(
      `${file}: cannot infer the model config: dim ${dim} is not a multiple of Wan's head dim 128, so heads are unknown; write the file with '${CONFIG_METADATA_KEY}' metadata`,
    );
  }
  const config: ModelConfig = {
    name: path.basename(file),
    dim,
    ffnDim,
    layers,
    heads: dim / 128,
    textDim,
    textLen: 512,
    freqDim,
    latentChannels,
    eps: 1e-6,
    ropeTheta: 10000,
  };
  try {
    return validateConfig(config);
  } catch (e) {
    throw new Error(`${file}: inferred config is invalid: ${(e as Error).message}`);
  }
}

/** The model config of a checkpoint (metadata or inferred from shapes); reads no tensor data. */
export function readModelConfig(file: string): ModelConfig {
  const st = SafetensorsFile.open(file);
  try {
    const meta = st.metadata[CONFIG_METADATA_KEY];
    return meta !== undefined ? configFromMetadata(file, meta) : inferConfig(st);
  } finally {
    st.close();
  }
}

/**
 * Loads one stage's weights from a checkpoint. Every tensor the stage needs is checked for
 * presence and shape from the header before any data is read, so a bad file fails fast with
 * the full list of problems; then only those tensors are read.
 */
export function loadStageWeights(file: string, range: StageRange): { config: ModelConfig; weights: StageWeights } {
  const st = SafetensorsFile.open(file);
  try {
    const meta = st.metadata[CONFIG_METADATA_KEY];
    const config = meta !== undefined ? configFromMetadata(file, meta) : inferConfig(st);
    checkRange(config, range, `${file}`);
    const specs = weightSpecs(config, range);
    const problems: string[] = [];
    for (const spec of specs) {
      if (!st.has(spec.name)) {
        problems.push(`missing tensor '${spec.name}'`);
        continue;
      }
      const s = st.info(spec.name).shape;
      if (s.length !== spec.shape.length || s.some((d, i) => d !== spec.shape[i])) {
        problems.push(`tensor '${spec.name}': expected ${formatShape(spec.shape)}, file has ${formatShape(s)}`);
      }
    }
    if (problems.length > 0) {
      const shown = problems.slice(0, 8).join('; ');
      const more = problems.length > 8 ? `; and ${problems.length - 8} more` : '';
      throw new Error(`${file}: not a valid ${config.name} checkpoint for layers [${range.l0}, ${range.l1}): ${shown}${more}`);
    }
    const weights = new Map<string, Float32Array>();
    for (const spec of specs) weights.set(spec.name, st.read(spec.name, spec.shape));
    return { config, weights };
  } finally {
    st.close();
  }
}
