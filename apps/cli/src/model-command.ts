import { schedulerConfigJson } from '@longshot/sampler';
import * as path from 'node:path';
import {
  getConfig,
  openPipelineDir,
  stageFootprint,
  summarizeWeights,
  Umt5TextEncoder,
  writeSeededModel,
  writeSeededPipeline,
  type ModelConfig,
  type SafetensorsDtype,
} from '@longshot/model';
import { partitionLayers } from '@longshot/planner';
import { intFlag, parseCommand, UsageError, type CommandSpec } from './args';
import { checkWritable } from './errors';

export const MODEL_WRITE = {
  name: 'model write',
  summary: 'write a seeded model: a diffusers Wan2.1 pipeline directory, or one transformer file',
  usage: 'longshot model write --model NAME --out DIR|FILE.safetensors [--shards N] [--dtype D] [--seed N] [--layout-only]',
  description:
    'A pipeline directory holds model_index.json, transformer/, text_encoder/, tokenizer/, scheduler/\n' +
    "and vae/ (the decoder's weights); with --out FILE.safetensors the transformer alone is written in one file.",
  flags: {
    model: { value: 'NAME', help: 'config: tiny, small, wan2.1-t2v-1.3b, wan2.1-t2v-14b (required)' },
    out: { value: 'PATH', help: 'output directory (must be empty or absent), or a .safetensors file (required)' },
    seed: { value: 'N', help: "weights seed (0: the weights 'longshot render --model NAME' uses)", default: '0' },
    dtype: { value: 'D', help: 'F32, F16 or BF16', default: 'F32' },
    shards: { value: 'N', help: 'weight files per component, with a *.safetensors.index.json', default: '1' },
    'layout-only': { help: "headers and file sizes only (sparse all-zero files): a real model's layout without writing gigabytes" },
  },
  run: (argv: string[]) => writeCommand(argv),
} satisfies CommandSpec;

export const MODEL_INSPECT = {
  name: 'model inspect',
  summary: "show a pipeline directory's components, configs, weights and what each of K stages holds",
  usage: 'longshot model inspect DIR [--stages K]',
  flags: {
    stages: { value: 'K', help: 'stage count to show what each stage reads and holds', default: '1, 2, 4 and 8' },
  },
  positionals: ['DIR'],
  run: (argv: string[]) => inspectCommand(argv),
} satisfies CommandSpec;

export const MODEL = {
  name: 'model',
  summary: 'write a seeded pipeline directory, or inspect one',
  usage: 'longshot model write|inspect ...',
  flags: {},
  sub: [MODEL_WRITE, MODEL_INSPECT],
} satisfies CommandSpec;

function writeCommand(argv: string[]): void {
  const f = parseCommand(MODEL_WRITE, argv).values;
  if (!f.model) throw new UsageError('--model: required');
  if (!f.out) throw new UsageError('--out: required');
  const dtype = (f.dtype ?? 'F32').toUpperCase();
  if (!['F32', 'F16', 'BF16'].includes(dtype)) throw new UsageError(`--dtype: expected F32, F16 or BF16, got '${f.dtype}'`);
  let config: ModelConfig;
  try {
    config = getConfig(f.model);
  } catch (e) {
    throw new UsageError(`--model: ${(e as Error).message}`);
  }
  const seed = intFlag('seed', f.seed) ?? 0;
  const shards = intFlag('shards', f.shards) ?? 1;
  if (shards < 1) throw new UsageError(`--shards: expected a positive integer, got ${shards}`);
  const out = path.resolve(f.out);
  if (out.endsWith('.safetensors')) {
    if (shards !== 1 || f['layout-only']) throw new UsageError('--shards/--layout-only: only for a pipeline directory (an --out that is not a .safetensors file)');
    checkWritable('out', out);
    writeSeededModel(out, config, seed, dtype as SafetensorsDtype);
  } else {
    try {
      writeSeededPipeline(out, { config, seed, shards, dtype: dtype as SafetensorsDtype, layoutOnly: f['layout-only'] });
    } catch (e) {
      throw new UsageError(`--out: ${(e as Error).message}`);
    }
  }
  process.stdout.write(`${out}\n`);
}

const GB = 1e9;
const fmtBytes = (b: number) => (b >= GB ? `${(b / GB).toFixed(2)} GB` : `${(b / 1e6).toFixed(1)} MB`);
const fmtParams = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(3)} B` : `${(n / 1e6).toFixed(2)} M`);

function inspectCommand(argv: string[]): void {
  const {
    values: f,
    positionals: [dir],
  } = parseCommand(MODEL_INSPECT, argv);
  const p = (() => {
    try {
      return openPipelineDir(dir);
    } catch (e) {
      throw new UsageError(`${dir}: ${(e as Error).message}`);
    }
  })();
  const c = p.config;
  const t = summarizeWeights(p.transformer);
  const te = summarizeWeights(p.textEncoder);
  const dtypes = (d: Readonly<Record<string, number>>) => Object.entries(d).map(([k, n]) => `${k} x${n}`).join(', ');
  const lines: string[] = [];
  lines.push(`pipeline  ${p.index.pipelineClass}${p.index.diffusersVersion ? ` (diffusers ${p.index.diffusersVersion})` : ''}`);
  lines.push('components');
  for (const [name, [lib, cls]] of Object.entries(p.index.components)) lines.push(`  ${name.padEnd(13)} ${lib}.${cls}`);
  lines.push(`transformer  ${c.name}: dim ${c.dim}, ffn ${c.ffnDim}, layers ${c.layers}, heads ${c.heads} x ${c.dim / c.heads}, text_dim ${c.textDim}, freq_dim ${c.freqDim}, in_channels ${c.latentChannels}, eps ${c.eps}`);
  lines.push(`  parameters ${fmtParams(t.parameters)} in ${t.tensors} tensors (${dtypes(t.dtypes)}), ${fmtBytes(t.storedBytes)} in ${t.files.length} file(s): ${t.files.join(', ')}`);
  const u = p.textEncoderConfig;
  lines.push(`text_encoder  ${u.name}: d_model ${u.dModel}, layers ${u.layers}, heads ${u.heads} x ${u.dKv}, d_ff ${u.dFf}, vocab ${u.vocabSize}, buckets ${u.relativeBuckets}/${u.relativeMaxDistance}, eps ${u.eps}`);
  lines.push(`  parameters ${fmtParams(te.parameters)} in ${te.tensors} tensors (${dtypes(te.dtypes)}), ${fmtBytes(te.storedBytes)} in ${te.files.length} file(s): ${te.files.join(', ')}`);
  lines.push(`  runs as: ${new Umt5TextEncoder(dir, p).description}`);
  lines.push(`tokenizer  Unigram, text length ${c.textLen}`);
  const s = p.scheduler;
  const sj = schedulerConfigJson(s);
  lines.push(`scheduler  ${String(sj._class_name)}: flow_shift ${s.flowShift}, solver_order ${s.solverOrder}, solver_type ${s.solverType}, final_sigmas_type ${s.finalSigmasType}, num_train_timesteps ${s.numTrainTimesteps}`);
  const v = p.vae;
  const vw = summarizeWeights(p.vaeWeights);
  lines.push(`vae  AutoencoderKLWan ${v.name}: base_dim ${v.baseDim}, z_dim ${v.zDim}, dim_mult [${v.dimMult.join(', ')}], num_res_blocks ${v.numResBlocks}, temperal_downsample [${v.temporalDownsample.join(', ')}]`);
  lines.push(`  parameters ${fmtParams(vw.parameters)} in ${vw.tensors} tensors (${dtypes(vw.dtypes)}), ${fmtBytes(vw.storedBytes)} in ${vw.files.length} file(s): ${vw.files.join(', ')}`);
  const counts = f.stages === undefined ? [1, 2, 4, 8].filter((k) => k <= c.layers) : [intFlag('stages', f.stages)!];
  for (const k of counts) {
    if (!(k >= 1 && k <= c.layers)) throw new UsageError(`--stages: expected 1..${c.layers} (one stage per layer at most), got ${k}`);
    lines.push(`stages K=${k}  (bytes read from the checkpoint / bytes the engine holds as float32)`);
    partitionLayers(c.layers, k).forEach((range, i) => {
      const fp = stageFootprint(p, range);
      const role = [range.head ? 'head' : '', range.tail ? 'tail' : ''].filter(Boolean).join('+') || 'middle';
      lines.push(`  stage ${i}  layers [${range.l0}, ${range.l1}) ${role.padEnd(9)} ${fmtParams(fp.parameters).padStart(10)} params  ${fmtBytes(fp.storedBytes).padStart(9)} read  ${fmtBytes(fp.engineBytes).padStart(9)} held  from ${fp.files.length} file(s)`);
    });
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}
