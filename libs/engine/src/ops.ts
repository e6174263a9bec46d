/**
 * The one list of engine ops. Every backend (CPU today, CUDA later), the float64 reference
 * (test/reference) and the conformance suite are written against this table; the native side
 * mirrors it in native/src/ops.def in the same order, and the addon checks the two agree at load.
 *
 * Conventions for every op:
 * - Tensors are float32, row-major, contiguous. Shapes are passed explicitly in `params`.
 * - `inputs` are read-only; `output` is written. An op may be asked to write in place
 *   (output === an input) only where the table says `inPlace: true`.
 * - Results must not depend on the thread count: work is split so that every output element is
 *   reduced in the same order whatever the partition (this is what makes a job a pure function
 *   of its spec and seed, and K-stage chaining bit-identical to one stage).
 */
export interface OpSpec {
  /** Input slot names; a `?` suffix marks a slot that may be null. */
  readonly inputs: readonly string[];
  /** Param names, in order; all are numbers (integers unless noted). */
  readonly params: readonly string[];
  /** Number of float32 elements the output must hold, from the params. */
  outputSize(p: readonly number[]): number;
  /** Whether the output may alias inputs[0]. */
  readonly inPlace: boolean;
  readonly doc: string;
}

export const OPS = {
  linear: {
    inputs: ['x', 'weight', 'bias?'],
    params: ['rows', 'inFeatures', 'outFeatures'],
    outputSize: ([m, , n]) => m * n,
    inPlace: false,
    doc: 'y[m, n] = sum_k x[m, k] * weight[n, k] + bias[n]. Weight stored [out, in] as in PyTorch.',
  },
  layer_norm: {
    inputs: ['x', 'weight?', 'bias?'],
    params: ['rows', 'dim', 'eps (float)'],
    outputSize: ([m, d]) => m * d,
    inPlace: true,
    doc: 'Per row: (x - mean) / sqrt(var + eps) with biased variance, then * weight + bias when given.',
  },
  rms_norm: {
    inputs: ['x', 'weight'],
    params: ['rows', 'dim', 'eps (float)'],
    outputSize: ([m, d]) => m * d,
    inPlace: true,
    doc: 'Per row: x / sqrt(mean(x^2) + eps) * weight. Wan normalises q and k over the full model dim.',
  },
  modulate: {
    inputs: ['x', 'shift', 'scale'],
    params: ['rows', 'dim'],
    outputSize: ([m, d]) => m * d,
    inPlace: true,
    doc: 'y[m, d] = x[m, d] * (1 + scale[d]) + shift[d] (adaLN modulation; vectors shared by all rows).',
  },
  gated_add: {
    inputs: ['x', 'y', 'gate?'],
    params: ['rows', 'dim'],
    outputSize: ([m, d]) => m * d,
    inPlace: true,
    doc: 'out[m, d] = x[m, d] + gate[d] * y[m, d]; a null gate means a plain residual add.',
  },
  gelu_tanh: {
    inputs: ['x'],
    params: ['n'],
    outputSize: ([n]) => n,
    inPlace: true,
    doc: '0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).',
  },
  silu: {
    inputs: ['x'],
    params: ['n'],
    outputSize: ([n]) => n,
    inPlace: true,
    doc: 'x / (1 + exp(-x)).',
  },
  rope3d: {
    inputs: ['x'],
    params: ['batch', 'frames', 'height', 'width', 'heads', 'headDim', 'frameOffset', 'theta (float)'],
    outputSize: ([b, f, h, w, nh, hd]) => b * f * h * w * nh * hd,
    inPlace: true,
    doc:
      'Wan 3D rotary embedding. x is [batch, frames*height*width, heads, headDim], tokens ordered frame, ' +
      'row, column; token (t, i, j) has positions (frameOffset + t, i, j). The head dim splits into ' +
      'pairs: c = headDim/2 pairs, of which cf = c - 2*floor(c/3) rotate by frame, then floor(c/3) by row, ' +
      'then floor(c/3) by column (128 -> 44/42/42 dims). Pair p of a part with n = 2*(its pair count) dims ' +
      'and local index j has angle pos * theta^(-2j/n); the pair (x[2p], x[2p+1]) is rotated as a complex ' +
      'number by that angle. Angles are computed in float64.',
  },
  attention: {
    inputs: ['q', 'k', 'v', 'extraK?', 'extraV?'],
    params: ['batch', 'queries', 'keys', 'extraKeys', 'heads', 'headDim'],
    outputSize: ([b, lq, , , nh, hd]) => b * lq * nh * hd,
    inPlace: false,
    doc:
      'Multi-head softmax attention, scale 1/sqrt(headDim). q is [batch, queries, heads*headDim]; k, v ' +
      '[batch, keys, heads*headDim]; extraK, extraV [batch, extraKeys, heads*headDim] are appended after ' +
      'the keys (the DualParal feature cache). Fused with an online softmax: the full score matrix is ' +
      'never materialised. Output [batch, queries, heads*headDim].',
  },
  patchify: {
    inputs: ['latents', 'prefix?'],
    params: ['channels', 'frames', 'height', 'width', 'prefixFrames', 'prefixLength'],
    outputSize: ([c, f, h, w, pf]) => c * (pf + f) * h * w,
    inPlace: false,
    doc:
      'The window [channels, prefixFrames + frames, height, width] -> tokens [(prefixFrames + frames)*(height/2)*(width/2), ' +
      'channels*4] for patch (1, 2, 2); tokens ordered frame, row, column; feature index c*4 + ph*2 + pw (the layout of ' +
      'a Conv3d weight [D, C, 1, 2, 2] flattened, so the patch embedding is a linear map). The window is read from two ' +
      'tensors in place, never assembled: its first prefixFrames frames are the last prefixFrames frames of prefix ' +
      '[channels, prefixLength, height, width] (prefixLength >= prefixFrames; null when prefixFrames is 0), the rest ' +
      'latents [channels, frames, height, width].',
  },
  unpatchify: {
    inputs: ['tokens'],
    params: ['channels', 'frames', 'height', 'width'],
    outputSize: ([c, f, h, w]) => c * f * h * w,
    inPlace: false,
    doc:
      'Tokens [frames*(height/2)*(width/2), 4*channels] -> latents [channels, frames, height, width]; ' +
      'feature index (ph*2 + pw)*channels + c, the order of proj_out in Wan and diffusers.',
  },
  timestep_embedding: {
    inputs: ['timesteps'],
    params: ['n', 'dim'],
    outputSize: ([n, d]) => n * d,
    inPlace: false,
    doc:
      'Sinusoidal embedding [n, dim]: half = floor(dim/2), freq_j = 10000^(-j/half); cos(t*freq) in the ' +
      'first half, sin(t*freq) in the second; an odd dim leaves the last element 0. Computed in float64, ' +
      'stored as float32.',
  },
  cfg_combine: {
    inputs: ['x'],
    params: ['n', 'guidance (float)'],
    outputSize: ([n]) => n,
    inPlace: false,
    doc: 'x is [2, n]: conditional then unconditional. out[i] = u[i] + guidance * (c[i] - u[i]).',
  },
  copy_rows: {
    inputs: ['x'],
    params: ['batch', 'rows', 'cols', 'rowOffset', 'count'],
    outputSize: ([b, , c, , n]) => b * n * c,
    inPlace: false,
    doc: 'out[b, r, :] = x[b, rowOffset + r, :] for r < count; x is [batch, rows, cols].',
  },
  axpy: {
    inputs: ['x', 'y'],
    params: ['n', 'alpha (float)'],
    outputSize: ([n]) => n,
    inPlace: true,
    doc: 'out[i] = x[i] + alpha * y[i], one fused multiply-add in float32 (the sampler step x += dt * v).',
  },
  mul: {
    inputs: ['x', 'y'],
    params: ['n'],
    outputSize: ([n]) => n,
    inPlace: true,
    doc: 'out[i] = x[i] * y[i] (the gate of a gated feed-forward).',
  },
  embedding: {
    inputs: ['table', 'ids'],
    params: ['rows', 'vocab', 'dim'],
    outputSize: ([m, , d]) => m * d,
    inPlace: false,
    doc:
      'Row gather: out[r, :] = table[ids[r], :], table [vocab, dim]. ids holds rows token ids as float32 ' +
      'integers in [0, vocab) (exact up to 2^24); they are checked when the graph is validated, before ' +
      'any node runs, so they must not be written by an earlier node of the same graph.',
  },
  relative_position_bias: {
    inputs: ['table'],
    params: ['queries', 'keys', 'heads', 'buckets', 'maxDistance'],
    outputSize: ([lq, lk, nh]) => nh * lq * lk,
    inPlace: false,
    doc:
      "T5's bidirectional relative position bias: out[h, i, j] = table[bucket(j - i), h], table [buckets, heads] " +
      "(an nn.Embedding(buckets, heads) weight). bucket(rel): half = floor(buckets/2), exact = floor(half/2); " +
      'rel > 0 adds half; with n = |rel|, n < exact gives n, otherwise min(half - 1, exact + trunc(f32(f32(' +
      'f32(log(f32(n) / exact)) / f32(log(maxDistance / exact))) * (half - exact)))), each step rounded to ' +
      'float32 as the reference implementations compute it (logs evaluated in float64, then rounded). ' +
      'Needs buckets >= 4 and maxDistance > exact.',
  },
  biased_attention: {
    inputs: ['q', 'k', 'v', 'bias'],
    params: ['batch', 'queries', 'keys', 'heads', 'headDim', 'scale (float)'],
    outputSize: ([b, lq, , nh, hd]) => b * lq * nh * hd,
    inPlace: false,
    doc:
      'Multi-head softmax attention with an additive score bias: softmax_j(scale * q_i . k_j + bias[h, i, j]) ' +
      'applied to v. q is [batch, queries, heads*headDim]; k, v [batch, keys, heads*headDim]; bias ' +
      '[heads, queries, keys], shared by the batch (T5 passes scale 1 and its relative position bias). ' +
      'Same fused online-softmax kernels as attention. Output [batch, queries, heads*headDim].',
  },
  causal_conv3d: {
    inputs: ['x', 'weight', 'bias?', 'cache?'],
    params: ['frames', 'cacheFrames', 'height', 'width', 'inChannels', 'outChannels', 'kernelT', 'kernelH', 'kernelW'],
    outputSize: ([f, , h, w, , cout]) => f * h * w * cout,
    inPlace: false,
    doc:
      'Causal 3D convolution on channels-last video: x [frames, height, width, inChannels], weight ' +
      '[outChannels, inChannels, kernelT, kernelH, kernelW] as in PyTorch, bias [outChannels], cache ' +
      '[cacheFrames, height, width, inChannels] (the frames just before x; cacheFrames <= kernelT - 1). ' +
      'The time axis is [kernelT - 1 - cacheFrames zero frames, cache, x]: output frame t reads its ' +
      'frames t .. t + kernelT - 1. Space is zero-padded by kernelH / 2 and kernelW / 2 (odd kernels, ' +
      'same size out). out[t, y, x, o] = bias[o] + sum over (i, dt, dy, dx) of weight[o, i, dt, dy, dx] * ' +
      'in[t + dt, y + dy - kernelH/2, x + dx - kernelW/2, i]. Output [frames, height, width, outChannels]. ' +
      "A Conv2d is kernelT = 1; a 1x1 convolution is a per-pixel linear map. Each output's sum is " +
      'reduced in an order fixed by the kernel and channel counts alone, so a frame decodes to the ' +
      'same bits whatever the number of frames per call.',
  },
  channel_rms_norm: {
    inputs: ['x', 'weight'],
    params: ['rows', 'dim', 'eps (float)'],
    outputSize: ([m, d]) => m * d,
    inPlace: true,
    doc:
      "Per row (a pixel's channels): x / max(||x||_2, eps) * sqrt(dim) * weight. Wan's VAE RMS norm, " +
      'F.normalize over the channel axis times sqrt(dim) times gamma (eps 1e-12 as F.normalize).',
  },
  upsample_nearest2x: {
    inputs: ['x'],
    params: ['frames', 'height', 'width', 'channels'],
    outputSize: ([f, h, w, c]) => f * 4 * h * w * c,
    inPlace: false,
    doc:
      'Nearest upsampling by 2 in height and width of channels-last frames: x [frames, height, width, ' +
      'channels] -> [frames, 2 height, 2 width, channels], out[t, y, x, :] = x[t, floor(y/2), floor(x/2), :] ' +
      "(PyTorch's 'nearest-exact' at scale 2).",
  },
  transpose: {
    inputs: ['x'],
    params: ['batch', 'rows', 'cols', 'cellSize'],
    outputSize: ([b, r, c, s]) => b * r * c * s,
    inPlace: false,
    doc: 'Swaps the two middle axes: out[b, j, i, :] = x[b, i, j, :], x [batch, rows, cols, cellSize].',
  },
  update_frame_cache: {
    inputs: ['cache', 'x'],
    params: ['keep', 'frames', 'frameSize'],
    outputSize: ([k, , s]) => k * s,
    inPlace: true,
    doc:
      'The last `keep` frames of the concatenation [cache (keep frames), x (frames frames)], frames of ' +
      'frameSize floats: what a causal convolution must see before the next frames. In place ' +
      '(output = cache) the kept cache frames move to the front.',
  },
  clamp: {
    inputs: ['x'],
    params: ['n', 'lo (float)', 'hi (float)'],
    outputSize: ([n]) => n,
    inPlace: true,
    doc: 'out[i] = min(max(x[i], lo), hi); lo <= hi.',
  },
  weighted_sum: {
    inputs: ['t0', 't1?', 't2?', 't3?', 't4?'],
    params: ['n', 'c0 (float)', 'c1 (float)', 'c2 (float)', 'c3 (float)', 'c4 (float)'],
    outputSize: ([n]) => n,
    inPlace: true,
    doc:
      'out[i] = sum_j c_j * t_j[i] over the present slots, accumulated in slot order with one fused ' +
      'multiply-add per term, from 0: acc = fma(c0, t0, 0), then acc = fma(c_j, t_j, acc). A null ' +
      "slot adds nothing. The same bits as the chain axpy(0, t0, c0), axpy(acc, t_j, c_j), ... in one " +
      "pass over memory (the sampler's linear combinations).",
  },
} as const satisfies Record<string, OpSpec>;

/**
 * `linear` computes every output row from its input row alone, in an order fixed by the shapes, so
 * a row's bits do not depend on the other rows of the call, with one exception on the CPU: a call
 * of at most this many rows takes a dot-product path (memory-bound, no packing) whose summation
 * order differs from the GEMM path's. Code that splits one call's rows over several calls (a
 * sequence-parallel stage, docs/parallelism.md) pads a piece this small to one row more.
 */
export const LINEAR_DOT_ROWS = 4;

export type OpName = keyof typeof OPS;
export const OP_NAMES = Object.keys(OPS) as OpName[];

/** One node of a compute graph: the unit a backend runs. */
export interface OpNode {
  op: OpName;
  inputs: (Float32Array | null)[];
  output: Float32Array;
  params: number[];
}
