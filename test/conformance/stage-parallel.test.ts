/**
 * Parallelism inside a stage (docs/parallelism.md): a stage run as a group of members, Ulysses
 * (tokens sharded by frames, heads sharded for self-attention) and/or CFG parallel (one guidance
 * half per member), with an in-process collective, gives the unsharded stage's bits: the tail's
 * velocity, every hidden state between stages and every layer's successor K/V cache, over block-steps
 * with a prefix and an injected successor, with the previous block's own cache, and without either
 * (block 0).
 */
import { describe, expect, it } from 'vitest';
import { cudaBackend, engineInfo, type CudaStorage } from '@longshot/engine';
import { LocalCollectiveGroup, evenSplit, getConfig, joinColumns, joinTokens, splitColumns, splitTokens, type ModelConfig, type StageLayout } from '@longshot/model';
import { bytes, expectSameChain, makeStage, midStep, runChain, split, textFor } from './stage-cases';

/** 'tiny' widened to 6 heads of 12, so U = 3 and U = 6 divide the heads. */
const sixHeads: ModelConfig = { ...getConfig('tiny'), name: 'tiny-6-heads', dim: 72, heads: 6, layers: 3 };

interface Case {
  name: string;
  config: ModelConfig;
  stages: number;
  layout: StageLayout;
  /** Latent grid; 2x2 makes one frame a single token, so shards of a few rows hit the kernel's small-row path. */
  grid?: { height: number; width: number };
}

const cases: Case[] = [
  { name: 'K=2 x U=2', config: getConfig('tiny'), stages: 2, layout: { ulysses: 2, cfgParallel: false } },
  { name: 'K=1 x U=3 (6 heads)', config: sixHeads, stages: 1, layout: { ulysses: 3, cfgParallel: false } },
  { name: 'K=3 x CFG', config: getConfig('tiny'), stages: 3, layout: { ulysses: 1, cfgParallel: true } },
  { name: 'K=2 x U=2 x CFG', config: getConfig('tiny'), stages: 2, layout: { ulysses: 2, cfgParallel: true } },
  { name: 'K=1 x U=3, 2x2 grid (shards of 1-2 rows)', config: sixHeads, stages: 1, layout: { ulysses: 3, cfgParallel: false }, grid: { height: 2, width: 2 } },
  { name: 'K=2 x U=6 (more members than block-0 frames)', config: sixHeads, stages: 2, layout: { ulysses: 6, cfgParallel: false } },
];

describe('a stage group gives the unsharded bits', () => {
  it.each(cases)('$name', async ({ config, stages, layout, grid }) => {
    const ranges = split(config.layers, stages);
    // Block 0 of the same iteration: no prefix, and block 2's cache is not its successor's.
    const block0 = midStep(config, { iteration: 6, block: 0, step: 5, timestep: 300, prefixFrames: 0, ...grid });
    const want = await runChain(config, ranges, undefined, [block0], grid);
    const got = await runChain(config, ranges, layout, [block0], grid);
    expect(got.outputs.length).toBe(3);
    expectSameChain(got, want, config.layers);
  });
});

/**
 * The same cases on the CUDA backend (docs/cuda.md "Pinned GEMMs"): each linear runs one pinned
 * cuBLASLt algorithm in fixed 1024-row chunks, every other kernel computes a row (a query, a head)
 * from that row alone, so a group's shards give the single stage's bits on the device too. The
 * case with the 2x2 grid has shards of 1 to 2 rows; a chain over 1.3B-sized rows is not needed, as
 * the chunking is the same for any row count (longshot-check's row-independence case covers
 * 1024-row boundaries). Without a device each case is reported as skipped with the reason.
 */
const cudaUsable = engineInfo().backends.includes('cuda');
const CUDA_STORAGES: readonly CudaStorage[] = ['f32', 'bf16'];
describe.each(CUDA_STORAGES)('a stage group gives the unsharded bits on CUDA, %s storage', (storage) => {
  const named = (name: string): string => (cudaUsable ? name : `${name} (skipped: no CUDA device)`);
  it.skipIf(!cudaUsable).each(cases.map((c) => ({ ...c, name: named(c.name) })))('$name', async ({ config, stages, layout, grid }) => {
    const on = cudaBackend({ storage });
    const ranges = split(config.layers, stages);
    const block0 = midStep(config, { iteration: 6, block: 0, step: 5, timestep: 300, prefixFrames: 0, ...grid });
    const want = await runChain(config, ranges, undefined, [block0], grid, on);
    const got = await runChain(config, ranges, layout, [block0], grid, on);
    expectSameChain(got, want, config.layers);
  });
});

describe('exchange packing', () => {
  it('splitColumns/joinColumns and splitTokens/joinTokens are inverse', () => {
    const x = Float32Array.from({ length: 2 * 5 * 12 }, (_, i) => i);
    const cols = [0, 1, 2].map((j) => evenSplit(12, 3, j));
    expect(bytes(joinColumns(splitColumns(x, 10, 12, cols), 10, new Float32Array(x.length))).equals(bytes(x))).toBe(true);
    const tokens = [0, 1].map((j) => evenSplit(5, 2, j));
    expect(bytes(joinTokens(splitTokens(x, 2, 5, tokens), 2, 12, new Float32Array(x.length))).equals(bytes(x))).toBe(true);
  });

  it('the in-process collective matches calls by order and keeps the two guidance halves apart', async () => {
    const [a, b, c, d] = new LocalCollectiveGroup({ ulysses: 2, cfgParallel: true }).members();
    const part = (v: number) => Float32Array.of(v);
    const step = midStep(getConfig('tiny'));
    const got = await Promise.all([a.allToAll([part(0), part(1)], step), b.allToAll([part(10), part(11)], step), c.allToAll([part(20), part(21)], step), d.allToAll([part(30), part(31)], step)]);
    expect(got.map((r) => r.map((t) => t[0]))).toEqual([[0, 10], [1, 11], [20, 30], [21, 31]]);
    const gathered = await Promise.all([a, b, c, d].map((m, i) => m.gather(part(i), step)));
    expect(gathered[0]!.map((t) => t[0])).toEqual([0, 1, 2, 3]);
    expect(gathered.slice(1)).toEqual([null, null, null]);
  });
});

describe('stage group validation', () => {
  it('refuses more Ulysses members than heads, and a rank outside the group', () => {
    const config = getConfig('tiny');
    const text = textFor(config, 'tiny');
    const [collective] = new LocalCollectiveGroup({ ulysses: 1, cfgParallel: true }).members();
    expect(() => makeStage(config, split(config.layers, 1)[0], text, { layout: { ulysses: 3, cfgParallel: false }, rank: 0, collective })).toThrow(/ulysses 3 exceeds the model's 2 attention heads/);
    expect(() => makeStage(config, split(config.layers, 1)[0], text, { layout: { ulysses: 1, cfgParallel: true }, rank: 2, collective })).toThrow(/member rank must be an integer in 0\.\.1, got 2/);
  });

  it("a member refuses hidden states that are not its shard's size", async () => {
    const config = getConfig('tiny');
    const [collective] = new LocalCollectiveGroup({ ulysses: 2, cfgParallel: false }).members();
    const stage = makeStage(config, { l0: 2, l1: 4, head: false, tail: false }, textFor(config, 'tiny'), { layout: { ulysses: 2, cfgParallel: false }, rank: 0, collective });
    const step = midStep(config);
    const whole = new Float32Array(2 * 5 * 6 * config.dim);
    await expect((async () => stage.forward(step, whole))()).rejects.toThrow(/expected hidden states \[2, 18, 64\]/);
  });
});
