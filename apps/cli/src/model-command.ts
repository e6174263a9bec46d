import * as path from 'node:path';
import { getConfig, writeSeededModel, type SafetensorsDtype } from '@longshot/model';
import { intFlag, parseFlags, UsageError } from './args';

export const MODEL_HELP = `longshot model write: write a seeded model to a safetensors file

  --model NAME     config (tiny, small, wan2.1-t2v-1.3b, wan2.1-t2v-14b)
  --seed N         weights seed (0: the weights 'longshot render --model NAME' uses)
  --dtype D        F32 | F16 | BF16 (F32)
  --out FILE       output path
`;

export async function modelCommand(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (sub !== 'write') throw new UsageError(`longshot model: unknown subcommand '${sub ?? ''}'\n${MODEL_HELP}`);
  const f = parseFlags(rest, { model: { type: 'string' }, seed: { type: 'string' }, dtype: { type: 'string' }, out: { type: 'string' } });
  if (!f.model) throw new UsageError('--model: required');
  if (!f.out) throw new UsageError('--out: required');
  const dtype = (f.dtype ?? 'F32').toUpperCase();
  if (!['F32', 'F16', 'BF16'].includes(dtype)) throw new UsageError(`--dtype: expected F32, F16 or BF16, got '${f.dtype}'`);
  let config;
  try {
    config = getConfig(f.model);
  } catch (e) {
    throw new UsageError(`--model: ${(e as Error).message}`);
  }
  const seed = intFlag('seed', f.seed) ?? 0;
  const out = path.resolve(f.out);
  writeSeededModel(out, config, seed, dtype as SafetensorsDtype);
  process.stdout.write(`${out}\n`);
}
