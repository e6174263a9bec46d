/**
 * The umT5 text encoder (encoder only) as Wan2.1 uses it: configuration and tensor names, with the
 * names of Hugging Face's `UMT5EncoderModel` (the `text_encoder/` of a diffusers Wan pipeline).
 *
 * Architecture (T5 v1.1 family, "umT5" variant): token embedding `shared`; per layer a pre-norm
 * self-attention sub-layer with its own relative position bias (umT5 gives every layer a bias
 * table, where T5 shares layer 0's), unscaled dot-product attention, and a pre-norm gated-GELU(tanh)
 * feed-forward sub-layer; RMS norms without mean subtraction or bias; a final RMS norm. Pure data,
 * no I/O.
 */
import type { TensorSpec } from './config';

export interface Umt5Config {
  readonly name: string;
  readonly vocabSize: number;
  /** Model width (d_model); equals the DiT's textDim. */
  readonly dModel: number;
  /** Per-head width (d_kv); heads * dKv need not equal dModel. */
  readonly dKv: number;
  readonly dFf: number;
  readonly layers: number;
  readonly heads: number;
  readonly relativeBuckets: number;
  readonly relativeMaxDistance: number;
  readonly eps: number;
}

/** Wan2.1's text encoder (umT5-XXL, google/umt5-xxl encoder). */
export const UMT5_XXL: Umt5Config = {
  name: 'umt5-xxl',
  vocabSize: 256384,
  dModel: 4096,
  dKv: 64,
  dFf: 10240,
  layers: 24,
  heads: 64,
  relativeBuckets: 32,
  relativeMaxDistance: 128,
  eps: 1e-6,
};

/** Seeded text encoders of the small DiT configs: same architecture, widths matched to textDim. */
export const SEEDED_UMT5: Readonly<Record<string, Umt5Config>> = {
  tiny: { name: 'umt5-tiny', vocabSize: 512, dModel: 64, dKv: 16, dFf: 128, layers: 2, heads: 4, relativeBuckets: 32, relativeMaxDistance: 128, eps: 1e-6 },
  small: { name: 'umt5-small', vocabSize: 512, dModel: 256, dKv: 32, dFf: 512, layers: 3, heads: 8, relativeBuckets: 32, relativeMaxDistance: 128, eps: 1e-6 },
};

/** The tensors of the encoder, with `UMT5EncoderModel` names and [out, in] linear layouts (no biases). */
export function umt5TensorSpecs(c: Umt5Config): TensorSpec[] {
  const inner = c.heads * c.dKv;
  const lin = (name: string, out: number, inn: number): TensorSpec => ({ name: `${name}.weight`, shape: [out, inn], init: 'normal', fanIn: inn });
  const specs: TensorSpec[] = [{ name: 'shared.weight', shape: [c.vocabSize, c.dModel], init: 'normal', fanIn: 1 }];
  for (let i = 0; i < c.layers; i++) {
    const b = `encoder.block.${i}.layer`;
    specs.push(
      { name: `${b}.0.layer_norm.weight`, shape: [c.dModel], init: 'ones' },
      lin(`${b}.0.SelfAttention.q`, inner, c.dModel),
      lin(`${b}.0.SelfAttention.k`, inner, c.dModel),
      lin(`${b}.0.SelfAttention.v`, inner, c.dModel),
      lin(`${b}.0.SelfAttention.o`, c.dModel, inner),
      { name: `${b}.0.SelfAttention.relative_attention_bias.weight`, shape: [c.relativeBuckets, c.heads], init: 'normal', fanIn: 1 },
      { name: `${b}.1.layer_norm.weight`, shape: [c.dModel], init: 'ones' },
      lin(`${b}.1.DenseReluDense.wi_0`, c.dFf, c.dModel),
      lin(`${b}.1.DenseReluDense.wi_1`, c.dFf, c.dModel),
      lin(`${b}.1.DenseReluDense.wo`, c.dModel, c.dFf),
    );
  }
  specs.push({ name: 'encoder.final_layer_norm.weight', shape: [c.dModel], init: 'ones' });
  return specs;
}
