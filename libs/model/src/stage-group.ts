import { LocalCollectiveGroup, assembleSpan, groupSize, shardSpan, validateLayout, type StageLayout } from './parallel';
import { Stage, type BlockStep, type StageInput, type StageOptions } from './stage';

/**
 * A stage run as a group of members in this process (docs/parallelism.md): from outside it is one
 * stage (whole window or hidden states in, whole hidden states or the velocity out); inside, each
 * member holds its shard and they exchange through an in-process collective. The reference that
 * a group of worker processes must match, and what an in-process render with a layout runs.
 */
export class StageGroup {
  readonly members: readonly Stage[];

  constructor(
    o: Omit<StageOptions, 'group'>,
    readonly layout: StageLayout,
  ) {
    validateLayout(layout, o.config.heads);
    const collectives = new LocalCollectiveGroup(layout).members();
    this.members = collectives.map((collective, rank) => new Stage({ ...o, group: { layout, rank, collective } }));
  }

  get range(): Stage['range'] {
    return this.members[0].range;
  }

  /** Same contract as Stage.forward: calls are served in arrival order (each member chains its own). */
  async forward(step: BlockStep, input: StageInput): Promise<Float32Array> {
    const c = this.members[0].config;
    const frames = step.prefixFrames + step.ownFrames;
    const span = { windowFrames: frames, from: 0, to: frames, hw: (step.height / 2) * (step.width / 2), width: c.dim };
    const whole = 2 * frames * span.hw * c.dim;
    let inputs: StageInput[];
    if (this.range.head) inputs = this.members.map(() => input);
    else if (input instanceof Float32Array && input.length === whole) inputs = this.members.map((_, rank) => shardSpan(input, this.layout, rank, c.heads, span));
    else {
      const has = input instanceof Float32Array ? `${input.length} values` : 'window sources';
      throw new RangeError(`stage group [${this.range.l0}, ${this.range.l1}): input has ${has}, expected hidden states [2, ${frames * span.hw}, ${c.dim}] = ${whole}`);
    }
    const outputs = await Promise.all(this.members.map((m, rank) => m.forward(step, inputs[rank])));
    if (this.range.tail) return outputs[0];
    return groupSize(this.layout) === 1 ? outputs[0] : assembleSpan(outputs, this.layout, c.heads, span);
  }
}
