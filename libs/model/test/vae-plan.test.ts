/**
 * The VAE decoder's plan for Wan2.1 (widths, tensors, caches, cost): the figures docs/vae.md
 * quotes, pinned.
 */
import { describe, expect, it } from 'vitest';
import { vaeCacheBytes, vaeCacheSpecs } from '../src/vae';
import { SEEDED_VAE, WAN21_VAE, vaeDecodeCost, vaeDecodeFlops, vaeDecoderPlan, vaeDecoderTensorSpecs, vaeVideoFrames } from '../src/vae-config';

describe('Wan2.1 VAE decoder plan', () => {
  it('has the published widths: 384 through the mid block, up blocks 384/384/192/96 entered at 384/192/192/96', () => {
    const plan = vaeDecoderPlan(WAN21_VAE);
    expect(plan.midDim).toBe(384);
    expect(plan.upBlocks.map((b) => [b.resnets[0].inDim, b.dim, b.upsample])).toEqual([
      [384, 384, 'upsample3d'],
      [192, 384, 'upsample3d'],
      [192, 192, 'upsample2d'],
      [96, 96, null],
    ]);
    expect(plan.upBlocks.every((b) => b.resnets.length === 3)).toBe(true);
    expect(plan.outDim).toBe(96);
    expect(vaeVideoFrames(WAN21_VAE, 21)).toBe(81);
  });

  it('reads 108 tensors with diffusers names and PyTorch shapes (73.3 M parameters)', () => {
    const specs = vaeDecoderTensorSpecs(WAN21_VAE);
    expect(specs).toHaveLength(108);
    const shape = (n: string) => specs.find((s) => s.name === n)?.shape;
    expect(shape('decoder.conv_in.weight')).toEqual([384, 16, 3, 3, 3]);
    expect(shape('decoder.mid_block.attentions.0.norm.gamma')).toEqual([384, 1, 1]);
    expect(shape('decoder.mid_block.attentions.0.to_qkv.weight')).toEqual([1152, 384, 1, 1]);
    expect(shape('decoder.up_blocks.1.resnets.0.conv_shortcut.weight')).toEqual([384, 192, 1, 1, 1]);
    expect(shape('decoder.up_blocks.0.upsamplers.0.time_conv.weight')).toEqual([768, 384, 3, 1, 1]);
    expect(shape('decoder.up_blocks.2.upsamplers.0.resample.1.weight')).toEqual([96, 192, 3, 3]);
    expect(shape('decoder.up_blocks.2.upsamplers.0.time_conv.weight')).toBeUndefined();
    expect(shape('decoder.norm_out.gamma')).toEqual([96, 1, 1, 1]);
    expect(shape('decoder.conv_out.weight')).toEqual([3, 96, 3, 3, 3]);
    expect(specs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0)).toBe(73_295_603);
  });

  it('keeps 32 two-frame caches: 3.52 GiB at 832x480, 8.12 GiB at 1280x720', () => {
    expect(vaeCacheSpecs(WAN21_VAE, 60, 104)).toHaveLength(32);
    expect(vaeCacheBytes(WAN21_VAE, 60, 104)).toBe(3_777_146_880);
    expect(vaeCacheBytes(WAN21_VAE, 90, 160)).toBe(8_716_492_800);
    expect(vaeCacheSpecs(SEEDED_VAE.tiny, 60, 104)).toHaveLength(32);
  });

  it('costs 4.35 TFLOP for the first latent frame and 13.55 for each later one at 832x480', () => {
    const first = vaeDecodeFlops(WAN21_VAE, 60, 104, 1);
    const later = vaeDecodeFlops(WAN21_VAE, 60, 104, 1, false);
    expect(first / 1e12).toBeCloseTo(4.352, 3);
    expect(later / 1e12).toBeCloseTo(13.55, 2);
    expect(vaeDecodeFlops(WAN21_VAE, 60, 104, 21)).toBeCloseTo(first + 20 * later, -6);
    expect(vaeDecodeFlops(WAN21_VAE, 60, 104, 3, false)).toBeCloseTo(3 * later, -6);
    // What the planner takes: those FLOPs, and rgb24 bytes of 1 and 4 video frames of 832x480.
    expect(vaeDecodeCost(WAN21_VAE, 60, 104)).toEqual({ firstFrameFlops: first, frameFlops: later, firstFrameBytes: 832 * 480 * 3, frameBytes: 4 * 832 * 480 * 3 });
  });
});
