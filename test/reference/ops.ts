/**
 * Float64 reference for every op in libs/engine/src/ops.ts.
 *
 * Written from the `doc` strings of OPS only (never from the native kernels), as plainly as
 * possible: naive loops, float64 accumulation, no fusion, no online softmax. It is the yardstick
 * the conformance suite measures every backend and SIMD level against, so clarity beats speed.
 *
 * Every reference op takes the same inputs and params, in the same order, as the engine op, and
 * returns a fresh Float64Array of OPS[op].outputSize(params) elements. Inputs are never written.
 */
import { OPS, type OpName } from '../../libs/engine/src/ops';

export type Tensor = Float32Array | Float64Array;
export type ReferenceOp = (inputs: readonly (Tensor | null)[], params: readonly number[]) => Float64Array;

/** Throws unless `t` is present and holds exactly `n` elements (catches shape bugs in callers). */
function need(op: OpName, slot: string, t: Tensor | null | undefined, n: number): Tensor {
  if (!t) throw new Error(`reference ${op}: input '${slot}' is required`);
  if (t.length !== n) throw new Error(`reference ${op}: input '${slot}' has ${t.length} elements, expected ${n}`);
  return t;
}

/** Like `need`, but a null/undefined slot is allowed (the `?` inputs of OPS). */
function optional(op: OpName, slot: string, t: Tensor | null | undefined, n: number): Tensor | null {
  return t ? need(op, slot, t, n) : null;
}

function linear(inputs: readonly (Tensor | null)[], [rows, inF, outF]: readonly number[]): Float64Array {
  const x = need('linear', 'x', inputs[0], rows * inF);
  const w = need('linear', 'weight', inputs[1], outF * inF);
  const b = optional('linear', 'bias', inputs[2], outF);
  const y = new Float64Array(rows * outF);
  for (let m = 0; m < rows; m++) {
    for (let n = 0; n < outF; n++) {
      let s = 0;
      for (let k = 0; k < inF; k++) s += x[m * inF + k] * w[n * inF + k];
      y[m * outF + n] = s + (b ? b[n] : 0);
    }
  }
  return y;
}

function layerNorm(inputs: readonly (Tensor | null)[], [rows, dim, eps]: readonly number[]): Float64Array {
  const x = need('layer_norm', 'x', inputs[0], rows * dim);
  const w = optional('layer_norm', 'weight', inputs[1], dim);
  const b = optional('layer_norm', 'bias', inputs[2], dim);
  const y = new Float64Array(rows * dim);
  for (let m = 0; m < rows; m++) {
    let mean = 0;
    for (let d = 0; d < dim; d++) mean += x[m * dim + d];
    mean /= dim;
    let variance = 0; // biased: divide by dim, as torch.nn.LayerNorm does
    for (let d = 0; d < dim; d++) variance += (x[m * dim + d] - mean) ** 2;
    variance /= dim;
    const inv = 1 / Math.sqrt(variance + eps);
    for (let d = 0; d < dim; d++) {
      let v = (x[m * dim + d] - mean) * inv;
      if (w) v *= w[d];
      if (b) v += b[d];
      y[m * dim + d] = v;
    }
  }
  return y;
}

function rmsNorm(inputs: readonly (Tensor | null)[], [rows, dim, eps]: readonly number[]): Float64Array {
  const x = need('rms_norm', 'x', inputs[0], rows * dim);
  const w = need('rms_norm', 'weight', inputs[1], dim);
  const y = new Float64Array(rows * dim);
  for (let m = 0; m < rows; m++) {
    let ms = 0;
    for (let d = 0; d < dim; d++) ms += x[m * dim + d] ** 2;
    const inv = 1 / Math.sqrt(ms / dim + eps);
    for (let d = 0; d < dim; d++) y[m * dim + d] = x[m * dim + d] * inv * w[d];
  }
  return y;
}

function modulate(inputs: readonly (Tensor | null)[], [rows, dim]: readonly number[]): Float64Array {
  const x = need('modulate', 'x', inputs[0], rows * dim);
  const shift = need('modulate', 'shift', inputs[1], dim);
  const scale = need('modulate', 'scale', inputs[2], dim);
  const y = new Float64Array(rows * dim);
  for (let m = 0; m < rows; m++) {
    for (let d = 0; d < dim; d++) y[m * dim + d] = x[m * dim + d] * (1 + scale[d]) + shift[d];
  }
  return y;
}

function gatedAdd(inputs: readonly (Tensor | null)[], [rows, dim]: readonly number[]): Float64Array {
  const x = need('gated_add', 'x', inputs[0], rows * dim);
  const yIn = need('gated_add', 'y', inputs[1], rows * dim);
  const gate = optional('gated_add', 'gate', inputs[2], dim);
  const out = new Float64Array(rows * dim);
  for (let m = 0; m < rows; m++) {
    for (let d = 0; d < dim; d++) out[m * dim + d] = x[m * dim + d] + (gate ? gate[d] : 1) * yIn[m * dim + d];
  }
  return out;
}

function geluTanh(inputs: readonly (Tensor | null)[], [n]: readonly number[]): Float64Array {
  const x = need('gelu_tanh', 'x', inputs[0], n);
  const c = Math.sqrt(2 / Math.PI);
  return Float64Array.from(x, (v) => 0.5 * v * (1 + Math.tanh(c * (v + 0.044715 * v * v * v))));
}

function silu(inputs: readonly (Tensor | null)[], [n]: readonly number[]): Float64Array {
  const x = need('silu', 'x', inputs[0], n);
  return Float64Array.from(x, (v) => v / (1 + Math.exp(-v)));
}

function rope3d(inputs: readonly (Tensor | null)[], params: readonly number[]): Float64Array {
  const [batch, frames, height, width, heads, headDim, frameOffset, theta] = params;
  const tokens = frames * height * width;
  const x = need('rope3d', 'x', inputs[0], batch * tokens * heads * headDim);
  const pairs = headDim / 2;
  const spatialPairs = Math.floor(pairs / 3); // pairs for rows, and again for columns
  const framePairs = pairs - 2 * spatialPairs;
  const y = new Float64Array(x.length);
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < frames; t++) {
      for (let i = 0; i < height; i++) {
        for (let j = 0; j < width; j++) {
          const token = (t * height + i) * width + j;
          for (let h = 0; h < heads; h++) {
            const base = ((b * tokens + token) * heads + h) * headDim;
            for (let p = 0; p < pairs; p++) {
              // Which part this pair belongs to, its position, its index inside the part and the
              // part's width in dims (n = 2 * pair count).
              let pos: number, local: number, n: number;
              if (p < framePairs) {
                [pos, local, n] = [frameOffset + t, p, 2 * framePairs];
              } else if (p < framePairs + spatialPairs) {
                [pos, local, n] = [i, p - framePairs, 2 * spatialPairs];
              } else {
                [pos, local, n] = [j, p - framePairs - spatialPairs, 2 * spatialPairs];
              }
              const angle = pos * Math.pow(theta, (-2 * local) / n);
              const re = x[base + 2 * p];
              const im = x[base + 2 * p + 1];
              // (re + i im) * (cos + i sin)
              y[base + 2 * p] = re * Math.cos(angle) - im * Math.sin(angle);
              y[base + 2 * p + 1] = re * Math.sin(angle) + im * Math.cos(angle);
            }
          }
        }
      }
    }
  }
  return y;
}

function attention(inputs: readonly (Tensor | null)[], params: readonly number[]): Float64Array {
  const [batch, queries, keys, extraKeys, heads, headDim] = params;
  const width = heads * headDim;
  const q = need('attention', 'q', inputs[0], batch * queries * width);
  const k = need('attention', 'k', inputs[1], batch * keys * width);
  const v = need('attention', 'v', inputs[2], batch * keys * width);
  const ek = extraKeys > 0 ? need('attention', 'extraK', inputs[3], batch * extraKeys * width) : null;
  const ev = extraKeys > 0 ? need('attention', 'extraV', inputs[4], batch * extraKeys * width) : null;
  const total = keys + extraKeys;
  const scale = 1 / Math.sqrt(headDim);
  // Key/value row `r` of batch item `b`: the first `keys` rows come from k/v, the rest from the
  // extra (feature-cache) rows, appended after them.
  const keyAt = (b: number, r: number, h: number, d: number): number =>
    r < keys ? k[(b * keys + r) * width + h * headDim + d] : ek![(b * extraKeys + r - keys) * width + h * headDim + d];
  const valueAt = (b: number, r: number, h: number, d: number): number =>
    r < keys ? v[(b * keys + r) * width + h * headDim + d] : ev![(b * extraKeys + r - keys) * width + h * headDim + d];

  const out = new Float64Array(batch * queries * width);
  const scores = new Float64Array(total);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < queries; i++) {
        const qBase = (b * queries + i) * width + h * headDim;
        let max = -Infinity;
        for (let r = 0; r < total; r++) {
          let s = 0;
          for (let d = 0; d < headDim; d++) s += q[qBase + d] * keyAt(b, r, h, d);
          scores[r] = s * scale;
          max = Math.max(max, scores[r]);
        }
        let sum = 0;
        for (let r = 0; r < total; r++) {
          scores[r] = Math.exp(scores[r] - max);
          sum += scores[r];
        }
        for (let d = 0; d < headDim; d++) {
          let acc = 0;
          for (let r = 0; r < total; r++) acc += scores[r] * valueAt(b, r, h, d);
          out[qBase + d] = acc / sum;
        }
      }
    }
  }
  return out;
}

function patchify(inputs: readonly (Tensor | null)[], [channels, frames, height, width, prefixFrames, prefixLength]: readonly number[]): Float64Array {
  const x = need('patchify', 'latents', inputs[0], channels * frames * height * width);
  const prefix = prefixFrames > 0 ? need('patchify', 'prefix', inputs[1], channels * prefixLength * height * width) : null;
  // Value (c, f, y, x) of the window [channels, prefixFrames + frames, height, width].
  const windowAt = (c: number, f: number, yy: number, xx: number): number =>
    f < prefixFrames ? prefix![((c * prefixLength + prefixLength - prefixFrames + f) * height + yy) * width + xx] : x[((c * frames + f - prefixFrames) * height + yy) * width + xx];
  const gh = height / 2;
  const gw = width / 2;
  const features = channels * 4;
  const y = new Float64Array(channels * (prefixFrames + frames) * height * width);
  for (let f = 0; f < prefixFrames + frames; f++) {
    for (let i = 0; i < gh; i++) {
      for (let j = 0; j < gw; j++) {
        const token = (f * gh + i) * gw + j;
        for (let c = 0; c < channels; c++) {
          for (let ph = 0; ph < 2; ph++) {
            for (let pw = 0; pw < 2; pw++) {
              y[token * features + c * 4 + ph * 2 + pw] = windowAt(c, f, 2 * i + ph, 2 * j + pw);
            }
          }
        }
      }
    }
  }
  return y;
}

function unpatchify(inputs: readonly (Tensor | null)[], [channels, frames, height, width]: readonly number[]): Float64Array {
  const x = need('unpatchify', 'tokens', inputs[0], channels * frames * height * width);
  const gh = height / 2;
  const gw = width / 2;
  const features = channels * 4;
  const y = new Float64Array(x.length);
  for (let f = 0; f < frames; f++) {
    for (let i = 0; i < gh; i++) {
      for (let j = 0; j < gw; j++) {
        const token = (f * gh + i) * gw + j;
        for (let c = 0; c < channels; c++) {
          for (let ph = 0; ph < 2; ph++) {
            for (let pw = 0; pw < 2; pw++) {
              y[((c * frames + f) * height + 2 * i + ph) * width + 2 * j + pw] = x[token * features + (ph * 2 + pw) * channels + c];
            }
          }
        }
      }
    }
  }
  return y;
}

function timestepEmbedding(inputs: readonly (Tensor | null)[], [n, dim]: readonly number[]): Float64Array {
  const t = need('timestep_embedding', 'timesteps', inputs[0], n);
  const half = Math.floor(dim / 2); // an odd dim leaves the last element of each row 0
  const y = new Float64Array(n * dim);
  for (let r = 0; r < n; r++) {
    for (let j = 0; j < half; j++) {
      const arg = t[r] * Math.pow(10000, -j / half);
      y[r * dim + j] = Math.cos(arg);
      y[r * dim + half + j] = Math.sin(arg);
    }
  }
  return y;
}

function cfgCombine(inputs: readonly (Tensor | null)[], [n, guidance]: readonly number[]): Float64Array {
  const x = need('cfg_combine', 'x', inputs[0], 2 * n);
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const cond = x[i];
    const uncond = x[n + i];
    y[i] = uncond + guidance * (cond - uncond);
  }
  return y;
}

function axpy(inputs: readonly (Tensor | null)[], [n, alpha]: readonly number[]): Float64Array {
  const x = need('axpy', 'x', inputs[0], n);
  const y = need('axpy', 'y', inputs[1], n);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = x[i] + alpha * y[i];
  return out;
}

function copyRows(inputs: readonly (Tensor | null)[], [batch, rows, cols, rowOffset, count]: readonly number[]): Float64Array {
  const x = need('copy_rows', 'x', inputs[0], batch * rows * cols);
  if (rowOffset < 0 || rowOffset + count > rows) {
    throw new Error(`reference copy_rows: rows [${rowOffset}, ${rowOffset + count}) outside [0, ${rows})`);
  }
  const y = new Float64Array(batch * count * cols);
  for (let b = 0; b < batch; b++) {
    for (let r = 0; r < count; r++) {
      for (let c = 0; c < cols; c++) y[(b * count + r) * cols + c] = x[(b * rows + rowOffset + r) * cols + c];
    }
  }
  return y;
}

function mul(inputs: readonly (Tensor | null)[], [n]: readonly number[]): Float64Array {
  const x = need('mul', 'x', inputs[0], n);
  const y = need('mul', 'y', inputs[1], n);
  return Float64Array.from(x, (v, i) => v * y[i]);
}

function embedding(inputs: readonly (Tensor | null)[], [rows, vocab, dim]: readonly number[]): Float64Array {
  const table = need('embedding', 'table', inputs[0], vocab * dim);
  const ids = need('embedding', 'ids', inputs[1], rows);
  const y = new Float64Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    const id = ids[r];
    if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new Error(`reference embedding: ids[${r}] = ${id} is not in [0, ${vocab})`);
    for (let d = 0; d < dim; d++) y[r * dim + d] = table[id * dim + d];
  }
  return y;
}

/**
 * T5's bidirectional bucket of a relative position `rel` = key position - query position, written
 * from the published definition (Raffel et al., and the T5/umT5 reference code): half the buckets
 * per sign, the first half of those exact, the rest logarithmic up to maxDistance. The log branch
 * is evaluated in float32 steps (Math.fround), as those implementations do on float32 tensors.
 */
export function relativePositionBucket(rel: number, buckets: number, maxDistance: number): number {
  const half = Math.floor(buckets / 2);
  const exact = Math.floor(half / 2);
  const offset = rel > 0 ? half : 0;
  const n = Math.abs(rel);
  if (n < exact) return offset + n;
  const f = Math.fround;
  const logRatio = f(Math.log(f(n / exact)));
  const logSpan = f(Math.log(maxDistance / exact));
  const large = exact + Math.trunc(f(f(logRatio / logSpan) * (half - exact)));
  return offset + Math.min(large, half - 1);
}

function relativePositionBias(inputs: readonly (Tensor | null)[], params: readonly number[]): Float64Array {
  const [queries, keys, heads, buckets, maxDistance] = params;
  const table = need('relative_position_bias', 'table', inputs[0], buckets * heads);
  const y = new Float64Array(heads * queries * keys);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < queries; i++) {
      for (let j = 0; j < keys; j++) y[(h * queries + i) * keys + j] = table[relativePositionBucket(j - i, buckets, maxDistance) * heads + h];
    }
  }
  return y;
}

function biasedAttention(inputs: readonly (Tensor | null)[], params: readonly number[]): Float64Array {
  const [batch, queries, keys, heads, headDim, scale] = params;
  const width = heads * headDim;
  const q = need('biased_attention', 'q', inputs[0], batch * queries * width);
  const k = need('biased_attention', 'k', inputs[1], batch * keys * width);
  const v = need('biased_attention', 'v', inputs[2], batch * keys * width);
  const bias = need('biased_attention', 'bias', inputs[3], heads * queries * keys);
  const out = new Float64Array(batch * queries * width);
  const scores = new Float64Array(keys);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < queries; i++) {
        const qBase = (b * queries + i) * width + h * headDim;
        let max = -Infinity;
        for (let j = 0; j < keys; j++) {
          let s = 0;
          for (let d = 0; d < headDim; d++) s += q[qBase + d] * k[(b * keys + j) * width + h * headDim + d];
          scores[j] = scale * s + bias[(h * queries + i) * keys + j];
          max = Math.max(max, scores[j]);
        }
        let sum = 0;
        for (let j = 0; j < keys; j++) {
          scores[j] = Math.exp(scores[j] - max);
          sum += scores[j];
        }
        for (let d = 0; d < headDim; d++) {
          let acc = 0;
          for (let j = 0; j < keys; j++) acc += scores[j] * v[(b * keys + j) * width + h * headDim + d];
          out[qBase + d] = acc / sum;
        }
      }
    }
  }
  return out;
}

function causalConv3d(inputs: readonly (Tensor | null)[], params: readonly number[]): Float64Array {
  const [frames, cacheFrames, height, width, cin, cout, kt, kh, kw] = params;
  const x = need('causal_conv3d', 'x', inputs[0], frames * height * width * cin);
  const w = need('causal_conv3d', 'weight', inputs[1], cout * cin * kt * kh * kw);
  const b = optional('causal_conv3d', 'bias', inputs[2], cout);
  const cache = cacheFrames > 0 ? need('causal_conv3d', 'cache', inputs[3], cacheFrames * height * width * cin) : null;
  const zeros = kt - 1 - cacheFrames;
  // Frame s of the time axis [zeros, cache, x], pixel (y, x), channel i; 0 outside.
  const input = (s: number, y: number, xx: number, i: number): number => {
    if (y < 0 || y >= height || xx < 0 || xx >= width || s < zeros) return 0;
    const f = s - zeros;
    const pixel = y * width + xx;
    return f < cacheFrames ? cache![(f * height * width + pixel) * cin + i] : x[((f - cacheFrames) * height * width + pixel) * cin + i];
  };
  const out = new Float64Array(frames * height * width * cout);
  for (let t = 0; t < frames; t++) {
    for (let y = 0; y < height; y++) {
      for (let xx = 0; xx < width; xx++) {
        for (let o = 0; o < cout; o++) {
          let sum = b ? b[o] : 0;
          for (let i = 0; i < cin; i++) {
            for (let dt = 0; dt < kt; dt++) {
              for (let dy = 0; dy < kh; dy++) {
                for (let dx = 0; dx < kw; dx++) {
                  sum += w[(((o * cin + i) * kt + dt) * kh + dy) * kw + dx] * input(t + dt, y + dy - (kh - 1) / 2, xx + dx - (kw - 1) / 2, i);
                }
              }
            }
          }
          out[((t * height + y) * width + xx) * cout + o] = sum;
        }
      }
    }
  }
  return out;
}

function channelRmsNorm(inputs: readonly (Tensor | null)[], [rows, dim, eps]: readonly number[]): Float64Array {
  const x = need('channel_rms_norm', 'x', inputs[0], rows * dim);
  const w = need('channel_rms_norm', 'weight', inputs[1], dim);
  const y = new Float64Array(rows * dim);
  for (let m = 0; m < rows; m++) {
    let ss = 0;
    for (let d = 0; d < dim; d++) ss += x[m * dim + d] ** 2;
    const inv = Math.sqrt(dim) / Math.max(Math.sqrt(ss), eps);
    for (let d = 0; d < dim; d++) y[m * dim + d] = x[m * dim + d] * inv * w[d];
  }
  return y;
}

function upsampleNearest2x(inputs: readonly (Tensor | null)[], [frames, height, width, ch]: readonly number[]): Float64Array {
  const x = need('upsample_nearest2x', 'x', inputs[0], frames * height * width * ch);
  const y = new Float64Array(frames * 4 * height * width * ch);
  for (let f = 0; f < frames; f++)
    for (let oy = 0; oy < 2 * height; oy++)
      for (let ox = 0; ox < 2 * width; ox++)
        for (let c = 0; c < ch; c++) y[((f * 2 * height + oy) * 2 * width + ox) * ch + c] = x[((f * height + Math.floor(oy / 2)) * width + Math.floor(ox / 2)) * ch + c];
  return y;
}

function transpose(inputs: readonly (Tensor | null)[], [batch, rows, cols, cell]: readonly number[]): Float64Array {
  const x = need('transpose', 'x', inputs[0], batch * rows * cols * cell);
  const y = new Float64Array(batch * rows * cols * cell);
  for (let b = 0; b < batch; b++)
    for (let i = 0; i < rows; i++)
      for (let j = 0; j < cols; j++)
        for (let e = 0; e < cell; e++) y[((b * cols + j) * rows + i) * cell + e] = x[((b * rows + i) * cols + j) * cell + e];
  return y;
}

function updateFrameCache(inputs: readonly (Tensor | null)[], [keep, frames, size]: readonly number[]): Float64Array {
  const cache = need('update_frame_cache', 'cache', inputs[0], keep * size);
  const x = need('update_frame_cache', 'x', inputs[1], frames * size);
  const all = new Float64Array((keep + frames) * size);
  all.set(cache, 0);
  all.set(x, keep * size);
  return all.slice(frames * size);
}

function clamp(inputs: readonly (Tensor | null)[], [n, lo, hi]: readonly number[]): Float64Array {
  const x = need('clamp', 'x', inputs[0], n);
  return Float64Array.from(x, (v) => Math.min(Math.max(v, lo), hi));
}

/** out[i] = sum over the present slots j of c_j * t_j[i], in float64. */
function weightedSum(inputs: readonly (Tensor | null)[], [n, ...coefs]: readonly number[]): Float64Array {
  const out = new Float64Array(n);
  coefs.forEach((c, j) => {
    const t = j === 0 ? need('weighted_sum', 't0', inputs[0], n) : optional('weighted_sum', `t${j}`, inputs[j], n);
    if (t) for (let i = 0; i < n; i++) out[i] += c * t[i];
  });
  return out;
}

/**
 * The reference of every op, keyed by op name. Typed as a full Record so adding an op to OPS
 * without a reference fails the type check; the conformance suite also checks it at run time.
 */
export const REFERENCE_OPS: Readonly<Record<OpName, ReferenceOp>> = {
  linear,
  layer_norm: layerNorm,
  rms_norm: rmsNorm,
  modulate,
  gated_add: gatedAdd,
  gelu_tanh: geluTanh,
  silu,
  rope3d,
  attention,
  patchify,
  unpatchify,
  timestep_embedding: timestepEmbedding,
  cfg_combine: cfgCombine,
  copy_rows: copyRows,
  axpy,
  mul,
  embedding,
  relative_position_bias: relativePositionBias,
  biased_attention: biasedAttention,
  causal_conv3d: causalConv3d,
  channel_rms_norm: channelRmsNorm,
  upsample_nearest2x: upsampleNearest2x,
  transpose,
  update_frame_cache: updateFrameCache,
  clamp,
  weighted_sum: weightedSum,
};

/** Runs the reference of `op`, checking the result has the size OPS says the output has. */
export function referenceOp(op: OpName, inputs: readonly (Tensor | null)[], params: readonly number[]): Float64Array {
  const impl = REFERENCE_OPS[op];
  if (!impl) throw new Error(`no reference for op '${op}'`);
  if (params.length !== OPS[op].params.length) {
    throw new Error(`reference ${op}: ${params.length} params given, expected ${OPS[op].params.length} (${OPS[op].params.join(', ')})`);
  }
  const out = impl(inputs, params);
  const expected = OPS[op].outputSize(params);
  if (out.length !== expected) throw new Error(`reference ${op}: produced ${out.length} elements, OPS says ${expected}`);
  return out;
}
