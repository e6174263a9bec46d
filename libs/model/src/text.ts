/**
 * Text conditioning for the seeded model NAMES (tiny, small, wan2.1-*) and bare transformer files.
 *
 * `encodePrompt` is a deterministic STAND-IN text encoder. It is NOT umT5-XXL and carries no
 * language understanding: it exists so a plain prompt string works end to end (and gives the
 * same conditioning on every machine) without a 5-billion-parameter encoder. Each lower-cased
 * word maps to a fixed pseudo-random vector; similar prompts share rows, so changing a word
 * changes the video a little, which is all the stand-in promises. It serves only models that
 * have no text encoder of their own: a pipeline directory never uses it (it tokenizes with its
 * tokenizer.json and encodes with its text encoder, see ./text-conditioning). Real umT5
 * embeddings can also come in through a safetensors file via `loadTextEmbeddings`.
 *
 * Both produce Wan's layout: [textLen, textDim] float32, token rows followed by zero rows
 * (Wan zero-pads the umT5 output to 512 tokens).
 */
import { Rng } from '@longshot/random';
import { ModelConfig } from './config';
import { formatShape } from '@longshot/dtype';
import { SafetensorsFile } from './safetensors';

/** How render output and `model inspect` name this encoder. */
export const STAND_IN_TEXT_ENCODER = 'stand-in text encoder (seeded models only; hashed words, not umT5)';

/** Tokens: runs of letters/digits, keeping inner apostrophes ("don't"); punctuation is dropped. */
const WORD = /[\p{L}\p{N}]+(?:['’][\p{L}\p{N}]+)*/gu;

/** Cannot collide with a word token, which never contains '<'. */
const END_TOKEN = '</s>';

/** Scale of the position term: small next to the unit-variance token vectors. */
const POSITION_SCALE = 0.1;

export function tokenize(prompt: string): string[] {
  return prompt.normalize('NFKC').toLowerCase().match(WORD) ?? [];
}

function checkTextConfig(config: ModelConfig): void {
  if (!Number.isInteger(config.textLen) || config.textLen < 1 || !Number.isInteger(config.textDim) || config.textDim < 1) {
    throw new Error(`model config ${config.name}: textLen and textDim must be positive integers`);
  }
}

/**
 * Stand-in prompt embedding [textLen, textDim] (see the module comment: not umT5). At most
 * textLen - 1 word tokens are kept, then an end token; "" gives just the end token, which is
 * the unconditional input for classifier-free guidance.
 */
export function encodePrompt(prompt: string, config: ModelConfig): Float32Array {
  checkTextConfig(config);
  const { textLen, textDim } = config;
  const tokens = tokenize(prompt).slice(0, textLen - 1);
  tokens.push(END_TOKEN);
  const out = new Float32Array(textLen * textDim);
  const vec = new Float32Array(textDim);
  for (let p = 0; p < tokens.length; p++) {
    Rng.from('text', tokens[p]).fillNormal(vec);
    const row = p * textDim;
    for (let j = 0; j < textDim; j++) {
      // Sinusoidal, as in a transformer's absolute position encoding, so word order matters.
      const freq = Math.pow(10000, -(2 * Math.floor(j / 2)) / textDim);
      const pos = j % 2 === 0 ? Math.sin(p * freq) : Math.cos(p * freq);
      out[row + j] = vec[j] + POSITION_SCALE * pos;
    }
  }
  return out;
}

function readEmbedding(st: SafetensorsFile, name: string, config: ModelConfig): Float32Array {
  const { textLen, textDim } = config;
  const shape = st.info(name).shape;
  // Accept [n, textDim] and a torch-style batch of one, [1, n, textDim].
  const s = shape.length === 3 && shape[0] === 1 ? shape.slice(1) : shape;
  if (s.length !== 2 || s[1] !== textDim) {
    throw new Error(`${st.label}: tensor '${name}': expected [n, ${textDim}] (n <= ${textLen}), file has ${formatShape(shape)}`);
  }
  const n = s[0];
  if (n < 1 || n > textLen) {
    throw new Error(`${st.label}: tensor '${name}': ${n} tokens, expected 1..${textLen} (the model's textLen), file has ${formatShape(shape)}`);
  }
  const data = st.read(name);
  if (data.some((v) => !Number.isFinite(v))) throw new Error(`${st.label}: tensor '${name}' contains NaN or infinite values`);
  const out = new Float32Array(textLen * textDim);
  out.set(data);
  return out;
}

/**
 * Real text embeddings (e.g. umT5 output saved from Python): tensor `cond` [n, textDim] and
 * optionally `uncond` (default: the stand-in encoding of ""), each zero-padded to textLen.
 */
// The result is structurally the stage's TextEmbeddings (declared in ./stage, not imported here
// so this module stays free of the native engine).
export function loadTextEmbeddings(file: string | SafetensorsFile, config: ModelConfig): { cond: Float32Array; uncond: Float32Array } {
  checkTextConfig(config);
  const st = typeof file === 'string' ? SafetensorsFile.open(file) : file;
  try {
    if (!st.has('cond')) {
      throw new Error(`${st.label}: tensor 'cond' not found (text embeddings need 'cond' [n, ${config.textDim}] and optionally 'uncond'; file has: ${st.tensorNames().slice(0, 8).join(', ') || 'no tensors'})`);
    }
    const cond = readEmbedding(st, 'cond', config);
    const uncond = st.has('uncond') ? readEmbedding(st, 'uncond', config) : encodePrompt('', config);
    return { cond, uncond };
  } finally {
    st.close();
  }
}
