/**
 * Text conditioning of a pipeline directory: prompt -> tokens (./tokenizer) -> text encoder ->
 * [textLen, textDim] embeddings, the encoder's rows followed by zero rows, as Wan feeds its DiT
 * (diffusers' WanPipeline trims the umT5 output to the real tokens and zero-pads it to 512).
 *
 * The text encoder is the `TokenEncoder` interface: token ids in, one dModel-wide row per token
 * out. The real umT5 encoder (native engine) implements it; until then pipelines use
 * `InterimEmbeddingEncoder`, which is clearly NOT umT5: it looks up each token's row of the
 * encoder's embedding table and applies the encoder's final RMS norm, skipping the 24
 * transformer layers. It reads real weights from the directory, so a pipeline's conditioning
 * depends on its tokenizer and text-encoder weights exactly as the real one will, only without
 * context between tokens.
 */
import type { ModelConfig } from './config';
import type { PromptTokens } from './tokenizer';
import type { Umt5Config } from './umt5-config';

export interface TokenEncoder {
  /** One line for logs, `model inspect` and render output: which encoder this is. */
  readonly description: string;
  /** [tokens.ids.length, dModel] float32: one row per token, padding excluded. */
  encodeTokens(tokens: PromptTokens): Float32Array;
}

/** Conditioning and unconditional embeddings for classifier-free guidance. */
export interface PromptEmbeddings {
  readonly cond: Float32Array;
  readonly uncond: Float32Array;
}

/** What the interim encoder reads from the text encoder's weights. */
export interface EmbeddingTableReader {
  /** Rows of the token embedding table, in the order asked. */
  rows(ids: readonly number[]): Float32Array;
  /** `encoder.final_layer_norm.weight`, [dModel]. */
  finalNorm(): Float32Array;
}

export class InterimEmbeddingEncoder implements TokenEncoder {
  readonly description: string;

  constructor(
    private readonly config: Umt5Config,
    private readonly weights: EmbeddingTableReader,
  ) {
    this.description = `interim text encoder: ${config.name} token embeddings + final RMS norm, without its ${config.layers} transformer layers (not full umT5)`;
  }

  encodeTokens(tokens: PromptTokens): Float32Array {
    const d = this.config.dModel;
    const rows = this.weights.rows(tokens.ids);
    const gain = this.weights.finalNorm();
    const out = new Float32Array(rows.length);
    for (let t = 0; t < tokens.ids.length; t++) {
      // T5's RMS norm: no mean subtraction, no bias; computed in double, stored as float32.
      let sq = 0;
      for (let j = 0; j < d; j++) sq += rows[t * d + j] * rows[t * d + j];
      const inv = 1 / Math.sqrt(sq / d + this.config.eps);
      for (let j = 0; j < d; j++) out[t * d + j] = rows[t * d + j] * inv * gain[j];
    }
    return out;
  }
}

/** The encoder's rows placed in a zero [textLen, textDim] block, as the DiT takes them. */
export function padEmbeddings(rows: Float32Array, tokens: number, config: ModelConfig): Float32Array {
  const { textLen, textDim } = config;
  if (rows.length !== tokens * textDim) throw new Error(`text encoder returned ${rows.length} values for ${tokens} tokens of width ${textDim}`);
  if (tokens > textLen) throw new Error(`text encoder returned ${tokens} rows, more than the model's ${textLen}`);
  const out = new Float32Array(textLen * textDim);
  out.set(rows);
  return out;
}
