import { LINEAR_DOT_ROWS, OPS, type Backend, type OpName, type OpNode, type RunOptions } from '@longshot/engine';
import { headDim, weightSpecs, type ModelConfig, type StageRange } from './config';
import { SINGLE_LAYOUT, assembleSpan, evenSplit, groupSize, joinColumns, joinTokens, memberShard, memberSpan, shardFrames, splitColumns, splitTokens, validateLayout, type GroupMember, type MemberShard } from './parallel';
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
 * own frames of the last block processed, one [2, C*hw, D] pair per held layer. A member of a
 * Ulysses group holds only the cached frames inside its token shard, [halves, frames*hw, D], from
 * cached frame `firstFrame` on.
 */
export interface KvEntry {
  readonly iteration: number;
  readonly block: number;
  readonly k: Float32Array[];
  readonly v: Float32Array[];
  /** Group members only: the first of the C cached frames these rows hold (0 when absent). */
  firstFrame?: number;
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
  /** When the stage is one member of a stage group (docs/parallelism.md); absent: the whole stage. */
  readonly group?: GroupMember;
}

/**
 * A head stage's window [16, p+B, H, W] as the tensors it is read from, in place (the engine's
 * patchify takes both, so the window is never assembled): the block's own latents [16, B, H, W]
 * and, when the window has a prefix (p = prefixFrames > 0), the older block's latents
 * [16, B', H, W], whose last p frames come first. Null when p is 0. The caller leaves both
 * unchanged until the forward has resolved.
 */
export interface WindowSources {
  readonly latents: Float32Array;
  readonly prefix: Float32Array | null;
}

/** What a forward takes: a head's window (its sources, or assembled into one tensor) or hidden states. */
export type StageInput = Float32Array | WindowSources;

/**
 * Checks that `sources` give the window of `step` ([channels, p+B, H, W]) and returns how many
 * frames the prefix source holds (0 when the window has no prefix); a RangeError names what is
 * wrong otherwise.
 */
export function prefixSourceFrames(step: BlockStep, sources: WindowSources, channels: number): number {
  const frame = step.height * step.width;
  const p = step.prefixFrames;
  const where = `window sources of block ${step.block} step ${step.step}`;
  const own = channels * step.ownFrames * frame;
  if (sources.latents.length !== own) throw new RangeError(`${where}: window latents have ${sources.latents.length} values, expected [${channels}, ${step.ownFrames}, ${step.height}, ${step.width}] = ${own}`);
  if (p === 0) return 0;
  const held = sources.prefix ? sources.prefix.length / (channels * frame) : 0;
  if (!Number.isInteger(held) || held < p) {
    const has = sources.prefix ? `${sources.prefix.length} values` : 'none';
    throw new RangeError(`${where} do not hold ${p} prefix and ${step.ownFrames} own frames of ${step.height}x${step.width}: the window's prefix source has ${has}, expected [${channels}, L, ${step.height}, ${step.width}] with L >= ${p} prefix frames`);
  }
  return held;
}

/**
 * The window [16, p+B, H, W] as one tensor: assembled (a copy) from its sources, else the tensor
 * that already is the window (an assembled input, or the latents when p is 0). For what must
 * leave the process whole (a head group member's window on the wire).
 */
export function windowLatents(step: BlockStep, input: StageInput): Float32Array {
  if (input instanceof Float32Array) return input;
  if (step.prefixFrames === 0) return input.latents;
  const p = step.prefixFrames;
  const frame = step.height * step.width;
  const own = step.ownFrames * frame;
  const channels = Math.round(input.latents.length / own);
  // Values per channel of the prefix source: its frames times the frame size.
  const held = prefixSourceFrames(step, input, channels) * frame;
  const frames = p + step.ownFrames;
  const window = new Float32Array(channels * frames * frame);
  for (let c = 0; c < channels; c++) {
    window.set(input.prefix!.subarray((c + 1) * held - p * frame, (c + 1) * held), c * frames * frame);
    window.set(input.latents.subarray(c * own, (c + 1) * own), (c * frames + p) * frame);
  }
  return window;
}

/** How a forward may treat its input. */
export interface ForwardOptions {
  /**
   * The caller hands `input` over (a received tensor nothing reads afterwards): a stage that is
   * not the head computes its residual stream in it instead of in a copy, and a stage between
   * head and tail returns it as its output. Hidden states at 832x480 are about 100 MB, so this
   * saves a copy into fresh memory every block-step. Ignored by the head (its input is the
   * window or its sources, which the stage never writes).
   */
  consumeInput?: boolean;
  /**
   * Where an output of `elements` values that leaves the forward is written (the head's hidden
   * states, the tail's velocity), e.g. a buffer the caller reuses once it has sent the last one;
   * a new array without it. Every element is written.
   */
  allocateOutput?: (elements: number) => Float32Array;
}

/**
 * Layers [l0, l1) of the DiT, plus the patch embedding on the head and the output head on the
 * tail. `forward` builds the block-step's op graph and runs it on the backend in one call, off
 * the JS thread. Calls are served strictly in arrival order: the K/V cache depends on it.
 */
export class Stage {
  readonly config: ModelConfig;
  readonly range: StageRange;
  /**
   * Successor cache; replaced by every forward. Exposed so tests and resumes can set it. An
   * unsharded stage's own cache stays on a device backend (RunOptions.resident): read it on the
   * host only after the backend's releaseDeviceMemory().
   */
  kvCache: KvEntry | null = null;

  private readonly w: StageWeights;
  private readonly backend: Backend;
  private readonly text: TextEmbeddings;
  private readonly guidance: number;
  /** Cross-attention K and V of the text context, per held layer: constant for a job. */
  private cross: { k: Float32Array; v: Float32Array }[] | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly workspace = new Workspace();
  /**
   * The unsharded stage's K/V cache buffers, in two generations: a forward writes its cache into
   * the generation its successor cache is not in, so a resident cache is rewritten in place two
   * forwards later instead of piling up on the device.
   */
  private readonly kvBuffers = [new Workspace(), new Workspace()] as const;
  private kvGeneration = 0;
  private readonly group: GroupMember | null;
  /** Whether this stage is one of several members sharing the work (exchanges split the graph). */
  private readonly sharded: boolean;
  private readonly member: MemberShard;

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
    this.group = o.group ?? null;
    if (this.group) validateLayout(this.group.layout, c.heads);
    this.sharded = this.group !== null && groupSize(this.group.layout) > 1;
    this.member = this.group ? memberShard(this.group.layout, this.group.rank, c.heads) : { rank: 0, shard: 0, halves: [0, 1], heads: [0, c.heads] };
  }

  /**
   * Head: `input` is the window's latents [16, p+B, H, W], or its sources (read in place). Other
   * stages: hidden states [2, (p+B)*hw, D]. Tail returns the guided velocity of the own frames
   * [16, B, H, W]; other stages return hidden states for the next stage.
   */
  forward(step: BlockStep, input: StageInput, options: ForwardOptions = {}): Promise<Float32Array> {
    // Validate synchronously so a bad step is rejected before it can disturb the FIFO order.
    const geometry = this.checkStep(step, input);
    const hidden = !this.range.head && input instanceof Float32Array ? input : null;
    const run = this.queue.then(() => this.compute(step, hidden, geometry, options));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Sizes of the hidden states entering or leaving a non-head/non-tail side of this stage (this member's shard in a group). */
  hiddenSize(step: BlockStep): number {
    const U = this.group?.layout.ulysses ?? 1;
    const [f0, f1] = shardFrames(step.prefixFrames + step.ownFrames, U, this.member.shard);
    return this.member.halves.length * (f1 - f0) * (step.height / 2) * (step.width / 2) * this.config.dim;
  }

  private checkStep(s: BlockStep, input: StageInput): Geometry {
    for (const f of ['iteration', 'block', 'step', 'prefixFrames', 'ownFrames', 'contextFrames', 'height', 'width'] as const) {
      if (!Number.isInteger(s[f]) || s[f] < 0) throw new RangeError(`block-step ${f} must be a non-negative integer, got ${s[f]}`);
    }
    if (!Number.isFinite(s.timestep)) throw new RangeError(`block-step timestep must be finite, got ${s.timestep}`);
    if (s.ownFrames < 1) throw new RangeError('block-step ownFrames must be at least 1');
    if (s.contextFrames > s.ownFrames) throw new RangeError(`contextFrames ${s.contextFrames} exceeds ownFrames ${s.ownFrames}`);
    if (s.height < 2 || s.width < 2 || s.height % 2 || s.width % 2) throw new RangeError(`latent grid ${s.height}x${s.width} must be even (patch 2x2)`);
    const hw = (s.height / 2) * (s.width / 2);
    const frames = s.prefixFrames + s.ownFrames;
    const [f0, f1] = shardFrames(frames, this.group?.layout.ulysses ?? 1, this.member.shard);
    const batch = this.member.halves.length;
    const g: Geometry = { hw, frames, tokens: frames * hw, batch, f0, f1, localTokens: (f1 - f0) * hw, rows: batch * (f1 - f0) * hw, window: null };
    const where = `stage [${this.range.l0}, ${this.range.l1}) block ${s.block} step ${s.step}`;
    const C = this.config.latentChannels;
    const frame = s.height * s.width;
    if (!(input instanceof Float32Array)) {
      if (!this.range.head) throw new TypeError(`${where}: only a head takes window sources; this stage takes hidden states`);
      const prefixLength = prefixSourceFrames(s, input, C);
      g.window = { latents: input.latents, prefix: s.prefixFrames > 0 ? input.prefix : null, ownFrames: s.ownFrames, prefixFrames: s.prefixFrames, prefixLength };
      return g;
    }
    const expected = this.range.head ? C * frames * frame : g.rows * this.config.dim;
    if (input.length !== expected) {
      const what = this.range.head ? `window latents [${C}, ${frames}, ${s.height}, ${s.width}]` : `hidden states [${batch}, ${g.localTokens}, ${this.config.dim}]`;
      throw new RangeError(`${where}: input has ${input.length} values, expected ${what} = ${expected}`);
    }
    if (this.range.head) g.window = { latents: input, prefix: null, ownFrames: frames, prefixFrames: 0, prefixLength: 0 };
    return g;
  }

  /** `hidden`: a non-head stage's input (checkStep took it); a head reads `g.window`. */
  private async compute(s: BlockStep, hidden: Float32Array | null, g: Geometry, options: ForwardOptions): Promise<Float32Array> {
    if (!this.cross) await this.prepareCrossAttention();
    const c = this.config;
    const D = c.dim;
    const hd = headDim(c);
    const m = this.member;
    const { batch: Bt, f0, f1, rows: M } = g;
    const localFrames = f1 - f0;
    const b = new GraphBuilder(c.eps, this.workspace, this.sharded);
    const w = (name: string) => this.weight(name);

    // Conditioning: every stage derives it from the timestep, so only hidden states travel.
    const temb = b.linear(b.silu(b.linear(b.op('timestep_embedding', [Float32Array.of(s.timestep)], [1, c.freqDim]), w('condition_embedder.time_embedder.linear_1.weight'), w('condition_embedder.time_embedder.linear_1.bias'), 1, c.freqDim, D)), w('condition_embedder.time_embedder.linear_2.weight'), w('condition_embedder.time_embedder.linear_2.bias'), 1, D, D);
    const e0 = b.linear(b.silu(b.copy(temb)), w('condition_embedder.time_proj.weight'), w('condition_embedder.time_proj.bias'), 1, D, 6 * D);

    let x: Float32Array;
    b.scope('head');
    if (this.range.head) {
      // The residual stream: the output of a head that is not also the tail, else scratch.
      x = this.range.tail ? b.scratch(M * D) : output(options, M * D);
      // The window is read where its latents are (no assembled copy). The host writes them between
      // forwards (the queue reuses their memory), so a device backend must not serve them from a copy it kept.
      const win = g.window!;
      const patches = b.op('patchify', [b.hostInput(win.latents), win.prefix && b.hostInput(win.prefix)], [c.latentChannels, win.ownFrames, s.height, s.width, win.prefixFrames, win.prefixLength]);
      const local = this.sharded ? b.op('copy_rows', [patches], [1, g.tokens, 4 * c.latentChannels, f0 * g.hw, g.localTokens]) : patches;
      // Both guidance halves start from the same embedded window.
      for (let i = 0; i < Bt; i++) {
        b.linearInto(local, w('patch_embedding.weight'), w('patch_embedding.bias'), g.localTokens, g.tokens, 4 * c.latentChannels, D, x.subarray(i * g.localTokens * D, (i + 1) * g.localTokens * D));
      }
    } else if (options.consumeInput) {
      // The host wrote it since any earlier run read it (a reused receive buffer): a device
      // backend must not serve it from a copy it kept.
      x = b.hostInput(hidden!);
    } else {
      x = hidden!.slice();
    }

    const successor = this.successorFor(s, g);
    const own: KvEntry = { iteration: s.iteration, block: s.block, k: [], v: [] };
    // The own frames [p, p + C) this member caches for the older neighbour, as window frames.
    const cached = this.localSpan(g, s.prefixFrames, s.prefixFrames + s.contextFrames);
    if (this.sharded) own.firstFrame = cached.a - s.prefixFrames;
    const grid = (frames: number, offset: number) => [Bt, frames, s.height / 2, s.width / 2, c.heads, hd, offset, c.ropeTheta];

    for (let l = this.range.l0; l < this.range.l1; l++) {
      const p = `blocks.${l}`;
      const i = l - this.range.l0;
      b.scope('layer');
      const mod6 = b.op('gated_add', [w(`${p}.scale_shift_table`), e0, null], [1, 6 * D]);
      const mod = (k: number) => mod6.subarray(k * D, (k + 1) * D);
      const lin = (t: Float32Array, name: string, inF: number, outF: number) => b.rowLinear(t, w(`${name}.weight`), w(`${name}.bias`), M, 2 * g.tokens, inF, outF);

      // Self-attention over the window, plus the newer neighbour's cached first C frames.
      const h = b.modulate(b.op('layer_norm', [x, null, null], [M, D, c.eps]), mod(0), mod(1), M, D);
      const q = b.ropeInPlace(b.rmsInPlace(lin(h, `${p}.attn1.to_q`, D, D), w(`${p}.attn1.norm_q.weight`), M, D), grid(localFrames, f0));
      const kRaw = lin(h, `${p}.attn1.to_k`, D, D);
      const k = b.ropeInPlace(b.op('rms_norm', [kRaw, w(`${p}.attn1.norm_k.weight`)], [M, D, c.eps]), grid(localFrames, f0));
      const v = lin(h, `${p}.attn1.to_v`, D, D);
      let extraK: Float32Array | null = null;
      let extraV: Float32Array | null = null;
      if (successor && successor.frames > 0) {
        const rows = Bt * successor.frames * g.hw;
        extraK = b.ropeInPlace(b.op('rms_norm', [successor.entry.k[i], w(`${p}.attn1.norm_k.weight`)], [rows, D, c.eps]), grid(successor.frames, g.frames + successor.first));
        extraV = successor.entry.v[i];
      }
      const heads = this.sharded ? await this.tokensToHeads(s, b, g, [q, k, v], successor ? [extraK, extraV] : null) : { qkv: [q, k, v], extra: [extraK, extraV], extraTokens: successor ? successor.frames * g.hw : 0 };
      const localHeads = m.heads[1] - m.heads[0];
      const attnHeads = b.op('attention', [...heads.qkv, ...heads.extra], [Bt, g.tokens, g.tokens, heads.extraTokens, localHeads, hd]);
      const attn = this.sharded ? await this.headsToTokens(s, b, g, attnHeads) : attnHeads;
      b.gatedAddInPlace(x, lin(attn, `${p}.attn1.to_out.0`, D, D), mod(2), M, D);
      const cacheRows = [Bt, g.localTokens, D, cached.offset, cached.tokens];
      if (this.sharded) {
        // Members exchange their caches' rows on the host: fresh arrays, never resident.
        own.k.push(b.fresh('copy_rows', [kRaw], cacheRows));
        own.v.push(b.fresh('copy_rows', [v], cacheRows));
      } else {
        const into = this.kvBuffers[1 - this.kvGeneration];
        own.k.push(b.into('copy_rows', [kRaw], cacheRows, into.get(`k${i}`, Bt * cached.tokens * D)));
        own.v.push(b.into('copy_rows', [v], cacheRows, into.get(`v${i}`, Bt * cached.tokens * D)));
      }

      // Cross-attention to the text (no gate, affine LayerNorm), on the local tokens.
      const hc = b.op('layer_norm', [x, w(`${p}.norm2.weight`), w(`${p}.norm2.bias`)], [M, D, c.eps]);
      const qc = b.rmsInPlace(lin(hc, `${p}.attn2.to_q`, D, D), w(`${p}.attn2.norm_q.weight`), M, D);
      const cross = this.crossFor(i);
      const ac = b.op('attention', [qc, cross.k, cross.v, null, null], [Bt, g.localTokens, c.textLen, 0, c.heads, hd]);
      b.gatedAddInPlace(x, lin(ac, `${p}.attn2.to_out.0`, D, D), null, M, D);

      // Feed-forward.
      const hf = b.modulate(b.op('layer_norm', [x, null, null], [M, D, c.eps]), mod(3), mod(4), M, D);
      const f = b.geluInPlace(lin(hf, `${p}.ffn.net.0.proj`, D, c.ffnDim));
      b.gatedAddInPlace(x, lin(f, `${p}.ffn.net.2`, c.ffnDim, D), mod(5), M, D);
    }

    if (!this.range.tail) {
      await this.backend.run(b.take(), b.hints('last', this.sharded ? [] : [...own.k, ...own.v]));
      this.keepCache(own);
      return x;
    }

    // Output head on the own frames only, then guidance.
    b.scope('tail');
    const ownTokens = s.ownFrames * g.hw;
    const { offset: outOffset, tokens: outTokens } = this.localSpan(g, s.prefixFrames, g.frames);
    const xo = b.op('copy_rows', [x], [Bt, g.localTokens, D, outOffset, outTokens]);
    const table = w('scale_shift_table');
    const shift = b.op('gated_add', [table.subarray(0, D), temb, null], [1, D]);
    const scale = b.op('gated_add', [table.subarray(D, 2 * D), temb, null], [1, D]);
    const ho = b.modulate(b.op('layer_norm', [xo, null, null], [Bt * outTokens, D, c.eps]), shift, scale, Bt * outTokens, D);
    const patchDim = 4 * c.latentChannels;
    let out = b.rowLinear(ho, w('proj_out.weight'), w('proj_out.bias'), Bt * outTokens, 2 * ownTokens, D, patchDim);
    if (this.sharded) {
      await this.backend.run(b.take(), b.hints('more'));
      const parts = await this.group!.collective.gather(out, s);
      this.keepCache(own);
      if (!parts) return new Float32Array(0);
      out = assembleSpan(parts, this.group!.layout, c.heads, { windowFrames: g.frames, from: s.prefixFrames, to: g.frames, hw: g.hw, width: patchDim });
    }
    const latentSize = c.latentChannels * s.ownFrames * s.height * s.width;
    const both = b.scratch(2 * latentSize);
    for (const half of [0, 1]) {
      b.into('unpatchify', [out.subarray(half * ownTokens * patchDim, (half + 1) * ownTokens * patchDim)], [c.latentChannels, s.ownFrames, s.height, s.width], both.subarray(half * latentSize, (half + 1) * latentSize));
    }
    const velocity = b.into('cfg_combine', [both], [latentSize, this.guidance], output(options, latentSize));
    await this.backend.run(b.take(), b.hints('last', this.sharded ? [] : [...own.k, ...own.v]));
    if (!this.sharded) this.keepCache(own);
    return velocity;
  }

  /**
   * Ends the stage once the forwards already asked for are done: a device backend frees the K/V
   * cache it kept (RunOptions.resident) without copying it back. The stage must not run again.
   */
  async release(): Promise<void> {
    if (this.sharded) return; // a group member keeps nothing on the device (and may wait on its group)
    await this.queue;
    this.backend.forget?.([...this.kvBuffers[0].buffers(), ...this.kvBuffers[1].buffers()]);
    this.kvCache = null;
  }

  /** After a forward: its cache becomes the successor cache (a stage without layers keeps none). */
  private keepCache(own: KvEntry): void {
    if (this.range.l1 === this.range.l0) return;
    this.kvCache = own;
    if (!this.sharded) this.kvGeneration = 1 - this.kvGeneration;
  }

  /**
   * Window frames [from, to) inside this member's shard: the first such frame `a` (clamped into the
   * span, so `a - from` is where its rows start in the whole span), and their token offset and
   * count in the shard.
   */
  private localSpan(g: Geometry, from: number, to: number): { a: number; offset: number; tokens: number } {
    const { a, z } = memberSpan(this.group?.layout ?? SINGLE_LAYOUT, this.member.rank, this.config.heads, { windowFrames: g.frames, from, to, hw: g.hw, width: 0 });
    return { a, offset: (Math.min(Math.max(a, g.f0), g.f1) - g.f0) * g.hw, tokens: (z - a) * g.hw };
  }

  /** The successor cache entry this block-step uses, and which of the C cached frames this member holds. */
  private successorFor(s: BlockStep, g: Geometry): { entry: KvEntry; first: number; frames: number } | null {
    const e = this.kvCache;
    if (!(s.contextFrames > 0 && e && e.iteration === s.iteration && e.block === s.block + 1)) return null;
    const layers = this.range.l1 - this.range.l0;
    const rowSize = g.batch * g.hw * this.config.dim;
    const first = e.firstFrame ?? 0;
    const frames = layers > 0 && e.k.length > 0 ? e.k[0].length / rowSize : this.sharded ? 0 : s.contextFrames;
    const fits = this.sharded ? Number.isInteger(frames) && first + frames <= s.contextFrames : first === 0 && frames === s.contextFrames;
    const bad = !fits || e.k.length !== layers || e.v.length !== layers || [...e.k, ...e.v].some((t) => t.length !== frames * rowSize);
    if (bad) {
      const want = this.sharded ? `at most ${s.contextFrames} frames of [${g.batch}, frames*${g.hw}, ${this.config.dim}]` : `[2, ${s.contextFrames * g.hw}, ${this.config.dim}]`;
      throw new RangeError(`stage [${this.range.l0}, ${this.range.l1}): the K/V cache of block ${e.block} has the wrong shape: expected ${layers} layers of ${want}`);
    }
    return { entry: e, first, frames };
  }

  /** Cross-attention K and V of layer i for the guidance halves this member holds. */
  private crossFor(i: number): { k: Float32Array; v: Float32Array } {
    const all = this.cross![i];
    if (this.member.halves.length === 2) return all;
    const n = this.config.textLen * this.config.dim;
    const h = this.member.halves[0];
    return { k: all.k.subarray(h * n, (h + 1) * n), v: all.v.subarray(h * n, (h + 1) * n) };
  }

  /**
   * Ulysses, forward: this member's tokens x all heads of q, k, v (and its cached successor rows)
   * become all tokens x this member's heads. One all-to-all; per destination the parts are packed
   * q | k | v | extraK | extraV.
   */
  private async tokensToHeads(step: BlockStep, b: GraphBuilder, g: Geometry, qkv: Float32Array[], extra: (Float32Array | null)[] | null): Promise<{ qkv: Float32Array[]; extra: (Float32Array | null)[]; extraTokens: number }> {
    await this.backend.run(b.take(), b.hints('more'));
    const hd = headDim(this.config);
    const U = this.group!.layout.ulysses;
    const cols = Array.from({ length: U }, (_, j) => evenSplit(this.config.heads, U, j)).map(([h0, h1]) => [h0 * hd, h1 * hd] as const);
    const extraRows = extra && extra[0] ? extra[0].length / this.config.dim : 0;
    const pieces = [...qkv.map((t) => splitColumns(t, g.rows, this.config.dim, cols)), ...(extra ? extra.map((t) => (t ? splitColumns(t, extraRows, this.config.dim, cols) : cols.map(() => new Float32Array(0)))) : [])];
    const send = cols.map((_, j) => concat(pieces.map((p) => p[j])));
    const recv = await this.group!.collective.allToAll(send, step);
    const width = (this.member.heads[1] - this.member.heads[0]) * hd;
    const split = recv.map((r, j) => {
      const [a, z] = shardFrames(g.frames, U, j);
      const n = g.batch * (z - a) * g.hw * width;
      const e = (r.length - 3 * n) / 2;
      return [0, 1, 2].map((t) => r.subarray(t * n, (t + 1) * n)).concat(extra ? [r.subarray(3 * n, 3 * n + e), r.subarray(3 * n + e)] : []);
    });
    const joined = (t: number) => {
      const parts = split.map((p) => p[t]);
      const total = parts.reduce((a, p) => a + p.length, 0);
      return joinTokens(parts, g.batch, width, b.hostScratch(total));
    };
    const extraJoined = extra ? [joined(3), joined(4)] : [null, null];
    const extraTokens = extraJoined[0] ? extraJoined[0].length / Math.max(1, g.batch * width) : 0;
    return { qkv: [joined(0), joined(1), joined(2)], extra: extraTokens > 0 ? extraJoined : [null, null], extraTokens };
  }

  /** Ulysses, back: all tokens x this member's heads of the attention output become this member's tokens x all heads. */
  private async headsToTokens(step: BlockStep, b: GraphBuilder, g: Geometry, attn: Float32Array): Promise<Float32Array> {
    await this.backend.run(b.take(), b.hints('more'));
    const U = this.group!.layout.ulysses;
    const ranges = Array.from({ length: U }, (_, j) => shardFrames(g.frames, U, j)).map(([a, z]) => [a * g.hw, z * g.hw] as const);
    const recv = await this.group!.collective.allToAll(splitTokens(attn, g.batch, g.tokens, ranges), step);
    return joinColumns(recv, g.rows, b.hostScratch(g.rows * this.config.dim));
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
  /** Guidance halves this stage (member) holds: 2, or 1 under CFG parallel. */
  batch: number;
  /** Window frames [f0, f1) of this member's token shard (the whole window when not sharded). */
  f0: number;
  f1: number;
  /** Tokens of the shard per half. */
  localTokens: number;
  /** Rows of the shard's hidden states: batch * localTokens. */
  rows: number;
  /** A head's window: what patchify reads (an assembled window is its own frames with no prefix). */
  window: { latents: Float32Array; prefix: Float32Array | null; ownFrames: number; prefixFrames: number; prefixLength: number } | null;
}

/** An output buffer of `elements` values: the caller's (ForwardOptions.allocateOutput) or a new one. */
function output(options: ForwardOptions, elements: number): Float32Array {
  const out = options.allocateOutput?.(elements) ?? new Float32Array(elements);
  if (out.length !== elements) throw new RangeError(`allocateOutput gave ${out.length} values, the forward writes ${elements}`);
  return out;
}

/**
 * Scratch buffers of a stage, reused by every forward. A slot is named by its scope and its
 * position in the scope's op sequence; every layer emits the same sequence, so layer l+1 reuses
 * layer l's buffers and a stage holds one layer's intermediates, not all of them. A slot keeps
 * its largest size (windows with and without prefix differ).
 */
class Workspace {
  private readonly slots = new Map<string, Float32Array>();

  /** Every buffer it holds. */
  buffers(): Float32Array[] {
    return [...this.slots.values()];
  }

  get(key: string, size: number): Float32Array {
    let buf = this.slots.get(key);
    if (!buf || buf.length < size) {
      buf = new Float32Array(size);
      this.slots.set(key, buf);
    }
    return buf.length === size ? buf : buf.subarray(0, size);
  }
}

/**
 * Collects op nodes. Outputs come from the workspace unless asked for `fresh` (they escape the
 * forward). Every run of the forward names the workspace buffers the host filled (`rewritten`),
 * and the last one also every workspace buffer used (`discard`): nothing reads them after the
 * forward, and each is written before it is read in the next, so a device backend need not copy
 * them back. The last run also names the K/V cache of an unsharded stage (`resident`): only the
 * stage's next forward reads it.
 */
class GraphBuilder {
  readonly nodes: OpNode[] = [];
  private readonly scratchUsed = new Set<Float32Array>();
  private readonly hostFilled = new Set<Float32Array>();
  private scopeName = 'graph';
  private position = 0;

  constructor(
    private readonly eps: number,
    private readonly workspace: Workspace | null,
    /** Whether row counts may be a shard of what the unsharded stage uses (see rowLinear). */
    private readonly sharded = false,
  ) {}

  /** The nodes built so far, to run now; building goes on with an empty list (at an exchange). */
  take(): OpNode[] {
    return this.nodes.splice(0, this.nodes.length);
  }

  /** Starts a scope whose slots are reused each time the scope starts again (e.g. every layer). */
  scope(name: string): void {
    this.scopeName = name;
    this.position = 0;
  }

  scratch(size: number): Float32Array {
    const key = `${this.scopeName}#${this.position++}`;
    if (!this.workspace) return new Float32Array(size);
    const buf = this.workspace.get(key, size);
    this.scratchUsed.add(buf);
    return buf;
  }

  /** A caller's buffer that the host filled before this forward: named `rewritten` in every run. */
  hostInput(buf: Float32Array): Float32Array {
    this.hostFilled.add(buf);
    return buf;
  }

  /** Scratch that the host fills (an exchange's result) rather than a node. */
  hostScratch(size: number): Float32Array {
    const buf = this.scratch(size);
    this.hostFilled.add(buf);
    return buf;
  }

  /**
   * The run options of a run of the forward: its `last` run (with the outputs that may stay on the
   * device), or one `more` follows.
   */
  hints(run: 'last' | 'more', resident: Float32Array[] = []): RunOptions {
    const rewritten = [...this.hostFilled];
    return run === 'last' ? { rewritten, discard: [...this.scratchUsed], resident } : { rewritten };
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

  /**
   * A linear over token rows whose result must not depend on how many rows the call holds.
   * `fullRows`: the rows the unsharded stage passes. The CPU kernel computes every row
   * independently of the others, except that a call of at most LINEAR_DOT_ROWS rows takes a
   * dot-product path with another summation order: a shard that small of a call that large is
   * padded to LINEAR_DOT_ROWS + 1 rows, so it takes the GEMM path the unsharded call takes.
   */
  rowLinear(x: Float32Array, w: Float32Array, bias: Float32Array | null, rows: number, fullRows: number, inF: number, outF: number): Float32Array {
    return this.linearInto(x, w, bias, rows, fullRows, inF, outF, this.scratch(rows * outF));
  }

  linearInto(x: Float32Array, w: Float32Array, bias: Float32Array | null, rows: number, fullRows: number, inF: number, outF: number, output: Float32Array): Float32Array {
    if (!(this.sharded && rows > 0 && rows <= LINEAR_DOT_ROWS && fullRows > LINEAR_DOT_ROWS)) return this.into('linear', [x, w, bias], [rows, inF, outF], output);
    const padded = LINEAR_DOT_ROWS + 1;
    const xp = this.scratch(padded * inF);
    xp.fill(0, rows * inF);
    this.into('copy_rows', [x], [1, rows, inF, 0, rows], xp.subarray(0, rows * inF));
    const yp = this.op('linear', [xp, w, bias], [padded, inF, outF]);
    return this.into('copy_rows', [yp], [1, padded, outF, 0, rows], output);
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

function concat(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
