/**
 * Float64 reference of the umT5 encoder, written from the published architecture (T5 v1.1 with
 * umT5's per-layer position bias; Hugging Face UMT5EncoderModel and Wan's T5Encoder read as
 * documentation) with plain loops, independent of the engine graph in libs/model/src/umt5.ts.
 *
 * Unlike the engine graph, it runs every one of the textLen token rows, padding included, with
 * the attention mask applied as the reference models apply it: the most negative float32 added to
 * the score of every padded key. Padded query rows are computed too and only dropped at the end,
 * where Wan keeps the first sum(mask) rows and zero-pads the rest.
 */
import { type Umt5Config, umt5TensorSpecs } from '@longshot/model';
import { relativePositionBucket } from './ops';

type Weights = ReadonlyMap<string, Float32Array>;

/** torch.finfo(torch.float32).min: what HF adds to the scores of masked keys. */
const MASKED = -3.4028234663852886e38;

function get(w: Weights, name: string): Float32Array {
  const t = w.get(name);
  if (!t) throw new Error(`reference umT5: no tensor ${name}`);
  return t;
}

/** y[r, o] = sum_i x[r, i] W[o, i] (nn.Linear without bias, weight [out, in]). */
function linear(x: Float64Array, rows: number, inF: number, w: Float32Array, outF: number): Float64Array {
  if (w.length !== inF * outF) throw new Error(`reference umT5: weight has ${w.length} values, expected ${outF}x${inF}`);
  const y = new Float64Array(rows * outF);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      let s = 0;
      for (let i = 0; i < inF; i++) s += x[r * inF + i] * w[o * inF + i];
      y[r * outF + o] = s;
    }
  }
  return y;
}

/** T5 layer norm: x / sqrt(mean(x^2) + eps) * weight; no mean subtracted, no bias. */
function t5Norm(x: Float64Array, rows: number, dim: number, weight: Float32Array, eps: number): Float64Array {
  const y = new Float64Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    let ms = 0;
    for (let d = 0; d < dim; d++) ms += x[r * dim + d] ** 2;
    const inv = 1 / Math.sqrt(ms / dim + eps);
    for (let d = 0; d < dim; d++) y[r * dim + d] = weight[d] * (x[r * dim + d] * inv);
  }
  return y;
}

/** GELU, tanh approximation ("gelu_new"). */
function gelu(v: number): number {
  return 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
}

/**
 * One encoder block on hidden states x [rows, dModel]; keyValid[j] false masks key j. Returns the
 * new hidden states (x is not modified).
 */
export function referenceUmt5Layer(c: Umt5Config, w: Weights, layer: number, x: Float64Array, rows: number, keyValid: readonly boolean[] | null = null): Float64Array {
  const D = c.dModel;
  const H = c.heads;
  const dk = c.dKv;
  const inner = H * dk;
  const p = `encoder.block.${layer}.layer`;

  // Self-attention sub-layer (pre-norm, residual).
  const h = t5Norm(x, rows, D, get(w, `${p}.0.layer_norm.weight`), c.eps);
  const q = linear(h, rows, D, get(w, `${p}.0.SelfAttention.q.weight`), inner);
  const k = linear(h, rows, D, get(w, `${p}.0.SelfAttention.k.weight`), inner);
  const v = linear(h, rows, D, get(w, `${p}.0.SelfAttention.v.weight`), inner);
  const table = get(w, `${p}.0.SelfAttention.relative_attention_bias.weight`); // [buckets, heads]
  const context = new Float64Array(rows * inner);
  const scores = new Float64Array(rows);
  for (let head = 0; head < H; head++) {
    for (let i = 0; i < rows; i++) {
      let max = -Infinity;
      for (let j = 0; j < rows; j++) {
        let s = 0; // not scaled by 1/sqrt(d_kv)
        for (let d = 0; d < dk; d++) s += q[i * inner + head * dk + d] * k[j * inner + head * dk + d];
        // memory position - query position
        s += table[relativePositionBucket(j - i, c.relativeBuckets, c.relativeMaxDistance) * H + head];
        if (keyValid && !keyValid[j]) s += MASKED;
        scores[j] = s;
        max = Math.max(max, s);
      }
      let sum = 0;
      for (let j = 0; j < rows; j++) {
        scores[j] = Math.exp(scores[j] - max);
        sum += scores[j];
      }
      for (let d = 0; d < dk; d++) {
        let acc = 0;
        for (let j = 0; j < rows; j++) acc += scores[j] * v[j * inner + head * dk + d];
        context[i * inner + head * dk + d] = acc / sum;
      }
    }
  }
  const attn = linear(context, rows, inner, get(w, `${p}.0.SelfAttention.o.weight`), D);
  const y = Float64Array.from(x, (val, i) => val + attn[i]);

  // Gated-GELU feed-forward sub-layer (pre-norm, residual).
  const f = t5Norm(y, rows, D, get(w, `${p}.1.layer_norm.weight`), c.eps);
  const g = linear(f, rows, D, get(w, `${p}.1.DenseReluDense.wi_0.weight`), c.dFf);
  const u = linear(f, rows, D, get(w, `${p}.1.DenseReluDense.wi_1.weight`), c.dFf);
  const gated = Float64Array.from(g, (val, i) => gelu(val) * u[i]);
  const ff = linear(gated, rows, c.dFf, get(w, `${p}.1.DenseReluDense.wo.weight`), D);
  for (let i = 0; i < y.length; i++) y[i] += ff[i];
  return y;
}

/**
 * The text conditioning Wan builds from a tokenized prompt: ids [textLen] (padded), mask
 * [textLen] (1 = token). Runs the encoder on all textLen rows with the mask, keeps the first
 * sum(mask) rows and zeros the rest. Returns [textLen, dModel].
 */
export function referenceUmt5Encode(c: Umt5Config, w: Weights, ids: ArrayLike<number>, mask: ArrayLike<number>): Float64Array {
  for (const spec of umt5TensorSpecs(c)) {
    if (get(w, spec.name).length !== spec.shape.reduce((a, b) => a * b, 1)) throw new Error(`reference umT5: ${spec.name} has the wrong size`);
  }
  const rows = ids.length;
  if (mask.length !== rows) throw new Error('reference umT5: ids and mask differ in length');
  const D = c.dModel;
  const shared = get(w, 'shared.weight');
  let x: Float64Array = new Float64Array(rows * D);
  for (let r = 0; r < rows; r++) for (let d = 0; d < D; d++) x[r * D + d] = shared[ids[r] * D + d];
  const keyValid = Array.from(mask, (m) => m !== 0);
  for (let l = 0; l < c.layers; l++) x = referenceUmt5Layer(c, w, l, x, rows, keyValid);
  const out = t5Norm(x, rows, D, get(w, 'encoder.final_layer_norm.weight'), c.eps);
  const length = keyValid.filter(Boolean).length;
  out.fill(0, length * D);
  return out;
}
