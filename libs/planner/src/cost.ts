/**
 * The cost model: FLOPs and bytes of one block-step per stage, of decoding a finished block,
 * hardware profiles, and the pipeline latency the ordering rule allows. Pure: the planner picks K
 * with it, emulated workers sleep for it, and the pipeline benchmark prints it beside what it
 * measures.
 */
import { SINGLE_STAGE_GROUP, groupWorkers, type PipelineLayout, type StageGroupShape } from './layout';
import type { Link, ProfileLinks } from './links';
import { partitionLayers } from './partition';
import { planJob, type JobSpec } from './spec';

/** The slice of a model config the cost model needs (a structural subset of ModelConfig). */
export interface ModelShape {
  readonly dim: number;
  readonly ffnDim: number;
  readonly layers: number;
  readonly textLen: number;
  readonly latentChannels: number;
  /** Attention heads: needed only for Ulysses layouts (heads are what its members split). */
  readonly heads?: number;
}

export interface WindowShape {
  /** Tokens per latent frame ((H/2) * (W/2)). */
  readonly tokensPerFrame: number;
  readonly prefixFrames: number;
  readonly ownFrames: number;
  /** Frames of cached successor K/V (C, or 0 for the newest block). */
  readonly successorFrames: number;
}

/** FLOPs of one block-step on one stage (classifier-free guidance doubles everything). */
export function stageFlops(m: ModelShape, layers: number, w: WindowShape, head: boolean, tail: boolean): number {
  const f = stageFlopParts(m, layers, w, head, tail);
  return f.tokenwise + f.selfAttention;
}

/**
 * stageFlops in two parts, as a Ulysses group splits them: `tokenwise` (projections, cross-attention,
 * feed-forward, patch embedding, output head) scales with the tokens a member holds;
 * `selfAttention` (scores and weighted values over every window and cached key) with its heads.
 */
export function stageFlopParts(m: ModelShape, layers: number, w: WindowShape, head: boolean, tail: boolean): { tokenwise: number; selfAttention: number } {
  const L = (w.prefixFrames + w.ownFrames) * w.tokensPerFrame;
  const keys = L + w.successorFrames * w.tokensPerFrame;
  const D = m.dim;
  const perLayer =
    2 * L * D * D * 4 + // q, k, v, out projections
    2 * L * D * D * 2 + // cross-attention q and out (text K/V are computed once per job)
    4 * L * m.textLen * D + // cross-attention scores and values
    2 * L * D * m.ffnDim * 2; // feed-forward
  let tokenwise = layers * perLayer;
  if (head) tokenwise += 2 * L * 4 * m.latentChannels * D;
  if (tail) tokenwise += 2 * w.ownFrames * w.tokensPerFrame * D * 4 * m.latentChannels;
  return { tokenwise: 2 * tokenwise, selfAttention: 2 * layers * 4 * L * keys * D };
}

/**
 * Rows at which a GEMM reaches half its sustained rate (an assumption, not a measurement: H100
 * GEMMs of a few thousand rows run near peak, a few hundred well below). A group member's shard
 * has fewer rows than the whole stage's; its compute is charged u(whole) / u(shard), with
 * u(r) = r / (r + GEMM_HALF_RATE_ROWS).
 */
export const GEMM_HALF_RATE_ROWS = 256;

/** One block-step on one member of a stage group: compute, the Ulysses exchanges, and why. */
export interface GroupStageCost {
  /** compute + exchange: the member's forward, exchanges on its critical path. */
  readonly seconds: number;
  readonly computeSeconds: number;
  /** Rank 0's scatter and gather of the shards, the all-to-alls (two per layer) and the tail's gather, over the group's link. */
  readonly exchangeSeconds: number;
  /** Bytes one member sends to the others per block-step. */
  readonly exchangeBytes: number;
  /** Slowest member's work against an even split (whole frames and heads do not always divide). */
  readonly imbalance: number;
  /** u(whole rows) / u(shard rows): the smaller GEMMs' lost rate. */
  readonly rateLoss: number;
}

/**
 * A stage's block-step on a group (docs/parallelism.md): Ulysses members hold ceil(frames / U)
 * frames of tokens for the token-wise work and ceil(heads / U) heads of self-attention over all
 * tokens; CFG parallel halves everything. Per layer, the forward all-to-all moves (U-1)/U of the
 * member's q, k, v and cached successor K/V, the backward one (U-1)/U of its attention output,
 * each over the group's link (the profile's NVLink: leasing keeps a group in one NVLink domain;
 * bytes / bandwidth + latency), not overlapped with compute (it sits
 * between the projections and the attention that needs it). Rank 0 fronts the stage: it takes the
 * whole hidden states from the previous stage, sends each member its shard and gathers theirs
 * back ((G-1)/G of the hidden states each way through its link; the head sends the window's
 * latents, which are small); the tail gathers the output head's rows at rank 0 instead.
 */
export function groupStageCost(m: ModelShape, layers: number, w: WindowShape, head: boolean, tail: boolean, group: StageGroupShape, profile: HardwareProfile): GroupStageCost {
  const U = group.ulysses;
  const halves = group.cfgParallel ? 1 : 2;
  const frames = w.prefixFrames + w.ownFrames;
  const heads = m.heads ?? (U === 1 ? 1 : NaN);
  if (!(heads >= U)) throw new RangeError(`a Ulysses layout of ${U} needs the model's head count (at least ${U})`);
  const tokenShare = Math.ceil(frames / U) / frames;
  const headShare = Math.ceil(heads / U) / heads;
  const parts = stageFlopParts(m, layers, w, head, tail);
  const share = (halves / 2) * (tokenShare * parts.tokenwise + headShare * parts.selfAttention);
  const even = (parts.tokenwise + parts.selfAttention) / groupWorkers(group);
  const rate = (rows: number) => rows / (rows + GEMM_HALF_RATE_ROWS);
  const wholeRows = 2 * frames * w.tokensPerFrame;
  const shardRows = halves * Math.ceil(frames / U) * w.tokensPerFrame;
  const rateLoss = rate(wholeRows) / rate(shardRows);
  const computeSeconds = (share * rateLoss) / profile.flopsPerSecond;
  const D = m.dim;
  const others = (U - 1) / U;
  const extraRows = halves * Math.ceil(w.successorFrames / U) * w.tokensPerFrame;
  const perLayerBytes = U > 1 ? (4 * shardRows + 2 * extraRows) * D * 4 * others : 0;
  const gatherBytes = tail && groupWorkers(group) > 1 ? halves * Math.ceil(w.ownFrames / U) * w.tokensPerFrame * 4 * m.latentChannels * 4 : 0;
  const G = groupWorkers(group);
  const hidden = 2 * frames * w.tokensPerFrame * D * 4 * ((G - 1) / G);
  const frontBytes = G > 1 ? (head ? 0 : hidden) + (tail ? 0 : hidden) : 0;
  const exchangeBytes = layers * perLayerBytes + gatherBytes + frontBytes;
  // A group's members sit in one NVLink domain (one node): leasing places them there.
  const link = (bytes: number) => linkSeconds(bytes, profile.links.nvlink);
  const exchangeSeconds = (U > 1 ? layers * 2 * link(perLayerBytes / 2) : 0) + (gatherBytes > 0 ? link(gatherBytes) : 0) + (frontBytes > 0 ? link(frontBytes) : 0);
  return { seconds: computeSeconds + exchangeSeconds, computeSeconds, exchangeSeconds, exchangeBytes, imbalance: share / even, rateLoss };
}

/** Bytes of the hidden states one stage hands the next: [2, tokens, dim]. */
export function hiddenBytes(m: ModelShape, w: WindowShape, bytesPerValue = 4): number {
  return 2 * (w.prefixFrames + w.ownFrames) * w.tokensPerFrame * m.dim * bytesPerValue;
}

/** Bytes of the guided velocity the tail returns to the head: [16, B, h, w]. */
export function velocityBytes(m: ModelShape, w: WindowShape, latentHeight: number, latentWidth: number): number {
  return m.latentChannels * w.ownFrames * latentHeight * latentWidth * 4;
}

/**
 * The VAE decoder's cost per latent frame (a structural subset of what libs/model
 * `vaeDecodeCost` gives): the video's first latent frame decodes to one video frame and skips
 * the temporal upsampling convolutions, every later one to four.
 */
export interface DecoderShape {
  /** FLOPs of decoding the first latent frame, and each later one. */
  readonly firstFrameFlops: number;
  readonly frameFlops: number;
  /** Bytes of the rgb24 video frames the decoding worker streams out for each. */
  readonly firstFrameBytes: number;
  readonly frameBytes: number;
}

/** `latentFrames` latent frames' worth of a per-frame figure, the first block holding the first frame. */
function perBlock(first: number, later: number, latentFrames: number, isFirst: boolean): number {
  return isFirst ? first + (latentFrames - 1) * later : latentFrames * later;
}

export interface HardwareProfile {
  readonly name: string;
  readonly description: string;
  /** Sustained FLOP/s of a stage's forward (dense bf16 at a realistic utilisation). */
  readonly flopsPerSecond: number;
  /** Link between neighbouring stages when where they run is not known (the profile's typical interconnect). */
  readonly linkBytesPerSecond: number;
  readonly linkLatencySeconds: number;
  /** Links by placement (links.ts `hopLink`): what a job's hops cross once its workers are known. */
  readonly links: ProfileLinks;
  /** Link from a worker to the controller (decoded frames go over it). */
  readonly controllerLinkBytesPerSecond: number;
}

/**
 * H100 SXM links by placement: one GPU (a device-to-device copy at about half of HBM3's
 * 3.35 TB/s), NVLink 4 (~450 GB/s per direction), one host without a shared NVLink domain
 * (through host memory over PCIe 5.0, ~25 GB/s after staging), and 100 Gb/s Ethernet (~12.5 GB/s,
 * RDMA-class latency) when a worker did not register its link speed.
 */
const H100_LINKS: ProfileLinks = {
  device: { bytesPerSecond: 1.5e12, latencySeconds: 5e-6 },
  nvlink: { bytesPerSecond: 450e9, latencySeconds: 5e-6 },
  host: { bytesPerSecond: 25e9, latencySeconds: 10e-6 },
  network: { bytesPerSecond: 12.5e9, latencySeconds: 20e-6 },
};

/** RTX 4090 links: no NVLink (a reported domain is PCIe peer-to-peer), PCIe 4.0 x16, 10 Gb/s Ethernet. */
const RTX4090_LINKS: ProfileLinks = {
  device: { bytesPerSecond: 0.5e12, latencySeconds: 5e-6 },
  nvlink: { bytesPerSecond: 25e9, latencySeconds: 10e-6 },
  host: { bytesPerSecond: 12e9, latencySeconds: 10e-6 },
  network: { bytesPerSecond: 1.25e9, latencySeconds: 50e-6 },
};

/**
 * Profiles for emulated compute and the planner. H100 SXM: ~989 TFLOP/s dense bf16, taken at 45%
 * utilisation (what video DiTs reach in practice); the two H100 profiles differ only in the link
 * assumed where the placement is not known (NVLink, or 100 Gb/s Ethernet between pods);
 * PCIe-attached RTX 4090 as in the DualParal paper. The controller is reached over the
 * data-centre network (100 Gb/s; 10 Gb/s for the 4090 box).
 */
export const HARDWARE_PROFILES: Readonly<Record<string, HardwareProfile>> = {
  'h100-nvlink': { name: 'h100-nvlink', description: 'H100 SXM, NVLink 4', flopsPerSecond: 0.45 * 989e12, linkBytesPerSecond: H100_LINKS.nvlink.bytesPerSecond, linkLatencySeconds: H100_LINKS.nvlink.latencySeconds, links: H100_LINKS, controllerLinkBytesPerSecond: 12.5e9 },
  'h100-100gbe': { name: 'h100-100gbe', description: 'H100 SXM, 100 Gb/s Ethernet between pods', flopsPerSecond: 0.45 * 989e12, linkBytesPerSecond: H100_LINKS.network.bytesPerSecond, linkLatencySeconds: H100_LINKS.network.latencySeconds, links: H100_LINKS, controllerLinkBytesPerSecond: 12.5e9 },
  'rtx4090-pcie': { name: 'rtx4090-pcie', description: 'RTX 4090, PCIe 4.0 x16', flopsPerSecond: 0.45 * 165e12, linkBytesPerSecond: 25e9, linkLatencySeconds: 10e-6, links: RTX4090_LINKS, controllerLinkBytesPerSecond: 1.25e9 },
};

/** The profile the controller plans with unless LONGSHOT_PLANNER_PROFILE says otherwise. */
export const DEFAULT_PLANNER_PROFILE = 'h100-100gbe';

export function getProfile(name: string): HardwareProfile {
  const p = HARDWARE_PROFILES[name];
  if (!p) throw new Error(`unknown hardware profile '${name}' (known: ${Object.keys(HARDWARE_PROFILES).join(', ')})`);
  return p;
}

export interface PipelineTiming {
  readonly blocks: number;
  readonly steps: number;
  /** Forward seconds of one block-step on each stage (index 0 is the head). */
  readonly stageSeconds: readonly number[];
  /** Seconds for a tensor to cross each hop (stage k to k+1; the last entry is tail to head). */
  readonly hopSeconds: readonly number[];
  /** Decoding each finished block on the tail stage; absent: decoding is not modelled. */
  readonly decode?: DecodeTiming;
}

/**
 * Decoding a finished block (docs/vae.md, "Where it runs"): the tail stage decodes it once its
 * last step is applied, in block order, between its block-steps of later blocks (one engine, so
 * the two queue on the same stage), then streams the frames to the controller over a link of
 * its own; the job ends when the last block's frames are there.
 */
export interface DecodeTiming {
  /** Seconds the tail decodes block 0 (it holds the video's first latent frame), and each later block. */
  readonly firstBlockSeconds: number;
  readonly blockSeconds: number;
  /** Seconds to stream block 0's frames to the controller, and each later block's. */
  readonly firstSendSeconds: number;
  readonly sendSeconds: number;
}

/**
 * Latency of a whole job under the strict ordering rule with FIFO stages and FIFO links: every
 * block-step, in the schedule's order, starts on the head when its prerequisites are applied and
 * the head is free, then queues at each link and stage. Exact for constant service times.
 */
export function predictPipelineSeconds(t: PipelineTiming): number {
  const K = t.stageSeconds.length;
  if (K < 1 || t.hopSeconds.length !== (K === 1 ? 0 : K)) throw new RangeError('need one stage time per stage and one hop time per hop (K hops for K > 1, none for K = 1)');
  const stageFree = new Array<number>(K).fill(0);
  const linkFree = new Array<number>(K).fill(0);
  const appliedAt = new Map<string, number>();
  let sendFree = 0;
  let end = 0;
  for (let i = 0; i < t.blocks + t.steps - 1; i++) {
    const newest = Math.min(i, t.blocks - 1);
    const oldest = Math.max(0, i - t.steps + 1);
    for (let b = newest; b >= oldest; b--) {
      let ready = 0;
      for (const p of [b, b - 1]) ready = Math.max(ready, appliedAt.get(`${p}:${i - 1}`) ?? 0);
      let at = Math.max(ready, stageFree[0]) + t.stageSeconds[0];
      stageFree[0] = at;
      for (let k = 1; k <= K; k++) {
        if (K === 1) break;
        const sent = Math.max(at, linkFree[k - 1]) + t.hopSeconds[k - 1];
        linkFree[k - 1] = sent;
        if (k === K) {
          at = sent;
          break;
        }
        at = Math.max(sent, stageFree[k]) + t.stageSeconds[k];
        stageFree[k] = at;
      }
      appliedAt.set(`${b}:${i}`, at);
      end = Math.max(end, at);
      if (t.decode && i - b === t.steps - 1) {
        // Finished: decoded on the tail (stage K - 1; the head when K = 1), FIFO with its block-steps.
        const d = t.decode;
        const decoded = Math.max(at, stageFree[K - 1]) + (b === 0 ? d.firstBlockSeconds : d.blockSeconds);
        stageFree[K - 1] = decoded;
        sendFree = Math.max(decoded, sendFree) + (b === 0 ? d.firstSendSeconds : d.sendSeconds);
        end = Math.max(end, sendFree);
      }
    }
  }
  return end;
}

/** Bytes each hop of a job on K stages carries per block-step: hidden states, and the velocity tail to head (none for K = 1). */
export function hopBytes(spec: JobSpec, model: ModelShape, stages: number): number[] {
  const plan = planJob(spec);
  const window = windowOf(spec);
  return stages === 1 ? [] : [...Array<number>(stages - 1).fill(hiddenBytes(model, window)), velocityBytes(model, window, plan.latentHeight, plan.latentWidth)];
}

/** Seconds for `bytes` to cross `link`. */
export const linkSeconds = (bytes: number, link: Link): number => bytes / link.bytesPerSecond + link.latencySeconds;

function windowOf(spec: JobSpec): WindowShape {
  const plan = planJob(spec);
  return { tokensPerFrame: (plan.latentHeight / 2) * (plan.latentWidth / 2), prefixFrames: spec.context, ownFrames: spec.block, successorFrames: spec.context };
}

/**
 * The timing of a job on K stages of `profile` (or a layout: K stages of groups), as
 * predictPipelineSeconds takes it: every stage's forward of an average window, the hops between
 * stages, and, given the decoder, the decoding of each finished block on the tail. `limits` caps
 * the blocks and steps simulated (the prediction walks every block-step). `links`: each hop's link
 * in ring order (`placementLinks` of the workers a job leased); without, every hop crosses the
 * profile's default link. A group's rank 0 takes and sends the whole hidden states on the hops
 * (groupStageCost charges its scatter and gather).
 */
export function jobTiming(spec: JobSpec, model: ModelShape, layout: number | PipelineLayout, profile: HardwareProfile, decoder?: DecoderShape, limits = { blocks: Infinity, steps: Infinity }, links?: readonly Link[]): PipelineTiming {
  const plan = planJob(spec);
  const window = windowOf(spec);
  const { stages, ...group } = typeof layout === 'number' ? { stages: layout, ...SINGLE_STAGE_GROUP } : layout;
  const grouped = groupWorkers(group) > 1;
  const stageSeconds = partitionLayers(model.layers, stages).map((r) =>
    grouped ? groupStageCost(model, r.l1 - r.l0, window, r.head, r.tail, group, profile).seconds : stageFlops(model, r.l1 - r.l0, window, r.head, r.tail) / profile.flopsPerSecond,
  );
  const bytes = hopBytes(spec, model, stages);
  if (links && links.length !== bytes.length) throw new RangeError(`need one link per hop: ${bytes.length} hops for ${stages} stages, got ${links.length} links`);
  const defaultLink = { bytesPerSecond: profile.linkBytesPerSecond, latencySeconds: profile.linkLatencySeconds };
  const hopSeconds = bytes.map((b, k) => linkSeconds(b, links?.[k] ?? defaultLink));
  const B = spec.block;
  const send = (bytes: number) => bytes / profile.controllerLinkBytesPerSecond;
  const decode = decoder && {
    firstBlockSeconds: perBlock(decoder.firstFrameFlops, decoder.frameFlops, B, true) / profile.flopsPerSecond,
    blockSeconds: perBlock(decoder.firstFrameFlops, decoder.frameFlops, B, false) / profile.flopsPerSecond,
    firstSendSeconds: send(perBlock(decoder.firstFrameBytes, decoder.frameBytes, B, true)),
    sendSeconds: send(perBlock(decoder.firstFrameBytes, decoder.frameBytes, B, false)),
  };
  return { blocks: Math.min(plan.blocks, limits.blocks), steps: Math.min(spec.steps, limits.steps), stageSeconds, hopSeconds, ...(decode ? { decode } : {}) };
}
