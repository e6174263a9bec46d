import type { BlockStep } from './stage';

/**
 * Parallelism inside a stage (docs/parallelism.md): a stage may be a group of workers that share
 * its layers. Two ways to split one block-step's work, combinable:
 *
 * - **Ulysses** (sequence parallel, U members): the window's tokens are cut into U contiguous
 *   shards of whole latent frames. Norms, linear layers, cross-attention and the FFN run on the
 *   local token shard; for self-attention an all-to-all turns [token shard, all heads] into [all
 *   tokens, head shard] for q, k, v and the successor's cached K/V, and a second one turns the
 *   attention output back.
 * - **CFG parallel** (2 halves): the conditional and unconditional guidance halves run on
 *   different members; the tail gathers both and combines them.
 *
 * A group has `ulysses * (cfgParallel ? 2 : 1)` members; member `rank` holds guidance half
 * `floor(rank / ulysses)` (both halves without CFG parallel) and token/head shard `rank % ulysses`.
 * Everything here is pure: which rows and heads a member owns, and how the exchanges pack and
 * unpack them. The transport is a `Collective`.
 */

/** How one stage's work is split among its group's members. */
export interface StageLayout {
  /** Sequence-parallel degree U (1: no Ulysses). */
  readonly ulysses: number;
  /** Whether the two guidance halves run on different members. */
  readonly cfgParallel: boolean;
}

export const SINGLE_LAYOUT: StageLayout = { ulysses: 1, cfgParallel: false };

/** Members of a stage group. */
export function groupSize(layout: StageLayout): number {
  return layout.ulysses * (layout.cfgParallel ? 2 : 1);
}

/** Throws with the field at fault when a layout cannot run a model of `heads` heads. */
export function validateLayout(layout: StageLayout, heads: number): StageLayout {
  if (!Number.isInteger(layout.ulysses) || layout.ulysses < 1) throw new RangeError(`layout ulysses must be a positive integer, got ${layout.ulysses}`);
  if (layout.ulysses > heads) throw new RangeError(`layout ulysses ${layout.ulysses} exceeds the model's ${heads} attention heads (each member needs at least one head)`);
  if (typeof layout.cfgParallel !== 'boolean') throw new RangeError('layout cfgParallel must be a boolean');
  return layout;
}

/** `[start, end)` of part `i` when `n` items are cut into `parts` contiguous, nearly equal parts (larger parts first). */
export function evenSplit(n: number, parts: number, i: number): readonly [number, number] {
  const base = Math.floor(n / parts);
  const extra = n % parts;
  const start = i * base + Math.min(i, extra);
  return [start, start + base + (i < extra ? 1 : 0)];
}

/** What one member of a group owns. */
export interface MemberShard {
  readonly rank: number;
  /** Position among the U members of its guidance half. */
  readonly shard: number;
  /** Guidance halves held, in batch order: [0, 1] without CFG parallel, else [0] or [1]. */
  readonly halves: readonly number[];
  /** Attention heads [h0, h1) for self-attention. */
  readonly heads: readonly [number, number];
}

export function memberShard(layout: StageLayout, rank: number, heads: number): MemberShard {
  const size = groupSize(layout);
  if (!Number.isInteger(rank) || rank < 0 || rank >= size) throw new RangeError(`member rank must be an integer in 0..${size - 1}, got ${rank}`);
  const shard = rank % layout.ulysses;
  return {
    rank,
    shard,
    halves: layout.cfgParallel ? [Math.floor(rank / layout.ulysses)] : [0, 1],
    heads: evenSplit(heads, layout.ulysses, shard),
  };
}

/** Latent frames [f0, f1) of the window that shard `shard` of U holds. */
export function shardFrames(windowFrames: number, ulysses: number, shard: number): readonly [number, number] {
  return evenSplit(windowFrames, ulysses, shard);
}

/**
 * The exchange between the members of a stage group. A member calls the same sequence of
 * collectives as every other member of its group (the forward is the same program on every
 * member), so calls are matched by order.
 */
export interface Collective {
  /**
   * All-to-all among the U members of this member's guidance half: `send[j]` goes to shard j
   * (send[own shard] stays here); resolves to what each shard j sent to this member. `step`: the
   * block-step whose forward exchanges (the wire carries it).
   */
  allToAll(send: Float32Array[], step: BlockStep): Promise<Float32Array[]>;
  /** Every member's `part` at rank 0, in rank order; other members get null. */
  gather(part: Float32Array, step: BlockStep): Promise<Float32Array[] | null>;
}

/** Where a stage sits in its group. */
export interface GroupMember {
  readonly layout: StageLayout;
  readonly rank: number;
  readonly collective: Collective;
}

/**
 * An in-process group: `members()` returns one `Collective` per rank, exchanging by reference.
 * Calls rendezvous by sequence number, so members may run concurrently in any interleaving.
 */
export class LocalCollectiveGroup {
  private readonly rounds = new Map<string, { parts: (Float32Array[] | Float32Array | undefined)[]; arrived: number; waiters: (() => void)[] }>();

  constructor(readonly layout: StageLayout) {}

  members(): Collective[] {
    const size = groupSize(this.layout);
    return Array.from({ length: size }, (_, rank) => {
      let seq = 0;
      const U = this.layout.ulysses;
      const peers = Array.from({ length: U }, (_, j) => Math.floor(rank / U) * U + j);
      return {
        allToAll: async (send: Float32Array[]) => {
          if (send.length !== U) throw new RangeError(`allToAll needs one part per shard (${U}), got ${send.length}`);
          const parts = await this.meet(`a2a:${Math.floor(rank / U)}:${seq++}`, U, rank % U, send);
          return peers.map((_, j) => (parts[j] as Float32Array[])[rank % U]);
        },
        gather: async (part: Float32Array) => {
          const parts = await this.meet(`gather:${seq++}`, size, rank, part);
          return rank === 0 ? (parts as Float32Array[]) : null;
        },
      };
    });
  }

  private meet<T extends Float32Array[] | Float32Array>(key: string, count: number, slot: number, value: T): Promise<(Float32Array[] | Float32Array | undefined)[]> {
    let round = this.rounds.get(key);
    if (!round) {
      round = { parts: new Array(count).fill(undefined), arrived: 0, waiters: [] };
      this.rounds.set(key, round);
    }
    const r = round;
    r.parts[slot] = value;
    r.arrived++;
    return new Promise((resolve) => {
      r.waiters.push(() => resolve(r.parts));
      if (r.arrived === count) {
        this.rounds.delete(key);
        for (const w of r.waiters) w();
      }
    });
  }
}

/**
 * A [batch, rows, width] tensor cut into column ranges: part j holds columns
 * `[cols[j][0], cols[j][1])` of every row, packed. Used to send a member's tokens' head ranges to
 * the shards that own those heads.
 */
export function splitColumns(x: Float32Array, rows: number, width: number, cols: readonly (readonly [number, number])[]): Float32Array[] {
  return cols.map(([c0, c1]) => {
    const w = c1 - c0;
    const out = new Float32Array(rows * w);
    for (let r = 0; r < rows; r++) out.set(x.subarray(r * width + c0, r * width + c1), r * w);
    return out;
  });
}

/** The inverse of `splitColumns`: parts side by side as columns of one [rows, width] tensor. */
export function joinColumns(parts: readonly Float32Array[], rows: number, out: Float32Array): Float32Array {
  if (rows === 0) return out;
  const width = out.length / rows;
  let c0 = 0;
  for (const p of parts) {
    const w = p.length / rows;
    for (let r = 0; r < rows; r++) out.set(p.subarray(r * w, (r + 1) * w), r * width + c0);
    c0 += w;
  }
  if (c0 !== width) throw new RangeError(`joinColumns: parts hold ${c0} columns, the output ${width}`);
  return out;
}

/**
 * A [batch, tokens, width] tensor cut along tokens: part j holds tokens `[ranges[j][0],
 * ranges[j][1])` of every batch entry, packed [batch, count, width].
 */
export function splitTokens(x: Float32Array, batch: number, tokens: number, ranges: readonly (readonly [number, number])[]): Float32Array[] {
  const width = batch * tokens > 0 ? x.length / (batch * tokens) : 0;
  return ranges.map(([t0, t1]) => {
    const n = t1 - t0;
    const out = new Float32Array(batch * n * width);
    for (let b = 0; b < batch; b++) out.set(x.subarray((b * tokens + t0) * width, (b * tokens + t1) * width), b * n * width);
    return out;
  });
}

/** The inverse of `splitTokens`: parts [batch, n_j, width] concatenated along tokens into `out` [batch, sum n_j, width]. */
export function joinTokens(parts: readonly Float32Array[], batch: number, width: number, out: Float32Array): Float32Array {
  const tokens = out.length / Math.max(1, batch * width);
  let t0 = 0;
  for (const p of parts) {
    const n = p.length / Math.max(1, batch * width);
    for (let b = 0; b < batch; b++) out.set(p.subarray(b * n * width, (b + 1) * n * width), (b * tokens + t0) * width);
    t0 += n;
  }
  if (t0 !== tokens) throw new RangeError(`joinTokens: parts hold ${t0} tokens, the output ${tokens}`);
  return out;
}

/**
 * Rows of window frames [span[0], span[1]) as [2, n*hw, width] (both halves): hidden states
 * (the whole window), the successor cache (the own frames [p, p+C)), the output head's rows (the
 * own frames). A member holds the frames of the span inside its token shard, for its halves.
 */
export interface FrameSpan {
  readonly windowFrames: number;
  readonly from: number;
  readonly to: number;
  /** Tokens per frame. */
  readonly hw: number;
  /** Values per token. */
  readonly width: number;
}

/** Frames [a, z) of the span member `rank` holds (a == z: none), and its halves. */
export function memberSpan(layout: StageLayout, rank: number, heads: number, span: FrameSpan): { a: number; z: number; halves: readonly number[] } {
  const m = memberShard(layout, rank, heads);
  const [f0, f1] = shardFrames(span.windowFrames, layout.ulysses, m.shard);
  const a = Math.min(Math.max(span.from, f0), span.to);
  return { a, z: Math.max(a, Math.min(span.to, f1)), halves: m.halves };
}

/** Member `rank`'s part of full span rows [2, (to-from)*hw, width]: [its halves, its frames' tokens, width]. */
export function shardSpan(full: Float32Array, layout: StageLayout, rank: number, heads: number, span: FrameSpan): Float32Array {
  const { a, z, halves } = memberSpan(layout, rank, heads, span);
  const rowsPerHalf = (span.to - span.from) * span.hw * span.width;
  const n = (z - a) * span.hw * span.width;
  const offset = (a - span.from) * span.hw * span.width;
  const out = new Float32Array(halves.length * n);
  halves.forEach((h, i) => out.set(full.subarray(h * rowsPerHalf + offset, h * rowsPerHalf + offset + n), i * n));
  return out;
}

/** The inverse of `shardSpan` over every member's part, in rank order. */
export function assembleSpan(parts: readonly Float32Array[], layout: StageLayout, heads: number, span: FrameSpan): Float32Array {
  const rowsPerHalf = (span.to - span.from) * span.hw * span.width;
  const full = new Float32Array(2 * rowsPerHalf);
  parts.forEach((part, rank) => {
    const { a, z, halves } = memberSpan(layout, rank, heads, span);
    const n = (z - a) * span.hw * span.width;
    if (part.length !== halves.length * n) throw new RangeError(`member ${rank} sent ${part.length} values, expected ${halves.length * n}`);
    halves.forEach((h, i) => full.set(part.subarray(i * n, (i + 1) * n), h * rowsPerHalf + (a - span.from) * span.hw * span.width));
  });
  return full;
}
