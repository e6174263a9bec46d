import * as path from 'node:path';
import { cpuBackend } from '@longshot/engine';
import { resolveModel, writeSafetensors, type TensorInput } from '@longshot/model';
import { parseCommand, UsageError, type CommandSpec } from './args';
import { checkWritable } from './errors';

export const ENCODE = {
  name: 'encode',
  summary: "a prompt's text conditioning exactly as the DiT receives it",
  usage: 'longshot encode --model DIR|NAME --prompt TEXT [--negative-prompt TEXT] --out FILE [--json]',
  description:
    "Writes 'cond' and 'uncond', F32 [textLen, textDim]: the encoder's rows of the real tokens, then\n" +
    "zero rows; and, for a pipeline directory, 'cond_ids' and 'uncond_ids', I32 [tokens], the\n" +
    "tokenizer's ids with the end token. The file also works as render --text-embeddings. Runs on\n" +
    "this machine's CPU engine.",
  flags: {
    model: { value: 'DIR|NAME', help: 'pipeline directory (its tokenizer and umT5 encoder), or a seeded model name (tiny, small, ...: the stand-in encoder, no token ids) (required)' },
    prompt: { value: 'TEXT', help: 'the prompt (required)' },
    'negative-prompt': { value: 'TEXT', help: "the negative prompt; diffusers' WanPipeline also encodes \"\" (the end token alone) when none is given", default: '""' },
    out: { value: 'FILE', help: 'safetensors file to write (required)' },
    json: { help: 'print one JSON summary line' },
  },
  run: (argv: string[]) => encodeCommand(argv),
} satisfies CommandSpec;

export async function encodeCommand(argv: string[]): Promise<void> {
  const f = parseCommand(ENCODE, argv).values;
  if (f.model === undefined) throw new UsageError('--model: required (a pipeline directory or a model name)');
  if (f.prompt === undefined) throw new UsageError('--prompt: required');
  if (f.out === undefined) throw new UsageError('--out: required (the safetensors file to write)');
  const out = path.resolve(f.out);
  checkWritable('out', out);
  const negativePrompt = f['negative-prompt'] ?? '';
  const model = (() => {
    try {
      return resolveModel(f.model);
    } catch (e) {
      throw new UsageError(`--model: ${(e as Error).message}`);
    }
  })();
  const e = await model.textEncoder.encode(f.prompt, negativePrompt, cpuBackend());
  const { textLen, textDim } = model.config;
  const tensors: TensorInput[] = [
    { name: 'cond', shape: [textLen, textDim], data: e.cond },
    { name: 'uncond', shape: [textLen, textDim], data: e.uncond },
  ];
  if (e.condIds && e.uncondIds) {
    tensors.push({ name: 'cond_ids', shape: [e.condIds.length], dtype: 'I32', data: e.condIds }, { name: 'uncond_ids', shape: [e.uncondIds.length], dtype: 'I32', data: e.uncondIds });
  }
  const metadata = { 'longshot.text_encoder': model.textEncoder.description, 'longshot.prompt': f.prompt, 'longshot.negative_prompt': negativePrompt, 'longshot.truncated_tokens': String(e.truncated) };
  try {
    writeSafetensors(out, tensors, metadata);
  } catch (err) {
    throw new UsageError(`--out: ${f.out}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const summary = { out, encoder: model.textEncoder.description, textLen, textDim, condTokens: e.condIds?.length ?? null, uncondTokens: e.uncondIds?.length ?? null, truncatedTokens: e.truncated };
  if (f.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
  else {
    const tokens = e.condIds ? `, ${e.condIds.length} + ${e.uncondIds!.length} tokens` : '';
    process.stdout.write(`wrote ${out}: cond and uncond [${textLen}, ${textDim}]${tokens}${e.truncated ? ` (prompt truncated by ${e.truncated} tokens)` : ''}\n`);
  }
}
