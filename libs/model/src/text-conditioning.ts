/**
 * Text conditioning: a prompt and a negative prompt in, the two [textLen, textDim] float32 blocks
 * the DiT cross-attends to out (cond, uncond), each the encoder's rows of the real tokens followed
 * by zero rows, as Wan feeds its DiT (diffusers' WanPipeline trims the umT5 output to the real
 * tokens and zero-pads it to max_sequence_length = 512). With no negative prompt the uncond side
 * is the encoding of "" (WanPipeline: `negative_prompt or ""`), which tokenizes to the end token
 * alone.
 *
 * Two encoders implement `TextEncoder`:
 *  - `Umt5TextEncoder`, a pipeline directory's own: its tokenizer.json, then the umT5 encoder on
 *    the engine (./umt5 encodeText) over the directory's `text_encoder/` weights;
 *  - the stand-in of ./text, for the seeded model NAMES and bare transformer files only.
 *
 * Where encoding runs (a worker, never the controller) and how its output is cached is the
 * worker's text-encoder component's business; see docs/text-encoder.md.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '@longshot/engine';
import type { ModelConfig } from './config';
import { TEXT_ENCODER_CONFIG_FILE, TIED_EMBEDDING, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE } from './pipeline-config';
import type { PipelineDir } from './pipeline-dir';
import { encodePrompt, STAND_IN_TEXT_ENCODER } from './text';
import type { PromptTokens } from './tokenizer';
import { encodeText } from './umt5';
import { umt5TensorSpecs } from './umt5-config';

/** Conditioning and unconditional embeddings for classifier-free guidance. */
export interface PromptEmbeddings {
  readonly cond: Float32Array;
  readonly uncond: Float32Array;
}

/** Embeddings plus the token ids they came from (null for the stand-in, which has no ids). */
export interface TextConditioning extends PromptEmbeddings {
  readonly condIds: Int32Array | null;
  readonly uncondIds: Int32Array | null;
  /** Prompt tokens cut off at textLen (0 when the prompt fit). */
  readonly truncated: number;
}

export interface TextEncoder {
  /** One line for logs, `model inspect` and results: which encoder this is. */
  readonly description: string;
  /**
   * SHA-256 (hex) of everything besides the prompts that decides the output: the weights' bytes,
   * the tokenizer, textLen. Part of the embedding cache key.
   */
  fingerprint(): Promise<string>;
  /** Encodes `prompt` (cond) and `negativePrompt` (uncond; "" when the user gave none). */
  encode(prompt: string, negativePrompt: string, backend: Backend): Promise<TextConditioning>;
}

/** The stand-in (see ./text): deterministic hashed words, NOT umT5; seeded model names only. */
export class StandInTextEncoder implements TextEncoder {
  readonly description = STAND_IN_TEXT_ENCODER;

  constructor(private readonly config: ModelConfig) {}

  fingerprint(): Promise<string> {
    const { name, textLen, textDim } = this.config;
    return Promise.resolve(createHash('sha256').update(JSON.stringify({ encoder: 'stand-in', name, textLen, textDim })).digest('hex'));
  }

  encode(prompt: string, negativePrompt: string): Promise<TextConditioning> {
    return Promise.resolve({ cond: encodePrompt(prompt, this.config), uncond: encodePrompt(negativePrompt, this.config), condIds: null, uncondIds: null, truncated: 0 });
  }
}

/** A pipeline directory's tokenizer and umT5 encoder. Weights are read per `encode` call and not kept. */
export class Umt5TextEncoder implements TextEncoder {
  readonly description: string;

  constructor(
    private readonly dir: string,
    private readonly p: PipelineDir,
  ) {
    const c = p.textEncoderConfig;
    this.description = `umT5 text encoder: ${c.name} (${c.layers} layers, d_model ${c.dModel}) on the engine, tokenizer.json of the directory`;
  }

  fingerprint(): Promise<string> {
    const files = [TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, TEXT_ENCODER_CONFIG_FILE, ...this.p.textEncoder.shards];
    return fingerprintFiles(this.dir, files, { textLen: this.p.config.textLen, config: this.p.textEncoderConfig });
  }

  async encode(prompt: string, negativePrompt: string, backend: Backend): Promise<TextConditioning> {
    const { textEncoderConfig: config, config: model } = this.p;
    const weights = this.loadWeights();
    const run = async (text: string): Promise<{ embeddings: Float32Array; tokens: PromptTokens }> => {
      const tokens = this.p.tokenizer.tokenize(text);
      return { embeddings: await encodeText({ config, weights, ids: tokens.ids, textLen: model.textLen, backend }), tokens };
    };
    const cond = await run(prompt);
    const uncond = await run(negativePrompt);
    return {
      cond: cond.embeddings,
      uncond: uncond.embeddings,
      condIds: Int32Array.from(cond.tokens.ids),
      uncondIds: Int32Array.from(uncond.tokens.ids),
      truncated: cond.tokens.truncated,
    };
  }

  /** Every encoder tensor as float32; a file holding only the tied copy of the table serves it as `shared.weight`. */
  private loadWeights(): Map<string, Float32Array> {
    const specs = umt5TensorSpecs(this.p.textEncoderConfig).map((s) => (s.name === 'shared.weight' && this.p.embeddingTable === TIED_EMBEDDING ? { ...s, name: TIED_EMBEDDING } : s));
    const read = this.p.textEncoder.read(specs);
    const table = read.get(this.p.embeddingTable)!;
    read.delete(TIED_EMBEDDING);
    read.set('shared.weight', table);
    return read;
  }
}

/** Whole-file hashes by (path, inode, size, mtime): a worker hashes an unchanged file once. */
const fileHashes = new Map<string, string>();
const CHUNK = 8 * 1024 * 1024;

async function fileSha256(file: string): Promise<string> {
  const st = await fs.promises.stat(file);
  const memo = `${file}\0${st.ino}\0${st.size}\0${st.mtimeMs}`;
  const known = fileHashes.get(memo);
  if (known) return known;
  const hash = createHash('sha256');
  const fh = await fs.promises.open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (let pos = 0; ; ) {
      const { bytesRead } = await fh.read(buf, 0, CHUNK, pos);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  const digest = hash.digest('hex');
  fileHashes.set(memo, digest);
  return digest;
}

/**
 * SHA-256 over `extra` and each file's relative name and content hash (a missing optional file
 * counts as absent). Content, not headers: two seeded directories differ only in their bytes.
 */
async function fingerprintFiles(root: string, files: readonly string[], extra: unknown): Promise<string> {
  const h = createHash('sha256').update(JSON.stringify(extra));
  for (const rel of files) {
    const file = path.join(root, rel);
    h.update(`\n${rel}:`);
    h.update(fs.existsSync(file) ? await fileSha256(file) : 'absent');
  }
  return h.digest('hex');
}
