/**
 * Stage conformance: libs/model's `Stage` (engine ops, float32) against the float64 reference
 * stage (test/reference/stage.ts, written from the design docs), and K-stage chaining against one
 * stage holding every layer.
 *
 * (a) accuracy: a head+tail stage holding all layers vs the reference, with a prefix window and an
 *     injected successor cache, a block-0 window with a stale cache that must be ignored, and two
 *     consecutive blocks of one iteration where the stage must feed its own cache to the older
 *     block. Error: max|a-b| / max(1e-6, max|ref|) <= 1e-4 per output and per K/V entry.
 * (b) chaining: splitting the layers over K = 2, 3 and `layers` stages gives bit-identical output
 *     and K/V caches (DualParal's promise: the result does not depend on K).
 * (c) a stage rejects inputs and caches of the wrong size with a clear error.
 *
 * The seeded init has all norm weights 1 and biases 0; we perturb those tensors (by name, so all
 * stages agree) so that a norm weight applied to the wrong tensor, or not at all, shows up.
 */
import { describe, expect, it } from 'vitest';
import { getConfig, type KvEntry } from '@longshot/model';
import { Rng } from '@longshot/random';
import type { ModelConfig, StageRange } from '@longshot/model';
import { referenceStageForward, type BlockStep } from '../reference/stage';
import { relError } from '../reference/error';
import { testWeights } from '../reference/weights';
import { GUIDANCE, SEED, bytes, expectSameChain, hwOf, latentsFor, makeStage, midStep, normal, runChain, split, successorFor, textFor, type ChainResult } from './stage-cases';

const TOLERANCE = 1e-4;

function expectClose(got: Float32Array, ref: Float64Array, what: string): void {
  const err = relError(got, ref);
  expect(err, `${what}: max rel error ${err.toExponential(3)} (${got.length} vs ${ref.length} elements)`).toBeLessThanOrEqual(TOLERANCE);
}

function expectCacheClose(cache: KvEntry | null, step: BlockStep, ref: { k: Float64Array[]; v: Float64Array[] }, what: string): void {
  expect(cache, `${what}: no kv cache after forward`).not.toBeNull();
  expect(cache!.iteration).toBe(step.iteration);
  expect(cache!.block).toBe(step.block);
  expect(cache!.k.length).toBe(ref.k.length);
  expect(cache!.v.length).toBe(ref.v.length);
  ref.k.forEach((k, i) => expectClose(cache!.k[i], k, `${what}: cached K of held layer ${i}`));
  ref.v.forEach((v, i) => expectClose(cache!.v[i], v, `${what}: cached V of held layer ${i}`));
}

const fullRange = (config: ModelConfig): StageRange => ({ l0: 0, l1: config.layers, head: true, tail: true });

describe('stage vs float64 reference', () => {
  it.each(['tiny', 'small'])('%s: head+tail stage with a prefix window and an injected successor cache', async (name) => {
    const config = getConfig(name);
    const range = fullRange(config);
    const text = textFor(config, name);
    const step = midStep(config);
    const input = latentsFor(config, step, `${name} mid`);
    const inputCopy = Float32Array.from(input);
    const successor = successorFor(config, step, config.layers, `${name} mid`);

    const stage = makeStage(config, range, text);
    stage.kvCache = { iteration: step.iteration, block: step.block + 1, k: successor.k, v: successor.v };
    const output = await stage.forward(step, input);

    const ref = referenceStageForward({ config, weights: testWeights(config, range, SEED), range, step, input, text, guidance: GUIDANCE, successor });
    expect(output.length).toBe(config.latentChannels * step.ownFrames * step.height * step.width);
    expectClose(output, ref.output, `${name} output`);
    expectCacheClose(stage.kvCache, step, ref.kv, name);
    expect(bytes(input).equals(bytes(inputCopy)), 'forward modified its input').toBe(true);
  });

  it('tiny: block 0 (no prefix) without successor; a stale cache entry is ignored', async () => {
    const config = getConfig('tiny');
    const range = fullRange(config);
    const text = textFor(config, 'tiny');
    const step = midStep(config, { block: 0, step: 4, timestep: 410, prefixFrames: 0 });
    const input = latentsFor(config, step, 'block0');
    const stale = successorFor(config, step, config.layers, 'stale');

    const stage = makeStage(config, range, text);
    // Block 1's entry, but from the previous iteration: it must not be used as the successor.
    stage.kvCache = { iteration: step.iteration - 1, block: step.block + 1, k: stale.k, v: stale.v };
    const output = await stage.forward(step, input);

    const ref = referenceStageForward({ config, weights: testWeights(config, range, SEED), range, step, input, text, guidance: GUIDANCE });
    expectClose(output, ref.output, 'block 0 output');
    expectCacheClose(stage.kvCache, step, ref.kv, 'block 0');
  });

  it('tiny: the older block of an iteration uses the newer block\'s cache automatically', async () => {
    const config = getConfig('tiny');
    const range = fullRange(config);
    const text = textFor(config, 'tiny');
    const newer = midStep(config, { iteration: 5, block: 2, step: 3, timestep: 700 });
    const older = midStep(config, { iteration: 5, block: 1, step: 4, timestep: 550 });
    const newerInput = latentsFor(config, newer, 'newer');
    const olderInput = latentsFor(config, older, 'older');
    const weights = testWeights(config, range, SEED);

    const stage = makeStage(config, range, text);
    await stage.forward(newer, newerInput); // newest block of the iteration: no successor
    const newerCache = stage.kvCache!;
    const refNewer = referenceStageForward({ config, weights, range, step: newer, input: newerInput, text, guidance: GUIDANCE });
    expectCacheClose(newerCache, newer, refNewer.kv, 'newer block');

    // Feed the reference the stage's own cache so this checks how it is used, not how it was made.
    const successor = { k: newerCache.k.map((t) => Float32Array.from(t)), v: newerCache.v.map((t) => Float32Array.from(t)) };
    const output = await stage.forward(older, olderInput);
    const refOlder = referenceStageForward({ config, weights, range, step: older, input: olderInput, text, guidance: GUIDANCE, successor });
    expectClose(output, refOlder.output, 'older block output');
    expectCacheClose(stage.kvCache, older, refOlder.kv, 'older block');
  });
});

describe('K-stage chaining is bit-identical to one stage', () => {
  const config = getConfig('tiny');
  let single: Promise<ChainResult> | undefined;
  const one = (): Promise<ChainResult> => (single ??= runChain(config, split(config.layers, 1)));

  it.each([2, 3, config.layers])('K = %i', async (k) => {
    const ranges = split(config.layers, k);
    expect(ranges.every((r) => r.l1 > r.l0)).toBe(true);
    expectSameChain(await runChain(config, ranges), await one(), config.layers);
  });
});

describe('stage input validation', () => {
  const config = getConfig('tiny');
  const text = textFor(config, 'tiny');
  const step = midStep(config);
  const hw = hwOf(step);
  const Lw = (step.prefixFrames + step.ownFrames) * hw;
  const clearError = /expected|size|length|elements|shape|mismatch/i;
  // Wrapped in an async function so a synchronous throw and a rejection are treated alike.
  const attempt = (f: () => Promise<unknown>): Promise<unknown> => (async () => f())();

  it('a head stage rejects latents that do not match the window', async () => {
    const stage = makeStage(config, { l0: 0, l1: 2, head: true, tail: false }, text);
    const short = new Float32Array(config.latentChannels * (step.prefixFrames + step.ownFrames - 1) * step.height * step.width);
    await expect(attempt(() => stage.forward(step, short))).rejects.toThrow(clearError);
  });

  it('a middle stage rejects hidden states of the wrong size', async () => {
    const stage = makeStage(config, { l0: 2, l1: 4, head: false, tail: false }, text);
    await expect(attempt(() => stage.forward(step, new Float32Array(2 * Lw * config.dim - 1)))).rejects.toThrow(clearError);
    // Latents passed where hidden states are expected.
    const latents = new Float32Array(config.latentChannels * (step.prefixFrames + step.ownFrames) * step.height * step.width);
    await expect(attempt(() => stage.forward(step, latents))).rejects.toThrow(clearError);
  });

  it('a stage rejects a successor cache of the wrong size', async () => {
    const stage = makeStage(config, { l0: 2, l1: 4, head: false, tail: true }, text);
    const input = normal(Rng.from(SEED, 'bad cache'), 2 * Lw * config.dim);
    const good = successorFor(config, step, 2, 'bad cache');
    const badK = [good.k[0], good.k[1].subarray(1)];
    await expect(
      attempt(async () => {
        stage.kvCache = { iteration: step.iteration, block: step.block + 1, k: badK, v: good.v };
        return stage.forward(step, input);
      }),
    ).rejects.toThrow(/K\/V cache of block \d+ has the wrong shape: expected/);
  });
});
