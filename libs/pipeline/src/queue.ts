import { canonicalPieces, iteration as iterationAt, iterationCount, type BlockPieces, type BlockState, type CheckpointManifest, type JobPlan, type JobSpec, type PieceId, type QueueState } from '@longshot/planner';
import type { BlockStep, WindowSources } from '@longshot/model';
import { OPS, cpuBackend, type Backend, type OpNode } from '@longshot/engine';
import { buildSchedule, eulerStepSize, historyCountersAt, jobSchedulerConfig, unipcStep, type Combination, type Schedule, type SchedulerConfig, type SolverHistory } from '@longshot/sampler';
import type { NoiseState } from '@longshot/planner';
import { CoordinatedNoise } from './noise';

/** A block's solver history while it is in the queue: SolverHistory, updated in place. */
type LiveHistory = { -readonly [K in keyof SolverHistory]: K extends 'modelOutputs' ? Float32Array[] : SolverHistory[K] };

/** Which piece holds each tensor of a queued block, updated with them. */
type LivePieces = { latents: PieceId; modelOutputs: PieceId[]; lastSample: PieceId | null };

/** A block in the head's queue: its latents [16, B, H, W] after `step` denoising steps. */
interface QueuedBlock {
  readonly index: number;
  step: number;
  latents: Float32Array;
  readonly history: LiveHistory;
  readonly pieces: LivePieces;
}

/** A tensor the head should store now, under its piece name (incremental checkpoints). */
export interface ProducedPiece {
  readonly id: PieceId;
  /**
   * The values, shared memory the queue keeps. The queue never writes a tensor it has handed
   * out; with `storesPieces` it also leaves the memory unused until `piecesStored` says the
   * piece's iteration is stored, so another thread can read it meanwhile.
   */
  readonly values: Float32Array;
}

export interface BlockQueueOptions {
  /** Latent channels (16 for Wan). */
  readonly channels: number;
  /** The model's scheduler config; the spec's sampler and shift are applied to it. */
  readonly scheduler: SchedulerConfig;
  /** Resume from this iteration-boundary state. */
  readonly state?: QueueState;
  /**
   * [channels, latentFrames, H, W] initial noise replacing the seeded draw: block b starts from
   * frames [bB, (b+1)B). With one block covering the video this is plain sampling from it.
   */
  readonly initNoise?: Float32Array;
  /**
   * The caller stores the pieces `apply` hands out (from another thread, without a copy) and
   * calls `piecesStored(iteration)` once everything through that iteration is stored: until then
   * the queue reuses none of their memory. Without it, memory is reused as soon as it is free.
   */
  readonly storesPieces?: boolean;
}

export interface FinishedBlock {
  readonly index: number;
  /** Final latents [16, B, H, W]. */
  readonly latents: Float32Array;
}

/**
 * A block-step the head may start now: its descriptor and its window's sources (the block's
 * latents and the older block's, whose last p frames lead the window), the queue's own tensors,
 * not copies. The queue leaves them unchanged until this block-step's result is applied: a
 * block's latents are replaced, never written over, and the buffers it lets go of are reused
 * only after every block-step issued before could read them has been applied (issue order and
 * the ordering rule). So the forward reads them in place, however late it runs.
 */
export interface IssuedStep {
  readonly step: BlockStep;
  readonly window: WindowSources;
}

export interface Applied {
  /** Set when this application completed an iteration: the boundary a checkpoint may record. */
  readonly completedIteration: number | null;
  /** The block that left the queue with that iteration, if any. */
  readonly finished: FinishedBlock | null;
  /** Tensors this step computed that a checkpoint of a later boundary may name (none on a block's last step). */
  readonly pieces: readonly ProducedPiece[];
}

/**
 * The head's block queue. Block-steps are issued in the schedule's global order (iteration by
 * iteration, newest block first), each only once Longshot's strict ordering rule allows it: the
 * results of (b, i-1) and (b-1, i-1) are applied. Results are applied in the same order (every
 * stage is FIFO). With one step in flight this is the serial loop; with many it is the pipeline,
 * and both compute the same bits.
 */
export class BlockQueue {
  /** The job's scheduler: the model's with the spec's sampler and shift applied. */
  readonly scheduler: SchedulerConfig;
  /**
   * How many boundaries a piece outlives the iteration that computed it: a piece `apply` hands
   * out while applying iteration i is named by no manifest after boundary i + pieceLifetime.
   * Latents are named at the next boundary and, under UniPC, at the one after as the last sample
   * (a step without the corrector keeps the latents it started from); an x0 prediction stays in
   * the history for solverOrder steps; a corrected sample for one. Euler keeps only latents.
   * A head that commits every E > 1 iterations stores only the pieces a commit can name.
   */
  readonly pieceLifetime: number;
  readonly schedule: Schedule;
  readonly channels: number;
  private blocks: QueuedBlock[] = [];
  private readonly noise: CoordinatedNoise;
  private readonly initNoise: Float32Array | null;
  private finishedTail: { index: number; latents: Float32Array } | null = null;
  private readonly frameSize: number;
  private readonly blockSize: number;
  private readonly total: number;
  /** Global ordinal of the first block-step of each iteration (plus one past the end). */
  private readonly firstOrdinal: number[];
  private issued: number;
  private applied: number;
  /** Issued, not yet applied, in order. */
  private readonly inFlight: { iteration: number; block: number }[] = [];
  /** Noise position before each iteration's new block was drawn, until that boundary is saved. */
  private readonly noiseBefore = new Map<number, NoiseState>();
  /**
   * Block-sized buffers the queue let go of, reused for the next tensors it computes. None is
   * dropped: what the queue holds in all is the most it once needed at one time (blocks in the
   * queue, their histories, and what waits to be stored), so no cap has to be sized by hand
   * against the solver order, the step count and the store's latency (`allocatedBytes` shows
   * the total, flat once the pipeline is full).
   */
  private readonly spareBlocks: Float32Array[] = [];
  /** Bytes of host memory the queue allocated for block tensors (it frees none while it runs). */
  private allocated = 0;
  /** With storesPieces: buffers let go of, by the iteration that let go of them, until it is stored. */
  private readonly retired: { iteration: number; values: Float32Array }[] | null;
  /** The iteration of the result being applied (retired buffers are stamped with it). */
  private applying = 0;
  /** Latents live on the host: the sampler step runs on the CPU backend, whatever the stages use. */
  private readonly host: Backend = cpuBackend();

  constructor(
    readonly spec: JobSpec,
    readonly plan: JobPlan,
    options: BlockQueueOptions,
  ) {
    const { channels, state } = options;
    this.channels = channels;
    this.scheduler = jobSchedulerConfig(options.scheduler, { sampler: spec.sampler, shift: spec.shift });
    this.schedule = buildSchedule(this.scheduler, spec.steps);
    this.pieceLifetime = this.scheduler.kind === 'unipc' ? Math.max(2, this.scheduler.solverOrder) : 1;
    this.frameSize = plan.latentHeight * plan.latentWidth;
    this.blockSize = channels * spec.block * this.frameSize;
    this.retired = options.storesPieces ? [] : null;
    this.total = iterationCount(plan.blocks, spec.steps);
    this.firstOrdinal = [0];
    for (let i = 0; i < this.total; i++) this.firstOrdinal.push(this.firstOrdinal[i] + iterationAt(i, plan.blocks, spec.steps).blockSteps.length);
    this.noise = new CoordinatedNoise(spec.seed, spec.block, spec.context, channels, plan.latentHeight, plan.latentWidth, state?.noise);
    const noiseSize = channels * plan.latentFrames * this.frameSize;
    if (options.initNoise && options.initNoise.length !== noiseSize) {
      throw new RangeError(`init noise has ${options.initNoise.length} values, the job needs [${channels}, ${plan.latentFrames}, ${plan.latentHeight}, ${plan.latentWidth}] = ${noiseSize}`);
    }
    this.initNoise = options.initNoise ?? null;
    const start = state?.iteration ?? 0;
    if (!Number.isInteger(start) || start < 0 || start > this.total) throw new RangeError(`checkpoint iteration ${start} is outside 0..${this.total}`);
    this.issued = this.applied = this.firstOrdinal[start];
    if (state) {
      if (state.sampler !== this.scheduler.kind) throw new RangeError(`checkpoint was written by the ${state.sampler} sampler, this job samples with ${this.scheduler.kind}`);
      for (const b of state.blocks) {
        if (b.latents.length !== this.blockSize) throw new RangeError(`checkpoint block ${b.index} has ${b.latents.length} latents, expected ${this.blockSize}`);
        if (b.step !== start - b.index) throw new RangeError(`checkpoint block ${b.index} is at step ${b.step}, iteration ${start} expects ${start - b.index}`);
        const history = this.restoreHistory(b);
        this.blocks.push({ index: b.index, step: b.step, latents: this.copyBlock(b.latents), history, pieces: clonePieces(b.pieces ?? canonicalPieces(b.index, b.step, history.modelOutputs.length, history.lastSample !== null)) });
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

  /**
   * Bytes of host memory the queue allocated for block tensors. It stops growing
   * once the pipeline is full: buffers let go of are reused, none is dropped or made again.
   */
  get allocatedBytes(): number {
    return this.allocated;
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
      this.blocks.push({
        index: block,
        step: 0,
        latents: this.initialLatents(block),
        history: { modelOutputs: [], lastSample: null, lowerOrderNums: 0, lastOrder: 0 },
        pieces: { latents: { block, kind: 'latents', step: 0 }, modelOutputs: [], lastSample: null },
      });
    }
    const result = this.window(block, i);
    this.issued++;
    this.inFlight.push({ iteration: i, block });
    return result;
  }

  /** Applies the velocity of the oldest outstanding block-step (one solver step). */
  apply(iteration: number, block: number, velocity: Float32Array): Applied {
    const expected = this.inFlight[0];
    if (!expected) throw new Error(`no block-step is outstanding (got block ${block} of iteration ${iteration})`);
    if (expected.iteration !== iteration || expected.block !== block) {
      throw new Error(`results must arrive in order: expected block ${expected.block} of iteration ${expected.iteration}, got block ${block} of iteration ${iteration}`);
    }
    const q = this.find(block);
    if (velocity.length !== q.latents.length) throw new RangeError(`velocity of block ${block} has ${velocity.length} elements, its latents ${q.latents.length}`);
    const produced: ProducedPiece[] = [];
    this.applying = iteration;
    if (this.scheduler.kind === 'unipc') this.unipcStep(q, velocity, produced);
    else {
      const next = this.takeBlock();
      this.host.runSync([axpy(q.latents, velocity, eulerStepSize(this.schedule.sigmas[q.step], this.schedule.sigmas[q.step + 1]), next)]);
      this.retire(q.latents);
      q.latents = next;
    }
    q.step++;
    q.pieces.latents = { block, kind: 'latents', step: q.step };
    produced.push({ id: q.pieces.latents, values: q.latents });
    // The block's last step: it leaves the queue at this boundary and is stored as a finished block.
    const pieces = q.step === this.spec.steps ? [] : produced;
    this.inFlight.shift();
    this.applied++;
    if (this.applied !== this.firstOrdinal[iteration + 1]) return { completedIteration: null, finished: null, pieces };
    const it = iterationAt(iteration, this.plan.blocks, this.spec.steps);
    let finished: FinishedBlock | null = null;
    if (it.finished !== null) {
      const f = this.find(it.finished);
      this.blocks = this.blocks.filter((b) => b !== f);
      for (const t of [...f.history.modelOutputs, ...(f.history.lastSample ? [f.history.lastSample] : [])]) this.retire(t);
      this.finishedTail = { index: f.index, latents: f.latents };
      finished = { index: f.index, latents: f.latents };
    }
    return { completedIteration: iteration, finished, pieces };
  }

  /**
   * The state at the last completed iteration boundary. Block-steps of later iterations may
   * already be issued: issuing draws noise but changes no latents, so the boundary is exact.
   * Every tensor is a copy (the head itself stores pieces as they are computed and commits
   * `manifest()`; this whole state is for in-process resumes and tests).
   */
  checkpoint(): QueueState {
    const next = this.nextIteration;
    const take = (t: Float32Array) => t.slice();
    return {
      iteration: next,
      sampler: this.scheduler.kind,
      blocks: this.blocks
        .filter((b) => b.index < next)
        .map((b): BlockState => ({
          index: b.index,
          step: b.step,
          latents: take(b.latents),
          history: {
            modelOutputs: b.history.modelOutputs.map(take),
            lastSample: b.history.lastSample ? take(b.history.lastSample) : null,
            lowerOrderNums: b.history.lowerOrderNums,
            lastOrder: b.history.lastOrder,
          },
          pieces: clonePieces(b.pieces),
        })),
      noise: this.boundaryNoise(next),
      finishedTail: this.finishedTail ? { index: this.finishedTail.index, latents: take(this.finishedTail.latents) } : null,
    };
  }

  /**
   * The last completed iteration boundary as a checkpoint manifest: every tensor named by the
   * piece that holds it (each was handed out by `apply` when it was computed), the prefix source
   * by its block index (a finished block, stored as such). No tensor is copied.
   */
  manifest(): CheckpointManifest {
    const next = this.nextIteration;
    return {
      iteration: next,
      sampler: this.scheduler.kind,
      blocks: this.blocks
        .filter((b) => b.index < next)
        .map((b) => ({ index: b.index, step: b.step, lowerOrderNums: b.history.lowerOrderNums, lastOrder: b.history.lastOrder, pieces: clonePieces(b.pieces) })),
      noise: this.boundaryNoise(next),
      finishedTail: this.finishedTail?.index ?? null,
    };
  }

  /** The noise position at boundary `next`; forgets the positions of earlier boundaries. */
  private boundaryNoise(next: number): NoiseState {
    for (const i of [...this.noiseBefore.keys()]) if (i < next) this.noiseBefore.delete(i);
    return this.noiseBefore.get(next) ?? this.noise.state();
  }

  /**
   * With `storesPieces`: every piece handed out through `iteration` is stored, so the memory let
   * go of up to then may be reused.
   */
  piecesStored(iteration: number): void {
    const r = this.retired;
    if (!r) throw new Error('piecesStored: this queue was made without storesPieces');
    while (r.length > 0 && r[0].iteration <= iteration) this.recycleBlock(r.shift()!.values);
  }

  private window(block: number, iteration: number): IssuedStep {
    const q = this.find(block);
    const C = this.spec.context;
    const prefix = block > 0 && C > 0 ? this.prefixSource(block - 1) : null;
    const p = prefix ? C : 0;
    const B = this.spec.block;
    const stepIndex = iteration - block;
    if (q.step !== stepIndex) throw new Error(`block ${block} is at step ${q.step}, iteration ${iteration} expects ${stepIndex}`);
    const step: BlockStep = {
      iteration,
      block,
      step: stepIndex,
      timestep: this.schedule.timesteps[stepIndex],
      prefixFrames: p,
      ownFrames: B,
      contextFrames: C,
      height: this.plan.latentHeight,
      width: this.plan.latentWidth,
    };
    return { step, window: { latents: q.latents, prefix } };
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

  /**
   * One UniPC step of block q from the model's velocity, in diffusers' order: x0 prediction,
   * UniC corrects the sample the model saw (from the last sample and the stored x0s), UniP
   * predicts the next sample. The x0 prediction (an `axpy`) and the combinations (a
   * `weighted_sum` each) run as one engine call, each into a buffer of its own (a tensor handed
   * out as a piece is never written again).
   */
  private unipcStep(q: QueuedBlock, velocity: Float32Array, produced: ProducedPiece[]): void {
    const h = q.history;
    const u = unipcStep(this.scheduler, this.schedule, q.step, { outputs: h.modelOutputs.length, lowerOrderNums: h.lowerOrderNums, lastOrder: h.lastOrder, lastSample: h.lastSample !== null });
    const x0 = this.takeBlock();
    const nodes: OpNode[] = [axpy(q.latents, velocity, u.x0FromVelocity, x0)];
    // The sample the model saw, corrected by UniC (which needs only the last sample) when it applies.
    const sample = u.corrector ? this.takeBlock() : q.latents;
    if (u.corrector) this.combine(nodes, sample, h.lastSample!, u.corrector, h.modelOutputs, x0);
    const next = this.takeBlock();
    this.combine(nodes, next, sample, u.predictor, h.modelOutputs, x0);
    this.host.runSync(nodes);
    const p = q.pieces;
    const block = q.index;
    // The sample this step started from: corrected (a new tensor) or the latents as they were
    // (already stored, except a new block's initial noise).
    if (u.corrector) {
      p.lastSample = { block, kind: 'sample', step: q.step };
      produced.push({ id: p.lastSample, values: sample });
      this.retire(q.latents);
    } else {
      p.lastSample = p.latents;
      if (q.step === 0) produced.push({ id: p.latents, values: q.latents });
    }
    const x0Piece: PieceId = { block, kind: 'x0', step: q.step };
    produced.push({ id: x0Piece, values: x0 });
    if (h.lastSample) this.retire(h.lastSample);
    h.lastSample = sample;
    q.latents = next;
    h.modelOutputs.push(x0);
    p.modelOutputs.push(x0Piece);
    while (h.modelOutputs.length > this.scheduler.solverOrder) {
      this.retire(h.modelOutputs.shift()!);
      p.modelOutputs.shift();
    }
    h.lowerOrderNums = u.lowerOrderNums;
    h.lastOrder = u.order;
  }

  /**
   * out = c.base * base + sum_j c.outputs[j] * outputs[j] + c.current * x0, term by term in
   * float32 (one fused multiply-add each, from 0, in that order; terms with a zero coefficient
   * skipped), as one `weighted_sum` pass over memory: at most five terms (solver order <= 3).
   */
  private combine(nodes: OpNode[], out: Float32Array, base: Float32Array, c: Combination, outputs: readonly Float32Array[], x0: Float32Array): void {
    const terms: [Float32Array, number][] = [[base, c.base]];
    c.outputs.forEach((k, j) => {
      if (k !== 0) terms.push([outputs[j], k]);
    });
    terms.push([x0, c.current]);
    if (terms.length > WEIGHTED_SUM_TERMS) throw new Error(`a UniPC combination of ${terms.length} terms (the engine's weighted_sum takes ${WEIGHTED_SUM_TERMS})`);
    const slots = Array.from({ length: WEIGHTED_SUM_TERMS }, (_, j) => terms[j] ?? [null, 0]);
    nodes.push({ op: 'weighted_sum', inputs: slots.map(([t]) => t), output: out, params: [out.length, ...slots.map(([, k]) => k)] });
  }

  /** A buffer the queue no longer reads: reused now, or once its iteration is stored (storesPieces). */
  private retire(t: Float32Array): void {
    if (this.retired) this.retired.push({ iteration: this.applying, values: t });
    else this.recycleBlock(t);
  }

  private recycleBlock(t: Float32Array): void {
    this.spareBlocks.push(t);
  }

  /** A block-sized buffer for a tensor about to be computed (every element is written). */
  private takeBlock(): Float32Array {
    return this.spareBlocks.pop() ?? this.newBlock();
  }

  /**
   * A block-sized tensor in shared memory: the head stores the pieces it hands out from another
   * thread, without copying them (recycled buffers are reused before new ones are made).
   */
  private newBlock(): Float32Array {
    return this.allocate(new Float32Array(new SharedArrayBuffer(this.blockSize * Float32Array.BYTES_PER_ELEMENT)));
  }

  private allocate(t: Float32Array): Float32Array {
    this.allocated += t.byteLength;
    return t;
  }

  private copyBlock(values: Float32Array): Float32Array {
    const out = this.newBlock();
    out.set(values);
    return out;
  }

  private initialLatents(block: number): Float32Array {
    if (!this.initNoise) return this.noise.next(this.takeBlock());
    const B = this.spec.block;
    const fs = this.frameSize;
    const frames = this.plan.latentFrames;
    const out = this.takeBlock();
    for (let c = 0; c < this.channels; c++) out.set(this.initNoise.subarray((c * frames + block * B) * fs, (c * frames + (block + 1) * B) * fs), c * B * fs);
    return out;
  }

  /** A checkpointed block's history, checked against what its step implies for this scheduler. */
  private restoreHistory(b: BlockState): LiveHistory {
    const want = historyCountersAt(this.scheduler, this.spec.steps, b.step);
    const h = b.history;
    if (h.modelOutputs.length !== want.outputs || (h.lastSample !== null) !== want.lastSample || h.lowerOrderNums !== want.lowerOrderNums || h.lastOrder !== want.lastOrder) {
      throw new RangeError(
        `checkpoint block ${b.index}: solver history (${h.modelOutputs.length} outputs, last sample ${h.lastSample ? 'present' : 'absent'}, lower-order count ${h.lowerOrderNums}, order ${h.lastOrder}) ` +
          `does not match step ${b.step} of ${this.scheduler.kind} order ${this.scheduler.solverOrder} (${want.outputs} outputs, last sample ${want.lastSample ? 'present' : 'absent'}, lower-order count ${want.lowerOrderNums}, order ${want.lastOrder})`,
      );
    }
    for (const t of [...h.modelOutputs, ...(h.lastSample ? [h.lastSample] : [])]) {
      if (t.length !== this.blockSize) throw new RangeError(`checkpoint block ${b.index}: a solver history tensor has ${t.length} values, expected ${this.blockSize}`);
    }
    return { modelOutputs: h.modelOutputs.map((t) => this.copyBlock(t)), lastSample: h.lastSample ? this.copyBlock(h.lastSample) : null, lowerOrderNums: h.lowerOrderNums, lastOrder: h.lastOrder };
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

/** Terms a weighted_sum node takes (its input slots). */
const WEIGHTED_SUM_TERMS = OPS.weighted_sum.inputs.length;

/** The engine's out = x + alpha * y (one fused multiply-add per element). */
function axpy(x: Float32Array, y: Float32Array, alpha: number, out: Float32Array): OpNode {
  return { op: 'axpy', inputs: [x, y], output: out, params: [out.length, alpha] };
}

function clonePieces(p: BlockPieces): LivePieces {
  return { latents: p.latents, modelOutputs: [...p.modelOutputs], lastSample: p.lastSample };
}

