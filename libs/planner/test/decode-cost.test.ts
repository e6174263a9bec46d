import { describe, expect, it } from 'vitest';
import { getProfile, jobTiming, normalizeSpec, planJob, predictPipelineSeconds, type DecoderShape, type ModelShape, type PipelineTiming } from '@longshot/planner';

/** Wan2.1 1.3B's transformer and its VAE at 832x480 (docs/vae.md: 4.35 / 13.55 TFLOP, rgb24 frames of 1,198,080 B). */
const WAN_13B: ModelShape = { dim: 1536, ffnDim: 8960, layers: 30, textLen: 512, latentChannels: 16 };
const WAN_VAE_480P: DecoderShape = { firstFrameFlops: 4.35e12, frameFlops: 13.55e12, firstFrameBytes: 1_198_080, frameBytes: 4 * 1_198_080 };
const spec = (steps: number) => normalizeSpec({ prompt: 'x', seconds: 5, width: 832, height: 480, steps, model: 'wan2.1-t2v-1.3b' });

describe('decoding in the cost model', () => {
  it('decodes each finished block on the tail, FIFO with its block-steps, then streams it: exact on a small case', () => {
    // K = 1, 2 blocks, 1 step of 1 s: block 0 applied at 1, decoded 1..1.5, sent by 1.6; block 1
    // waits for the decoder's stage (1.5), runs 1.5..2.5, decoded 2.5..3.2, sent by 3.3.
    const t: PipelineTiming = { blocks: 2, steps: 1, stageSeconds: [1], hopSeconds: [] };
    expect(predictPipelineSeconds(t)).toBe(2);
    expect(predictPipelineSeconds({ ...t, decode: { firstBlockSeconds: 0.5, blockSeconds: 0.7, firstSendSeconds: 0.1, sendSeconds: 0.1 } })).toBeCloseTo(3.3, 12);
    // K = 2: the decode of block 0 takes the tail (stage 1), not the head.
    const two: PipelineTiming = { blocks: 1, steps: 1, stageSeconds: [1, 2], hopSeconds: [0.25, 0.25] };
    expect(predictPipelineSeconds(two)).toBe(3.5);
    expect(predictPipelineSeconds({ ...two, decode: { firstBlockSeconds: 0.5, blockSeconds: 9, firstSendSeconds: 0.125, sendSeconds: 9 } })).toBe(4.125);
  });

  it('turns the decoder per latent frame into seconds per block: the first block holds the one-frame first latent frame', () => {
    const profile = getProfile('h100-100gbe');
    const s = spec(20);
    const t = jobTiming(s, WAN_13B, 4, profile, WAN_VAE_480P);
    expect(s.block).toBe(4);
    expect(t.decode!.firstBlockSeconds).toBeCloseTo((4.35e12 + 3 * 13.55e12) / profile.flopsPerSecond, 12);
    expect(t.decode!.blockSeconds).toBeCloseTo((4 * 13.55e12) / profile.flopsPerSecond, 12);
    expect(t.decode!.firstSendSeconds).toBeCloseTo((13 * 1_198_080) / profile.controllerLinkBytesPerSecond, 12);
    expect(t.decode!.sendSeconds).toBeCloseTo((16 * 1_198_080) / profile.controllerLinkBytesPerSecond, 12);
    const { decode: _, ...without } = t;
    expect(jobTiming(s, WAN_13B, 4, profile)).toEqual(without);
  });

  it('adds at least the last block and less than all of decoding when K > 1 (overlapped with later blocks), all of it when K = 1', () => {
    for (const profileName of ['h100-nvlink', 'h100-100gbe', 'rtx4090-pcie']) {
      const profile = getProfile(profileName);
      const s = spec(20);
      const blocks = planJob(s).blocks;
      const one = jobTiming(s, WAN_13B, 1, profile, WAN_VAE_480P);
      const d = one.decode!;
      const allDecoding = d.firstBlockSeconds + (blocks - 1) * d.blockSeconds;
      // K = 1: the one worker decodes between block-steps and is never idle, so every decode adds.
      expect(predictPipelineSeconds(one) - predictPipelineSeconds({ ...one, decode: undefined })).toBeCloseTo(allDecoding + d.sendSeconds, 9);
      for (const K of [2, 4, 8]) {
        const t = jobTiming(s, WAN_13B, K, profile, WAN_VAE_480P);
        const added = predictPipelineSeconds(t) - predictPipelineSeconds({ ...t, decode: undefined });
        expect(added, `${profileName} K=${K}`).toBeGreaterThanOrEqual(d.blockSeconds + d.sendSeconds - 1e-9);
        expect(added, `${profileName} K=${K}`).toBeLessThan(allDecoding);
      }
    }
  });
});
