/**
 * `npm run bench -- gpu [--json]`: one stage block-step of wan2.1-t2v-1.3b at 480p on the CUDA
 * backend, next to PyTorch doing the same computation on the same GPU in the same run
 * (bench/gpu_pytorch.py), reported as ratio = pytorchSeconds / longshotSeconds (> 1: Longshot is
 * faster).
 *
 * Shapes: latent 60x104 (480x832 video) -> 30x52 = 1560 tokens per latent frame; a window of
 * C = 2 prefix + B = 4 own frames = 9360 tokens, the CFG batch of 2, the successor's C = 2 cached
 * frames as extra K/V rows; a middle stage of 8 of the 30 layers (hidden states in and out), with
 * seeded weights, bfloat16 storage on both sides. Longshot's time is the whole `Stage.forward`
 * (graph build, uploads of what is not cached, kernels, and the copy back of every buffer the
 * graph writes); PyTorch's includes moving the hidden states in and out. The device-side split
 * of Longshot's last run (CUDA events) is reported too.
 *
 * Without a usable CUDA device it returns { skipped: 'no CUDA device' }.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { cudaBackend, cudaLastRunStats, engineInfo, releaseDeviceCache } from '@longshot/engine';
import { Stage, getConfig, seededStageWeights, type BlockStep, type StageRange } from '@longshot/model';
import { Rng } from '@longshot/random';

const MODEL = 'wan2.1-t2v-1.3b';
const LAYERS = 8;
const LATENT = { height: 60, width: 104 };
const OWN_FRAMES = 4;
const CONTEXT_FRAMES = 2;
const TIMESTEP = 900;
const WARMUP = 2; // the second run is the one that caches the weights on the device
const REPS = 3;

export interface GpuBenchReport {
  model: string;
  device: string;
  shape: { tokens: number; tokensPerFrame: number; frames: number; extraKeys: number; layers: number; cfgBatch: number; storage: string };
  longshot: { seconds: number; runs: number[]; lastRun: ReturnType<typeof cudaLastRunStats> };
  pytorch: { seconds: number; runs: number[]; device: string; torch: string } | { error: string };
  ratio: number | null;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

export async function gpuBench(opts: { json: boolean }): Promise<GpuBenchReport | { skipped: string; reason?: string }> {
  const info = engineInfo();
  if (!info.backends.includes('cuda')) {
    const report = { skipped: 'no CUDA device', reason: info.cudaUnavailable };
    if (!opts.json) console.log(`gpu: skipped (${report.reason ?? 'no CUDA device'})`);
    return report;
  }

  const config = getConfig(MODEL);
  const range: StageRange = { l0: 0, l1: LAYERS, head: false, tail: false };
  const hw = (LATENT.height / 2) * (LATENT.width / 2);
  const frames = CONTEXT_FRAMES + OWN_FRAMES;
  const tokens = frames * hw;
  const step = (iteration: number): BlockStep => ({
    iteration,
    block: 1,
    step: 0,
    timestep: TIMESTEP,
    prefixFrames: CONTEXT_FRAMES,
    ownFrames: OWN_FRAMES,
    contextFrames: CONTEXT_FRAMES,
    height: LATENT.height,
    width: LATENT.width,
  });

  const rng = Rng.from(0, 'gpu bench');
  const normal = (n: number) => rng.fillNormal(new Float32Array(n), 1);
  const text = { cond: normal(config.textLen * config.textDim), uncond: normal(config.textLen * config.textDim) };
  const hidden = normal(2 * tokens * config.dim);
  const kvRows = 2 * CONTEXT_FRAMES * hw * config.dim;
  const successor = { k: Array.from({ length: LAYERS }, () => normal(kvRows)), v: Array.from({ length: LAYERS }, () => normal(kvRows)) };
  const stage = new Stage({ config, range, weights: seededStageWeights(config, range, 0), backend: cudaBackend({ storage: 'bf16' }), text, guidance: 5 });

  const runs: number[] = [];
  for (let i = 0; i < WARMUP + REPS; i++) {
    // The newer neighbour's cache for this iteration: the stage uses it as the extra K/V rows.
    stage.kvCache = { iteration: i, block: 2, k: successor.k, v: successor.v };
    const t0 = process.hrtime.bigint();
    await stage.forward(step(i), hidden);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    if (i >= WARMUP) runs.push(seconds);
  }
  const lastRun = cudaLastRunStats();
  releaseDeviceCache(); // give the device memory back before PyTorch allocates its own

  const script = path.resolve(__dirname, 'gpu_pytorch.py');
  const args = {
    dim: config.dim,
    ffnDim: config.ffnDim,
    heads: config.heads,
    layers: LAYERS,
    eps: config.eps,
    freqDim: config.freqDim,
    ropeTheta: config.ropeTheta,
    textLen: config.textLen,
    frames,
    prefixFrames: CONTEXT_FRAMES,
    contextFrames: CONTEXT_FRAMES,
    latentHeight: LATENT.height,
    latentWidth: LATENT.width,
    timestep: TIMESTEP,
    warmup: WARMUP,
    reps: REPS,
  };
  const py = spawnSync('python3', [script, JSON.stringify(args)], { encoding: 'utf8', maxBuffer: 1 << 20 });
  let pytorch: GpuBenchReport['pytorch'];
  if (py.status === 0) {
    pytorch = JSON.parse(py.stdout.trim().split('\n').pop()!) as GpuBenchReport['pytorch'];
  } else {
    const why = py.error ? py.error.message : (py.stderr || '').trim().split('\n').slice(-3).join(' | ');
    pytorch = { error: `python3 ${path.basename(script)} failed (status ${py.status}): ${why}` };
  }

  const seconds = median(runs);
  const report: GpuBenchReport = {
    model: MODEL,
    device: info.cudaDevice ?? 'unknown',
    shape: { tokens, tokensPerFrame: hw, frames, extraKeys: CONTEXT_FRAMES * hw, layers: LAYERS, cfgBatch: 2, storage: 'bf16' },
    longshot: { seconds, runs, lastRun },
    pytorch,
    ratio: 'seconds' in pytorch ? pytorch.seconds / seconds : null,
  };
  if (!opts.json) {
    console.log(`gpu: ${MODEL}, ${LAYERS} layers, ${tokens} tokens x CFG 2, bf16, on ${report.device}`);
    console.log(
      `  longshot ${seconds.toFixed(3)} s (device: upload ${lastRun.uploadMs.toFixed(1)} ms, kernels ${lastRun.computeMs.toFixed(1)} ms, ` +
        `download ${lastRun.downloadMs.toFixed(1)} ms)`,
    );
    if ('seconds' in pytorch) console.log(`  pytorch  ${pytorch.seconds.toFixed(3)} s (torch ${pytorch.torch}); ratio ${report.ratio!.toFixed(3)}`);
    else console.log(`  pytorch  ${pytorch.error}`);
  }
  return report;
}
