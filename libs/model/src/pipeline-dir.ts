/**
 * The file adapter of a diffusers pipeline directory: the one place that reads (and, for
 * `model write`, writes) its files. Parsing and validation are the pure functions of
 * ./pipeline-config and ./tokenizer; this module feeds them file contents and safetensors
 * headers, and reads tensor bytes with positioned reads of only the tensors asked for, from
 * whichever shards hold them.
 *
 * Errors name files relative to the model directory (`transformer/diffusion_pytorch_model-00002-
 * of-00003.safetensors`), never the directory's place on the server.
 */
import { parseSchedulerConfig, SchedulerConfigError, schedulerConfigJson, WAN_SCHEDULER_CONFIG, type SchedulerConfig } from '@longshot/sampler';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { weightSpecs, type ModelConfig, type StageRange, type TensorSpec } from './config';
import {
  checkTextEncoderTensors,
  checkTransformerTensors,
  checkVaeTensors,
  MODEL_INDEX_FILE,
  modelIndexJson,
  parseJsonFile,
  parseModelIndex,
  parseTransformerConfig,
  parseUmt5Config,
  parseVaeConfig,
  parseWeightIndex,
  PipelineError,
  SCHEDULER_CONFIG_FILE,
  shardFileName,
  TEXT_ENCODER_CONFIG_FILE,
  textLenOf,
  TIED_EMBEDDING,
  TOKENIZER_CONFIG_FILE,
  TOKENIZER_FILE,
  TRANSFORMER_CONFIG_FILE,
  transformerConfigJson,
  umt5ConfigJson,
  VAE_CONFIG_FILE,
  vaeConfigJson,
  WEIGHT_FILES,
  type ModelIndex,
  type WeightComponent,
} from './pipeline-config';
import { formatShape } from '@longshot/dtype';
import { SafetensorsFile, writeSafetensors, writeSafetensorsLayout, type SafetensorsDtype, type TensorInfo, type TensorInput } from './safetensors';
import { PromptTokenizer, seededTokenizerConfigJson, seededTokenizerJson } from './tokenizer';
import { SEEDED_UMT5, UMT5_XXL, umt5TensorSpecs, type Umt5Config } from './umt5-config';
import { SEEDED_VAE, vaeDecoderTensorSpecs, WAN21_VAE, type VaeConfig } from './vae-config';
import type { VaeWeights } from './vae';
import { seededTensor } from './weights';
import type { StageWeights } from './weights-types';

/** True when `p` is a directory holding a model_index.json. */
export function isPipelineDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory() && fs.existsSync(path.join(p, MODEL_INDEX_FILE));
  } catch {
    return false;
  }
}

function readText(root: string, rel: string): string | null {
  try {
    return fs.readFileSync(path.join(root, rel), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new PipelineError(`${rel}: cannot read (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
}

/** The scheduler's config, through the sampler's own parser; errors name the file and the key. */
function readSchedulerConfig(dir: string): SchedulerConfig {
  try {
    return parseSchedulerConfig(readJson(dir, SCHEDULER_CONFIG_FILE));
  } catch (e) {
    if (e instanceof SchedulerConfigError) throw new PipelineError(`${SCHEDULER_CONFIG_FILE}: ${e.message}`);
    throw e;
  }
}

function readJson(root: string, rel: string): Record<string, unknown> {
  const text = readText(root, rel);
  if (text === null) throw new PipelineError(`${rel}: missing`);
  return parseJsonFile(rel, text);
}

/** Where one tensor lives: the shard (relative name) and its header entry. */
export interface TensorLocation {
  readonly shard: string;
  readonly info: TensorInfo;
}

/**
 * The weights of one component, one file or sharded. Opening reads every shard's header (a few
 * kilobytes each) and checks the index against them; reads open only the shards they need.
 */
export class ComponentWeights {
  private constructor(
    private readonly root: string,
    readonly component: WeightComponent,
    /** Relative names of the weight files, in order. */
    readonly shards: readonly string[],
    readonly tensors: ReadonlyMap<string, TensorLocation>,
    /** Where the index (or the single file) is, for messages about the whole component. */
    readonly label: string,
  ) {}

  static open(root: string, component: WeightComponent): ComponentWeights {
    const { dir, single } = WEIGHT_FILES[component];
    const indexRel = `${dir}/${single}.index.json`;
    const indexText = readText(root, indexRel);
    const tensors = new Map<string, TensorLocation>();
    if (indexText === null) {
      const rel = `${dir}/${single}`;
      if (!fs.existsSync(path.join(root, rel))) throw new PipelineError(`${dir}/: no weights (${single}, or ${single}.index.json with its shards)`);
      for (const info of headerOf(root, rel)) tensors.set(info.name, { shard: rel, info });
      return new ComponentWeights(root, component, [rel], tensors, rel);
    }
    const weightMap = parseWeightIndex(indexRel, parseJsonFile(indexRel, indexText));
    const shardNames = [...new Set(weightMap.values())].sort();
    for (const shardName of shardNames) {
      const rel = `${dir}/${shardName}`;
      if (!fs.existsSync(path.join(root, rel))) throw new PipelineError(`${indexRel}: weight_map names ${rel}, which does not exist`);
    }
    for (const shardName of shardNames) {
      const rel = `${dir}/${shardName}`;
      for (const info of headerOf(root, rel)) {
        const mapped = weightMap.get(info.name);
        if (mapped !== shardName) {
          throw new PipelineError(`${rel}: tensor '${info.name}' is ${mapped === undefined ? 'not in' : `mapped to ${dir}/${mapped} by`} ${indexRel}`);
        }
        tensors.set(info.name, { shard: rel, info });
      }
    }
    for (const [name, shardName] of weightMap) {
      if (!tensors.has(name)) throw new PipelineError(`${dir}/${shardName}: has no tensor '${name}' (${indexRel} says it does)`);
    }
    return new ComponentWeights(root, component, shardNames.map((s) => `${dir}/${s}`), tensors, indexRel);
  }

  shapes(): Map<string, readonly number[]> {
    return new Map([...this.tensors].map(([n, t]) => [n, t.info.shape]));
  }

  /** Bytes stored on disk for these tensors (their dtype, not float32). */
  storedBytes(names: Iterable<string>): number {
    let n = 0;
    for (const name of names) {
      const t = this.tensors.get(name);
      if (t) n += t.info.end - t.info.begin;
    }
    return n;
  }

  /**
   * Reads the given tensors, each checked against its expected shape from the header first
   * (every problem listed before any data is read), each shard opened once.
   */
  read(specs: readonly Pick<TensorSpec, 'name' | 'shape'>[]): Map<string, Float32Array> {
    const problems: string[] = [];
    for (const spec of specs) {
      const t = this.tensors.get(spec.name);
      if (!t) problems.push(`missing tensor '${spec.name}'`);
      else if (t.info.shape.length !== spec.shape.length || t.info.shape.some((d, i) => d !== spec.shape[i])) {
        problems.push(`${t.shard}: tensor '${spec.name}': expected ${formatShape(spec.shape)}, file has ${formatShape(t.info.shape)}`);
      }
    }
    if (problems.length > 0) throw new PipelineError(`${this.label}: ${problems.slice(0, 8).join('; ')}${problems.length > 8 ? `; and ${problems.length - 8} more` : ''}`);
    const byShard = new Map<string, string[]>();
    for (const spec of specs) {
      const shard = this.tensors.get(spec.name)!.shard;
      byShard.set(shard, [...(byShard.get(shard) ?? []), spec.name]);
    }
    const out = new Map<string, Float32Array>();
    for (const [shard, names] of byShard) {
      this.withShard(shard, (st) => names.forEach((n) => out.set(n, st.read(n))));
    }
    // In the caller's order, whatever the shard order.
    return new Map(specs.map((s) => [s.name, out.get(s.name)!]));
  }

  private withShard<T>(rel: string, fn: (st: SafetensorsFile) => T): T {
    const st = SafetensorsFile.open(path.join(this.root, rel), rel);
    try {
      return fn(st);
    } finally {
      st.close();
    }
  }
}

function headerOf(root: string, rel: string): TensorInfo[] {
  const st = SafetensorsFile.open(path.join(root, rel), rel);
  try {
    return st.tensorNames().map((n) => st.info(n));
  } finally {
    st.close();
  }
}

/** An opened, validated pipeline directory. */
export interface PipelineDir {
  readonly index: ModelIndex;
  readonly config: ModelConfig;
  readonly textEncoderConfig: Umt5Config;
  readonly scheduler: SchedulerConfig;
  readonly vae: VaeConfig;
  readonly tokenizer: PromptTokenizer;
  readonly transformer: ComponentWeights;
  readonly textEncoder: ComponentWeights;
  readonly vaeWeights: ComponentWeights;
  /** The text encoder's token embedding table: `shared.weight`, or its tied copy when alone. */
  readonly embeddingTable: string;
}

/** A known encoder's name when every field matches it, else 'umt5'. */
function umt5Name(c: Umt5Config): string {
  const fields = (Object.keys(c) as (keyof Umt5Config)[]).filter((f) => f !== 'name');
  const same = (k: Umt5Config) => fields.every((f) => k[f] === c[f]);
  return [UMT5_XXL, ...Object.values(SEEDED_UMT5)].find(same)?.name ?? 'umt5';
}

/**
 * Opens a pipeline directory: every config file parsed and checked, every weight file's header
 * read and its tensor names checked against the configs. Reads no tensor data.
 */
export function openPipelineDir(dir: string): PipelineDir {
  if (!isPipelineDir(dir)) throw new PipelineError(`${path.basename(dir)}: not a pipeline directory (no ${MODEL_INDEX_FILE})`);
  const index = parseModelIndex(readJson(dir, MODEL_INDEX_FILE));
  const scheduler = readSchedulerConfig(dir);
  const vae = parseVaeConfig(readJson(dir, VAE_CONFIG_FILE));
  const tokenizerConfigText = readText(dir, TOKENIZER_CONFIG_FILE);
  const tokenizerConfig = tokenizerConfigText === null ? null : parseJsonFile(TOKENIZER_CONFIG_FILE, tokenizerConfigText);
  const textLen = textLenOf(tokenizerConfig);
  const config = parseTransformerConfig(readJson(dir, TRANSFORMER_CONFIG_FILE), textLen, path.basename(path.resolve(dir)));
  const parsedUmt5 = parseUmt5Config(readJson(dir, TEXT_ENCODER_CONFIG_FILE), 'umt5');
  const textEncoderConfig = { ...parsedUmt5, name: umt5Name(parsedUmt5) };
  if (textEncoderConfig.dModel !== config.textDim) {
    throw new PipelineError(`${TEXT_ENCODER_CONFIG_FILE}: d_model ${textEncoderConfig.dModel} does not match the transformer's text_dim ${config.textDim} (${TRANSFORMER_CONFIG_FILE})`);
  }
  const tokenizer = new PromptTokenizer(readJson(dir, TOKENIZER_FILE), tokenizerConfig, textLen, textEncoderConfig.vocabSize);
  const transformer = ComponentWeights.open(dir, 'transformer');
  checkTransformerTensors(transformer.label, config, transformer.tensors.keys());
  const textEncoder = ComponentWeights.open(dir, 'text_encoder');
  checkTextEncoderTensors(textEncoder.label, textEncoderConfig, textEncoder.shapes());
  const embeddingTable = textEncoder.tensors.has('shared.weight') ? 'shared.weight' : TIED_EMBEDDING;
  const vaeWeights = ComponentWeights.open(dir, 'vae');
  checkVaeTensors(vaeWeights.label, vae, vaeWeights.shapes());
  return { index, config, textEncoderConfig, scheduler, vae, tokenizer, transformer, textEncoder, vaeWeights, embeddingTable };
}

/** The VAE decoder's weights (post_quant_conv and decoder.*; the encoder is never read). */
export function loadPipelineVae(p: PipelineDir): VaeWeights {
  return p.vaeWeights.read(vaeDecoderTensorSpecs(p.vae));
}

/** One stage's transformer weights: only its tensors, from whichever shards hold them. */
export function loadPipelineStage(p: PipelineDir, range: StageRange): StageWeights {
  return p.transformer.read(weightSpecs(p.config, range));
}

// ---------------------------------------------------------------------------------------------
// Writing a seeded pipeline directory

export interface SeededPipelineOptions {
  readonly config: ModelConfig;
  readonly seed: number;
  /** Weight files per component (1: a single file, no index). */
  readonly shards: number;
  readonly dtype: SafetensorsDtype;
  /**
   * Write the layout only (headers, files extended without data: all-zero sparse files), for
   * inspecting and measuring a real model's layout without its values.
   */
  readonly layoutOnly?: boolean;
}

/** The text encoder of a seeded DiT config: a seeded umT5 of matching width, or umT5-XXL. */
export function seededTextEncoderConfig(config: ModelConfig): Umt5Config {
  const own = SEEDED_UMT5[config.name];
  if (own) return own;
  if (config.textDim === UMT5_XXL.dModel) return UMT5_XXL;
  throw new PipelineError(`model ${config.name}: no seeded text encoder of width ${config.textDim} (known: ${Object.keys(SEEDED_UMT5).join(', ')}, and umT5-XXL for textDim 4096)`);
}

/** The VAE of a seeded DiT config: a small one of Wan2.1's architecture, or Wan2.1's own. */
export function seededVaeConfig(config: ModelConfig): VaeConfig {
  return SEEDED_VAE[config.name] ?? WAN21_VAE;
}

/** Splits tensors into `n` contiguous groups of about equal bytes, in order. */
function splitIntoShards<T extends { shape: readonly number[] }>(tensors: readonly T[], n: number, where: string): T[][] {
  if (!Number.isInteger(n) || n < 1) throw new PipelineError(`${where}: shards must be a positive integer, got ${n}`);
  if (n > tensors.length) throw new PipelineError(`${where}: ${n} shards for ${tensors.length} tensors`);
  const sizes = tensors.map((t) => t.shape.reduce((a, b) => a * b, 1));
  const total = sizes.reduce((a, b) => a + b, 0);
  const groups: T[][] = [];
  let acc = 0;
  let current: T[] = [];
  tensors.forEach((t, i) => {
    current.push(t);
    acc += sizes[i];
    const left = tensors.length - i - 1;
    const groupsLeft = n - groups.length - 1;
    // Close the group at its share of the bytes, but leave every later group at least a tensor.
    if (groupsLeft > 0 && (acc >= (total * (groups.length + 1)) / n || left === groupsLeft)) {
      groups.push(current);
      current = [];
    }
  });
  groups.push(current);
  return groups;
}

function writeComponent(dir: string, component: WeightComponent, tensors: readonly TensorInput[], shards: number, layoutOnly: boolean): void {
  const { dir: sub, single } = WEIGHT_FILES[component];
  const out = path.join(dir, sub);
  fs.mkdirSync(out, { recursive: true });
  const write = (file: string, ts: readonly TensorInput[]) => (layoutOnly ? writeSafetensorsLayout(file, ts, { format: 'pt' }) : writeSafetensors(file, ts, { format: 'pt' }));
  if (shards === 1) {
    write(path.join(out, single), tensors);
    return;
  }
  const groups = splitIntoShards(tensors, shards, `${sub}/`);
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  groups.forEach((group, i) => {
    const name = shardFileName(component, i, groups.length);
    write(path.join(out, name), group);
    for (const t of group) {
      weightMap[t.name] = name;
      totalSize += t.shape.reduce((a, b) => a * b, 1) * (t.dtype === 'F32' || !t.dtype ? 4 : 2);
    }
  });
  writeJson(path.join(out, `${single}.index.json`), { metadata: { total_size: totalSize }, weight_map: weightMap });
}

function writeJson(file: string, json: unknown): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `${JSON.stringify(json, null, 2)}\n`);
}

/**
 * Writes a complete Wan2.1 pipeline directory for a known config, weights drawn from `seed`
 * (transformer, text encoder and the VAE's decoder), the configs the diffusers layout has, a
 * small Unigram tokenizer and Wan2.1's scheduler config. The VAE is one file, as diffusers saves
 * it, holding the decoder side only (the encoder is never used).
 */
export function writeSeededPipeline(dir: string, opts: SeededPipelineOptions): void {
  const { config, seed, shards, dtype } = opts;
  const layoutOnly = opts.layoutOnly ?? false;
  const umt5 = seededTextEncoderConfig(config);
  const vae = seededVaeConfig(config);
  fs.mkdirSync(dir, { recursive: true });
  if (fs.readdirSync(dir).length > 0) throw new PipelineError(`${path.basename(dir)}: output directory is not empty`);
  writeJson(path.join(dir, MODEL_INDEX_FILE), modelIndexJson());
  writeJson(path.join(dir, TRANSFORMER_CONFIG_FILE), transformerConfigJson(config));
  writeJson(path.join(dir, TEXT_ENCODER_CONFIG_FILE), umt5ConfigJson(umt5));
  writeJson(path.join(dir, SCHEDULER_CONFIG_FILE), schedulerConfigJson(WAN_SCHEDULER_CONFIG));
  writeJson(path.join(dir, VAE_CONFIG_FILE), vaeConfigJson(vae));
  writeJson(path.join(dir, TOKENIZER_FILE), seededTokenizerJson(umt5.vocabSize));
  writeJson(path.join(dir, TOKENIZER_CONFIG_FILE), seededTokenizerConfigJson(config.textLen));
  const seeded = (specs: readonly TensorSpec[]): TensorInput[] => specs.map((spec) => ({ name: spec.name, shape: spec.shape, dtype, data: () => seededTensor(spec, seed) }));
  writeComponent(dir, 'transformer', seeded(weightSpecs(config, { l0: 0, l1: config.layers, head: true, tail: true })), shards, layoutOnly);
  writeComponent(dir, 'text_encoder', seeded(umt5TensorSpecs(umt5)), shards, layoutOnly);
  writeComponent(dir, 'vae', seeded(vaeDecoderTensorSpecs(vae)), 1, layoutOnly);
}

// ---------------------------------------------------------------------------------------------
// What a directory holds (for `longshot model inspect`)

export interface WeightsSummary {
  readonly files: readonly string[];
  readonly tensors: number;
  readonly parameters: number;
  /** Tensor count per stored dtype. */
  readonly dtypes: Readonly<Record<string, number>>;
  readonly storedBytes: number;
}

export function summarizeWeights(w: ComponentWeights): WeightsSummary {
  let parameters = 0;
  let storedBytes = 0;
  const dtypes: Record<string, number> = {};
  for (const { info } of w.tensors.values()) {
    parameters += info.shape.reduce((a, b) => a * b, 1);
    storedBytes += info.end - info.begin;
    dtypes[info.dtype] = (dtypes[info.dtype] ?? 0) + 1;
  }
  return { files: w.shards, tensors: w.tensors.size, parameters, dtypes, storedBytes };
}

export interface StageFootprint {
  readonly range: StageRange;
  readonly tensors: number;
  readonly parameters: number;
  /** Bytes the stage reads from the checkpoint (stored dtype). */
  readonly storedBytes: number;
  /** Bytes the engine holds once loaded: every weight as float32. */
  readonly engineBytes: number;
  /** The weight files the stage reads from. */
  readonly files: readonly string[];
}

/** What one stage holds: from the headers alone, nothing read. */
export function stageFootprint(p: PipelineDir, range: StageRange): StageFootprint {
  const specs = weightSpecs(p.config, range);
  const parameters = specs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
  const files = [...new Set(specs.map((s) => p.transformer.tensors.get(s.name)!.shard))].sort();
  return { range, tensors: specs.length, parameters, storedBytes: p.transformer.storedBytes(specs.map((s) => s.name)), engineBytes: parameters * 4, files };
}
