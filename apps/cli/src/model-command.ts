import * as path from 'node:path';
import {
  getConfig,
  openPipelineDir,
  pipelineTextEncoder,
  stageFootprint,
  summarizeWeights,
  writeSeededModel,
  writeSeededPipeline,
  type ModelConfig,
  type SafetensorsDtype,
} from '@longshot/model';
import { partitionLayers } from '@longshot/planner';
import { intFlag, parseFlags, UsageError } from './args';

export const MODEL_HELP = `longshot model: write and inspect models

longshot model write --model NAME --out DIR|FILE.safetensors [--shards N] [--dtype D] [--seed N] [--layout-only]
  writes a seeded model: a diffusers Wan2.1 pipeline directory (model_index.json, transformer/,
  text_encoder/, tokenizer/, scheduler/, vae/ with the decoder's weights), or with --out
  FILE.safetensors the transformer alone in one file
  --model NAME     config (tiny, small, wan2.1-t2v-1.3b, wan2.1-t2v-14b)
  --seed N         weights seed (0: the weights 'longshot render --model NAME' uses)
  --dtype D        F32 | F16 | BF16 (F32)
  --shards N       weight files per component, with a *.safetensors.index.json (1)
  --layout-only    headers and file sizes only, no values (sparse all-zero files): to inspect or
                   measure a real model's layout without writing gigabytes
  --out PATH       output directory (must be empty or absent), or a .safetensors file

longshot model inspect DIR [--stages K]
  prints a pipeline directory's components, configs, parameter counts, dtypes, weight files and
  what each of K stages holds (K = 1, 2, 4, 8 when not given)
`;

export async function modelCommand(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (sub === 'write') return writeCommand(rest);
  if (sub === 'inspect') return inspectCommand(rest);
  throw new UsageError(`longshot model: unknown subcommand '${sub ?? ''}'\n${MODEL_HELP}`);
}

function writeCommand(argv: string[]): void {
  const f = parseFlags(argv, {
    model: { type: 'string' },
    seed: { type: 'string' },
    dtype: { type: 'string' },
    out: { type: 'string' },
    shards: { type: 'string' },
    'layout-only': { type: 'boolean', default: false },
  });
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
  const [dir, ...rest] = argv;
  if (!dir || dir.startsWith('--')) throw new UsageError('longshot model inspect: give the pipeline directory: longshot model inspect DIR [--stages K]');
  const f = parseFlags(rest, { stages: { type: 'string' } });
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
  lines.push(`  runs as: ${pipelineTextEncoder(p).description}`);
  lines.push(`tokenizer  Unigram, text length ${c.textLen}`);
  const s = p.scheduler;
  lines.push(`scheduler  ${s._class_name}: flow_shift ${s.flow_shift}, solver_order ${s.solver_order}, prediction_type ${s.prediction_type}, use_flow_sigmas ${s.use_flow_sigmas}, final_sigmas_type ${s.final_sigmas_type}, num_train_timesteps ${s.num_train_timesteps}`);
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
