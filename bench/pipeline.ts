/**
 * Pipeline benchmark: a long job (blocks >= 4K) of wan2.1-t2v-1.3b at 480p on K = 1, 2, 4, 8
 * emulated-compute workers, then layouts of stage groups (K=4 x U=2, K=2 x CFG; real processes,
 * real gRPC streams, real Redis; each forward sleeps for the modelled time of an H100 stage or
 * group member and each hop for the modelled NVLink transfer). What is
 * measured is what Longshot adds: scheduling, ordering, framing, bubbles. Beside each measured
 * time stands the latency model's prediction for the same schedule.
 */
import { Redis } from 'ioredis';
import { getConfig } from '@longshot/model';
import { runDistributedJob } from '@longshot/pipeline';
import { describeLayout, getProfile, jobTiming, layoutWorkers, normalizeSpec, planJob, predictPipelineSeconds, type JobSpec, type PipelineLayout } from '@longshot/planner';
import { LocalCluster } from '../apps/cli/src/local-cluster';
import { layoutTable, printLayouts, printScaling, scalingTable } from './scaling';

const PROFILE = 'h100-nvlink';
/** Modelled seconds are not sped up: the head's own work (windows, sampler, checkpoints) keeps its real cost. */
const TIME_SCALE = 1;
/**
 * Tensors on the wire are 1000x smaller by default: loopback copies must not stand in for NVLink.
 * LONGSHOT_BENCH_PAYLOAD_SCALE=1 sends real-size hidden states (about 100 MB per hop at 832x480)
 * through the data plane instead.
 */
const PAYLOAD_SCALE = Number(process.env.LONGSHOT_BENCH_PAYLOAD_SCALE ?? 1000);
if (!Number.isInteger(PAYLOAD_SCALE) || PAYLOAD_SCALE < 1) throw new Error('LONGSHOT_BENCH_PAYLOAD_SCALE: a positive integer (1 = real-size tensors)');
/** Runs per K (LONGSHOT_BENCH_REPEAT); each row reports the median run's figures and every run's seconds. */
const REPEAT = Number(process.env.LONGSHOT_BENCH_REPEAT ?? 1);
if (!Number.isInteger(REPEAT) || REPEAT < 1) throw new Error('LONGSHOT_BENCH_REPEAT: a positive integer');
/** K values to run (LONGSHOT_BENCH_STAGES=1,8 for a quick look); K = 1 is always the baseline. */
const STAGES = (process.env.LONGSHOT_BENCH_STAGES ?? '1,2,4,8').split(',').map(Number);
if (STAGES[0] !== 1 || STAGES.some((k) => !Number.isInteger(k) || k < 1 || k > 8)) throw new Error('LONGSHOT_BENCH_STAGES: a comma list of stage counts in 1..8 starting with 1');
/**
 * Layouts of stage groups to run after the K rows (docs/parallelism.md), LONGSHOT_BENCH_LAYOUTS:
 * a comma list of K x U (x cfg), e.g. `4x2,2xcfg,2x2xcfg`; empty for none. At most 8 workers.
 */
const LAYOUTS = (process.env.LONGSHOT_BENCH_LAYOUTS ?? '4x2,2xcfg').split(',').filter(Boolean).map(parseLayout);

function parseLayout(text: string): PipelineLayout {
  const m = /^(\d+)(?:x(\d+))?(xcfg)?$/.exec(text.trim());
  const layout = m ? { stages: Number(m[1]), ulysses: Number(m[2] ?? 1), cfgParallel: m[3] !== undefined } : null;
  if (!layout || layout.stages < 1 || layout.ulysses < 1 || layoutWorkers(layout) > 8) throw new Error(`LONGSHOT_BENCH_LAYOUTS: '${text}' is not K x U (x cfg) of at most 8 workers, e.g. 4x2 or 2xcfg`);
  return layout;
}

export interface PipelineRow {
  stages: number;
  /** "K=4 x U=2": the stages' groups (docs/parallelism.md); "K=4" for single-worker stages. */
  layout: string;
  workers: number;
  /** Seconds of every run (LONGSHOT_BENCH_REPEAT); `seconds` is their median. */
  runs: number[];
  /** The head worker's host CPU per block-step (its /metrics before and after the run): JS thread, kernels, data plane. */
  headCpuPerBlockStep: { jsMs: number; kernelsMs: number; dataPlaneMs: number; otherMs: number };
  /** Host CPU of every worker the job used, all parts, per block-step: what the two cores of this machine must carry. */
  clusterCpuPerBlockStepMs: number;
  /** CPU Redis used per block-step (its checkpoint and append-only-file work), beside the workers'. */
  redisCpuPerBlockStepMs: number;
  /** The median run's set-up: leasing, the text embeddings stored, every session open (DistributedResult attempts[0].openSeconds). */
  openSeconds: number;
  seconds: number;
  speedup: number;
  /** Speedup over K = 1 divided by the workers used. */
  efficiency: number;
  /** Seconds the latency model predicts for this schedule (same time scale). */
  predicted: number;
  predictedEfficiency: number;
}

/**
 * 64 blocks of 4 latent frames (>= 4K for K = 8, so fill and drain stay small) and 10 steps (the
 * queue holds min(blocks, steps) block-steps, >= K + 1 so it can keep K stages busy). Wan's
 * reference uses 50 steps; LONGSHOT_BENCH_STEPS and LONGSHOT_BENCH_BLOCKS change the shape.
 */
const BLOCKS = Number(process.env.LONGSHOT_BENCH_BLOCKS ?? 64);
const STEPS = Number(process.env.LONGSHOT_BENCH_STEPS ?? 10);

function jobSpec(stages: number): JobSpec {
  return normalizeSpec({ prompt: 'a long take through a night market', model: 'wan2.1-t2v-1.3b', width: 832, height: 480, frames: 4 * (BLOCKS * 4 - 1) + 1, block: 4, context: 2, steps: STEPS, stages, seed: 1 });
}

/**
 * The model's prediction: per-stage forward time of an average window, hop time of the
 * activations (jobTiming without a decoder: the emulated workers do not decode), in bench time.
 */
/** A worker's host CPU totals (seconds, by part) and forward count, from its /metrics. */
async function hostCpuOf(metricsAddress: string): Promise<{ js: number; kernels: number; dataplane: number; other: number; forwards: number }> {
  const text = await (await fetch(`http://${metricsAddress}/metrics`)).text();
  const sum = (re: RegExp) => [...text.matchAll(re)].reduce((n, m) => n + Number(m[1]), 0);
  const part = (p: string) => sum(new RegExp(`^longshot_host_cpu_seconds_total\\{part="${p}"\\} (\\S+)$`, 'gm'));
  return { js: part('js'), kernels: part('kernels'), dataplane: part('dataplane'), other: part('other'), forwards: sum(/^longshot_stage_forward_seconds_count\{[^}]*\} (\S+)$/gm) };
}

/**
 * CPU seconds Redis has used (its own threads and its forks', such as append-only-file
 * rewrites): the head's checkpoint writes cost there, on the same cores as the workers.
 */
async function redisCpuSeconds(redis: Redis): Promise<number> {
  const info = await redis.info('cpu');
  const field = (name: string): number => {
    const line = info.split(/\r?\n/).find((l) => l.startsWith(`${name}:`));
    if (!line) throw new Error(`Redis INFO cpu has no ${name}`);
    return Number(line.slice(name.length + 1));
  };
  return field('used_cpu_sys') + field('used_cpu_user') + field('used_cpu_sys_children') + field('used_cpu_user_children');
}

function predict(spec: JobSpec, layout: PipelineLayout): number {
  return predictPipelineSeconds(jobTiming(spec, getConfig(spec.model), layout, getProfile(PROFILE))) * TIME_SCALE;
}

export async function pipelineBench(opts: { json: boolean }): Promise<object> {
  const measuredLayouts: PipelineLayout[] = [...STAGES.map((stages) => ({ stages, ulysses: 1, cfgParallel: false })), ...LAYOUTS];
  const cluster = await LocalCluster.start({
    workers: Math.max(...measuredLayouts.map(layoutWorkers)),
    name: 'bench',
    workerArgs: ['--emulate', PROFILE, '--time-scale', String(TIME_SCALE), '--capacity', '1', ...(process.env.LONGSHOT_BENCH_WORKER_ARGS ?? '').split(' ').filter(Boolean)],
    // E.g. LONGSHOT_BENCH_NODE_FLAGS="--cpu-prof --cpu-prof-dir=/tmp/prof": a V8 CPU profile of every worker (written when it exits).
    workerNodeFlags: (process.env.LONGSHOT_BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean),
  });
  const redis = new Redis(cluster.redisUrl);
  const rows: PipelineRow[] = [];
  try {
    for (const layout of measuredLayouts) {
      const K = layout.stages;
      const workers = layoutWorkers(layout);
      const name = describeLayout(layout);
      const spec = jobSpec(K);
      const measured: { seconds: number; headCpuPerBlockStep: PipelineRow['headCpuPerBlockStep']; clusterCpuPerBlockStepMs: number; redisCpuPerBlockStepMs: number; openSeconds: number }[] = [];
      for (let r = 0; r < REPEAT; r++) {
        const id = `bench-pipeline-${name.replace(/[^A-Za-z0-9]+/g, '-')}-${r}`;
        const before = new Map(await Promise.all([...cluster.workers.values()].map(async (w) => [w.id, await hostCpuOf(w.metricsAddress)] as const)));
        const redisBefore = await redisCpuSeconds(redis);
        const t0 = performance.now();
        const run = await runDistributedJob(
          { jobId: id, spec, keyPrefix: cluster.keys.jobPrefix(id), text: null, payloadScale: PAYLOAD_SCALE, layout: { ulysses: layout.ulysses, cfgParallel: layout.cfgParallel } },
          { ...cluster.driver(redis, id), onBlock: () => undefined },
        );
        const seconds = (performance.now() - t0) / 1000;
        const redisSeconds = (await redisCpuSeconds(redis)) - redisBefore;
        const after = new Map(await Promise.all(run.workers.map(async (w) => [w, await hostCpuOf(cluster.workers.get(w)!.metricsAddress)] as const)));
        const [b, a] = [before.get(run.workers[0])!, after.get(run.workers[0])!];
        const steps = a.forwards - b.forwards;
        const perStepMs = (x: 'js' | 'kernels' | 'dataplane' | 'other') => ((a[x] - b[x]) / steps) * 1000;
        const totalOf = (c: Awaited<ReturnType<typeof hostCpuOf>>) => c.js + c.kernels + c.dataplane + c.other;
        const clusterSeconds = [...after].reduce((n, [w, c]) => n + totalOf(c) - totalOf(before.get(w)!), 0);
        measured.push({ seconds, headCpuPerBlockStep: { jsMs: perStepMs('js'), kernelsMs: perStepMs('kernels'), dataPlaneMs: perStepMs('dataplane'), otherMs: perStepMs('other') }, clusterCpuPerBlockStepMs: (clusterSeconds / steps) * 1000, redisCpuPerBlockStepMs: (redisSeconds / steps) * 1000, openSeconds: run.attempts[0].openSeconds ?? NaN });
      }
      const runs = measured.map((m) => m.seconds);
      const { seconds, headCpuPerBlockStep, clusterCpuPerBlockStepMs, redisCpuPerBlockStepMs, openSeconds } = [...measured].sort((x, y) => x.seconds - y.seconds)[Math.floor((REPEAT - 1) / 2)];
      const predicted = predict(spec, layout);
      const base = rows[0];
      const speedup = base ? base.seconds / seconds : 1;
      const predictedSpeedup = base ? base.predicted / predicted : 1;
      rows.push({ stages: K, layout: name, workers, runs, headCpuPerBlockStep, clusterCpuPerBlockStepMs, redisCpuPerBlockStepMs, openSeconds, seconds, speedup, efficiency: speedup / workers, predicted, predictedEfficiency: predictedSpeedup / workers });
      if (!opts.json) console.log(`${name} (${workers} workers): ${seconds.toFixed(2)} s${REPEAT > 1 ? ` (median of ${runs.map((x) => x.toFixed(2)).join(', ')})` : ''}, speedup ${speedup.toFixed(2)}, efficiency ${(speedup / workers).toFixed(3)} (model: ${predicted.toFixed(2)} s, efficiency ${(predictedSpeedup / workers).toFixed(3)}); head CPU per block-step: JS thread ${headCpuPerBlockStep.jsMs.toFixed(2)} ms, kernels ${headCpuPerBlockStep.kernelsMs.toFixed(2)} ms, data plane ${headCpuPerBlockStep.dataPlaneMs.toFixed(2)} ms, other threads ${headCpuPerBlockStep.otherMs.toFixed(2)} ms; all its workers ${clusterCpuPerBlockStepMs.toFixed(2)} ms, Redis ${redisCpuPerBlockStepMs.toFixed(2)} ms; set-up ${openSeconds.toFixed(2)} s`);
    }
  } finally {
    redis.disconnect();
    await cluster.stop();
  }
  const spec = jobSpec(1);
  const plan = planJob(spec);
  const scaling = scalingTable();
  const layouts = layoutTable();
  if (!opts.json) {
    printScaling(scaling);
    printLayouts(layouts);
  }
  return {
    profile: getProfile(PROFILE).description,
    timeScale: TIME_SCALE,
    payloadScale: PAYLOAD_SCALE,
    repeat: REPEAT,
    job: { model: spec.model, width: spec.width, height: spec.height, frames: spec.frames, blocks: plan.blocks, block: spec.block, context: spec.context, steps: spec.steps, blockSteps: plan.blockSteps },
    results: rows,
    scaling,
    layouts,
  };
}
