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
import { cpuBackend } from '@longshot/engine';
import { Stage, getConfig, type KvEntry } from '@longshot/model';
import { Rng } from '@longshot/random';
import type { ModelConfig, StageRange } from '@longshot/model';
import { referenceStageForward, type BlockStep } from '../reference/stage';
import { relError } from '../reference/error';
import { testWeights } from '../reference/weights';

const TOLERANCE = 1e-4;
const SEED = 1234;
const GUIDANCE = 5;
const backend = cpuBackend();


const normal = (rng: Rng, n: number, std = 1): Float32Array => rng.fillNormal(new Float32Array(n), std);
const bytes = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const hwOf = (s: BlockStep): number => (s.height / 2) * (s.width / 2);

function textFor(config: ModelConfig, key: string): { cond: Float32Array; uncond: Float32Array } {
  const rng = Rng.from(SEED, 'text', key);
  return { cond: normal(rng, config.textLen * config.textDim), uncond: normal(rng, config.textLen * config.textDim) };
}

/** Window latents [16, p+B, height, width]. */
function latentsFor(config: ModelConfig, s: BlockStep, key: string): Float32Array {
  return normal(Rng.from(SEED, 'latents', key), config.latentChannels * (s.prefixFrames + s.ownFrames) * s.height * s.width);
}

/** A newer block's raw K/V for `layers` layers, [2, C*hw, D] each (what its stage would cache). */
function successorFor(config: ModelConfig, s: BlockStep, layers: number, key: string): { k: Float32Array[]; v: Float32Array[] } {
  const rng = Rng.from(SEED, 'successor', key);
  const n = 2 * s.contextFrames * hwOf(s) * config.dim;
  return { k: Array.from({ length: layers }, () => normal(rng, n)), v: Array.from({ length: layers }, () => normal(rng, n)) };
}


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

function makeStage(config: ModelConfig, range: StageRange, text: { cond: Float32Array; uncond: Float32Array }): Stage {
  return new Stage({ config, range, weights: testWeights(config, range, SEED), backend, text, guidance: GUIDANCE });
}

/**
 * A block-step in the middle of a job: a prefix of C frames from the older neighbour. 'small' gets
 * a smaller window so its float64 reference stays around a second.
 */
function midStep(config: ModelConfig, over: Partial<BlockStep> = {}): BlockStep {
  const base: BlockStep =
    config.name === 'small'
      ? { iteration: 4, block: 1, step: 3, timestep: 620, prefixFrames: 1, ownFrames: 2, contextFrames: 1, height: 4, width: 4 }
      : { iteration: 4, block: 1, step: 3, timestep: 620, prefixFrames: 2, ownFrames: 3, contextFrames: 2, height: 4, width: 6 };
  return { ...base, ...over };
}

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

/** Splits [0, layers) into `k` contiguous, nearly equal ranges; first is head, last is tail. */
function split(layers: number, k: number): StageRange[] {
  return Array.from({ length: k }, (_, i) => ({
    l0: Math.floor((i * layers) / k),
    l1: Math.floor(((i + 1) * layers) / k),
    head: i === 0,
    tail: i === k - 1,
  }));
}

interface ChainResult {
  outputs: Float32Array[];
  /** The caches after each block-step, concatenated over stages (one entry per model layer). */
  caches: { k: Float32Array[]; v: Float32Array[] }[];
}

/**
 * Runs two block-steps of one iteration (the newer block with an injected successor, then the
 * older one, which must pick up the newer block's cache) through a ring of stages.
 */
async function runChain(config: ModelConfig, ranges: StageRange[]): Promise<ChainResult> {
  const text = textFor(config, 'chain');
  const stages = ranges.map((r) => makeStage(config, r, text));
  const newer = midStep(config, { iteration: 6, block: 3, step: 2, timestep: 800 });
  const older = midStep(config, { iteration: 6, block: 2, step: 3, timestep: 650 });
  const successor = successorFor(config, newer, config.layers, 'chain');
  stages.forEach((s, i) => {
    const { l0, l1 } = ranges[i];
    s.kvCache = { iteration: newer.iteration, block: newer.block + 1, k: successor.k.slice(l0, l1), v: successor.v.slice(l0, l1) };
  });

  const result: ChainResult = { outputs: [], caches: [] };
  for (const step of [newer, older]) {
    let x = latentsFor(config, step, `chain ${step.block}`);
    for (const [i, s] of stages.entries()) {
      x = await s.forward(step, x);
      const Lw = (step.prefixFrames + step.ownFrames) * hwOf(step);
      const expected = ranges[i].tail ? config.latentChannels * step.ownFrames * step.height * step.width : 2 * Lw * config.dim;
      expect(x.length, `stage ${i} output size`).toBe(expected);
    }
    result.outputs.push(x);
    const caches = stages.map((s) => s.kvCache!);
    for (const c of caches) {
      expect(c.iteration).toBe(step.iteration);
      expect(c.block).toBe(step.block);
    }
    result.caches.push({ k: caches.flatMap((c) => c.k), v: caches.flatMap((c) => c.v) });
  }
  return result;
}

describe('K-stage chaining is bit-identical to one stage', () => {
  const config = getConfig('tiny');
  let single: Promise<ChainResult> | undefined;
  const one = (): Promise<ChainResult> => (single ??= runChain(config, split(config.layers, 1)));

  it.each([2, 3, config.layers])('K = %i', async (k) => {
    const ranges = split(config.layers, k);
    expect(ranges.every((r) => r.l1 > r.l0)).toBe(true);
    const [want, got] = [await one(), await runChain(config, ranges)];
    want.outputs.forEach((o, i) => expect(bytes(got.outputs[i]).equals(bytes(o)), `output of block-step ${i}`).toBe(true));
    want.caches.forEach((c, i) => {
      expect(got.caches[i].k.length).toBe(config.layers);
      c.k.forEach((t, l) => expect(bytes(got.caches[i].k[l]).equals(bytes(t)), `K cache of layer ${l} after block-step ${i}`).toBe(true));
      c.v.forEach((t, l) => expect(bytes(got.caches[i].v[l]).equals(bytes(t)), `V cache of layer ${l} after block-step ${i}`).toBe(true));
    });
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
