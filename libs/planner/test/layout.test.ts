import { describe, expect, it } from 'vitest';
import { candidateLayouts, describeLayout, getProfile, groupStageCost, jobTiming, layoutWorkers, normalizeSpec, pickLayout, predictPipelineSeconds, stageFlops, type ModelShape, type PipelineLayout } from '@longshot/planner';

/** wan2.1-t2v-14b's shape. */
const WAN_14B: ModelShape = { dim: 5120, ffnDim: 13824, layers: 40, textLen: 512, latentChannels: 16, heads: 40 };
/** A 720p window: 45x80 tokens per frame, prefix 2, own 4, successor 2. */
const WINDOW = { tokensPerFrame: 45 * 80, prefixFrames: 2, ownFrames: 4, successorFrames: 2 };
const nvlink = getProfile('h100-nvlink');

describe('groupStageCost (a stage group member per block-step)', () => {
  it('one member is the single stage: its FLOPs at the profile rate, nothing exchanged', () => {
    const c = groupStageCost(WAN_14B, 5, WINDOW, false, false, { ulysses: 1, cfgParallel: false }, nvlink);
    expect(c.computeSeconds).toBeCloseTo(stageFlops(WAN_14B, 5, WINDOW, false, false) / nvlink.flopsPerSecond, 12);
    expect([c.exchangeSeconds, c.exchangeBytes, c.imbalance, c.rateLoss]).toEqual([0, 0, 1, 1]);
  });

  it('CFG parallel halves the compute, exchanges only the tail gather', () => {
    const whole = stageFlops(WAN_14B, 5, WINDOW, false, true) / nvlink.flopsPerSecond;
    const c = groupStageCost(WAN_14B, 5, WINDOW, false, true, { ulysses: 1, cfgParallel: true }, nvlink);
    expect(c.imbalance).toBe(1);
    expect(c.computeSeconds / (whole / 2)).toBeCloseTo(c.rateLoss, 12);
    // The output head's rows of one half, [own tokens, 64] floats, and rank 0's scatter of the
    // other half's hidden states (no gather: the tail returns the velocity).
    expect(c.exchangeBytes).toBe(4 * 45 * 80 * 64 * 4 + (2 * 6 * 3600 * 5120 * 4) / 2);
  });

  it('Ulysses: per layer (4 shard rows + 2 cached rows) x D floats, (U-1)/U of them to the others; uneven frames show as imbalance', () => {
    const u2 = groupStageCost(WAN_14B, 5, WINDOW, false, false, { ulysses: 2, cfgParallel: false }, nvlink);
    const rows = 2 * 3 * 3600;
    const cached = 2 * 1 * 3600;
    // Plus rank 0's scatter and gather of the other member's half of the hidden states.
    const front = 2 * ((2 * 6 * 3600 * 5120 * 4) / 2);
    expect(u2.exchangeBytes).toBe(5 * (4 * rows + 2 * cached) * 5120 * 4 * 0.5 + front);
    expect(u2.imbalance).toBe(1);
    expect(u2.exchangeSeconds).toBeCloseTo(u2.exchangeBytes / nvlink.links.nvlink.bytesPerSecond + 11 * nvlink.links.nvlink.latencySeconds, 12);
    // 6 frames over 4 members: the largest shard holds 2 frames where an even split holds 1.5.
    const u4 = groupStageCost(WAN_14B, 5, WINDOW, false, false, { ulysses: 4, cfgParallel: false }, nvlink);
    // Token-wise work 2/6 where 1/4 is even (1.33), self-attention 10 of 40 heads (1.00): between the two.
    expect(u4.imbalance).toBeGreaterThan(1.1);
    expect(u4.imbalance).toBeLessThan(4 / 3);
    expect(u4.computeSeconds).toBeLessThan(u2.computeSeconds);
    expect(() => groupStageCost({ ...WAN_14B, heads: undefined }, 5, WINDOW, false, false, { ulysses: 2, cfgParallel: false }, nvlink)).toThrow(/head count/);
  });
});

describe('jobTiming with a layout', () => {
  const spec = normalizeSpec({ prompt: 'x', frames: 4 * (16 * 4 - 1) + 1, width: 1280, height: 720, steps: 10, model: 'wan2.1-t2v-14b' });

  it('a layout of single-worker stages is the plain K-stage timing', () => {
    expect(jobTiming(spec, WAN_14B, { stages: 4, ulysses: 1, cfgParallel: false }, nvlink)).toEqual(jobTiming(spec, WAN_14B, 4, nvlink));
  });

  it('groups shorten the stages; the hops still carry the whole hidden states (rank 0 to rank 0)', () => {
    const plain = jobTiming(spec, WAN_14B, 4, nvlink);
    const grouped = jobTiming(spec, WAN_14B, { stages: 4, ulysses: 2, cfgParallel: true }, nvlink);
    grouped.stageSeconds.forEach((s, k) => expect(s).toBeLessThan(plain.stageSeconds[k] / 3));
    expect(grouped.hopSeconds).toEqual(plain.hopSeconds);
    expect(predictPipelineSeconds(grouped)).toBeLessThan(predictPipelineSeconds(plain) / 3);
  });
});

describe('choosing a layout', () => {
  it('candidates fit the workers and the heads, fewest workers first', () => {
    const c = candidateLayouts(8, 6, 2);
    expect(c.every((l) => layoutWorkers(l) <= 8 && l.ulysses <= 2 && l.stages <= 6)).toBe(true);
    expect(c.map(layoutWorkers)).toEqual([...c.map(layoutWorkers)].sort((a, b) => a - b));
    expect(c.map(describeLayout)).toContain('K=2 x U=2 x CFG');
    expect(c.map(describeLayout)).not.toContain('K=1 x U=3');
  });

  it('candidates keep the fields a request fixed, any U up to the heads', () => {
    expect(candidateLayouts(8, 6, 6, { cfgParallel: true }).map(describeLayout)).toEqual(['K=1 x CFG', 'K=2 x CFG', 'K=1 x U=2 x CFG', 'K=3 x CFG', 'K=1 x U=3 x CFG', 'K=4 x CFG', 'K=2 x U=2 x CFG', 'K=1 x U=4 x CFG']);
    expect(candidateLayouts(10, 6, 6, { ulysses: 5 }).map(describeLayout)).toEqual(['K=1 x U=5', 'K=2 x U=5', 'K=1 x U=5 x CFG']);
    expect(candidateLayouts(3, 6, 6, { ulysses: 2, cfgParallel: true })).toEqual([]);
  });

  it('takes more workers only for MIN_GAIN less time', () => {
    const layouts: PipelineLayout[] = [
      { stages: 1, ulysses: 1, cfgParallel: false },
      { stages: 2, ulysses: 1, cfgParallel: false },
      { stages: 1, ulysses: 2, cfgParallel: false },
      { stages: 2, ulysses: 2, cfgParallel: false },
    ];
    const seconds = new Map([['K=1', 100], ['K=2', 95], ['K=1 x U=2', 80], ['K=2 x U=2', 75]]);
    const pick = pickLayout(layouts, (l) => seconds.get(describeLayout(l))!, 0.1);
    expect(describeLayout(pick.layout)).toBe('K=1 x U=2');
    expect(pick.seconds).toBe(80);
  });
});
