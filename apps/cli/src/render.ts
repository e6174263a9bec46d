import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { cpuBackend } from '@longshot/engine';
import { assembleLatents, Stitcher } from '@longshot/media';
import { loadTextEmbeddings, resolveModel, SafetensorsFile, Stage, writeSafetensors, type ModelSource, type TextEmbeddings } from '@longshot/model';
import { jobSchedulerConfig, type SamplerKind } from '@longshot/sampler';
import { BlockQueue, runLocalPipeline } from '@longshot/pipeline';
import { normalizeSpec, partitionLayers, planJob, SpecError, type JobPlan, type JobRequest, type JobSpec } from '@longshot/planner';
import { intFlag, numberFlag, parseFlags, sizeFlag, UsageError } from './args';
import { ControllerClient, followWithProgress } from './client';
import { LocalCluster } from './local-cluster';
import { Progress } from './progress';

export const RENDER_HELP = `longshot render: render a video on this machine

  --prompt TEXT            what to render (or --text-embeddings)
  --negative-prompt TEXT   what the video should not show (guidance's uncond side; default "")
  --text-embeddings FILE   safetensors with 'cond' [n, textDim] (and optional 'uncond') embeddings
  --seconds S | --frames N duration (seconds rounds up to whole blocks; frames must be 4n+1)
  --fps N                  frames per second (16)
  --size WxH               video size, multiples of 16 (256x256)
  --steps N                sampling steps (20)
  --guidance G             classifier-free guidance scale (5)
  --sampler unipc|euler    solver (unipc: the UniPC Wan ships; euler)
  --shift K                schedule shift (the model scheduler's flow_shift: 3 for Wan, 5 for 720p)
  --block B                latent frames per block (4)
  --context C              context frames shared with each neighbour block (2)
  --stages K               pipeline stages, each holding a contiguous layer range (1)
  --seed N                 job seed (0)
  --model NAME|FILE        config name (tiny, small, wan2.1-t2v-1.3b, ...) or safetensors file (tiny)
  --out FILE               MP4 path (out/<id>.mp4)
  --save-latents FILE      also write the final latents [16, F, H, W] ('latents', safetensors; --in-process)
  --init-noise FILE        start from this [16, F, H, W] noise ('noise', safetensors) instead of the seeded draw (--in-process)
  --json                   print one JSON object as the last line of stdout
`;

/** Spec fields and the flags that set them, so a spec error names what the user typed. */
const FLAG_OF: Record<string, string> = { negativePrompt: 'negative-prompt', textEmbeddings: 'text-embeddings', width: 'size', height: 'size' };

/** The flag that sets a spec field (the field's own name when they agree). */
export const flagOfField = (field: string): string => FLAG_OF[field] ?? field;

export interface RenderResult {
  id: string;
  mode: 'in-process' | 'service';
  controller?: string;
  workers?: string[];
  attempts?: number;
  recomputedBlockSteps?: number;
  model: string;
  prompt: string;
  frames: number;
  width: number;
  height: number;
  fps: number;
  steps: number;
  /** The solver and schedule shift used (the shift resolved from the model's scheduler). */
  sampler: SamplerKind;
  shift: number;
  blocks: number;
  block: number;
  context: number;
  stages: number;
  layers: number[][];
  seed: number;
  latentSha256: string;
  output: string;
  seconds: number;
  blockStepsPerSecond: number;
}

/** The flags that set a job's spec, shared by `render` and `submit`. */
export const jobRequestFlags = {
  prompt: { type: 'string' },
  'negative-prompt': { type: 'string' },
  'text-embeddings': { type: 'string' },
  seconds: { type: 'string' },
  frames: { type: 'string' },
  fps: { type: 'string' },
  size: { type: 'string' },
  steps: { type: 'string' },
  guidance: { type: 'string' },
  shift: { type: 'string' },
  sampler: { type: 'string' },
  block: { type: 'string' },
  context: { type: 'string' },
  stages: { type: 'string' },
  seed: { type: 'string' },
  model: { type: 'string' },
} as const;

type JobFlags = { [K in keyof typeof jobRequestFlags]?: string };

export function requestFromFlags(f: JobFlags): JobRequest {
  const size = sizeFlag(f.size);
  return {
    prompt: f.prompt,
    negativePrompt: f['negative-prompt'],
    textEmbeddings: f['text-embeddings'] === undefined ? undefined : path.resolve(f['text-embeddings']),
    seconds: numberFlag('seconds', f.seconds),
    frames: intFlag('frames', f.frames),
    fps: intFlag('fps', f.fps),
    width: size?.width,
    height: size?.height,
    steps: intFlag('steps', f.steps),
    guidance: numberFlag('guidance', f.guidance),
    shift: numberFlag('shift', f.shift),
    sampler: f.sampler,
    block: intFlag('block', f.block),
    context: intFlag('context', f.context),
    stages: intFlag('stages', f.stages),
    seed: intFlag('seed', f.seed),
    model: f.model,
  };
}

export async function renderCommand(argv: string[]): Promise<void> {
  const f = parseFlags(argv, {
    ...jobRequestFlags,
    out: { type: 'string' },
    'save-latents': { type: 'string' },
    'init-noise': { type: 'string' },
    url: { type: 'string' },
    'in-process': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  });
  if (f.help) {
    process.stdout.write(RENDER_HELP);
    return;
  }
  const request = requestFromFlags(f);
  // Checked here too so a bad flag fails before any process starts; the controller checks again.
  const spec = specOrUsage(request);
  const model = flagged('model', () => resolveModel(spec.model));
  if (spec.stages > model.config.layers) throw new UsageError(`--stages: ${spec.stages} stages for a model of ${model.config.layers} layers; at most one stage per layer`);
  const progress = new Progress(process.stderr);
  let r: RenderResult;
  if (f['in-process']) {
    if (f.url) throw new UsageError('--in-process: renders on this machine, without --url');
    const text = await flaggedAsync(spec.textEmbeddings ? 'text-embeddings' : 'prompt', () => textFor(spec, model));
    const initNoise = f['init-noise'] === undefined ? undefined : flagged('init-noise', () => readInitNoise(f['init-noise']!, spec, model));
    const id = jobId(spec);
    r = await renderLocal({ spec, model, text, id, out: path.resolve(f.out ?? path.join('out', `${id}.mp4`)), progress, initNoise, saveLatents: f['save-latents'] });
  } else {
    for (const flag of ['save-latents', 'init-noise'] as const) if (f[flag] !== undefined) throw new UsageError(`--${flag}: needs --in-process (the tensors stay on this machine)`);
    r = await renderViaService(request, { url: f.url, out: f.out, progress });
  }
  if (f.json) {
    process.stdout.write(`${JSON.stringify(r)}\n`);
  } else {
    process.stdout.write(`wrote ${r.output} (${r.frames} frames, ${r.width}x${r.height} @ ${r.fps} fps) in ${r.seconds.toFixed(1)} s\nlatentSha256 ${r.latentSha256}\n`);
  }
}

export interface RenderInput {
  spec: JobSpec;
  model: ModelSource;
  text: TextEmbeddings;
  id: string;
  out: string;
  progress?: Progress;
  /** [16, F, H, W] noise replacing the seeded draw. */
  initNoise?: Float32Array;
  /** Where to write the final latents [16, F, H, W] (safetensors, tensor 'latents'). */
  saveLatents?: string;
}

/** Renders a job with K stage objects chained in this process: the reference every mode matches. */
export async function renderLocal({ spec, model, text, id, out, progress, initNoise, saveLatents }: RenderInput): Promise<RenderResult> {
  const started = performance.now();
  const plan = planJob(spec);
  const backend = cpuBackend();
  const ranges = partitionLayers(model.config.layers, spec.stages);
  const stages = ranges.map((range) => new Stage({ config: model.config, range, weights: model.loadStage(range), backend, text, guidance: spec.guidance }));
  const queue = new BlockQueue(spec, plan, { channels: model.config.latentChannels, scheduler: model.scheduler, initNoise });
  const stitcher = new Stitcher(out, stitchGeometry(spec, plan, model));
  const finished: Float32Array[] = [];
  progress?.start(`rendering ${id}`, plan.blockSteps);
  let fingerprint;
  try {
    await runLocalPipeline(queue, stages, {
      onBlockStep: () => progress?.tick(),
      onBlockFinished: async (block) => {
        if (saveLatents !== undefined) finished.push(block.latents);
        await stitcher.add(block.index, block.latents);
      },
    });
    fingerprint = await stitcher.finish();
    if (saveLatents !== undefined) {
      const { latentChannels } = model.config;
      const latents = assembleLatents(finished, latentChannels, spec.block, plan.latentHeight * plan.latentWidth);
      flagged('save-latents', () => writeSafetensors(path.resolve(saveLatents), [{ name: 'latents', shape: latentShape(plan, model), data: latents }], { sampler: queue.scheduler.kind, shift: String(queue.scheduler.flowShift), seed: String(spec.seed) }));
    }
  } catch (e) {
    await stitcher.abort();
    throw e;
  } finally {
    progress?.stop();
  }
  return result(spec, plan, model, id, out, ranges.map((r) => [r.l0, r.l1]), fingerprint.latentSha256, started, { mode: 'in-process' });
}

/** [latent channels, latent frames, H/8, W/8]: the shape of a job's noise and final latents. */
function latentShape(plan: JobPlan, model: ModelSource): number[] {
  return [model.config.latentChannels, plan.latentFrames, plan.latentHeight, plan.latentWidth];
}

/** Reads `--init-noise`: tensor 'noise' (or the file's only tensor), shaped as the job's latents. */
function readInitNoise(file: string, spec: JobSpec, model: ModelSource): Float32Array {
  const st = SafetensorsFile.open(path.resolve(file));
  try {
    const names = st.tensorNames();
    const name = st.has('noise') ? 'noise' : names.length === 1 ? names[0] : null;
    if (name === null) throw new Error(`${file}: needs a tensor 'noise' (or exactly one tensor); it has ${names.slice(0, 8).join(', ') || 'none'}`);
    return st.read(name, latentShape(planJob(spec), model));
  } finally {
    st.close();
  }
}

function stitchGeometry(spec: JobSpec, plan: JobPlan, model: ModelSource) {
  return { frames: spec.frames, fps: spec.fps, width: spec.width, height: spec.height, block: spec.block, blocks: plan.blocks, latentChannels: model.config.latentChannels };
}

function result(
  spec: JobSpec,
  plan: JobPlan,
  model: ModelSource,
  id: string,
  out: string,
  layers: number[][],
  latentSha256: string,
  started: number,
  extra: Partial<RenderResult> & { mode: RenderResult['mode'] },
): RenderResult {
  const seconds = (performance.now() - started) / 1000;
  const scheduler = jobSchedulerConfig(model.scheduler, spec);
  return {
    id,
    model: model.id,
    prompt: spec.prompt,
    frames: spec.frames,
    width: spec.width,
    height: spec.height,
    fps: spec.fps,
    steps: spec.steps,
    sampler: scheduler.kind,
    shift: scheduler.flowShift,
    blocks: plan.blocks,
    block: spec.block,
    context: spec.context,
    stages: spec.stages,
    layers,
    seed: spec.seed,
    latentSha256,
    output: out,
    seconds,
    blockStepsPerSecond: plan.blockSteps / seconds,
    ...extra,
  };
}

/** A job id derived from the normalised spec: the same spec names the same video. */
export function jobId(spec: JobSpec): string {
  return `job-${createHash('sha256').update(JSON.stringify(spec)).digest('hex').slice(0, 12)}`;
}

/** The job's embeddings: its file, else the model's text encoder on this machine's engine. */
async function textFor(spec: JobSpec, model: ModelSource): Promise<TextEmbeddings> {
  if (spec.textEmbeddings) return loadTextEmbeddings(spec.textEmbeddings, model.config);
  return model.textEncoder.encode(spec.prompt, spec.negativePrompt, cpuBackend());
}

function specOrUsage(request: JobRequest): JobSpec {
  try {
    return normalizeSpec(request);
  } catch (e) {
    if (e instanceof SpecError) throw new UsageError(`--${flagOfField(e.field)}: ${e.message.slice(e.field.length + 2)}`);
    throw e;
  }
}

function flagged<T>(flag: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new UsageError(`--${flag}: ${(e as Error).message}`);
  }
}

async function flaggedAsync<T>(flag: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw new UsageError(`--${flag}: ${(e as Error).message}`);
  }
}

/**
 * Renders through the service path: the controller at `url`, or an embedded cluster (Redis, one
 * controller, workers) started for this render. Submits over REST, shows progress from SSE,
 * downloads the MP4, and reports the same JSON as the other modes.
 */
export async function renderViaService(request: JobRequest, opts: { url?: string; out?: string; progress?: Progress }): Promise<RenderResult> {
  const started = performance.now();
  const cluster = opts.url ? null : await LocalCluster.start({ workers: request.stages ?? 2, controllers: 1, respawn: true, name: 'render' });
  try {
    const url = opts.url ?? [...cluster!.controllers.values()][0].url;
    const client = new ControllerClient(url);
    const job = await client.submit(request);
    const status = await followWithProgress(client, job.id, opts.progress);
    if (status.status !== 'succeeded' || !status.result) throw new Error(`job ${job.id} ${status.status}${status.error ? `: ${status.error}` : ''}`);
    const out = await client.fetchContent(job.id, path.resolve(opts.out ?? path.join('out', `${job.id}.mp4`)));
    const r = status.result;
    const seconds = (performance.now() - started) / 1000;
    return {
      id: job.id,
      mode: 'service',
      model: String(status.spec.model),
      prompt: String(status.spec.prompt ?? ''),
      frames: r.frames,
      width: r.width,
      height: r.height,
      fps: r.fps,
      steps: status.spec.steps,
      sampler: r.sampler,
      shift: r.shift,
      blocks: status.progress.blocks,
      block: Number(status.spec.block),
      context: Number(status.spec.context),
      stages: status.stages ?? Number(status.spec.stages),
      layers: [],
      seed: Number(status.spec.seed),
      latentSha256: r.latentSha256,
      output: out,
      seconds,
      blockStepsPerSecond: status.progress.blockSteps / seconds,
      workers: status.workers,
      attempts: status.attempts,
      controller: url,
    };
  } finally {
    await cluster?.stop();
  }
}
