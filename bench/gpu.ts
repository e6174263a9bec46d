/**
 * `npm run bench -- gpu [--json]`: one stage block-step of wan2.1-t2v-1.3b at 480p on the CUDA
 * backend, next to PyTorch doing the same computation on the same GPU in the same run
 * (bench/gpu_pytorch.py), reported as ratio = pytorchSeconds / longshotSeconds (> 1: Longshot is
 * faster).
 *
 * Shapes (bench/gpu-stage.ts, shared with the native driver's stage fixture): latent 60x104
 * (480x832 video) -> 30x52 = 1560 tokens per latent frame; a window of C = 2 prefix + B = 4 own
 * frames = 9360 tokens, the CFG batch of 2, the successor's C = 2 cached frames as extra K/V rows;
 * a middle stage of 8 of the 30 layers (hidden states in and out), with seeded weights, bfloat16
 * storage on both sides. `bash deploy/gpu-check.sh` times the same graph without Node. Longshot's time is the whole `Stage.forward`
 * (graph build, uploads of what is not cached, kernels, and the copy back of every buffer the
 * graph writes); PyTorch's includes moving the hidden states in and out. The device-side split
 * of Longshot's last run (CUDA events) is reported too.
 *
 * Without a usable CUDA device it returns { skipped: 'no CUDA device' }.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { cudaBackend, cudaLastRunStats, engineInfo, releaseDeviceCache } from '@longshot/engine';
import { Stage, getConfig, seededStageWeights } from '@longshot/model';
import { Rng } from '@longshot/random';
import { GPU_STAGE, GPU_STAGE_RANGE, gpuStageShape, gpuStageStep, pytorchArgs } from './gpu-stage';

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

  const config = getConfig(GPU_STAGE.model);
  const LAYERS = GPU_STAGE.layers;
  const shape = gpuStageShape();
  const hw = shape.tokensPerFrame;
  const tokens = shape.tokens;
  const step = gpuStageStep;

  const rng = Rng.from(0, 'gpu bench');
  const normal = (n: number) => rng.fillNormal(new Float32Array(n), 1);
  const text = { cond: normal(config.textLen * config.textDim), uncond: normal(config.textLen * config.textDim) };
  const hidden = normal(2 * tokens * config.dim);
  const kvRows = 2 * GPU_STAGE.contextFrames * hw * config.dim;
  const successor = { k: Array.from({ length: LAYERS }, () => normal(kvRows)), v: Array.from({ length: LAYERS }, () => normal(kvRows)) };
  const stage = new Stage({
    config,
    range: GPU_STAGE_RANGE,
    weights: seededStageWeights(config, GPU_STAGE_RANGE, 0),
    backend: cudaBackend({ storage: GPU_STAGE.storage }),
    text,
    guidance: GPU_STAGE.guidance,
  });

  const runs: number[] = [];
  for (let i = 0; i < GPU_STAGE.warmup + GPU_STAGE.reps; i++) {
    // The newer neighbour's cache for this iteration: the stage uses it as the extra K/V rows.
    stage.kvCache = { iteration: i, block: 2, k: successor.k, v: successor.v };
    const t0 = process.hrtime.bigint();
    await stage.forward(step(i), hidden);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    if (i >= GPU_STAGE.warmup) runs.push(seconds);
  }
  const lastRun = cudaLastRunStats();
  releaseDeviceCache(); // give the device memory back before PyTorch allocates its own

  const script = path.resolve(__dirname, 'gpu_pytorch.py');
  const args = pytorchArgs(config);
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
    model: GPU_STAGE.model,
    device: info.cudaDevice ?? 'unknown',
    shape,
    longshot: { seconds, runs, lastRun },
    pytorch,
    ratio: 'seconds' in pytorch ? pytorch.seconds / seconds : null,
  };
  if (!opts.json) {
    console.log(`gpu: ${GPU_STAGE.model}, ${LAYERS} layers, ${tokens} tokens x CFG 2, bf16, on ${report.device}`);
    console.log(
      `  longshot ${seconds.toFixed(3)} s (device: upload ${lastRun.uploadMs.toFixed(1)} ms, kernels ${lastRun.computeMs.toFixed(1)} ms, ` +
        `download ${lastRun.downloadMs.toFixed(1)} ms)`,
    );
    if ('seconds' in pytorch) console.log(`  pytorch  ${pytorch.seconds.toFixed(3)} s (torch ${pytorch.torch}); ratio ${report.ratio!.toFixed(3)}`);
    else console.log(`  pytorch  ${pytorch.error}`);
  }
  return report;
}
