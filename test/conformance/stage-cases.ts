/**
 * Shared cases of the stage suites (stage.test.ts, stage-parallel.test.ts): seeded text, windows
 * and successor caches, and a runner that pushes block-steps through a chain of stages, each
 * stage optionally a group of members (docs/parallelism.md).
 */
import { expect } from 'vitest';
import { cpuBackend, type Backend } from '@longshot/engine';
import { LocalCollectiveGroup, Stage, assembleSpan, groupSize, memberSpan, shardSpan, type BlockStep, type FrameSpan, type GroupMember, type KvEntry, type ModelConfig, type StageLayout, type StageRange } from '@longshot/model';
import { Rng } from '@longshot/random';
import { testWeights } from '../reference/weights';

export const SEED = 1234;
export const GUIDANCE = 5;
export const backend = cpuBackend();

export const normal = (rng: Rng, n: number, std = 1): Float32Array => rng.fillNormal(new Float32Array(n), std);
export const bytes = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
export const hwOf = (s: BlockStep): number => (s.height / 2) * (s.width / 2);

export function textFor(config: ModelConfig, key: string): { cond: Float32Array; uncond: Float32Array } {
  const rng = Rng.from(SEED, 'text', key);
  return { cond: normal(rng, config.textLen * config.textDim), uncond: normal(rng, config.textLen * config.textDim) };
}

/** Window latents [16, p+B, height, width]. */
export function latentsFor(config: ModelConfig, s: BlockStep, key: string): Float32Array {
  return normal(Rng.from(SEED, 'latents', key), config.latentChannels * (s.prefixFrames + s.ownFrames) * s.height * s.width);
}

/** A newer block's raw K/V for `layers` layers, [2, C*hw, D] each (what its stage would cache). */
export function successorFor(config: ModelConfig, s: BlockStep, layers: number, key: string): { k: Float32Array[]; v: Float32Array[] } {
  const rng = Rng.from(SEED, 'successor', key);
  const n = 2 * s.contextFrames * hwOf(s) * config.dim;
  return { k: Array.from({ length: layers }, () => normal(rng, n)), v: Array.from({ length: layers }, () => normal(rng, n)) };
}

export function makeStage(config: ModelConfig, range: StageRange, text: { cond: Float32Array; uncond: Float32Array }, group?: GroupMember, on: Backend = backend): Stage {
  return new Stage({ config, range, weights: testWeights(config, range, SEED), backend: on, text, guidance: GUIDANCE, group });
}

/**
 * A block-step in the middle of a job: a prefix of C frames from the older neighbour. 'small' gets
 * a smaller window so its float64 reference stays around a second.
 */
export function midStep(config: ModelConfig, over: Partial<BlockStep> = {}): BlockStep {
  const base: BlockStep =
    config.name === 'small'
      ? { iteration: 4, block: 1, step: 3, timestep: 620, prefixFrames: 1, ownFrames: 2, contextFrames: 1, height: 4, width: 4 }
      : { iteration: 4, block: 1, step: 3, timestep: 620, prefixFrames: 2, ownFrames: 3, contextFrames: 2, height: 4, width: 6 };
  return { ...base, ...over };
}

/** Splits [0, layers) into `k` contiguous, nearly equal ranges; first is head, last is tail. */
export function split(layers: number, k: number): StageRange[] {
  return Array.from({ length: k }, (_, i) => ({
    l0: Math.floor((i * layers) / k),
    l1: Math.floor(((i + 1) * layers) / k),
    head: i === 0,
    tail: i === k - 1,
  }));
}

/** A test backend that can show what it keeps on its "device" without giving it back. */
export interface DeviceView {
  /** The device copy of a resident output, if the backend holds one. */
  deviceCopy(t: Float32Array): Float32Array | undefined;
}

export interface ChainResult {
  outputs: Float32Array[];
  /** The caches after each block-step, concatenated over stages (one entry per model layer), whole [2, C*hw, D]. */
  caches: { k: Float32Array[]; v: Float32Array[] }[];
  /** The hidden states leaving each non-tail stage, per block-step, whole [2, tokens, D]. */
  hidden: Float32Array[][];
}

/**
 * Block-steps of one iteration through a chain of stages: the newer block with an injected
 * successor, then the older one, which must pick up the newer block's cache; `extra` steps follow.
 * With a layout every stage is a group of members (an in-process collective), each fed its shard.
 */
export async function runChain(config: ModelConfig, ranges: StageRange[], layout?: StageLayout, extra: BlockStep[] = [], window: Partial<BlockStep> = {}, on: Backend = backend, consumeInputs = false): Promise<ChainResult> {
  if (consumeInputs && layout) throw new Error('runChain: consumeInputs (reused buffers) is for unsharded stages');
  // consumeInputs: every stage after the head gets its input in one buffer per stage, refilled
  // for each block-step (a worker's reused receive buffer) and handed over to the forward, and
  // every stage writes its output into one buffer of its own, reused block-step after block-step.
  const reused = (pool: Map<number, Float32Array>, n: number): Float32Array => {
    const buf = pool.get(n) ?? new Float32Array(n);
    pool.set(n, buf);
    return buf;
  };
  const received = ranges.map(() => new Map<number, Float32Array>());
  const produced = ranges.map(() => new Map<number, Float32Array>());
  const handOver = (i: number, t: Float32Array): Float32Array => {
    const buf = reused(received[i], t.length);
    buf.set(t);
    return buf;
  };
  const text = textFor(config, 'chain');
  const members = layout ? groupSize(layout) : 1;
  const stages = ranges.map((r) => {
    const collectives = layout ? new LocalCollectiveGroup(layout).members() : [null];
    return collectives.map((collective, rank) => makeStage(config, r, text, collective && layout ? { layout, rank, collective } : undefined, on));
  });
  const newer = midStep(config, { iteration: 6, block: 3, step: 2, timestep: 800, ...window });
  const older = midStep(config, { iteration: 6, block: 2, step: 3, timestep: 650, ...window });
  const successor = successorFor(config, newer, config.layers, 'chain');
  // The successor (block 4) had the same window shape: prefix C, then its own frames.
  const successorSpan = spanOf(config, { ...newer, prefixFrames: newer.contextFrames }, 'cache');
  stages.forEach((group, i) => {
    const { l0, l1 } = ranges[i];
    group.forEach((s, rank) => {
      const part = (t: Float32Array) => (layout ? shardSpan(t, layout, rank, config.heads, successorSpan) : t);
      const entry: KvEntry = { iteration: newer.iteration, block: newer.block + 1, k: successor.k.slice(l0, l1).map(part), v: successor.v.slice(l0, l1).map(part) };
      if (layout) entry.firstFrame = firstCached(layout, rank, config.heads, successorSpan);
      s.kvCache = entry;
    });
  });

  const result: ChainResult = { outputs: [], caches: [], hidden: [] };
  for (const step of [newer, older, ...extra]) {
    const latents = latentsFor(config, step, `chain ${step.block}`);
    let inputs: Float32Array[] = Array.from({ length: members }, () => latents);
    const hidden: Float32Array[] = [];
    for (const [i, group] of stages.entries()) {
      const consume = consumeInputs && i > 0;
      const given = consume ? [handOver(i, inputs[0])] : inputs;
      const options = consumeInputs ? { consumeInput: consume, allocateOutput: (n: number) => reused(produced[i], n) } : {};
      let outputs = await Promise.all(group.map((s, rank) => s.forward(step, given[rank], options)));
      if (consumeInputs) {
        const where = consume && !ranges[i].tail ? given[0] : produced[i].get(outputs[0].length);
        expect(outputs[0], `stage ${i} computes in the buffer it was handed`).toBe(where);
        outputs = outputs.map((o) => o.slice()); // the buffers are reused for the next block-step
      }
      if (ranges[i].tail) {
        const expected = config.latentChannels * step.ownFrames * step.height * step.width;
        expect(outputs[0].length, `stage ${i} output size`).toBe(expected);
        outputs.slice(1).forEach((o, r) => expect(o.length, `stage ${i} member ${r + 1} returns nothing`).toBe(0));
        result.outputs.push(outputs[0]);
      } else {
        const span = spanOf(config, step, 'window');
        outputs.forEach((o, rank) => expect(o.length, `stage ${i} member ${rank} output size`).toBe(group[rank].hiddenSize(step)));
        hidden.push(layout ? assembleSpan(outputs, layout, config.heads, span) : outputs[0]);
      }
      inputs = outputs;
    }
    result.hidden.push(hidden);
    // An unsharded stage keeps its cache on a device backend (read through the emulation's view of
    // its "device", or after the backend gives it back); the next forward overwrites the buffers of
    // the one before, so the caches are copied as they are read.
    const view = (on as Partial<DeviceView>).deviceCopy?.bind(on);
    if (!view) on.releaseDeviceMemory?.();
    const host = (t: Float32Array): Float32Array => view?.(t) ?? t;
    const k: Float32Array[] = [];
    const v: Float32Array[] = [];
    for (const group of stages) {
      const caches = group.map((s) => s.kvCache!);
      for (const c of caches) {
        expect(c.iteration).toBe(step.iteration);
        expect(c.block).toBe(step.block);
      }
      const span = spanOf(config, step, 'cache');
      caches.forEach((c, rank) => layout && expect(c.firstFrame, `member ${rank} cache's first frame`).toBe(firstCached(layout, rank, config.heads, span)));
      const whole = (pick: (c: KvEntry) => Float32Array[]) => pick(caches[0]).map((_, l) => (layout ? assembleSpan(caches.map((c) => pick(c)[l]), layout, config.heads, span) : host(pick(caches[0])[l]).slice()));
      k.push(...whole((c) => c.k));
      v.push(...whole((c) => c.v));
    }
    result.caches.push({ k, v });
  }
  return result;
}

/** The window's rows ('window') or the successor cache's own frames [p, p+C) ('cache') of a block-step. */
function spanOf(config: ModelConfig, s: BlockStep, which: 'window' | 'cache'): FrameSpan {
  const windowFrames = s.prefixFrames + s.ownFrames;
  const [from, to] = which === 'window' ? [0, windowFrames] : [s.prefixFrames, s.prefixFrames + s.contextFrames];
  return { windowFrames, from, to, hw: hwOf(s), width: config.dim };
}

function firstCached(layout: StageLayout, rank: number, heads: number, span: FrameSpan): number {
  return memberSpan(layout, rank, heads, span).a - span.from;
}

/** Asserts two chain results are the same bits: outputs, caches and, where both have them, hidden states. */
export function expectSameChain(got: ChainResult, want: ChainResult, layers: number): void {
  want.outputs.forEach((o, i) => expect(bytes(got.outputs[i]).equals(bytes(o)), `output of block-step ${i}`).toBe(true));
  want.hidden.forEach((h, i) =>
    h.forEach((t, k) => {
      if (got.hidden[i].length === h.length) expect(bytes(got.hidden[i][k]).equals(bytes(t)), `hidden states after stage ${k} of block-step ${i}`).toBe(true);
    }),
  );
  want.caches.forEach((c, i) => {
    expect(got.caches[i].k.length).toBe(layers);
    c.k.forEach((t, l) => expect(bytes(got.caches[i].k[l]).equals(bytes(t)), `K cache of layer ${l} after block-step ${i}`).toBe(true));
    c.v.forEach((t, l) => expect(bytes(got.caches[i].v[l]).equals(bytes(t)), `V cache of layer ${l} after block-step ${i}`).toBe(true));
  });
}
