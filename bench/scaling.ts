/**
 * Where the data plane binds and where compute does, for pipelines longer than this machine can
 * run: the latency model (libs/planner cost.ts, a discrete-event walk of the DualParal schedule
 * with FIFO stages and links) for K = 1, 8, 16, 32 stages of wan2.1-t2v-14b (40 layers) at
 * 832x480 and 1280x720, over NVLink and 100 Gb/s Ethernet profiles. Per row: the predicted
 * seconds, the efficiency against K = 1 on the same profile, the slowest stage's and the slowest
 * hop's seconds per block-step, and what binds the pipeline's throughput:
 *   - `data plane`: a hop takes longer than the slowest stage (bandwidth binds);
 *   - `round trip`: a block-step's trip through every stage and hop is longer than the work the
 *     queue holds (min(blocks, steps) block-steps at the slowest stage's pace), so stages idle
 *     waiting for their inputs; the hops' latency and transfer time add to that trip;
 *   - `compute`: otherwise, the slowest stage (layers divide unevenly: `balance` is the ideal
 *     stage time, K = 1's over K, against the slowest stage's).
 * That is the steady state; the same job with every hop free (compute alone) beside each shows what
 * the links cost in all, including the fill and drain of each job (the first and last iterations
 * hold few blocks, so there the round trip, hops included, sets the pace). Part of
 * `npm run bench -- pipeline`.
 */
import { getConfig } from '@longshot/model';
import { candidateLayouts, describeLayout, getProfile, groupStageCost, jobTiming, layoutWorkers, normalizeSpec, partitionLayers, pickLayout, predictPipelineSeconds, type JobSpec, type PipelineLayout } from '@longshot/planner';
import { MIN_GAIN } from '../apps/controller/src/planning';

export interface ScalingRow {
  profile: string;
  size: string;
  stages: number;
  /** Predicted job seconds, and with every hop free (compute alone). */
  seconds: number;
  computeOnlySeconds: number;
  /** Speedup over K = 1 on the same profile and size, divided by K. */
  efficiency: number;
  /** Per block-step: the slowest stage's forward and the slowest hop's transfer. */
  stageSeconds: number;
  hopSeconds: number;
  /** One block-step through every stage and hop, and the work the queue holds ahead of it. */
  roundTripSeconds: number;
  queuedSeconds: number;
  balance: number;
  /** seconds / computeOnlySeconds - 1: what the hops add to the job. */
  linkCost: number;
  binds: 'compute' | 'data plane' | 'round trip';
}

const MODEL = 'wan2.1-t2v-14b';
const PROFILES = ['h100-nvlink', 'h100-100gbe'];
const SIZES: [number, number][] = [[832, 480], [1280, 720]];
const STAGES = [1, 8, 16, 32];
/** A minute at 16 fps: 241 latent frames, 60 blocks of 4 (about 2K for K = 32), 50 steps as Wan samples. */
const FRAMES = 4 * (60 * 4 - 1) + 1;
const STEPS = 50;

const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);

const spec = (width: number, height: number, stages: number): JobSpec =>
  normalizeSpec({ prompt: 'a minute-long take', model: MODEL, width, height, frames: FRAMES, block: 4, context: 2, steps: STEPS, stages, seed: 0 });

export function scalingTable(): { model: string; frames: number; steps: number; rows: ScalingRow[] } {
  const model = getConfig(MODEL);
  const rows: ScalingRow[] = [];
  for (const name of PROFILES) {
    const profile = getProfile(name);
    for (const [w, h] of SIZES) {
      let base = { seconds: 0, stageSeconds: 0 };
      for (const K of STAGES) {
        const t = jobTiming(spec(w, h, K), model, K, profile);
        const seconds = predictPipelineSeconds(t);
        const computeOnlySeconds = predictPipelineSeconds({ ...t, hopSeconds: t.hopSeconds.map(() => 0) });
        const stageSeconds = Math.max(...t.stageSeconds);
        if (K === 1) base = { seconds, stageSeconds };
        const hopSeconds = Math.max(0, ...t.hopSeconds);
        const roundTripSeconds = sum(t.stageSeconds) + sum(t.hopSeconds);
        const queuedSeconds = Math.min(t.blocks, t.steps) * stageSeconds;
        const binds = hopSeconds > stageSeconds ? 'data plane' : roundTripSeconds > queuedSeconds ? 'round trip' : 'compute';
        rows.push({ profile: name, size: `${w}x${h}`, stages: K, seconds, computeOnlySeconds, efficiency: base.seconds / seconds / K, stageSeconds, hopSeconds, roundTripSeconds, queuedSeconds, balance: base.stageSeconds / K / stageSeconds, linkCost: seconds / computeOnlySeconds - 1, binds });
      }
    }
  }
  return { model: MODEL, frames: FRAMES, steps: STEPS, rows };
}

export function printScaling(table: ReturnType<typeof scalingTable>): void {
  console.log(`\nlatency model, ${table.model}, ${table.frames} frames, ${table.steps} steps (seconds per job; per block-step: slowest stage / slowest hop; binds: the steady state)`);
  for (const r of table.rows) {
    console.log(`  ${r.profile.padEnd(12)} ${r.size.padEnd(9)} K=${String(r.stages).padEnd(3)} ${r.seconds.toFixed(0).padStart(6)} s (compute alone ${r.computeOnlySeconds.toFixed(0)} s: links +${(r.linkCost * 100).toFixed(1)}%), efficiency ${r.efficiency.toFixed(3)}, stage ${(r.stageSeconds * 1e3).toFixed(1)} ms (balance ${r.balance.toFixed(2)}) / hop ${(r.hopSeconds * 1e3).toFixed(1)} ms, round trip ${r.roundTripSeconds.toFixed(2)} s / queued ${r.queuedSeconds.toFixed(2)} s: ${r.binds} binds`);
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
  for (const name of PROFILES) {
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
