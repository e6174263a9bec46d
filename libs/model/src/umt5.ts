/**
 * The umT5 text encoder (encoder only) on the engine: graph builder, prompt encoding as Wan uses
 * it, and seeded weights. Architecture and tensor names: umt5-config.ts; the ops and the bucket
 * function: docs/text-encoder.md.
 *
 * Padding: the reference model runs all textLen tokens with a key mask (a huge negative score bias
 * on padded keys, so their softmax weight is exactly 0), and Wan keeps only the first `length`
 * output rows, zero-padding the rest. Every sub-layer is row-wise except attention, and there the
 * unpadded queries see only unpadded keys, whose relative positions do not depend on the padding;
 * so those rows are exactly what the encoder computes on the `length` real tokens alone. The graph
 * therefore runs on `length` rows and the mask never has to be materialised.
 */
import { OPS, type Backend, type OpName, type OpNode } from '@longshot/engine';
import { counter } from '@longshot/telemetry';
import { SafetensorsDtype, TensorInput, writeSafetensors } from './safetensors';
import { type Umt5Config, umt5TensorSpecs } from './umt5-config';
import { seededTensor } from './weights';

/** The encoder's tensors by `UMT5EncoderModel` name (umt5TensorSpecs). */
export type Umt5Weights = ReadonlyMap<string, Float32Array>;

/**
 * umT5 forward passes this process ran (one per prompt encoded). Registered in every process that
 * loads the model library, so the controller's /metrics shows it too, at 0: it never encodes.
 */
export const umt5Encodes = counter({ name: 'longshot_umt5_encodes_total', help: 'umT5 text-encoder forward passes run in this process (one per prompt)' });

/** Metadata key holding the JSON Umt5Config of a seeded encoder file written by Longshot. */
export const UMT5_CONFIG_METADATA_KEY = 'longshot.umt5.config';

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function validateUmt5Config(c: Umt5Config): Umt5Config {
  const ints = ['vocabSize', 'dModel', 'dKv', 'dFf', 'layers', 'heads', 'relativeBuckets', 'relativeMaxDistance'] as const;
  for (const k of ints) {
    if (!Number.isInteger(c[k]) || c[k] < 1) throw new RangeError(`umT5 config ${c.name}: ${k} must be a positive integer, got ${c[k]}`);
  }
  if (c.relativeBuckets < 4) throw new RangeError(`umT5 config ${c.name}: relativeBuckets must be at least 4, got ${c.relativeBuckets}`);
  if (c.relativeMaxDistance <= Math.floor(c.relativeBuckets / 4)) {
    throw new RangeError(`umT5 config ${c.name}: relativeMaxDistance ${c.relativeMaxDistance} must exceed relativeBuckets / 4`);
  }
  if (c.vocabSize > 2 ** 24) throw new RangeError(`umT5 config ${c.name}: vocabSize ${c.vocabSize} exceeds 2^24, the ids the engine's float32 id tensor holds exactly`);
  if (!(c.eps > 0)) throw new RangeError(`umT5 config ${c.name}: eps must be positive, got ${c.eps}`);
  return c;
}

/** Throws unless `weights` holds every tensor of the encoder with its shape's element count. */
export function checkUmt5Weights(config: Umt5Config, weights: Umt5Weights): void {
  const problems: string[] = [];
  for (const spec of umt5TensorSpecs(config)) {
    const t = weights.get(spec.name);
    if (!t) problems.push(`missing ${spec.name}`);
    else if (t.length !== numel(spec.shape)) problems.push(`${spec.name} has ${t.length} values, expected [${spec.shape.join(', ')}]`);
  }
  if (problems.length > 0) {
    const more = problems.length > 8 ? `; and ${problems.length - 8} more` : '';
    throw new Error(`umT5 weights for ${config.name}: ${problems.slice(0, 8).join('; ')}${more}`);
  }
}

/** Every encoder tensor drawn from `seed` with the model's seeded init (norm weights are ones). */
export function seededUmt5Weights(config: Umt5Config, seed: number): Map<string, Float32Array> {
  validateUmt5Config(config);
  const m = new Map<string, Float32Array>();
  for (const spec of umt5TensorSpecs(config)) m.set(spec.name, seededTensor(spec, seed));
  return m;
}

/**
 * Writes a seeded encoder as one safetensors file with `UMT5EncoderModel` names (what
 * `text_encoder/model.safetensors` of a diffusers pipeline holds), the config in the metadata.
 */
export function writeSeededUmt5(file: string, config: Umt5Config, seed: number, dtype: SafetensorsDtype = 'F32'): void {
  validateUmt5Config(config);
  const tensors: TensorInput[] = umt5TensorSpecs(config).map((spec) => ({ name: spec.name, shape: spec.shape, dtype, data: () => seededTensor(spec, seed) }));
  writeSafetensors(file, tensors, { format: 'pt', [UMT5_CONFIG_METADATA_KEY]: JSON.stringify(config), 'longshot.seed': String(seed) });
}

/**
 * Scratch buffers of one encoder run, sized for `rows` tokens and reused by every layer (the
 * nodes run in order, so layer l + 1 may overwrite what layer l no longer needs).
 */
interface LayerBuffers {
  normed: Float32Array;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  bias: Float32Array;
  attended: Float32Array;
  projected: Float32Array;
  gate: Float32Array;
  up: Float32Array;
}

function layerBuffers(c: Umt5Config, rows: number): LayerBuffers {
  const inner = c.heads * c.dKv;
  return {
    normed: new Float32Array(rows * c.dModel),
    q: new Float32Array(rows * inner),
    k: new Float32Array(rows * inner),
    v: new Float32Array(rows * inner),
    bias: new Float32Array(c.heads * rows * rows),
    attended: new Float32Array(rows * inner),
    projected: new Float32Array(rows * c.dModel),
    gate: new Float32Array(rows * c.dFf),
    up: new Float32Array(rows * c.dFf),
  };
}

function node(op: OpName, inputs: (Float32Array | null)[], params: number[], output: Float32Array): OpNode {
  const need = (OPS[op].outputSize as (p: readonly number[]) => number)(params);
  if (output.length !== need) throw new Error(`umT5 graph: ${op} output has ${output.length} values, needs ${need}`);
  return { op, inputs, output, params };
}

function weightOf(weights: Umt5Weights, name: string): Float32Array {
  const t = weights.get(name);
  if (!t) throw new Error(`umT5 weights: no tensor ${name}`);
  return t;
}

/**
 * The nodes of encoder layer `layer` on the residual stream `x` [rows, dModel], updated in place:
 * x += o(attention(rms_norm(x))), with unscaled scores plus the layer's own relative position
 * bias; then x += wo(gelu_tanh(wi_0 h) * wi_1 h) with h = rms_norm(x).
 */
export function umt5LayerNodes(c: Umt5Config, weights: Umt5Weights, layer: number, x: Float32Array, rows: number, buffers?: LayerBuffers): OpNode[] {
  if (!Number.isInteger(layer) || layer < 0 || layer >= c.layers) throw new RangeError(`umT5 layer ${layer} is not in [0, ${c.layers})`);
  if (x.length !== rows * c.dModel) throw new RangeError(`umT5 layer ${layer}: x has ${x.length} values, expected [${rows}, ${c.dModel}]`);
  const b = buffers ?? layerBuffers(c, rows);
  const w = (name: string) => weightOf(weights, `encoder.block.${layer}.layer.${name}`);
  const D = c.dModel;
  const inner = c.heads * c.dKv;
  return [
    node('rms_norm', [x, w('0.layer_norm.weight')], [rows, D, c.eps], b.normed),
    node('linear', [b.normed, w('0.SelfAttention.q.weight'), null], [rows, D, inner], b.q),
    node('linear', [b.normed, w('0.SelfAttention.k.weight'), null], [rows, D, inner], b.k),
    node('linear', [b.normed, w('0.SelfAttention.v.weight'), null], [rows, D, inner], b.v),
    node('relative_position_bias', [w('0.SelfAttention.relative_attention_bias.weight')], [rows, rows, c.heads, c.relativeBuckets, c.relativeMaxDistance], b.bias),
    // T5 folds the 1/sqrt(d_kv) into its initialisation: the scores are not scaled.
    node('biased_attention', [b.q, b.k, b.v, b.bias], [1, rows, rows, c.heads, c.dKv, 1], b.attended),
    node('linear', [b.attended, w('0.SelfAttention.o.weight'), null], [rows, inner, D], b.projected),
    node('gated_add', [x, b.projected, null], [rows, D], x),
    node('rms_norm', [x, w('1.layer_norm.weight')], [rows, D, c.eps], b.normed),
    node('linear', [b.normed, w('1.DenseReluDense.wi_0.weight'), null], [rows, D, c.dFf], b.gate),
    node('gelu_tanh', [b.gate], [rows * c.dFf], b.gate),
    node('linear', [b.normed, w('1.DenseReluDense.wi_1.weight'), null], [rows, D, c.dFf], b.up),
    node('mul', [b.gate, b.up], [rows * c.dFf], b.gate),
    node('linear', [b.gate, w('1.DenseReluDense.wo.weight'), null], [rows, c.dFf, D], b.projected),
    node('gated_add', [x, b.projected, null], [rows, D], x),
  ];
}

/**
 * The whole encoder on `ids` (one row per token, no padding): embedding, every layer, final norm,
 * written into `output` [ids.length, dModel].
 */
export function umt5EncoderNodes(c: Umt5Config, weights: Umt5Weights, ids: Float32Array, output: Float32Array): OpNode[] {
  const rows = ids.length;
  if (output.length !== rows * c.dModel) throw new RangeError(`umT5 encoder: output has ${output.length} values, expected [${rows}, ${c.dModel}]`);
  const x = new Float32Array(rows * c.dModel);
  const buffers = layerBuffers(c, rows);
  const nodes: OpNode[] = [node('embedding', [weightOf(weights, 'shared.weight'), ids], [rows, c.vocabSize, c.dModel], x)];
  for (let l = 0; l < c.layers; l++) nodes.push(...umt5LayerNodes(c, weights, l, x, rows, buffers));
  nodes.push(node('rms_norm', [x, weightOf(weights, 'encoder.final_layer_norm.weight')], [rows, c.dModel, c.eps], output));
  return nodes;
}

export interface EncodeTextOptions {
  readonly config: Umt5Config;
  readonly weights: Umt5Weights;
  /** Token ids, EOS included; may be padded past `length`. */
  readonly ids: Int32Array | readonly number[];
  /** Real tokens (the attention mask's sum); default: from `mask`, else all of `ids`. */
  readonly length?: number;
  /** Attention mask (1 = token, 0 = padding); must be ones then zeros, as a tokenizer pads. */
  readonly mask?: ArrayLike<number>;
  /** Rows of the result (Wan: 512). */
  readonly textLen: number;
  readonly backend: Backend;
}

/** The number of real tokens that `length` / `mask` describe, checked against `ids` and textLen. */
export function promptLength(o: Pick<EncodeTextOptions, 'ids' | 'length' | 'mask' | 'textLen'>): number {
  let n = o.ids.length;
  if (o.mask) {
    if (o.mask.length !== o.ids.length) throw new RangeError(`umT5: mask has ${o.mask.length} entries for ${o.ids.length} ids`);
    n = 0;
    while (n < o.mask.length && o.mask[n] !== 0) n++;
    for (let i = n; i < o.mask.length; i++) {
      if (o.mask[i] !== 0) throw new RangeError(`umT5: the attention mask must be ones followed by zeros (padding at the end); position ${i} is unmasked after padding`);
    }
    if (o.length !== undefined && o.length !== n) throw new RangeError(`umT5: length ${o.length} disagrees with the mask's ${n} tokens`);
  } else if (o.length !== undefined) {
    n = o.length;
  }
  if (!Number.isInteger(n) || n < 0 || n > o.ids.length) throw new RangeError(`umT5: length ${n} is not in [0, ${o.ids.length}] (the ids given)`);
  if (!Number.isInteger(o.textLen) || o.textLen < 1) throw new RangeError(`umT5: textLen must be a positive integer, got ${o.textLen}`);
  if (n > o.textLen) throw new RangeError(`umT5: ${n} tokens exceed textLen ${o.textLen}`);
  return n;
}

/**
 * Encodes one prompt as Wan conditions on it: [textLen, dModel] float32, the encoder's rows of the
 * `length` real tokens followed by zero rows.
 */
export async function encodeText(o: EncodeTextOptions): Promise<Float32Array> {
  const c = validateUmt5Config(o.config);
  checkUmt5Weights(c, o.weights);
  const n = promptLength(o);
  const ids = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const id = o.ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) throw new RangeError(`umT5: ids[${i}] = ${id} is not a token id in [0, ${c.vocabSize})`);
    ids[i] = id;
  }
  const out = new Float32Array(o.textLen * c.dModel);
  umt5Encodes.inc();
  if (n > 0) await o.backend.run(umt5EncoderNodes(c, o.weights, ids, out.subarray(0, n * c.dModel)));
  return out;
}
