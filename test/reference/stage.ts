/**
 * Float64 reference of one DualParal stage block-step, written from
 * docs/wan21.md and docs/dualparal.md and composed only of the reference ops
 * (test/reference/ops.ts). It is deliberately unoptimised: every intermediate is a fresh
 * float64 array and every step of the design doc is one visible line below.
 *
 * Contract (the one `Stage` in libs/model must match):
 * - hw = (height/2)*(width/2) tokens per latent frame; the window is the p prefix frames (the
 *   older neighbour's last frames) then the block's own B frames: Lw = (p+B)*hw tokens.
 * - Batch of 2 for classifier-free guidance: row 0 conditional, row 1 unconditional.
 * - Head input: latents [16, p+B, height, width]; other stages: hidden states [2, Lw, D].
 * - Tail output: guided velocity [16, B, height, width]; other stages: hidden states [2, Lw, D].
 * - kv: per held layer, the raw (pre-norm, pre-rope) K and V rows of the block's own first C
 *   frames, [2, C*hw, D]; `successor` supplies the newer block's entries of the same form.
 */
import type { ModelConfig, StageRange } from '../../libs/model/src/config';
import type { BlockStep } from '../../libs/model/src/stage';
import { referenceOp, type Tensor } from './ops';

export type { BlockStep };

export interface ReferenceStageArgs {
  config: ModelConfig;
  weights: ReadonlyMap<string, Float32Array>;
  range: StageRange;
  step: BlockStep;
  input: Float32Array;
  text: { cond: Float32Array; uncond: Float32Array };
  guidance: number;
  /** The newer block's raw K/V, one entry per held layer, each [2, C*hw, D]. */
  successor?: { k: readonly Float32Array[]; v: readonly Float32Array[] };
}

export interface ReferenceStageResult {
  output: Float64Array;
  kv: { k: Float64Array[]; v: Float64Array[] };
}

const concat = (...parts: Tensor[]): Float64Array => {
  const out = new Float64Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

const add = (a: Tensor, b: Tensor): Float64Array => {
  if (a.length !== b.length) throw new Error(`reference add: ${a.length} vs ${b.length} elements`);
  return Float64Array.from(a, (v, i) => v + b[i]);
};

export function referenceStageForward(args: ReferenceStageArgs): ReferenceStageResult {
  const { config, weights, range, step, input, text, guidance, successor } = args;
  const D = config.dim;
  const heads = config.heads;
  const headDim = D / heads;
  const eps = config.eps;
  const channels = config.latentChannels;
  const { prefixFrames: p, ownFrames: B, contextFrames: C, height, width } = step;
  const gh = height / 2;
  const gw = width / 2;
  const hw = gh * gw;
  const frames = p + B;
  const Lw = frames * hw;
  const rows = 2 * Lw;
  const heldLayers = range.l1 - range.l0;

  if (!Number.isInteger(gh) || !Number.isInteger(gw)) throw new Error(`reference stage: latent grid ${height}x${width} must be even`);
  if (C > B) throw new Error(`reference stage: context frames ${C} exceed own frames ${B}`);
  const expectedInput = range.head ? channels * frames * height * width : rows * D;
  if (input.length !== expectedInput) throw new Error(`reference stage: input has ${input.length} elements, expected ${expectedInput}`);
  if (successor && (successor.k.length !== heldLayers || successor.v.length !== heldLayers)) {
    throw new Error(`reference stage: successor must have one K and one V per held layer (${heldLayers})`);
  }

  const W = (name: string): Float32Array => {
    const t = weights.get(name);
    if (!t) throw new Error(`reference stage: missing weight ${name}`);
    return t;
  };
  const linear = (x: Tensor, name: string, m: number, inF: number, outF: number): Float64Array =>
    referenceOp('linear', [x, W(`${name}.weight`), W(`${name}.bias`)], [m, inF, outF]);
  const silu = (x: Tensor): Float64Array => referenceOp('silu', [x], [x.length]);
  const gelu = (x: Tensor): Float64Array => referenceOp('gelu_tanh', [x], [x.length]);
  const rope = (x: Tensor, ropeFrames: number, frameOffset: number): Float64Array =>
    referenceOp('rope3d', [x], [2, ropeFrames, gh, gw, heads, headDim, frameOffset, config.ropeTheta]);

  // --- Conditioning: every stage derives it from the timestep and the text embeddings. ---
  const tFreq = referenceOp('timestep_embedding', [Float64Array.of(step.timestep)], [1, config.freqDim]);
  const temb = linear(silu(linear(tFreq, 'condition_embedder.time_embedder.linear_1', 1, config.freqDim, D)), 'condition_embedder.time_embedder.linear_2', 1, D, D);
  const e0 = linear(silu(temb), 'condition_embedder.time_proj', 1, D, 6 * D); // [6, D]
  const embedText = (t: Float32Array): Float64Array =>
    linear(gelu(linear(t, 'condition_embedder.text_embedder.linear_1', config.textLen, config.textDim, D)), 'condition_embedder.text_embedder.linear_2', config.textLen, D, D);
  const context = concat(embedText(text.cond), embedText(text.uncond)); // [2, textLen, D]

  // --- Stage input -> hidden states x [2, Lw, D]. ---
  let x: Float64Array;
  if (range.head) {
    const tokens = referenceOp('patchify', [input, null], [channels, frames, height, width, 0, 0]); // [Lw, 64]: the assembled window
    // The Conv3d weight [D, 16, 1, 2, 2] flattened row-major is a [D, 64] linear weight.
    const embedded = linear(tokens, 'patch_embedding', Lw, 4 * channels, D);
    x = concat(embedded, embedded); // identical for the conditional and unconditional rows
  } else {
    x = Float64Array.from(input);
  }

  const kv: ReferenceStageResult['kv'] = { k: [], v: [] };
  for (let layer = range.l0; layer < range.l1; layer++) {
    const b = `blocks.${layer}`;
    const m = add(W(`${b}.scale_shift_table`), e0);
    const row = (i: number): Float64Array => m.subarray(i * D, (i + 1) * D);
    const [shiftA, scaleA, gateA, shiftF, scaleF, gateF] = [0, 1, 2, 3, 4, 5].map(row);

    // a. Self-attention over the window, plus the successor's cached rows when given.
    let h = referenceOp('layer_norm', [x, null, null], [rows, D, eps]);
    h = referenceOp('modulate', [h, shiftA, scaleA], [rows, D]);
    const q = rope(referenceOp('rms_norm', [linear(h, `${b}.attn1.to_q`, rows, D, D), W(`${b}.attn1.norm_q.weight`)], [rows, D, eps]), frames, 0);
    const kRaw = linear(h, `${b}.attn1.to_k`, rows, D, D);
    const vRaw = linear(h, `${b}.attn1.to_v`, rows, D, D);
    const k = rope(referenceOp('rms_norm', [kRaw, W(`${b}.attn1.norm_k.weight`)], [rows, D, eps]), frames, 0);
    let extraK: Float64Array | null = null;
    let extraV: Tensor | null = null;
    let extraKeys = 0;
    if (successor) {
      const i = layer - range.l0;
      extraKeys = C * hw;
      // Cached K/V are raw projections: normalise and rotate them here, at window-local frame
      // positions p+B .. p+B+C-1 (right after this block's own frames).
      extraK = rope(referenceOp('rms_norm', [successor.k[i], W(`${b}.attn1.norm_k.weight`)], [2 * extraKeys, D, eps]), C, frames);
      extraV = successor.v[i];
    }
    const attn = referenceOp('attention', [q, k, vRaw, extraK, extraV], [2, Lw, Lw, extraKeys, heads, headDim]);
    x = referenceOp('gated_add', [x, linear(attn, `${b}.attn1.to_out.0`, rows, D, D), gateA], [rows, D]);
    // This block's own first C frames (they follow the p prefix frames), raw, for the older block.
    kv.k.push(referenceOp('copy_rows', [kRaw], [2, Lw, D, p * hw, C * hw]));
    kv.v.push(referenceOp('copy_rows', [vRaw], [2, Lw, D, p * hw, C * hw]));

    // b. Cross-attention to the text; each batch row attends to its own context; no gate.
    h = referenceOp('layer_norm', [x, W(`${b}.norm2.weight`), W(`${b}.norm2.bias`)], [rows, D, eps]);
    const q2 = referenceOp('rms_norm', [linear(h, `${b}.attn2.to_q`, rows, D, D), W(`${b}.attn2.norm_q.weight`)], [rows, D, eps]);
    const textRows = 2 * config.textLen;
    const k2 = referenceOp('rms_norm', [linear(context, `${b}.attn2.to_k`, textRows, D, D), W(`${b}.attn2.norm_k.weight`)], [textRows, D, eps]);
    const v2 = linear(context, `${b}.attn2.to_v`, textRows, D, D);
    const attn2 = referenceOp('attention', [q2, k2, v2, null, null], [2, Lw, config.textLen, 0, heads, headDim]);
    x = referenceOp('gated_add', [x, linear(attn2, `${b}.attn2.to_out.0`, rows, D, D), null], [rows, D]);

    // c. Feed-forward.
    h = referenceOp('layer_norm', [x, null, null], [rows, D, eps]);
    h = referenceOp('modulate', [h, shiftF, scaleF], [rows, D]);
    const ff = linear(gelu(linear(h, `${b}.ffn.net.0.proj`, rows, D, config.ffnDim)), `${b}.ffn.net.2`, rows, config.ffnDim, D);
    x = referenceOp('gated_add', [x, ff, gateF], [rows, D]);
  }

  if (!range.tail) return { output: x, kv };

  // --- Output head: own frames only, then guidance. ---
  const ownRows = B * hw;
  const own = referenceOp('copy_rows', [x], [2, Lw, D, p * hw, ownRows]);
  const table = W('scale_shift_table'); // [1, 2, D]: shift row, scale row
  const shift = add(table.subarray(0, D), temb);
  const scale = add(table.subarray(D, 2 * D), temb);
  let h = referenceOp('layer_norm', [own, null, null], [2 * ownRows, D, eps]);
  h = referenceOp('modulate', [h, shift, scale], [2 * ownRows, D]);
  const out = linear(h, 'proj_out', 2 * ownRows, D, 4 * channels); // [2, B*hw, 64]
  const perItem = ownRows * 4 * channels;
  const velocity = concat(
    referenceOp('unpatchify', [out.subarray(0, perItem)], [channels, B, height, width]),
    referenceOp('unpatchify', [out.subarray(perItem)], [channels, B, height, width]),
  );
  const output = referenceOp('cfg_combine', [velocity], [perItem, guidance]);
  return { output, kv };
}
