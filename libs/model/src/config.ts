/**
 * Wan2.1 DiT configurations. The small ones keep every structural choice of the real ones
 * (patch (1, 2, 2), 16 latent channels, qk RMSNorm across heads, 3D RoPE, adaLN with a 6-row
 * table, text cross-attention) and only shrink widths and depth so they run on a CPU.
 */
export interface ModelConfig {
  readonly name: string;
  readonly dim: number;
  readonly ffnDim: number;
  readonly layers: number;
  readonly heads: number;
  readonly textDim: number;
  /** Text tokens after zero padding (umT5: 512). */
  readonly textLen: number;
  readonly freqDim: number;
  readonly latentChannels: number;
  readonly eps: number;
  readonly ropeTheta: number;
}

const shared = { freqDim: 256, latentChannels: 16, eps: 1e-6, ropeTheta: 10000 } as const;

export const MODEL_CONFIGS: Readonly<Record<string, ModelConfig>> = {
  'wan2.1-t2v-1.3b': { name: 'wan2.1-t2v-1.3b', dim: 1536, ffnDim: 8960, layers: 30, heads: 12, textDim: 4096, textLen: 512, ...shared },
  'wan2.1-t2v-14b': { name: 'wan2.1-t2v-14b', dim: 5120, ffnDim: 13824, layers: 40, heads: 40, textDim: 4096, textLen: 512, ...shared },
  small: { name: 'small', dim: 256, ffnDim: 768, layers: 8, heads: 4, textDim: 256, textLen: 32, ...shared },
  tiny: { name: 'tiny', dim: 64, ffnDim: 160, layers: 6, heads: 2, textDim: 64, textLen: 16, ...shared },
};

export function headDim(c: ModelConfig): number {
  return c.dim / c.heads;
}

/** Throws with the offending field when a config is not a valid Wan-shaped DiT. */
export function validateConfig(c: ModelConfig): ModelConfig {
  const intFields = ['dim', 'ffnDim', 'layers', 'heads', 'textDim', 'textLen', 'freqDim', 'latentChannels'] as const;
  for (const f of intFields) {
    if (!Number.isInteger(c[f]) || c[f] <= 0) throw new Error(`model config ${c.name}: ${f} must be a positive integer, got ${c[f]}`);
  }
  if (c.dim % c.heads !== 0) throw new Error(`model config ${c.name}: dim ${c.dim} is not divisible by heads ${c.heads}`);
  const hd = headDim(c);
  if (hd % 2 !== 0 || hd < 12) throw new Error(`model config ${c.name}: head dim ${hd} must be even and >= 12 for 3D RoPE`);
  if (c.freqDim % 2 !== 0) throw new Error(`model config ${c.name}: freqDim must be even`);
  if (!(c.eps > 0)) throw new Error(`model config ${c.name}: eps must be > 0`);
  return c;
}

export function getConfig(name: string): ModelConfig {
  // Own properties only: 'constructor' or '__proto__' is no model.
  const c = Object.hasOwn(MODEL_CONFIGS, name) ? MODEL_CONFIGS[name] : undefined;
  if (!c) throw new Error(`unknown model '${name}' (known: ${Object.keys(MODEL_CONFIGS).join(', ')})`);
  return c;
}

/** Parameter count of the whole model (used by the planner's cost model and tests). */
export function parameterCount(c: ModelConfig): number {
  let n = 0;
  for (const t of weightSpecs(c, { l0: 0, l1: c.layers, head: true, tail: true })) n += t.shape.reduce((a, b) => a * b, 1);
  return n;
}

export interface TensorSpec {
  readonly name: string;
  readonly shape: readonly number[];
  /** How the seeded init fills it. */
  readonly init: 'normal' | 'ones' | 'zeros' | 'table';
  /** Fan-in for 'normal' (std = 1/sqrt(fanIn)). */
  readonly fanIn?: number;
}

export interface StageRange {
  /** First layer held (inclusive). */
  readonly l0: number;
  /** Last layer held (exclusive). */
  readonly l1: number;
  /** Stage 0: patch embedding, the block queue and the sampler. */
  readonly head: boolean;
  /** Stage K-1: output norm, projection, unpatchify, guidance. */
  readonly tail: boolean;
}

/**
 * The tensors a stage holds, with diffusers names. Every stage holds the condition embedders
 * (time and text, small) so it can compute its own conditioning from the timestep and the text
 * embeddings: only the hidden states travel between stages.
 */
export function weightSpecs(c: ModelConfig, r: StageRange): TensorSpec[] {
  const D = c.dim;
  const lin = (name: string, out: number, inn: number): TensorSpec[] => [
    { name: `${name}.weight`, shape: [out, inn], init: 'normal', fanIn: inn },
    { name: `${name}.bias`, shape: [out], init: 'normal', fanIn: inn * 16 },
  ];
  const specs: TensorSpec[] = [
    ...lin('condition_embedder.time_embedder.linear_1', D, c.freqDim),
    ...lin('condition_embedder.time_embedder.linear_2', D, D),
    ...lin('condition_embedder.time_proj', 6 * D, D),
    ...lin('condition_embedder.text_embedder.linear_1', D, c.textDim),
    ...lin('condition_embedder.text_embedder.linear_2', D, D),
  ];
  if (r.head) {
    specs.push(
      { name: 'patch_embedding.weight', shape: [D, c.latentChannels, 1, 2, 2], init: 'normal', fanIn: c.latentChannels * 4 },
      { name: 'patch_embedding.bias', shape: [D], init: 'normal', fanIn: c.latentChannels * 64 },
    );
  }
  for (let i = r.l0; i < r.l1; i++) {
    const b = `blocks.${i}`;
    specs.push({ name: `${b}.scale_shift_table`, shape: [1, 6, D], init: 'table', fanIn: D });
    for (const a of ['attn1', 'attn2']) {
      specs.push(
        ...lin(`${b}.${a}.to_q`, D, D),
        ...lin(`${b}.${a}.to_k`, D, D),
        ...lin(`${b}.${a}.to_v`, D, D),
        ...lin(`${b}.${a}.to_out.0`, D, D),
        { name: `${b}.${a}.norm_q.weight`, shape: [D], init: 'ones' },
        { name: `${b}.${a}.norm_k.weight`, shape: [D], init: 'ones' },
      );
    }
    specs.push(
      { name: `${b}.norm2.weight`, shape: [D], init: 'ones' },
      { name: `${b}.norm2.bias`, shape: [D], init: 'zeros' },
      ...lin(`${b}.ffn.net.0.proj`, c.ffnDim, D),
      ...lin(`${b}.ffn.net.2`, D, c.ffnDim),
    );
  }
  if (r.tail) {
    specs.push(...lin('proj_out', 4 * c.latentChannels, D), { name: 'scale_shift_table', shape: [1, 2, D], init: 'table', fanIn: D });
  }
  return specs;
}
