/**
 * The engine's VAE decoder at Wan2.1's real widths (base_dim 96: 384-channel mid block and a
 * 384-wide attention head, 10368-long convolution sums) against the float64 reference, at every
 * SIMD level, on latents small enough for the reference (about 30 s). Not part of `npm test`,
 * which covers the same code at the seeded widths; exits non-zero above 1e-4.
 *
 *   npx tsx test/reference/crosscheck/vae-real-widths.ts [frames=2] [height=1] [width=2]
 */
import { cpuBackend, engineInfo, setSimd, type SimdLevel } from '@longshot/engine';
import { VaeDecoder, WAN21_VAE, seededVaeWeights, vaeDecoderTensorSpecs } from '@longshot/model';
import { Rng } from '@longshot/random';
import { relError } from '../error';
import { referenceVaeDecode } from '../vae';
import { perturbConstants } from '../weights';

async function main(): Promise<void> {
  const args = process.argv.slice(2).map(Number);
  const [F, h, w] = [args[0] ?? 2, args[1] ?? 1, args[2] ?? 2];
  const seed = 3;
  const weights = perturbConstants(seededVaeWeights(WAN21_VAE, seed), vaeDecoderTensorSpecs(WAN21_VAE), seed);
  const latents = Rng.from('vae real widths').fillNormal(new Float32Array(WAN21_VAE.zDim * F * h * w), 1);
  const ref = referenceVaeDecode(WAN21_VAE, weights, latents, F, h, w);
  const { frames: T, height: H, width: W } = ref;
  const expected = new Float64Array(T * H * W * 3);
  for (let c = 0; c < 3; c++) for (let t = 0; t < T; t++) for (let p = 0; p < H * W; p++) expected[(t * H * W + p) * 3 + c] = ref.data[(c * T + t) * H * W + p];
  let worst = 0;
  for (const level of engineInfo().simdAvailable) {
    setSimd(level as SimdLevel);
    const got = await new VaeDecoder(WAN21_VAE, weights, h, w).decode(cpuBackend(), latents, F);
    const err = relError(got, expected);
    worst = Math.max(worst, err);
    console.log(`${level}: ${F} latent frames ${h}x${w} -> ${T} frames ${H}x${W}, max rel error ${err.toExponential(3)}`);
  }
  if (!(worst <= 1e-4)) throw new Error(`max rel error ${worst} exceeds 1e-4`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
