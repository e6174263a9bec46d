import { describe, expect, it } from 'vitest';
import { BlockQueue, CoordinatedNoise, seededInitialNoise, type IssuedStep } from '@longshot/pipeline';
import { normalizeSpec, planJob, type JobSpec, type PieceId, type QueueState } from '@longshot/planner';
import { WAN_SCHEDULER_CONFIG } from '@longshot/sampler';
import { windowLatents } from '@longshot/model';
import { standInVelocity as velocity } from './stand-in-velocity';

const spec = normalizeSpec({ prompt: 'x', frames: 4 * (24 - 1) + 1, block: 4, context: 2, steps: 3, width: 32, height: 32, seed: 7 });
const plan = planJob(spec);
const queue = (s: JobSpec = spec, state?: QueueState) => new BlockQueue(s, plan, { channels: 16, scheduler: WAN_SCHEDULER_CONFIG, state });
const ownSize = 16 * spec.block * plan.latentHeight * plan.latentWidth;

/** Runs with up to `depth` block-steps in flight (1 = serial), optionally stopping at an iteration. */
function run(queue: BlockQueue, depth: number, stopAt = Infinity): { finished: Float32Array[]; maxInFlight: number } {
  const finished: Float32Array[] = [];
  const flight: IssuedStep[] = [];
  let maxInFlight = 0;
  while (!queue.done) {
    while (flight.length < depth) {
      const s = queue.issue();
      if (!s) break;
      flight.push(s);
    }
    maxInFlight = Math.max(maxInFlight, flight.length);
    const s = flight.shift()!;
    const r = queue.apply(s.step.iteration, s.step.block, velocity(s));
    if (r.finished) finished.push(r.finished.latents.slice());
    if (r.completedIteration !== null && r.completedIteration + 1 >= stopAt) break;
  }
  return { finished, maxInFlight };
}

describe('coordinated noise', () => {
  it('carries the last C frames of the previous draw into the next block', () => {
    const n = new CoordinatedNoise(3, 4, 2, 2, 2, 2);
    const a = n.next();
    const b = n.next();
    const fs = 4;
    for (let c = 0; c < 2; c++) {
      for (let f = 0; f < 2; f++) {
        expect(b.subarray((c * 4 + f) * fs, (c * 4 + f + 1) * fs)).toEqual(a.subarray((c * 4 + 2 + f) * fs, (c * 4 + 3 + f) * fs));
      }
    }
    expect(new CoordinatedNoise(3, 4, 2, 2, 2, 2).next()).toEqual(a);
    expect(new CoordinatedNoise(4, 4, 2, 2, 2, 2).next()).not.toEqual(a);
  });
});

describe('block queue', () => {
  it('hands out windows as their sources (the last C frames of the older block, then the own frames) and enforces result order', () => {
    const q = queue();
    const first = q.issue()!;
    expect(first.step).toMatchObject({ iteration: 0, block: 0, step: 0, prefixFrames: 0 });
    expect(first.window.prefix).toBeNull();
    expect(first.window.latents.length).toBe(ownSize);
    expect(windowLatents(first.step, first.window)).toBe(first.window.latents); // without a prefix the window is the latents
    expect(q.issue()).toBeNull(); // (1, 1) waits for (0, 0)
    q.apply(0, 0, new Float32Array(ownSize));
    const second = q.issue()!;
    expect(second.step).toMatchObject({ iteration: 1, block: 1, prefixFrames: 2 });
    const third = q.issue()!;
    expect(third.step).toMatchObject({ iteration: 1, block: 0 });
    // Block 1's window leads with frames 2 and 3 of block 0's latents, as they are now.
    expect(second.window.prefix).toBe(third.window.latents);
    const window = windowLatents(second.step, second.window);
    expect(window.length).toBe(16 * 6 * 16);
    const fs = 16;
    for (const c of [0, 7, 15]) {
      expect(window.subarray(c * 6 * fs, (c * 6 + 2) * fs)).toEqual(third.window.latents.subarray((c * 4 + 2) * fs, (c * 4 + 4) * fs));
      expect(window.subarray((c * 6 + 2) * fs, (c * 6 + 6) * fs)).toEqual(second.window.latents.subarray(c * 4 * fs, (c * 4 + 4) * fs));
    }
    expect(() => q.apply(1, 0, new Float32Array(ownSize))).toThrow(/in order/);
  });

  it('computes the same latents serially and pipelined, and the rule bounds what is in flight', () => {
    const serial = run(queue(), 1);
    const piped = run(queue(), 100);
    expect(serial.finished.length).toBe(plan.blocks);
    expect(piped.finished).toEqual(serial.finished);
    expect(piped.maxInFlight).toBeGreaterThan(1);
    expect(piped.maxInFlight).toBeLessThanOrEqual(Math.min(plan.blocks, spec.steps) + 1);
  });

  it.each(['unipc', 'euler'] as const)('resumes %s from a checkpoint taken while later block-steps were already issued', (sampler) => {
    const s = { ...spec, sampler, steps: 5 };
    // Five steps: at the boundary of iteration 4 blocks 0..3 are queued, none has finished yet.
    const whole = run(queue(s), 1).finished;
    const first = queue(s);
    run(first, 100, 4);
    expect(first.outstanding).toBeGreaterThan(0);
    const state = structuredClone(first.checkpoint());
    expect(state.iteration).toBe(4);
    const resumed = run(queue(s, state), 3).finished;
    expect(resumed).toEqual(whole.slice(whole.length - resumed.length));
    expect(resumed.length).toBe(plan.blocks - Math.max(0, 4 - s.steps + 1));
    // UniPC carries a per-block history: the x0 predictions of the last steps and the last sample.
    if (sampler === 'unipc') expect(state.blocks.map((b) => b.history.modelOutputs.length)).toEqual([2, 2, 2, 1]);
  });

  it.each(['unipc', 'euler'] as const)('resumes %s from a manifest and the pieces apply handed out, each unchanged until its iteration is stored', (sampler) => {
    const s = { ...spec, sampler, steps: 5 };
    const whole = run(queue(s), 1).finished;
    // The head's store: a copy of each piece taken when apply hands it out.
    const stored = new Map<string, Float32Array>();
    const name = (p: PieceId) => `${p.block}:${p.kind}:${p.step}`;
    let handedOut: { id: PieceId; values: Float32Array; iteration: number }[] = [];
    const finished = new Map<number, Float32Array>();
    const first = new BlockQueue(s, plan, { channels: 16, scheduler: WAN_SCHEDULER_CONFIG, storesPieces: true });
    const flight: IssuedStep[] = [];
    let boundary = 0;
    // Like the head, which persists a boundary while the next iteration applies: iteration i is
    // declared stored only when iteration i + 1 completes.
    let persisting: number | null = null;
    while (boundary < 6) {
      for (let x = first.issue(); x; x = flight.length < 100 ? first.issue() : null) flight.push(x);
      const step = flight.shift()!;
      // Every piece of an iteration not declared stored is still what was handed out.
      for (const p of handedOut) expect(p.values, name(p.id)).toEqual(stored.get(name(p.id)));
      const r = first.apply(step.step.iteration, step.step.block, velocity(step));
      for (const p of r.pieces) {
        expect(stored.has(name(p.id)), `${name(p.id)} handed out twice`).toBe(false);
        stored.set(name(p.id), p.values.slice());
        handedOut.push({ ...p, iteration: step.step.iteration });
      }
      if (r.finished) finished.set(r.finished.index, r.finished.latents.slice());
      if (r.completedIteration !== null) {
        boundary = r.completedIteration + 1;
        if (persisting !== null) {
          first.piecesStored(persisting);
          handedOut = handedOut.filter((p) => p.iteration > persisting!);
        }
        persisting = r.completedIteration;
      }
    }
    expect(() => queue(s).piecesStored(0)).toThrow(/without storesPieces/);
    const m = first.manifest();
    expect(m.iteration).toBe(6);
    const get = (p: PieceId): Float32Array => {
      const v = stored.get(name(p));
      if (!v) throw new Error(`the manifest names ${name(p)}, never handed out`);
      return v;
    };
    const state: QueueState = {
      iteration: m.iteration,
      sampler: m.sampler,
      noise: m.noise,
      blocks: m.blocks.map((b) => ({ index: b.index, step: b.step, latents: get(b.pieces.latents), history: { modelOutputs: b.pieces.modelOutputs.map(get), lastSample: b.pieces.lastSample && get(b.pieces.lastSample), lowerOrderNums: b.lowerOrderNums, lastOrder: b.lastOrder }, pieces: b.pieces })),
      finishedTail: m.finishedTail === null ? null : { index: m.finishedTail, latents: finished.get(m.finishedTail)! },
    };
    expect(m.finishedTail).toBe(1);
    const resumed = run(queue(s, state), 3).finished;
    expect(resumed).toEqual(whole.slice(2));
  });

  it('refuses a checkpoint of another sampler or with a history its step does not imply', () => {
    const s = { ...spec, steps: 5 };
    const first = queue(s);
    run(first, 1, 4);
    const state = first.checkpoint();
    expect(() => queue({ ...s, sampler: 'euler' }, state)).toThrow(/written by the unipc sampler, this job samples with euler/);
    const cut = { ...state, blocks: state.blocks.map((b, i) => (i === 0 ? { ...b, history: { ...b.history, modelOutputs: b.history.modelOutputs.slice(1) } } : b)) };
    expect(() => queue(s, cut)).toThrow(/block 0: solver history \(1 outputs.*does not match step 4 of unipc order 2 \(2 outputs/);
  });

  it('starts each block from its frames of an initial noise tensor', () => {
    const noise = seededInitialNoise(spec, plan, 16);
    const a = run(queue(), 1).finished;
    const b = run(new BlockQueue(spec, plan, { channels: 16, scheduler: WAN_SCHEDULER_CONFIG, initNoise: noise }), 1).finished;
    expect(b).toEqual(a);
    const other = noise.map((x) => -x);
    const c = run(new BlockQueue(spec, plan, { channels: 16, scheduler: WAN_SCHEDULER_CONFIG, initNoise: other }), 1).finished;
    expect(c).not.toEqual(a);
    expect(() => new BlockQueue(spec, plan, { channels: 16, scheduler: WAN_SCHEDULER_CONFIG, initNoise: noise.subarray(1) })).toThrow(/init noise has .* values, the job needs \[16, 24, 4, 4\]/);
  });

  it.each([
    { name: 'euler', sampler: 'euler' as const, scheduler: {}, lifetime: 1 },
    { name: 'UniPC order 1 without the corrector at step 2', sampler: 'unipc' as const, scheduler: { solverOrder: 1, disableCorrector: [2] }, lifetime: 2 },
    { name: "UniPC order 2 (Wan's)", sampler: 'unipc' as const, scheduler: {}, lifetime: 2 },
    { name: 'UniPC order 3', sampler: 'unipc' as const, scheduler: { solverOrder: 3 }, lifetime: 3 },
  ])('$name: a manifest names no piece computed more than pieceLifetime iterations before its boundary', ({ sampler, scheduler, lifetime }) => {
    const s = { ...spec, sampler, steps: 6 };
    const q = new BlockQueue(s, plan, { channels: 16, scheduler: { ...WAN_SCHEDULER_CONFIG, ...scheduler }, storesPieces: true });
    expect(q.pieceLifetime).toBe(lifetime);
    const computedAt = new Map<string, number>();
    const name = (p: PieceId) => `${p.block}:${p.kind}:${p.step}`;
    const flight: IssuedStep[] = [];
    let oldest = 0;
    while (!q.done) {
      for (let x = q.issue(); x; x = q.issue()) flight.push(x);
      const step = flight.shift()!;
      const r = q.apply(step.step.iteration, step.step.block, velocity(step));
      for (const p of r.pieces) computedAt.set(name(p.id), step.step.iteration);
      if (r.completedIteration === null) continue;
      const boundary = r.completedIteration + 1;
      for (const b of q.manifest().blocks) {
        for (const id of [b.pieces.latents, ...b.pieces.modelOutputs, ...(b.pieces.lastSample ? [b.pieces.lastSample] : [])]) {
          const at = computedAt.get(name(id));
          expect(at, `${name(id)} named at boundary ${boundary} was never handed out`).toBeDefined();
          oldest = Math.max(oldest, boundary - at!);
        }
      }
      q.piecesStored(r.completedIteration);
    }
    // The bound holds, and it is the tightest one: some manifest names a piece that old.
    expect(oldest).toBe(lifetime);
  });

  it.each([
    { name: 'euler', sampler: 'euler' as const, scheduler: {}, storesPieces: false },
    { name: "UniPC (Wan's), pieces stored", sampler: 'unipc' as const, scheduler: {}, storesPieces: true },
    { name: 'UniPC order 3', sampler: 'unipc' as const, scheduler: { solverOrder: 3 }, storesPieces: false },
  ])('$name: every window reads, when its result is applied, what it held when issued (its sources are read in place)', ({ sampler, scheduler, storesPieces }) => {
    const s = { ...spec, sampler, steps: 6 };
    const q = new BlockQueue(s, plan, { channels: 16, scheduler: { ...WAN_SCHEDULER_CONFIG, ...scheduler }, storesPieces });
    // Everything the ordering rule lets out is in flight at once, and checked just before its apply.
    const flight: { issued: IssuedStep; held: Float32Array }[] = [];
    let persisting: number | null = null;
    let checked = 0;
    while (!q.done) {
      for (let x = q.issue(); x; x = q.issue()) flight.push({ issued: x, held: windowLatents(x.step, x.window).slice() });
      const { issued, held } = flight.shift()!;
      expect(windowLatents(issued.step, issued.window), `block ${issued.step.block} of iteration ${issued.step.iteration}`).toEqual(held);
      checked++;
      const r = q.apply(issued.step.iteration, issued.step.block, velocity(issued));
      if (!storesPieces || r.completedIteration === null) continue;
      // Like the head: an iteration is declared stored when the next one completes.
      if (persisting !== null) q.piecesStored(persisting);
      persisting = r.completedIteration;
    }
    expect(checked).toBe(plan.blocks * s.steps);
  });

  it('stops allocating once the pipeline is full: buffers let go of are reused, none is dropped', () => {
    const s = { ...spec, steps: 8 };
    const q = new BlockQueue(s, plan, { channels: 16, scheduler: WAN_SCHEDULER_CONFIG, storesPieces: true });
    const flight: IssuedStep[] = [];
    const bytesAt: number[] = [];
    // Like the head: an iteration is declared stored when the next one completes.
    let persisting: number | null = null;
    while (!q.done) {
      for (let x = flight.length < 6 ? q.issue() : null; x; x = flight.length < 6 ? q.issue() : null) flight.push(x);
      const step = flight.shift()!;
      const r = q.apply(step.step.iteration, step.step.block, velocity(step));
      if (r.completedIteration === null) continue;
      if (persisting !== null) q.piecesStored(persisting);
      persisting = r.completedIteration;
      bytesAt.push(q.allocatedBytes);
    }
    // The queue holds min(blocks, steps) = 8 blocks from iteration 7 on; nothing new after it fills.
    expect(bytesAt.length).toBe(plan.blocks + s.steps - 1);
    expect(bytesAt[bytesAt.length - 1]).toBe(bytesAt[s.steps + 1]);
    expect(bytesAt[s.steps + 1]).toBeGreaterThan(bytesAt[0]);
  });
});
