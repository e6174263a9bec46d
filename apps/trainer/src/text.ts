/**
 * The `text` stage: the grammar's closed-vocabulary tokenizer and the seeded umT5 encoder of the
 * shipped pipeline, and every caption encoded by Longshot's engine into
 * text-embeddings.safetensors for the DiT stage. The encoder's weights are rounded to the shipped
 * dtype first, so training conditions on exactly what a render of the shipped directory computes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { f16ToF32, f32ToBf16, bf16ToF32, f32ToF16 } from '@longshot/dtype';
import { cpuBackend } from '@longshot/engine';
import { encodeText, PromptTokenizer, seededUmt5Weights, vocabularyTokenizerJson, writeSafetensors, type Umt5Config } from '@longshot/model';
import { textEncoderConfig, transformerConfig, type Recipe } from './recipe';

export interface CaptionsFile {
  readonly captions: string[];
  readonly words: string[];
}

export function readCaptions(workdir: string): CaptionsFile {
  return JSON.parse(fs.readFileSync(path.join(workdir, 'captions.json'), 'utf8')) as CaptionsFile;
}

/** The shipped text encoder's weights: seeded, then rounded to the shipped dtype. */
export function shippedTextEncoderWeights(recipe: Recipe): { config: Umt5Config; weights: Map<string, Float32Array> } {
  const config = textEncoderConfig(recipe);
  const weights = seededUmt5Weights(config, recipe.text_encoder.seed);
  const round = recipe.shippedDtype === 'F16' ? (v: number) => f16ToF32(f32ToF16(v)) : recipe.shippedDtype === 'BF16' ? (v: number) => bf16ToF32(f32ToBf16(v)) : null;
  if (round) for (const t of weights.values()) for (let i = 0; i < t.length; i++) t[i] = round(t[i]);
  return { config, weights };
}

export function shippedTokenizerJson(recipe: Recipe, words: readonly string[]): Record<string, unknown> {
  return vocabularyTokenizerJson(words, recipe.text_encoder.vocab_size);
}

export async function encodeCaptions(workdir: string, recipe: Recipe): Promise<void> {
  const { captions, words } = readCaptions(workdir);
  const { config, weights } = shippedTextEncoderWeights(recipe);
  const textLen = transformerConfig(recipe).textLen;
  const tokenizer = new PromptTokenizer(shippedTokenizerJson(recipe, words), null, textLen, config.vocabSize);
  const texts = ['', ...captions];
  const rows = textLen * config.dModel;
  const all = new Float32Array(texts.length * rows);
  const backend = cpuBackend();
  for (let i = 0; i < texts.length; i++) {
    const tokens = tokenizer.tokenize(texts[i]);
    if (tokens.truncated > 0) throw new Error(`caption '${texts[i]}' is longer than ${textLen} tokens`);
    all.set(await encodeText({ config, weights, ids: tokens.ids, textLen, backend }), i * rows);
    if ((i + 1) % 500 === 0) process.stderr.write(`[text] encoded ${i + 1}/${texts.length} captions\n`);
  }
  writeSafetensors(path.join(workdir, 'text-embeddings.safetensors'), [{ name: 'embeddings', shape: [texts.length, textLen, config.dModel], dtype: 'F32', data: all }], {
    captions: JSON.stringify(texts),
  });
  process.stderr.write(`[text] ${texts.length} captions encoded (umT5 ${config.layers} layers, d_model ${config.dModel}, ${words.length} words)\n`);
}
