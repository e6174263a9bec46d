/**
 * The cost model: FLOPs and bytes of one block-step per stage, of decoding a finished block,
 * hardware profiles, and the pipeline latency the ordering rule allows. Pure: the planner picks K
 * with it, emulated workers sleep for it, and the pipeline benchmark prints it beside what it
 * measures.
 */
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
  const L = (w.prefixFrames + w.ownFrames) * w.tokensPerFrame;
  const keys = L + w.successorFrames * w.tokensPerFrame;
  const D = m.dim;
  const perLayer =
    2 * L * D * D * 4 + // q, k, v, out projections
    4 * L * keys * D + // scores and weighted values
    2 * L * D * D * 2 + // cross-attention q and out (text K/V are computed once per job)
    4 * L * m.textLen * D + // cross-attention scores and values
    2 * L * D * m.ffnDim * 2; // feed-forward
  let flops = layers * perLayer;
  if (head) flops += 2 * L * 4 * m.latentChannels * D;
  if (tail) flops += 2 * w.ownFrames * w.tokensPerFrame * D * 4 * m.latentChannels;
  return 2 * flops;
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
 * The timing of a job on K stages of `profile`, as predictPipelineSeconds takes it: every stage's
 * forward of an average window, the hops between stages, and, given the decoder, the decoding of
 * each finished block on the tail. `limits` caps the blocks and steps simulated (the prediction
 * walks every block-step). `links`: each hop's link in ring order (`placementLinks` of the
 * workers a job leased); without, every hop crosses the profile's default link.
 */
export function jobTiming(spec: JobSpec, model: ModelShape, stages: number, profile: HardwareProfile, decoder?: DecoderShape, limits = { blocks: Infinity, steps: Infinity }, links?: readonly Link[]): PipelineTiming {
  const plan = planJob(spec);
  const window = windowOf(spec);
  const stageSeconds = partitionLayers(model.layers, stages).map((r) => stageFlops(model, r.l1 - r.l0, window, r.head, r.tail) / profile.flopsPerSecond);
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
