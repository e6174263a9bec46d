import type { JobPlan, JobSpec, NoiseState } from '@longshot/planner';
import { Rng } from '@longshot/random';

/**
 * Coordinated noise (dualparal.md): one pool of B + C frame noises drawn from the job seed; each
 * new block's initial noise is a seeded selection of pool frames that carries the last C frames
 * of the previous draw forward, so neighbouring blocks start from shared noise where they overlap.
 */
export class CoordinatedNoise {
  private readonly pool: Float32Array;
  private readonly frameSize: number;
  private rng: Rng;
  private previous: number[];

  constructor(
    readonly seed: number,
    readonly block: number,
    readonly context: number,
    readonly channels: number,
    readonly height: number,
    readonly width: number,
    state?: NoiseState,
  ) {
    this.frameSize = height * width;
    const poolFrames = block + context;
    this.pool = Rng.from(seed, 'noise-pool').fillNormal(new Float32Array(poolFrames * channels * this.frameSize));
    this.rng = state ? new Rng(state.rng) : Rng.from(seed, 'noise-order');
    this.previous = state ? [...state.previous] : [];
    if (this.previous.some((i) => !Number.isInteger(i) || i < 0 || i >= poolFrames)) throw new RangeError('noise state names a frame outside the pool');
  }

  state(): NoiseState {
    return { rng: this.rng.state(), previous: [...this.previous] };
  }

  /** The next block's initial noise, [channels, block, height, width], into `out` when given (every element is written). */
  next(out: Float32Array = new Float32Array(this.channels * this.block * this.frameSize)): Float32Array {
    const B = this.block;
    const C = this.context;
    const carried = this.previous.length ? this.previous.slice(B - C) : [];
    const free = this.rng.permutation(B + C).filter((i) => !carried.includes(i));
    const order = [...carried, ...free].slice(0, B);
    this.previous = order;
    if (out.length !== this.channels * B * this.frameSize) throw new RangeError(`noise of a block has ${this.channels * B * this.frameSize} values, the buffer ${out.length}`);
    const fs = this.frameSize;
    for (let c = 0; c < this.channels; c++) {
      for (let f = 0; f < B; f++) {
        const src = (order[f] * this.channels + c) * fs;
        out.set(this.pool.subarray(src, src + fs), (c * B + f) * fs);
      }
    }
    return out;
  }
}

/**
 * A job's seeded initial noise as one [channels, latentFrames, H, W] tensor: every block's draw
 * at its frames. Given to `--init-noise` it reproduces the seeded job bit for bit.
 */
export function seededInitialNoise(spec: JobSpec, plan: JobPlan, channels: number): Float32Array {
  const noise = new CoordinatedNoise(spec.seed, spec.block, spec.context, channels, plan.latentHeight, plan.latentWidth);
  const fs = plan.latentHeight * plan.latentWidth;
  const B = spec.block;
  const F = plan.latentFrames;
  const out = new Float32Array(channels * F * fs);
  for (let b = 0; b < plan.blocks; b++) {
    const block = noise.next();
    for (let c = 0; c < channels; c++) out.set(block.subarray(c * B * fs, (c + 1) * B * fs), (c * F + b * B) * fs);
  }
  return out;
}
