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
 * (d) what a stage tells its backend of its memory holds: a backend that keeps device copies of
 *     buffers read twice (unless named `rewritten`), leaves `discard`ed outputs stale and keeps
 *     `resident` ones on the "device" only, as the CUDA backend does, gives the same bits.
 *
 * The seeded init has all norm weights 1 and biases 0; we perturb those tensors (by name, so all
 * stages agree) so that a norm weight applied to the wrong tensor, or not at all, shows up.
 */
import { describe, expect, it } from 'vitest';
import { cpuBackend, type Backend, type OpNode, type RunOptions } from '@longshot/engine';
import { getConfig, windowLatents, type KvEntry } from '@longshot/model';
import { Rng } from '@longshot/random';
import type { ModelConfig, StageRange } from '@longshot/model';
import { referenceStageForward, type BlockStep } from '../reference/stage';
import { relError } from '../reference/error';
import { testWeights } from '../reference/weights';
import { GUIDANCE, SEED, bytes, expectSameChain, type DeviceView, hwOf, latentsFor, makeStage, midStep, normal, runChain, split, successorFor, textFor, type ChainResult } from './stage-cases';

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

/**
 * The CPU backend with the host-memory behaviour of the CUDA backend (docs/cuda.md): a buffer two
 * runs read without writing is kept as a "device copy" and served from then on (the weight cache,
 * unless the run names it `rewritten`), what a run may `discard` is left stale (here: NaN), and
 * what it names `resident` lives only in the "device copy" (the host's is NaN) until
 * releaseDeviceMemory(). A stage that misdescribes its memory gets other bits from it than from
 * the plain CPU backend.
 */
class DeviceMemoryEmulation implements Backend, DeviceView {
  readonly name = 'cpu, with a device weight cache, resident outputs and stale discards';
  private readonly cpu = cpuBackend();
  private readonly seen = new Set<string>();
  private readonly cached = new Map<string, Float32Array>();
  private readonly resident = new Map<string, Float32Array>(); // key -> the host array
  private readonly ids = new WeakMap<ArrayBufferLike, number>();
  private nextId = 0;
  /** Buffers left stale, inputs served from a kept copy and outputs kept resident, over all runs. */
  discarded = 0;
  served = 0;
  keptResident = 0;

  supportsOp(node: OpNode): boolean {
    return this.cpu.supportsOp(node);
  }

  async run(nodes: readonly OpNode[], options?: RunOptions): Promise<void> {
    this.before(nodes, options);
    await this.cpu.run(nodes);
    this.after(nodes, options);
  }

  runSync(nodes: readonly OpNode[], options?: RunOptions): void {
    this.before(nodes, options);
    this.cpu.runSync(nodes);
    this.after(nodes, options);
  }

  deviceCopy(t: Float32Array): Float32Array | undefined {
    const key = this.key(t);
    return this.resident.has(key) ? this.cached.get(key) : undefined;
  }

  forget(arrays: readonly Float32Array[]): void {
    for (const t of arrays) {
      const key = this.key(t);
      this.resident.delete(key);
      this.cached.delete(key);
      this.seen.delete(key);
    }
  }

  /** How many outputs it holds as resident. */
  get residentCount(): number {
    return this.resident.size;
  }

  releaseDeviceMemory(): void {
    for (const [key, host] of this.resident) host.set(this.cached.get(key)!);
    this.resident.clear();
    this.cached.clear();
    this.seen.clear();
  }

  private key(t: Float32Array): string {
    if (!this.ids.has(t.buffer)) this.ids.set(t.buffer, ++this.nextId);
    return `${this.ids.get(t.buffer)}:${t.byteOffset}:${t.byteLength}`;
  }

  private static overlap(a: Float32Array, b: Float32Array): boolean {
    return a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
  }

  private before(nodes: readonly OpNode[], options?: RunOptions): void {
    const written = nodes.map((n) => n.output);
    const rewritten = options?.rewritten ?? [];
    for (const t of nodes.flatMap((n) => n.inputs)) {
      if (!t || t.length === 0) continue;
      const key = this.key(t);
      const hit = this.cached.get(key);
      if (rewritten.some((r) => DeviceMemoryEmulation.overlap(r, t))) {
        this.cached.delete(key);
        this.seen.delete(key);
        this.resident.delete(key);
      } else if (hit && this.resident.has(key)) {
        t.set(hit); // the only valid copy, whether this run writes it again or not
        this.served++;
      } else if (written.some((w) => DeviceMemoryEmulation.overlap(w, t))) {
        this.cached.delete(key);
        this.seen.delete(key);
      } else if (hit) {
        t.set(hit);
        this.served++;
      } else if (this.seen.has(key)) {
        this.cached.set(key, t.slice());
      } else {
        this.seen.add(key);
      }
    }
  }

  private after(nodes: readonly OpNode[], options?: RunOptions): void {
    for (const t of options?.resident ?? []) {
      if (!nodes.some((n) => n.output === t)) continue;
      const key = this.key(t);
      this.cached.set(key, t.slice());
      this.resident.set(key, t);
      t.fill(Number.NaN);
      this.keptResident++;
    }
    for (const t of options?.discard ?? []) t.fill(Number.NaN);
    this.discarded += options?.discard?.length ?? 0;
  }
}

describe('a stage describes its memory to the backend truthfully (discarded, rewritten, resident)', () => {
  const config = getConfig('tiny');

  it.each([
    { name: 'K = 1', k: 1, layout: undefined },
    { name: 'K = 2', k: 2, layout: undefined },
    { name: 'K = 2 x U = 2 x CFG', k: 2, layout: { ulysses: 2, cfgParallel: true } },
  ])('$name', async ({ k, layout }) => {
    const on = new DeviceMemoryEmulation();
    // Block 0 after the iteration's two blocks: a third forward over the same workspace.
    const block0 = midStep(config, { iteration: 6, block: 0, step: 5, timestep: 300, prefixFrames: 0 });
    const want = await runChain(config, split(config.layers, k), undefined, [block0]);
    expectSameChain(await runChain(config, split(config.layers, k), layout, [block0], {}, on), want, config.layers);
    expect(on.discarded).toBeGreaterThan(0);
    expect(on.served).toBeGreaterThan(0); // the weights, and the resident caches
    if (!layout) expect(on.keptResident).toBeGreaterThan(0);
  });

  it.each([1, 3])('K = %i, inputs handed over and outputs written in reused buffers (consumeInput, allocateOutput)', async (k) => {
    const on = new DeviceMemoryEmulation();
    const block0 = midStep(config, { iteration: 6, block: 0, step: 5, timestep: 300, prefixFrames: 0 });
    const want = await runChain(config, split(config.layers, k), undefined, [block0]);
    expectSameChain(await runChain(config, split(config.layers, k), undefined, [block0], {}, on, true), want, config.layers);
  });

  it('a head reading its window from the sources in place, in buffers the host refills (as the queue does), gives the bits of the assembled window', async () => {
    const on = new DeviceMemoryEmulation();
    const range = { l0: 0, l1: 2, head: true, tail: false };
    const text = textFor(config, 'sources');
    const inPlace = makeStage(config, range, text, undefined, on);
    const assembled = makeStage(config, range, text);
    const step = midStep(config);
    const frame = step.height * step.width;
    // One latents buffer and one prefix source (4 frames, the last 2 taken), refilled every forward.
    const latents = new Float32Array(config.latentChannels * step.ownFrames * frame);
    const prefix = new Float32Array(config.latentChannels * 4 * frame);
    for (let i = 0; i < 4; i++) {
      const s = { ...step, iteration: step.iteration + i, step: step.step + i, timestep: 620 - 50 * i };
      latents.set(normal(Rng.from(SEED, 'sources', i, 'own'), latents.length));
      prefix.set(normal(Rng.from(SEED, 'sources', i, 'prefix'), prefix.length));
      const window = windowLatents(s, { latents, prefix });
      expect(window.length).toBe(config.latentChannels * (step.prefixFrames + step.ownFrames) * frame);
      const want = await assembled.forward(s, window);
      expect(bytes(await inPlace.forward(s, { latents, prefix })).equals(bytes(want)), `forward ${i}`).toBe(true);
    }
    expect(on.served).toBeGreaterThan(0); // the weights came from "device" copies; the refilled sources did not
  });

  it('a released stage has the device forget its cache', async () => {
    const on = new DeviceMemoryEmulation();
    const stage = makeStage(config, split(config.layers, 1)[0], textFor(config, 'release'), undefined, on);
    const step = midStep(config, { iteration: 0, block: 0, step: 0, timestep: 999, prefixFrames: 0 });
    await stage.forward(step, latentsFor(config, step, 'release'));
    await stage.forward({ ...step, step: 1, timestep: 900 }, latentsFor(config, step, 'release'));
    expect(on.residentCount).toBe(4 * config.layers); // K and V of every layer, two generations
    await stage.release();
    expect(on.residentCount).toBe(0);
    expect(stage.kvCache).toBeNull();
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

  it('a head rejects window sources that cannot give the window, naming what is wrong; other stages refuse them', async () => {
    const stage = makeStage(config, { l0: 0, l1: 2, head: true, tail: false }, text);
    const frame = step.height * step.width;
    const own = new Float32Array(config.latentChannels * step.ownFrames * frame);
    const source = (frames: number) => new Float32Array(config.latentChannels * frames * frame);
    await expect(attempt(() => stage.forward(step, { latents: own.subarray(1), prefix: source(4) }))).rejects.toThrow(/window latents have \d+ values, expected \[16, 3, 4, 6\]/);
    await expect(attempt(() => stage.forward(step, { latents: own, prefix: null }))).rejects.toThrow(/prefix source has none, expected \[16, L, 4, 6\] with L >= 2/);
    await expect(attempt(() => stage.forward(step, { latents: own, prefix: source(1) }))).rejects.toThrow(/prefix source has 384 values/);
    await expect(attempt(() => stage.forward(step, { latents: own, prefix: source(2).subarray(3) }))).rejects.toThrow(/prefix source has 765 values/);
    expect(() => windowLatents(step, { latents: own, prefix: source(1) })).toThrow(/do not hold 2 prefix and 3 own frames of 4x6/);
    await expect(attempt(() => stage.forward(step, { latents: own, prefix: source(2) }))).resolves.toHaveLength(2 * Lw * config.dim);
    const middle = makeStage(config, { l0: 2, l1: 4, head: false, tail: false }, text);
    await expect(attempt(() => middle.forward(step, { latents: own, prefix: source(4) }))).rejects.toThrow(/only a head takes window sources/);
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
