import { OPS, type Backend, type OpName, type OpNode } from '@longshot/engine';
import { headDim, weightSpecs, type ModelConfig, type StageRange } from './config';
import type { StageWeights } from './weights-types';

/** One block-step as a stage sees it (dualparal.md, "One block-step"). */
export interface BlockStep {
  readonly iteration: number;
  readonly block: number;
  readonly step: number;
  /** The block's timestep (1000 * sigma); the whole window uses it. */
  readonly timestep: number;
  /** Context frames of the older neighbour in front of the block (0 for block 0, else C). */
  readonly prefixFrames: number;
  /** The block's own latent frames (B). */
  readonly ownFrames: number;
  /** C: how many of its own first frames the block leaves in the K/V cache for the older block. */
  readonly contextFrames: number;
  /** Latent grid (video size / 8). */
  readonly height: number;
  readonly width: number;
}

/**
 * The DualParal feature cache of one stage: the raw (pre-norm, pre-rotary) K and V of the first C
 * own frames of the last block processed, one [2, C*hw, D] pair per held layer.
 */
export interface KvEntry {
  readonly iteration: number;
  readonly block: number;
  readonly k: Float32Array[];
  readonly v: Float32Array[];
}

export interface TextEmbeddings {
  /** [textLen, textDim] conditional embeddings. */
  readonly cond: Float32Array;
  /** [textLen, textDim] unconditional embeddings. */
  readonly uncond: Float32Array;
}

export interface StageOptions {
  readonly config: ModelConfig;
  readonly range: StageRange;
  readonly weights: StageWeights;
  readonly backend: Backend;
  readonly text: TextEmbeddings;
  readonly guidance: number;
}

/**
 * Layers [l0, l1) of the DiT, plus the patch embedding on the head and the output head on the
 * tail. `forward` builds the block-step's op graph and runs it on the backend in one call, off
 * the JS thread. Calls are served strictly in arrival order: the K/V cache depends on it.
 */
export class Stage {
  readonly config: ModelConfig;
  readonly range: StageRange;
  /** Successor cache; replaced by every forward. Exposed so tests and resumes can set it. */
  kvCache: KvEntry | null = null;

  private readonly w: StageWeights;
  private readonly backend: Backend;
  private readonly text: TextEmbeddings;
  private readonly guidance: number;
  /** Cross-attention K and V of the text context, per held layer: constant for a job. */
  private cross: { k: Float32Array; v: Float32Array }[] | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly workspace = new Workspace();

  constructor(o: StageOptions) {
    const c = o.config;
    if (!Number.isInteger(o.range.l0) || !Number.isInteger(o.range.l1) || o.range.l0 < 0 || o.range.l1 > c.layers || o.range.l0 > o.range.l1) {
      throw new RangeError(`stage layer range [${o.range.l0}, ${o.range.l1}) is not inside the model's ${c.layers} layers`);
    }
    for (const spec of weightSpecs(c, o.range)) {
      const t = o.weights.get(spec.name);
      const n = spec.shape.reduce((a, b) => a * b, 1);
      if (!t) throw new Error(`stage [${o.range.l0}, ${o.range.l1}): weight ${spec.name} is missing`);
      if (t.length !== n) throw new Error(`stage [${o.range.l0}, ${o.range.l1}): weight ${spec.name} has ${t.length} values, expected ${n} for shape [${spec.shape.join(', ')}]`);
    }
    const textSize = c.textLen * c.textDim;
    for (const [name, t] of [['cond', o.text.cond], ['uncond', o.text.uncond]] as const) {
      if (t.length !== textSize) throw new RangeError(`text embeddings '${name}' have ${t.length} values, expected [${c.textLen}, ${c.textDim}]`);
    }
    if (!Number.isFinite(o.guidance)) throw new RangeError(`guidance must be a finite number, got ${o.guidance}`);
    this.config = c;
    this.range = o.range;
    this.w = o.weights;
    this.backend = o.backend;
    this.text = o.text;
    this.guidance = o.guidance;
  }

  /**
   * Head: `input` is the window's latents [16, p+B, H, W]. Other stages: hidden states
   * [2, (p+B)*hw, D]. Tail returns the guided velocity of the own frames [16, B, H, W]; other
   * stages return hidden states for the next stage.
   */
  forward(step: BlockStep, input: Float32Array): Promise<Float32Array> {
    // Validate synchronously so a bad step is rejected before it can disturb the FIFO order.
    const geometry = this.checkStep(step, input);
    const run = this.queue.then(() => this.compute(step, input, geometry));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Sizes of the hidden states entering or leaving a non-head/non-tail side of this stage. */
  hiddenSize(step: BlockStep): number {
    return 2 * (step.prefixFrames + step.ownFrames) * (step.height / 2) * (step.width / 2) * this.config.dim;
  }

  private checkStep(s: BlockStep, input: Float32Array): Geometry {
    for (const f of ['iteration', 'block', 'step', 'prefixFrames', 'ownFrames', 'contextFrames', 'height', 'width'] as const) {
      if (!Number.isInteger(s[f]) || s[f] < 0) throw new RangeError(`block-step ${f} must be a non-negative integer, got ${s[f]}`);
    }
    if (!Number.isFinite(s.timestep)) throw new RangeError(`block-step timestep must be finite, got ${s.timestep}`);
    if (s.ownFrames < 1) throw new RangeError('block-step ownFrames must be at least 1');
    if (s.contextFrames > s.ownFrames) throw new RangeError(`contextFrames ${s.contextFrames} exceeds ownFrames ${s.ownFrames}`);
    if (s.height < 2 || s.width < 2 || s.height % 2 || s.width % 2) throw new RangeError(`latent grid ${s.height}x${s.width} must be even (patch 2x2)`);
    const hw = (s.height / 2) * (s.width / 2);
    const frames = s.prefixFrames + s.ownFrames;
    const g: Geometry = { hw, frames, tokens: frames * hw };
    const expected = this.range.head ? this.config.latentChannels * frames * s.height * s.width : 2 * g.tokens * this.config.dim;
    if (input.length !== expected) {
      const what = this.range.head ? `window latents [${this.config.latentChannels}, ${frames}, ${s.height}, ${s.width}]` : `hidden states [2, ${g.tokens}, ${this.config.dim}]`;
      throw new RangeError(`stage [${this.range.l0}, ${this.range.l1}) block ${s.block} step ${s.step}: input has ${input.length} values, expected ${what} = ${expected}`);
    }
    return g;
  }

  private async compute(s: BlockStep, input: Float32Array, g: Geometry): Promise<Float32Array> {
    if (!this.cross) await this.prepareCrossAttention();
    const c = this.config;
    const D = c.dim;
    const M = 2 * g.tokens;
    const b = new GraphBuilder(c.eps, this.workspace);
    const w = (name: string) => this.weight(name);

    // Conditioning: every stage derives it from the timestep, so only hidden states travel.
    const temb = b.linear(b.silu(b.linear(b.op('timestep_embedding', [Float32Array.of(s.timestep)], [1, c.freqDim]), w('condition_embedder.time_embedder.linear_1.weight'), w('condition_embedder.time_embedder.linear_1.bias'), 1, c.freqDim, D)), w('condition_embedder.time_embedder.linear_2.weight'), w('condition_embedder.time_embedder.linear_2.bias'), 1, D, D);
    const e0 = b.linear(b.silu(b.copy(temb)), w('condition_embedder.time_proj.weight'), w('condition_embedder.time_proj.bias'), 1, D, 6 * D);

    let x: Float32Array;
    b.scope('head');
    if (this.range.head) {
      x = new Float32Array(M * D);
      const patches = b.op('patchify', [input], [c.latentChannels, g.frames, s.height, s.width]);
      // Both guidance halves start from the same embedded window.
      for (const half of [0, 1]) {
        b.into('linear', [patches, w('patch_embedding.weight'), w('patch_embedding.bias')], [g.tokens, 4 * c.latentChannels, D], x.subarray(half * g.tokens * D, (half + 1) * g.tokens * D));
      }
    } else {
      x = input.slice();
    }

    const successor = s.contextFrames > 0 && this.kvCache && this.kvCache.iteration === s.iteration && this.kvCache.block === s.block + 1 ? this.kvCache : null;
    const extraRows = successor ? 2 * s.contextFrames * g.hw : 0;
    if (successor) {
      const layers = this.range.l1 - this.range.l0;
      const size = extraRows * D;
      const bad = successor.k.length !== layers || successor.v.length !== layers || [...successor.k, ...successor.v].some((t) => t.length !== size);
      if (bad) throw new RangeError(`stage [${this.range.l0}, ${this.range.l1}): the K/V cache of block ${successor.block} has the wrong shape: expected ${layers} layers of [2, ${s.contextFrames * g.hw}, ${D}]`);
    }
    const own: KvEntry = { iteration: s.iteration, block: s.block, k: [], v: [] };
    const hd = headDim(c);
    const grid = (frames: number, offset: number) => [2, frames, s.height / 2, s.width / 2, c.heads, hd, offset, c.ropeTheta];

    for (let l = this.range.l0; l < this.range.l1; l++) {
      const p = `blocks.${l}`;
      const i = l - this.range.l0;
      b.scope('layer');
      const m = b.op('gated_add', [w(`${p}.scale_shift_table`), e0, null], [1, 6 * D]);
      const mod = (k: number) => m.subarray(k * D, (k + 1) * D);

      // Self-attention over the window, plus the newer neighbour's cached first C frames.
      const h = b.modulate(b.op('layer_norm', [x, null, null], [M, D, c.eps]), mod(0), mod(1), M, D);
      const q = b.ropeInPlace(b.rmsInPlace(b.linear(h, w(`${p}.attn1.to_q.weight`), w(`${p}.attn1.to_q.bias`), M, D, D), w(`${p}.attn1.norm_q.weight`), M, D), grid(g.frames, 0));
      const kRaw = b.linear(h, w(`${p}.attn1.to_k.weight`), w(`${p}.attn1.to_k.bias`), M, D, D);
      const k = b.ropeInPlace(b.op('rms_norm', [kRaw, w(`${p}.attn1.norm_k.weight`)], [M, D, c.eps]), grid(g.frames, 0));
      const v = b.linear(h, w(`${p}.attn1.to_v.weight`), w(`${p}.attn1.to_v.bias`), M, D, D);
      let extraK: Float32Array | null = null;
      let extraV: Float32Array | null = null;
      if (successor) {
        extraK = b.ropeInPlace(b.op('rms_norm', [successor.k[i], w(`${p}.attn1.norm_k.weight`)], [extraRows, D, c.eps]), grid(s.contextFrames, g.frames));
        extraV = successor.v[i];
      }
      const attn = b.op('attention', [q, k, v, extraK, extraV], [2, g.tokens, g.tokens, extraRows / 2, c.heads, hd]);
      b.gatedAddInPlace(x, b.linear(attn, w(`${p}.attn1.to_out.0.weight`), w(`${p}.attn1.to_out.0.bias`), M, D, D), mod(2), M, D);
      const cacheRows = [2, g.tokens, D, s.prefixFrames * g.hw, s.contextFrames * g.hw];
      own.k.push(b.fresh('copy_rows', [kRaw], cacheRows));
      own.v.push(b.fresh('copy_rows', [v], cacheRows));

      // Cross-attention to the text (no gate, affine LayerNorm).
      const hc = b.op('layer_norm', [x, w(`${p}.norm2.weight`), w(`${p}.norm2.bias`)], [M, D, c.eps]);
      const qc = b.rmsInPlace(b.linear(hc, w(`${p}.attn2.to_q.weight`), w(`${p}.attn2.to_q.bias`), M, D, D), w(`${p}.attn2.norm_q.weight`), M, D);
      const cross = this.cross![i];
      const ac = b.op('attention', [qc, cross.k, cross.v, null, null], [2, g.tokens, c.textLen, 0, c.heads, hd]);
      b.gatedAddInPlace(x, b.linear(ac, w(`${p}.attn2.to_out.0.weight`), w(`${p}.attn2.to_out.0.bias`), M, D, D), null, M, D);

      // Feed-forward.
      const hf = b.modulate(b.op('layer_norm', [x, null, null], [M, D, c.eps]), mod(3), mod(4), M, D);
      const f = b.geluInPlace(b.linear(hf, w(`${p}.ffn.net.0.proj.weight`), w(`${p}.ffn.net.0.proj.bias`), M, D, c.ffnDim));
      b.gatedAddInPlace(x, b.linear(f, w(`${p}.ffn.net.2.weight`), w(`${p}.ffn.net.2.bias`), M, c.ffnDim, D), mod(5), M, D);
    }

    if (!this.range.tail) {
      await this.backend.run(b.nodes);
      if (this.range.l1 > this.range.l0) this.kvCache = own;
      return x;
    }

    // Output head on the own frames only, then guidance.
    b.scope('tail');
    const ownTokens = s.ownFrames * g.hw;
    const xo = b.op('copy_rows', [x], [2, g.tokens, D, s.prefixFrames * g.hw, ownTokens]);
    const table = w('scale_shift_table');
    const shift = b.op('gated_add', [table.subarray(0, D), temb, null], [1, D]);
    const scale = b.op('gated_add', [table.subarray(D, 2 * D), temb, null], [1, D]);
    const ho = b.modulate(b.op('layer_norm', [xo, null, null], [2 * ownTokens, D, c.eps]), shift, scale, 2 * ownTokens, D);
    const out = b.linear(ho, w('proj_out.weight'), w('proj_out.bias'), 2 * ownTokens, D, 4 * c.latentChannels);
    const latentSize = c.latentChannels * s.ownFrames * s.height * s.width;
    const both = b.scratch(2 * latentSize);
    for (const half of [0, 1]) {
      b.into('unpatchify', [out.subarray(half * ownTokens * 4 * c.latentChannels, (half + 1) * ownTokens * 4 * c.latentChannels)], [c.latentChannels, s.ownFrames, s.height, s.width], both.subarray(half * latentSize, (half + 1) * latentSize));
    }
    const velocity = b.fresh('cfg_combine', [both], [latentSize, this.guidance]);
    await this.backend.run(b.nodes);
    if (this.range.l1 > this.range.l0) this.kvCache = own;
    return velocity;
  }

  /** Text context and its per-layer cross-attention K/V: computed once per job on first use. */
  private async prepareCrossAttention(): Promise<void> {
    const c = this.config;
    const D = c.dim;
    const L = c.textLen;
    // Everything here lives as long as the session: no workspace.
    const b = new GraphBuilder(c.eps, null);
    const w = (name: string) => this.weight(name);
    const context = new Float32Array(2 * L * D);
    [this.text.cond, this.text.uncond].forEach((t, half) => {
      const h = b.geluInPlace(b.linear(t, w('condition_embedder.text_embedder.linear_1.weight'), w('condition_embedder.text_embedder.linear_1.bias'), L, c.textDim, D));
      b.into('linear', [h, w('condition_embedder.text_embedder.linear_2.weight'), w('condition_embedder.text_embedder.linear_2.bias')], [L, D, D], context.subarray(half * L * D, (half + 1) * L * D));
    });
    const cross: { k: Float32Array; v: Float32Array }[] = [];
    for (let l = this.range.l0; l < this.range.l1; l++) {
      const p = `blocks.${l}.attn2`;
      const k = b.rmsInPlace(b.linear(context, w(`${p}.to_k.weight`), w(`${p}.to_k.bias`), 2 * L, D, D), w(`${p}.norm_k.weight`), 2 * L, D);
      cross.push({ k, v: b.linear(context, w(`${p}.to_v.weight`), w(`${p}.to_v.bias`), 2 * L, D, D) });
    }
    await this.backend.run(b.nodes);
    this.cross = cross;
  }

  private weight(name: string): Float32Array {
    const t = this.w.get(name);
    if (!t) throw new Error(`stage [${this.range.l0}, ${this.range.l1}) has no weight ${name}`);
    return t;
  }
}

interface Geometry {
  /** Tokens per latent frame. */
  hw: number;
  /** Window frames (prefix + own). */
  frames: number;
  /** Window tokens. */
  tokens: number;
}

/**
 * Scratch buffers of a stage, reused by every forward. A slot is named by its scope and its
 * position in the scope's op sequence; every layer emits the same sequence, so layer l+1 reuses
 * layer l's buffers and a stage holds one layer's intermediates, not all of them. A slot keeps
 * its largest size (windows with and without prefix differ).
 */
class Workspace {
  private readonly slots = new Map<string, Float32Array>();

  get(key: string, size: number): Float32Array {
    let buf = this.slots.get(key);
    if (!buf || buf.length < size) {
      buf = new Float32Array(size);
      this.slots.set(key, buf);
    }
    return buf.length === size ? buf : buf.subarray(0, size);
  }
}

/** Collects op nodes. Outputs come from the workspace unless asked for `fresh` (they escape the forward). */
class GraphBuilder {
  readonly nodes: OpNode[] = [];
  private scopeName = 'graph';
  private position = 0;

  constructor(
    private readonly eps: number,
    private readonly workspace: Workspace | null,
  ) {}

  /** Starts a scope whose slots are reused each time the scope starts again (e.g. every layer). */
  scope(name: string): void {
    this.scopeName = name;
    this.position = 0;
  }

  scratch(size: number): Float32Array {
    const key = `${this.scopeName}#${this.position++}`;
    return this.workspace ? this.workspace.get(key, size) : new Float32Array(size);
  }

  op(op: OpName, inputs: (Float32Array | null)[], params: number[]): Float32Array {
    return this.into(op, inputs, params, this.scratch(sizeOf(op, params)));
  }

  /** An output that outlives the forward (returned, or kept in the K/V cache). */
  fresh(op: OpName, inputs: (Float32Array | null)[], params: number[]): Float32Array {
    return this.into(op, inputs, params, new Float32Array(sizeOf(op, params)));
  }

  into(op: OpName, inputs: (Float32Array | null)[], params: number[], output: Float32Array): Float32Array {
    this.nodes.push({ op, inputs, output, params });
    return output;
  }

  linear(x: Float32Array, w: Float32Array, bias: Float32Array | null, rows: number, inF: number, outF: number): Float32Array {
    return this.op('linear', [x, w, bias], [rows, inF, outF]);
  }

  copy(x: Float32Array): Float32Array {
    return this.op('copy_rows', [x], [1, 1, x.length, 0, 1]);
  }

  silu(x: Float32Array): Float32Array {
    return this.into('silu', [x], [x.length], x);
  }

  geluInPlace(x: Float32Array): Float32Array {
    return this.into('gelu_tanh', [x], [x.length], x);
  }

  modulate(x: Float32Array, shift: Float32Array, scale: Float32Array, rows: number, dim: number): Float32Array {
    return this.into('modulate', [x, shift, scale], [rows, dim], x);
  }

  rmsInPlace(x: Float32Array, weight: Float32Array, rows: number, dim: number): Float32Array {
    return this.into('rms_norm', [x, weight], [rows, dim, this.eps], x);
  }

  ropeInPlace(x: Float32Array, params: number[]): Float32Array {
    return this.into('rope3d', [x], params, x);
  }

  gatedAddInPlace(x: Float32Array, y: Float32Array, gate: Float32Array | null, rows: number, dim: number): void {
    this.into('gated_add', [x, y, gate], [rows, dim], x);
  }
}

function sizeOf(op: OpName, params: number[]): number {
  return (OPS[op].outputSize as (p: readonly number[]) => number)(params);
}
