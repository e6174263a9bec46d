/**
 * Where the data plane binds and where compute does, for pipelines longer than this machine can
 * run: the latency model (libs/planner cost.ts, a discrete-event walk of the DualParal schedule
 * with FIFO stages and links) for K = 1, 8, 16, 32 stages of wan2.1-t2v-14b (40 layers) at
 * 832x480 and 1280x720 on H100s, each hop priced by where its two stages run (planner links.ts,
 * the same `placementLinks` the driver reports in a job's result) for three placements:
 *   - `nvlink`: every stage in one NVLink domain (an HGX node up to 8 GPUs, a multi-node NVLink
 *     rack beyond);
 *   - `100gbe`: one GPU per host, 100 Gb/s Ethernet between them;
 *   - `mixed`: nodes of 8 GPUs, NVLink inside a node, 100 Gb/s Ethernet between nodes (the hops
 *     from one node to the next and the tail's back to the head cross the network);
 *   - `staged`: one GPU per host, every tensor staged through host memory over a data plane that
 *     moves 2.1 GB/s, the native TCP path as measured on the development machine
 *     (docs/dataplane.md "Measured"): a measured per-hop cost in place of the wire's.
 * Per row: the predicted seconds, the efficiency against K = 1, the slowest stage's compute and the
 * slowest hop's transfer per block-step, the link bandwidth below which that hop would bind, and
 * what binds the pipeline's throughput:
 *   - `data plane`: a hop takes longer than the slowest stage (bandwidth binds);
 *   - `round trip`: a block-step's trip through every stage and hop is longer than the work the
 *     queue holds (min(blocks, steps) block-steps at the slowest stage's pace), so stages idle
 *     waiting for their inputs; the hops' latency and transfer time add to that trip;
 *   - `compute`: otherwise, the slowest stage (layers divide unevenly: `balance` is the ideal
 *     stage time, K = 1's over K, against the slowest stage's).
 * That is the steady state; the same job with every hop free (compute alone) beside each shows what
 * the links cost in all, including the fill and drain of each job (the first and last iterations
 * hold few blocks, so there the round trip, hops included, sets the pace).
 * `npm run bench -- scaling [--json]`, and the end of `npm run bench -- pipeline`.
 */
import { getConfig } from '@longshot/model';
import { candidateLayouts, describeLayout, describeLinks, getProfile, groupStageCost, hopBytes, jobTiming, layoutWorkers, normalizeSpec, partitionLayers, pickLayout, placementLinks, predictPipelineSeconds, type JobSpec, type PipelineLayout, type StagePlacement } from '@longshot/planner';
import { MIN_GAIN } from '../apps/controller/src/planning';

export interface ScalingRow {
  placement: string;
  size: string;
  stages: number;
  /** How many hops cross each kind of link, e.g. "14 nvlink + 2 network". */
  links: string;
  /** Predicted job seconds, and with every hop free (compute alone). */
  seconds: number;
  computeOnlySeconds: number;
  /** Speedup over K = 1 at the same size, divided by K. */
  efficiency: number;
  /** Per block-step: the slowest stage's forward and the slowest hop's transfer. */
  stageSeconds: number;
  hopSeconds: number;
  /** hopSeconds / stageSeconds: the data plane binds above 1. */
  hopToStage: number;
  /** Link bandwidth (bytes per second) at which a hidden-state hop would take as long as the slowest stage. */
  bindingBytesPerSecond: number;
  /** One block-step through every stage and hop, and the work the queue holds ahead of it. */
  roundTripSeconds: number;
  queuedSeconds: number;
  balance: number;
  /** seconds / computeOnlySeconds - 1: what the hops add to the job. */
  linkCost: number;
  binds: 'compute' | 'data plane' | 'round trip';
}

const MODEL = 'wan2.1-t2v-14b';
/** H100 SXM compute and links (the two H100 profiles differ only in their default link, unused here). */
const PROFILE = 'h100-100gbe';
const SIZES: [number, number][] = [[832, 480], [1280, 720]];
const STAGES = [1, 8, 16, 32];
const GPUS_PER_NODE = 8;
const NIC_BYTES_PER_SECOND = 100e9 / 8;
/** The native TCP data plane measured on a quiet development machine (docs/dataplane.md, 2026-11-30). */
const MEASURED_TCP_BYTES_PER_SECOND = 2.1e9;
/** A minute at 16 fps: 241 latent frames, 60 blocks of 4 (about 2K for K = 32), 50 steps as Wan samples. */
const FRAMES = 4 * (60 * 4 - 1) + 1;
const STEPS = 50;

const node = (k: number) => `node-${Math.floor(k / GPUS_PER_NODE)}`;
const gpu = (k: number) => `GPU-${k}`;

/** Where stage k runs in each placement. */
export const PLACEMENTS: Readonly<Record<string, { description: string; stage: (k: number) => StagePlacement }>> = {
  nvlink: { description: 'every stage in one NVLink domain', stage: (k) => ({ host: node(k), nvlinkDomain: 'rack', gpu: gpu(k), nicBytesPerSecond: NIC_BYTES_PER_SECOND }) },
  '100gbe': { description: 'one GPU per host, 100 Gb/s Ethernet between hosts', stage: (k) => ({ host: `host-${k}`, nvlinkDomain: null, gpu: gpu(k), nicBytesPerSecond: NIC_BYTES_PER_SECOND }) },
  mixed: { description: `${GPUS_PER_NODE} GPUs per NVLink node, 100 Gb/s Ethernet between nodes`, stage: (k) => ({ host: node(k), nvlinkDomain: node(k), gpu: gpu(k), nicBytesPerSecond: NIC_BYTES_PER_SECOND }) },
  staged: {
    description: `one GPU per host, tensors through host memory at the measured native TCP data plane's ${MEASURED_TCP_BYTES_PER_SECOND / 1e9} GB/s`,
    stage: (k) => ({ host: `host-${k}`, nvlinkDomain: null, gpu: gpu(k), nicBytesPerSecond: MEASURED_TCP_BYTES_PER_SECOND }),
  },
};

const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);

const spec = (width: number, height: number, stages: number): JobSpec =>
  normalizeSpec({ prompt: 'a minute-long take', model: MODEL, width, height, frames: FRAMES, block: 4, context: 2, steps: STEPS, stages, seed: 0 });

export function scalingTable(): { model: string; profile: string; frames: number; steps: number; placements: Record<string, string>; rows: ScalingRow[] } {
  const model = getConfig(MODEL);
  const profile = getProfile(PROFILE);
  const rows: ScalingRow[] = [];
  for (const [name, placement] of Object.entries(PLACEMENTS)) {
    for (const [w, h] of SIZES) {
      let base = { seconds: 0, stageSeconds: 0 };
      for (const K of STAGES) {
        const s = spec(w, h, K);
        const links = placementLinks(Array.from({ length: K }, (_, k) => placement.stage(k)), profile.links);
        const t = jobTiming(s, model, K, profile, undefined, undefined, links);
        const seconds = predictPipelineSeconds(t);
        const computeOnlySeconds = predictPipelineSeconds({ ...t, hopSeconds: t.hopSeconds.map(() => 0) });
        const stageSeconds = Math.max(...t.stageSeconds);
        if (K === 1) base = { seconds, stageSeconds };
        const hopSeconds = Math.max(0, ...t.hopSeconds);
        const roundTripSeconds = sum(t.stageSeconds) + sum(t.hopSeconds);
        const queuedSeconds = Math.min(t.blocks, t.steps) * stageSeconds;
        const binds = hopSeconds > stageSeconds ? 'data plane' : roundTripSeconds > queuedSeconds ? 'round trip' : 'compute';
        rows.push({
          placement: name,
          size: `${w}x${h}`,
          stages: K,
          links: K === 1 ? 'none' : describeLinks(links),
          seconds,
          computeOnlySeconds,
          efficiency: base.seconds / seconds / K,
          stageSeconds,
          hopSeconds,
          hopToStage: hopSeconds / stageSeconds,
          bindingBytesPerSecond: K === 1 ? 0 : Math.max(...hopBytes(s, model, K)) / stageSeconds,
          roundTripSeconds,
          queuedSeconds,
          balance: base.stageSeconds / K / stageSeconds,
          linkCost: seconds / computeOnlySeconds - 1,
          binds,
        });
      }
    }
  }
  const placements = Object.fromEntries(Object.entries(PLACEMENTS).map(([name, p]) => [name, p.description]));
  return { model: MODEL, profile: profile.description, frames: FRAMES, steps: STEPS, placements, rows };
}

export function printScaling(table: ReturnType<typeof scalingTable>): void {
  console.log(`\nlatency model, ${table.model} on ${table.profile}, ${table.frames} frames, ${table.steps} steps (seconds per job; per block-step: slowest stage / slowest hop; binds: the steady state)`);
  for (const [name, description] of Object.entries(table.placements)) console.log(`  ${name}: ${description}`);
  for (const r of table.rows) {
    console.log(
      `  ${r.placement.padEnd(7)} ${r.size.padEnd(9)} K=${String(r.stages).padEnd(3)} ${r.seconds.toFixed(0).padStart(6)} s (compute alone ${r.computeOnlySeconds.toFixed(0)} s: links +${(r.linkCost * 100).toFixed(1)}%), efficiency ${r.efficiency.toFixed(3)}, ` +
        `stage ${(r.stageSeconds * 1e3).toFixed(1)} ms (balance ${r.balance.toFixed(2)}) / hop ${(r.hopSeconds * 1e3).toFixed(1)} ms (${r.links}; binds below ${(r.bindingBytesPerSecond / 1e9).toFixed(1)} GB/s), ` +
        `round trip ${r.roundTripSeconds.toFixed(2)} s / queued ${r.queuedSeconds.toFixed(2)} s: ${r.binds} binds`,
    );
  }
}

export interface LayoutRow {
  profile: string;
  /** GPUs available. */
  gpus: number;
  /** What the planner picks (fewest workers within MIN_GAIN of the best), and the fastest layout. */
  pick: string;
  pickWorkers: number;
  seconds: number;
  fastest: string;
  fastestSeconds: number;
  /** The best pipeline of single-worker stages that fits (what Longshot ran before stage groups). */
  stagesOnly: string;
  stagesOnlySeconds: number;
  /** Speedup of the pick over one GPU, divided by the GPUs it uses. */
  efficiency: number;
  /** The pick's slowest stage per block-step: member compute, Ulysses exchange, and the split's losses. */
  stageMs: number;
  exchangeMs: number;
  imbalance: number;
  rateLoss: number;
  hopMs: number;
}

const LAYOUT_GPUS = [16, 24, 32, 48, 64];
/** Every hop over NVLink, or hops between stages over 100 Gb/s Ethernet (the profiles' default links); groups inside NVLink in both. */
const LAYOUT_PROFILES = ['h100-nvlink', 'h100-100gbe'];
const LAYOUT_SIZE: [number, number] = [1280, 720];

/**
 * Which layout the planner picks for 16 to 64 GPUs at 720p (the same job as scalingTable), over
 * NVLink and over 100 Gb/s Ethernet between stages (stage groups inside one node's NVLink in both):
 * every candidate K x U (x CFG) that fits, predicted by the latency model.
 */
export function layoutTable(): { model: string; size: string; frames: number; steps: number; minGain: number; rows: LayoutRow[] } {
  const model = getConfig(MODEL);
  const [w, h] = LAYOUT_SIZE;
  const rows: LayoutRow[] = [];
  for (const name of LAYOUT_PROFILES) {
    const profile = getProfile(name);
    const cache = new Map<string, number>();
    const seconds = (l: PipelineLayout): number => {
      const key = describeLayout(l);
      let s = cache.get(key);
      if (s === undefined) {
        s = predictPipelineSeconds(jobTiming(spec(w, h, l.stages), model, l, profile));
        cache.set(key, s);
      }
      return s;
    };
    const one = seconds({ stages: 1, ulysses: 1, cfgParallel: false });
    for (const gpus of LAYOUT_GPUS) {
      const candidates = candidateLayouts(gpus, model.layers, model.heads);
      const { layout, seconds: picked } = pickLayout(candidates, seconds, MIN_GAIN);
      const fastest = candidates.reduce((a, b) => (seconds(b) < seconds(a) ? b : a));
      const stagesOnly = candidates.filter((l) => l.ulysses === 1 && !l.cfgParallel).reduce((a, b) => (seconds(b) < seconds(a) ? b : a));
      const t = jobTiming(spec(w, h, layout.stages), model, layout, profile);
      const slowest = t.stageSeconds.indexOf(Math.max(...t.stageSeconds));
      const range = partitionLayers(model.layers, layout.stages)[slowest];
      const s = spec(w, h, layout.stages);
      const window = { tokensPerFrame: (h / 16) * (w / 16), prefixFrames: s.context, ownFrames: s.block, successorFrames: s.context };
      const cost = groupStageCost(model, range.l1 - range.l0, window, range.head, range.tail, layout, profile);
      rows.push({
        profile: name,
        gpus,
        pick: describeLayout(layout),
        pickWorkers: layoutWorkers(layout),
        seconds: picked,
        fastest: describeLayout(fastest),
        fastestSeconds: seconds(fastest),
        stagesOnly: describeLayout(stagesOnly),
        stagesOnlySeconds: seconds(stagesOnly),
        efficiency: one / picked / layoutWorkers(layout),
        stageMs: cost.computeSeconds * 1e3,
        exchangeMs: cost.exchangeSeconds * 1e3,
        imbalance: cost.imbalance,
        rateLoss: cost.rateLoss,
        hopMs: Math.max(0, ...t.hopSeconds) * 1e3,
      });
    }
  }
  return { model: MODEL, size: `${w}x${h}`, frames: FRAMES, steps: STEPS, minGain: MIN_GAIN, rows };
}

export function printLayouts(table: ReturnType<typeof layoutTable>): void {
  console.log(`\nlayouts the planner picks, ${table.model} at ${table.size}, ${table.frames} frames, ${table.steps} steps (more workers only for >= ${table.minGain * 100}% less time)`);
  for (const r of table.rows) {
    console.log(`  ${r.profile.padEnd(12)} ${String(r.gpus).padStart(2)} GPUs: ${r.pick.padEnd(16)} (${r.pickWorkers} used) ${r.seconds.toFixed(0).padStart(5)} s, efficiency ${r.efficiency.toFixed(3)}; fastest ${r.fastest} ${r.fastestSeconds.toFixed(0)} s; stages only ${r.stagesOnly} ${r.stagesOnlySeconds.toFixed(0)} s; slowest stage ${r.stageMs.toFixed(1)} ms compute + ${r.exchangeMs.toFixed(1)} ms exchange (imbalance ${r.imbalance.toFixed(2)}, rate loss ${r.rateLoss.toFixed(3)}), hop ${r.hopMs.toFixed(1)} ms`);
  }
}

/** `npm run bench -- scaling`: the tables alone (no processes, a few seconds): placements of K stages, then layouts of stage groups. */
export async function scalingBench(opts: { json: boolean }): Promise<object> {
  const table = scalingTable();
  const layouts = layoutTable();
  if (!opts.json) {
    printScaling(table);
    printLayouts(layouts);
  }
  return { ...table, layouts };
}
