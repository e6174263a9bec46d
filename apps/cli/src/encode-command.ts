import * as fs from 'node:fs';
import * as path from 'node:path';
import { cpuBackend } from '@longshot/engine';
import { resolveModel, writeSafetensors, type TensorInput } from '@longshot/model';
import { parseFlags, UsageError } from './args';

export const ENCODE_HELP = `longshot encode: a prompt's text conditioning exactly as the DiT receives it

  --model DIR|NAME         pipeline directory (its tokenizer and umT5 encoder), or a seeded
                           model name (tiny, small, ...: the stand-in encoder, no token ids)
  --prompt TEXT            the prompt (required)
  --negative-prompt TEXT   the negative prompt (default "", which diffusers' WanPipeline also
                           encodes when none is given: the end token alone)
  --out FILE               safetensors file to write (required)
  --json                   print one JSON summary line

Writes 'cond' and 'uncond', F32 [textLen, textDim]: the encoder's rows of the real tokens, then
zero rows; and, for a pipeline directory, 'cond_ids' and 'uncond_ids', I32 [tokens], the
tokenizer's ids with the end token. The file also works as render --text-embeddings. Runs on this
machine's CPU engine.
`;

export async function encodeCommand(argv: string[]): Promise<void> {
  const f = parseFlags(argv, {
    model: { type: 'string' },
    prompt: { type: 'string' },
    'negative-prompt': { type: 'string' },
    out: { type: 'string' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  });
  if (f.help) return void process.stdout.write(ENCODE_HELP);
  if (f.model === undefined) throw new UsageError('--model: required (a pipeline directory or a model name)');
  if (f.prompt === undefined) throw new UsageError('--prompt: required');
  if (f.out === undefined) throw new UsageError('--out: required (the safetensors file to write)');
  const out = path.resolve(f.out);
  if (!fs.existsSync(path.dirname(out)) || !fs.statSync(path.dirname(out)).isDirectory()) throw new UsageError(`--out: ${f.out}: its directory does not exist`);
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
