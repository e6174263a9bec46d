import { iteration as iterationAt, iterationCount, type JobPlan, type JobSpec } from '@longshot/planner';
import type { BlockStep } from '@longshot/model';
import { cpuBackend, type Backend } from '@longshot/engine';
import { eulerStepSize, shiftedSigmas, timestepOf } from '@longshot/sampler';
import { CoordinatedNoise, type NoiseState } from './noise';

/** A block in the head's queue: its latents [16, B, H, W] after `step` denoising steps. */
interface QueuedBlock {
  readonly index: number;
  step: number;
  readonly latents: Float32Array;
}

/**
 * Everything the head needs to resume a job at an iteration boundary (dualparal.md, "What stays
 * small"): the queued blocks, the noise pool position, and the last C frames' source of the block
 * that left the queue most recently (the next block's prefix). The K/V caches are rebuilt within
 * an iteration, so they are not part of it.
 */
export interface QueueState {
  /** The iteration a resume starts at. */
  readonly iteration: number;
  readonly blocks: readonly { index: number; step: number; latents: Float32Array }[];
  readonly noise: NoiseState;
  readonly finishedTail: { index: number; latents: Float32Array } | null;
}

export interface FinishedBlock {
  readonly index: number;
  /** Final latents [16, B, H, W]. */
  readonly latents: Float32Array;
}

/** A block-step the head may start now: its descriptor and window latents [16, p+B, H, W]. */
export interface IssuedStep {
  readonly step: BlockStep;
  readonly window: Float32Array;
}

export interface Applied {
  /** Set when this application completed an iteration: the boundary a checkpoint may record. */
  readonly completedIteration: number | null;
  /** The block that left the queue with that iteration, if any. */
  readonly finished: FinishedBlock | null;
}

/**
 * The head's block queue. Block-steps are issued in the schedule's global order (iteration by
 * iteration, newest block first), each only once Longshot's strict ordering rule allows it: the
 * results of (b, i-1) and (b-1, i-1) are applied. Results are applied in the same order (every
 * stage is FIFO). With one step in flight this is the serial loop; with many it is the pipeline,
 * and both compute the same bits.
 */
export class BlockQueue {
  readonly sigmas: Float64Array;
  private blocks: QueuedBlock[] = [];
  private readonly noise: CoordinatedNoise;
  private finishedTail: { index: number; latents: Float32Array } | null = null;
  private readonly frameSize: number;
  private readonly total: number;
  /** Global ordinal of the first block-step of each iteration (plus one past the end). */
  private readonly firstOrdinal: number[];
  private issued: number;
  private applied: number;
  /** Issued, not yet applied, in order. */
  private readonly inFlight: { iteration: number; block: number }[] = [];
  /** Noise position before each iteration's new block was drawn, until that boundary is saved. */
  private readonly noiseBefore = new Map<number, NoiseState>();
  private readonly spareWindows: Float32Array[] = [];
  /** Latents live on the host: the sampler step runs on the CPU backend, whatever the stages use. */
  private readonly host: Backend = cpuBackend();

  constructor(
    readonly spec: JobSpec,
    readonly plan: JobPlan,
    readonly channels: number,
    state?: QueueState,
  ) {
    this.sigmas = shiftedSigmas(spec.steps, spec.shift);
    this.frameSize = plan.latentHeight * plan.latentWidth;
    this.total = iterationCount(plan.blocks, spec.steps);
    this.firstOrdinal = [0];
    for (let i = 0; i < this.total; i++) this.firstOrdinal.push(this.firstOrdinal[i] + iterationAt(i, plan.blocks, spec.steps).blockSteps.length);
    this.noise = new CoordinatedNoise(spec.seed, spec.block, spec.context, channels, plan.latentHeight, plan.latentWidth, state?.noise);
    const start = state?.iteration ?? 0;
    if (!Number.isInteger(start) || start < 0 || start > this.total) throw new RangeError(`checkpoint iteration ${start} is outside 0..${this.total}`);
    this.issued = this.applied = this.firstOrdinal[start];
    if (state) {
      const size = channels * spec.block * this.frameSize;
      for (const b of state.blocks) {
        if (b.latents.length !== size) throw new RangeError(`checkpoint block ${b.index} has ${b.latents.length} latents, expected ${size}`);
        if (b.step !== start - b.index) throw new RangeError(`checkpoint block ${b.index} is at step ${b.step}, iteration ${start} expects ${start - b.index}`);
        this.blocks.push({ index: b.index, step: b.step, latents: b.latents.slice() });
      }
      this.finishedTail = state.finishedTail ? { index: state.finishedTail.index, latents: state.finishedTail.latents.slice() } : null;
    }
  }

  /** The iteration a checkpoint taken now would resume at (first not completely applied). */
  get nextIteration(): number {
    return this.iterationOf(this.applied);
  }

  get done(): boolean {
    return this.applied === this.firstOrdinal[this.total];
  }

  /** Block-steps issued and not yet applied. */
  get outstanding(): number {
    return this.issued - this.applied;
  }

  /** Block-steps applied since the job started (all iterations before a resume included). */
  get appliedCount(): number {
    return this.applied;
  }

  /** The next block-step, if the ordering rule lets it start now; null if it must wait or none is left. */
  issue(): IssuedStep | null {
    if (this.issued === this.firstOrdinal[this.total]) return null;
    const i = this.iterationOf(this.issued);
    const it = iterationAt(i, this.plan.blocks, this.spec.steps);
    const { block } = it.blockSteps[this.issued - this.firstOrdinal[i]];
    if (i > 0) {
      for (const b of [block, block - 1]) {
        if (b >= 0 && this.isScheduled(b, i - 1) && this.ordinal(b, i - 1) >= this.applied) return null;
      }
    }
    if (it.added === block && !this.blocks.some((q) => q.index === block)) {
      this.noiseBefore.set(i, this.noise.state());
      this.blocks.push({ index: block, step: 0, latents: this.noise.next() });
    }
    const result = this.window(block, i);
    this.issued++;
    this.inFlight.push({ iteration: i, block });
    return result;
  }

  /** Applies the velocity of the oldest outstanding block-step (one Euler step). */
  apply(iteration: number, block: number, velocity: Float32Array): Applied {
    const expected = this.inFlight[0];
    if (!expected) throw new Error(`no block-step is outstanding (got block ${block} of iteration ${iteration})`);
    if (expected.iteration !== iteration || expected.block !== block) {
      throw new Error(`results must arrive in order: expected block ${expected.block} of iteration ${expected.iteration}, got block ${block} of iteration ${iteration}`);
    }
    const q = this.find(block);
    if (velocity.length !== q.latents.length) throw new RangeError(`velocity of block ${block} has ${velocity.length} elements, its latents ${q.latents.length}`);
    const h = eulerStepSize(this.sigmas[q.step], this.sigmas[q.step + 1]);
    this.host.runSync([{ op: 'axpy', inputs: [q.latents, velocity], output: q.latents, params: [q.latents.length, h] }]);
    q.step++;
    this.inFlight.shift();
    this.applied++;
    if (this.applied !== this.firstOrdinal[iteration + 1]) return { completedIteration: null, finished: null };
    const it = iterationAt(iteration, this.plan.blocks, this.spec.steps);
    let finished: FinishedBlock | null = null;
    if (it.finished !== null) {
      const f = this.find(it.finished);
      this.blocks = this.blocks.filter((b) => b !== f);
      this.finishedTail = { index: f.index, latents: f.latents };
      finished = { index: f.index, latents: f.latents };
    }
    return { completedIteration: iteration, finished };
  }

  /**
   * The state at the last completed iteration boundary. Block-steps of later iterations may
   * already be issued: issuing draws noise but changes no latents, so the boundary is exact.
   * With `copy: false` the latents are the live arrays, valid until the next `apply` (the head
   * persists a checkpoint before it applies more, and saves it a copy of tens of MB).
   */
  checkpoint({ copy = true }: { copy?: boolean } = {}): QueueState {
    const next = this.nextIteration;
    for (const i of [...this.noiseBefore.keys()]) if (i < next) this.noiseBefore.delete(i);
    const take = (t: Float32Array) => (copy ? t.slice() : t);
    return {
      iteration: next,
      blocks: this.blocks.filter((b) => b.index < next).map((b) => ({ index: b.index, step: b.step, latents: take(b.latents) })),
      noise: this.noiseBefore.get(next) ?? this.noise.state(),
      finishedTail: this.finishedTail ? { index: this.finishedTail.index, latents: take(this.finishedTail.latents) } : null,
    };
  }

  /** Hands a window back once its forward has read it, so the next window reuses the memory. */
  recycle(window: Float32Array): void {
    if (this.spareWindows.length < 4) this.spareWindows.push(window);
  }

  private window(block: number, iteration: number): IssuedStep {
    const q = this.find(block);
    const B = this.spec.block;
    const C = this.spec.context;
    const prefix = block > 0 && C > 0 ? this.prefixSource(block - 1) : null;
    const p = prefix ? C : 0;
    const frames = p + B;
    const fs = this.frameSize;
    const size = this.channels * frames * fs;
    // Every element is written below, so a recycled buffer needs no clearing.
    const spare = this.spareWindows.findIndex((w) => w.length === size);
    const window = spare >= 0 ? this.spareWindows.splice(spare, 1)[0] : new Float32Array(size);
    for (let c = 0; c < this.channels; c++) {
      if (prefix) window.set(prefix.subarray((c * B + B - C) * fs, (c * B + B) * fs), c * frames * fs);
      window.set(q.latents.subarray(c * B * fs, (c + 1) * B * fs), (c * frames + p) * fs);
    }
    const stepIndex = iteration - block;
    if (q.step !== stepIndex) throw new Error(`block ${block} is at step ${q.step}, iteration ${iteration} expects ${stepIndex}`);
    const step: BlockStep = {
      iteration,
      block,
      step: stepIndex,
      timestep: timestepOf(this.sigmas[stepIndex]),
      prefixFrames: p,
      ownFrames: B,
      contextFrames: C,
      height: this.plan.latentHeight,
      width: this.plan.latentWidth,
    };
    return { step, window };
  }

  private isScheduled(block: number, iteration: number): boolean {
    const step = iteration - block;
    return block < this.plan.blocks && step >= 0 && step < this.spec.steps;
  }

  /** Position of (block, iteration) in the global order: newest block first within an iteration. */
  private ordinal(block: number, iteration: number): number {
    const newest = Math.min(iteration, this.plan.blocks - 1);
    return this.firstOrdinal[iteration] + (newest - block);
  }

  private iterationOf(ordinal: number): number {
    let lo = 0;
    let hi = this.total;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.firstOrdinal[mid] <= ordinal) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  private prefixSource(block: number): Float32Array {
    if (this.finishedTail?.index === block) return this.finishedTail.latents;
    return this.find(block).latents;
  }

  private find(block: number): QueuedBlock {
    const q = this.blocks.find((b) => b.index === block);
    if (!q) throw new Error(`block ${block} is not in the queue`);
    return q;
  }
}
