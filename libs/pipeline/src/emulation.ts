import { setTimeout as sleep } from 'node:timers/promises';
import { groupSize, memberShard, shardFrames, type BlockStep, type ForwardOptions, type ModelConfig, type StageInput, type StageLayout, type StageRange } from '@longshot/model';
import { groupStageCost, hiddenBytes, stageFlops, type HardwareProfile, type WindowShape } from '@longshot/planner';

/** What a worker session computes with: a real Stage or its emulation. */
export interface StageRunner {
  readonly range: StageRange;
  forward(step: BlockStep, input: StageInput, options?: ForwardOptions): Promise<Float32Array>;
  /** Frees what the runner keeps on a device once its forwards are done; it does not run again. */
  release?(): Promise<void>;
}

export interface EmulationOptions {
  readonly profile: HardwareProfile;
  /** Modelled seconds are multiplied by this (e.g. 0.1 runs ten times faster than the cluster). */
  readonly timeScale: number;
  /** Tensors on the wire are this many times smaller than the real ones. */
  readonly payloadScale: number;
}

export function windowOf(step: BlockStep, successor: boolean): WindowShape {
  return {
    tokensPerFrame: (step.height / 2) * (step.width / 2),
    prefixFrames: step.prefixFrames,
    ownFrames: step.ownFrames,
    successorFrames: successor ? step.contextFrames : 0,
  };
}

/** `map`'s value for `key`, computed once. */
function cached(map: Map<string, number>, key: string, compute: () => number): number {
  let value = map.get(key);
  if (value === undefined) map.set(key, (value = compute()));
  return value;
}

/** What the modelled cost and output size of a block-step depend on besides the stage. */
function shapeKey(step: BlockStep): string {
  return `${step.prefixFrames},${step.ownFrames},${step.contextFrames},${step.height},${step.width}`;
}

/**
 * A stage that takes the modelled time of the real one and returns zeros of the (scaled) output
 * size (a consumed input of that size, or the caller's output buffer, is returned as it came),
 * for scaling studies on a machine without the cluster's GPUs. Everything around it, the queue,
 * ordering, framing and streams, runs for real.
 */
export class EmulatedStage implements StageRunner {
  private queue: Promise<unknown> = Promise.resolve();
  private lastBlock: { iteration: number; block: number } | null = null;
  /** When the emulated device finishes the work queued so far (performance.now() ms). */
  private deviceFreeAt = 0;
  /**
   * Modelled seconds and output sizes by window shape: a job has a handful of shapes, and the
   * cost model is pure, so the head's thread need not evaluate it on every block-step.
   */
  private readonly seconds = new Map<string, number>();
  private readonly sizes = new Map<string, number>();

  constructor(
    readonly config: ModelConfig,
    readonly range: StageRange,
    readonly options: EmulationOptions,
    /** Member `rank` of a stage group (docs/parallelism.md): it takes a member's modelled time, exchanges included. */
    readonly group: { readonly layout: StageLayout; readonly rank: number } | null = null,
  ) {}

  /** Modelled forward seconds of a block-step on this stage (already time-scaled). */
  forwardSeconds(step: BlockStep): number {
    const successor = this.lastBlock !== null && this.lastBlock.iteration === step.iteration && this.lastBlock.block === step.block + 1;
    return cached(this.seconds, `${shapeKey(step)},${successor}`, () => {
      const [layers, window, p] = [this.range.l1 - this.range.l0, windowOf(step, successor), this.options.profile];
      const modelled =
        this.group && groupSize(this.group.layout) > 1
          ? groupStageCost(this.config, layers, window, this.range.head, this.range.tail, this.group.layout, p).seconds
          : stageFlops(this.config, layers, window, this.range.head, this.range.tail) / p.flopsPerSecond;
      return modelled * this.options.timeScale;
    });
  }

  /** Elements of this stage's output on the wire (a group member's: its shard; the tail's rank 0: the velocity). */
  outputSize(step: BlockStep): number {
    return cached(this.sizes, shapeKey(step), () => {
      const full = this.range.tail
        ? this.config.latentChannels * step.ownFrames * step.height * step.width
        : (hiddenBytes(this.config, windowOf(step, false)) / 4) * this.shardShare(step);
      return Math.max(1, Math.ceil(full / this.options.payloadScale));
    });
  }

  /** The share of the whole hidden states a group member holds (1 outside a group). */
  shardShare(step: BlockStep): number {
    if (!this.group) return 1;
    const m = memberShard(this.group.layout, this.group.rank, this.config.heads);
    const frames = step.prefixFrames + step.ownFrames;
    const [f0, f1] = shardFrames(frames, this.group.layout.ulysses, m.shard);
    return (m.halves.length / 2) * ((f1 - f0) / frames);
  }

  /**
   * Like a GPU stream, the device runs queued forwards back to back: a forward ends at
   * max(submission, previous end) + its modelled time, whatever the host's event loop is doing
   * when the timer fires, so host jitter delays results but never the device's schedule.
   */
  forward(step: BlockStep, input?: StageInput, options: ForwardOptions = {}): Promise<Float32Array> {
    const seconds = this.forwardSeconds(step);
    this.lastBlock = { iteration: step.iteration, block: step.block };
    const endsAt = Math.max(performance.now(), this.deviceFreeAt) + seconds * 1000;
    this.deviceFreeAt = endsAt;
    const size = this.outputSize(step);
    // Like the real stage, a consumed input of the output's size becomes the output, else the
    // caller's buffer, as they came: emulated stages send zeros, so they hold zeros.
    const out = options.consumeInput && !this.range.head && input instanceof Float32Array && input.length === size ? input : (options.allocateOutput?.(size) ?? new Float32Array(size));
    const run = this.queue.then(async () => {
      const wait = endsAt - performance.now();
      if (wait > 0) await sleep(wait);
      return out;
    });
    this.queue = run.catch(() => undefined);
    return run;
  }
}

/**
 * Models a link between stages: each tensor occupies it for bytes / bandwidth, in order, and
 * arrives `latency` later. Call before sending; resolves when the modelled arrival is due.
 */
export class EmulatedLink {
  private busyUntil = 0;

  constructor(private readonly options: EmulationOptions) {}

  async transfer(realBytes: number): Promise<void> {
    const p = this.options.profile;
    const now = performance.now() / 1000;
    const start = Math.max(now, this.busyUntil);
    this.busyUntil = start + (realBytes / p.linkBytesPerSecond) * this.options.timeScale;
    const arrival = this.busyUntil + p.linkLatencySeconds * this.options.timeScale;
    const wait = arrival - now;
    if (wait > 0) await sleep(wait * 1000);
  }
}
