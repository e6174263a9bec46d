import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { cpuBackend } from '@longshot/engine';
import { assembleLatents, Stitcher } from '@longshot/media';
import { loadTextEmbeddings, MODEL_CONFIGS, resolveModel, SafetensorsFile, Stage, validateLayout, VaeBlockDecoder, writeSafetensors, type ModelSource, type TextEmbeddings } from '@longshot/model';
import { jobSchedulerConfig, type SamplerKind } from '@longshot/sampler';
import { BlockQueue, runLocalPipeline } from '@longshot/pipeline';
import { normalizeSpec, partitionLayers, planJob, SpecError, type JobPlan, type JobRequest, type JobSpec } from '@longshot/planner';
import { intFlag, numberFlag, parseCommand, sizeFlag, UsageError, type CommandSpec, type Flags, type FlagValues } from './args';
import { apiKeyFromEnv, ControllerClient, followWithProgress, type LayoutRequest, type VideoStatus } from './client';
import { checkReadable, checkWritable, flagged, flaggedAsync } from './errors';
import { LocalCluster } from './local-cluster';
import { Progress } from './progress';
import { stoppable } from './signals';

/** Spec fields and the flags that set them, so a spec error names what the user typed. */
const FLAG_OF: Record<string, string> = { cfgParallel: 'cfg-parallel', negativePrompt: 'negative-prompt', textEmbeddings: 'text-embeddings', textEmbeddingsId: 'text-embeddings', width: 'size', height: 'size' };

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
  /** The service's layout: K stages, each a group of ulysses x (cfgParallel ? 2 : 1) workers (in-process: one object per stage). */
  layout?: { stages: number; ulysses: number; cfgParallel: boolean };
  layers: number[][];
  seed: number;
  latentSha256: string;
  /** SHA-256 over the blocks' decoded-frame digests (docs/vae.md). */
  frameSha256: string;
  output: string;
  seconds: number;
  blockStepsPerSecond: number;
}

/** The flags that set a job's spec, shared by `render` and `submit`. */
export const JOB_FLAGS = {
  prompt: { value: 'TEXT', help: 'what to render (required unless --text-embeddings)' },
  'negative-prompt': { value: 'TEXT', help: 'what the video should not show (the unconditional side of guidance)', default: '""' },
  'text-embeddings': { value: 'FILE', help: "safetensors with 'cond' [n, textDim] (and optional 'uncond') embeddings" },
  seconds: { value: 'S', help: 'duration: ceil(S*fps/4)+1 latent frames, rounded up to whole blocks', default: '3' },
  frames: { value: 'N', help: 'exact frame count instead of --seconds: 4*(k*block-1)+1 (13, 29, 45, 61, ... with block 4)' },
  fps: { value: 'N', help: 'frames per second, 1..120', default: '16' },
  size: { value: 'WxH', help: 'video size, multiples of 16', default: '256x256' },
  steps: { value: 'N', help: 'sampling steps', default: '20' },
  guidance: { value: 'G', help: 'classifier-free guidance scale', default: '5' },
  sampler: { value: 'unipc|euler', help: 'solver: UniPC as Wan ships it, or flow-matching Euler', default: 'unipc' },
  shift: { value: 'K', help: "schedule shift; overrides the model scheduler's flow_shift (Wan: 3, 5 for 720p)" },
  block: { value: 'B', help: 'latent frames per block', default: '4' },
  context: { value: 'C', help: 'context frames shared with each neighbour block, 0..B', default: '2' },
  stages: { value: 'K', help: "pipeline stages (contiguous layer ranges); default: the controller's choice from the cost model and free workers (1 with --in-process)" },
  ulysses: { value: 'U', help: "Ulysses workers per stage, 1..the model's heads (same latents); default 1 with --stages, else the controller's choice" },
  'cfg-parallel': { help: "each stage's two guidance halves on two workers (doubles the group); default off with --stages, else the controller's choice" },
  seed: { value: 'N', help: 'job seed', default: '0' },
  model: { value: 'NAME|DIR|FILE', help: "tiny, small, wan2.1-t2v-1.3b, wan2.1-t2v-14b, a diffusers pipeline directory or a transformer safetensors file (with --url: a name the controller's --models-dir serves)", default: 'tiny' },
} as const satisfies Flags;

export const RENDER = {
  name: 'render',
  summary: 'render a video: on an embedded cluster, via --url, or --in-process',
  usage: 'longshot render --prompt TEXT [--seconds S | --frames N] [flags]',
  description:
    'Without --url, starts Redis, one controller and the workers on loopback for this render, shows\n' +
    'progress from the job\'s events, downloads the MP4 and stops everything (also on Ctrl-C/SIGTERM).',
  flags: {
    ...JOB_FLAGS,
    out: { value: 'FILE', help: 'MP4 path', default: 'out/<id>.mp4' },
    url: { value: 'URL', help: 'send the job to the controller at URL (its API key in LONGSHOT_API_KEY) instead of starting an embedded cluster' },
    'in-process': { help: 'run the K stages as objects in this process (the single-process reference)' },
    'save-latents': { value: 'FILE', help: "also write the final latents [16, F, H, W] ('latents', safetensors, with its block and fps as metadata; --in-process); 'longshot decode' decodes it" },
    'init-noise': { value: 'FILE', help: "start from this [16, F, H, W] noise ('noise', safetensors) instead of the seeded draw (--in-process)" },
    json: { help: 'print one JSON object as the last line of stdout' },
  },
  run: (argv: string[]) => renderCommand(argv),
} satisfies CommandSpec;

type JobFlags = FlagValues<typeof JOB_FLAGS>;

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

/** The stage groups the flags ask for (the service runs them; in-process renders have one object per stage). */
export function layoutFromFlags(f: JobFlags): LayoutRequest {
  const ulysses = intFlag('ulysses', f.ulysses);
  return { ...(ulysses !== undefined ? { ulysses } : {}), ...(f['cfg-parallel'] ? { cfgParallel: true } : {}) };
}

export async function renderCommand(argv: string[]): Promise<void> {
  const f = parseCommand(RENDER, argv).values;
  const request = requestFromFlags(f);
  const layout = layoutFromFlags(f);
  // Everything that needs no cluster is checked before one starts; the controller checks again.
  const spec = specOrUsage(request);
  if (f['in-process'] && f.url) throw new UsageError('--in-process: renders on this machine, without --url');
  if (f['in-process'] && (f.ulysses !== undefined || f['cfg-parallel'])) throw new UsageError(`--${f.ulysses !== undefined ? 'ulysses' : 'cfg-parallel'}: stage groups run on the service's workers, not --in-process (the latents are the same)`);
  if (!f['in-process']) for (const flag of ['save-latents', 'init-noise'] as const) if (f[flag] !== undefined) throw new UsageError(`--${flag}: needs --in-process (the tensors stay on this machine)`);
  // With --url the model and the embeddings are the controller's to find, under its paths.
  const model = f.url ? null : flagged('model', () => resolveModel(spec.model));
  if (model && spec.stages > model.config.layers) throw new UsageError(`--stages: ${spec.stages} stages for a model of ${model.config.layers} layers; at most one stage per layer`);
  if (model && layout.ulysses !== undefined) flagged('ulysses', () => validateLayout({ ulysses: layout.ulysses!, cfgParallel: false }, model.config.heads));
  if (!f.url && spec.textEmbeddings) checkReadable('text-embeddings', spec.textEmbeddings);
  if (f['init-noise'] !== undefined) checkReadable('init-noise', path.resolve(f['init-noise']));
  if (f['save-latents'] !== undefined) checkWritable('save-latents', path.resolve(f['save-latents']));
  if (f.out !== undefined) checkWritable('out', path.resolve(f.out));
  const progress = new Progress(process.stderr);
  const r = await stoppable(async (signal) => {
    if (!f['in-process']) return renderViaService({ ...request, ...layout }, { url: f.url, out: f.out, progress, signal });
    const text = await flaggedAsync(spec.textEmbeddings ? 'text-embeddings' : 'prompt', () => {
      progress.phase('encoding the prompt');
      return textFor(spec, model!);
    });
    const initNoise = f['init-noise'] === undefined ? undefined : flagged('init-noise', () => readInitNoise(f['init-noise']!, spec, model!));
    const id = jobId(spec);
    const out = path.resolve(f.out ?? path.join('out', `${id}.mp4`));
    checkWritable('out', out);
    return renderLocal({ spec, model: model!, text, id, out, progress, initNoise, saveLatents: f['save-latents'], signal });
  });
  if (f.json) {
    process.stdout.write(`${JSON.stringify(r)}\n`);
  } else {
    process.stdout.write(`wrote ${r.output} (${r.frames} frames, ${r.width}x${r.height} @ ${r.fps} fps) in ${r.seconds.toFixed(1)} s\nlatentSha256 ${r.latentSha256}\nframeSha256 ${r.frameSha256}\n`);
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
  /** Stops the render between block-steps (SIGINT/SIGTERM). */
  signal?: AbortSignal;
  /** Each block's decoded frames as the stitcher gets them ([frames, H, W, 3] in [-1, 1], in order): what frameSha256 digests. */
  onFrames?: (block: number, frames: Float32Array) => void;
}

/** Renders a job with K stage objects chained in this process: the reference every mode matches. */
export async function renderLocal({ spec, model, text, id, out, progress, initNoise, saveLatents, signal, onFrames }: RenderInput): Promise<RenderResult> {
  const started = performance.now();
  const plan = planJob(spec);
  const backend = cpuBackend();
  const ranges = partitionLayers(model.config.layers, spec.stages);
  progress?.start('loading weights', ranges.length, 'stages');
  const stages = ranges.map((range) => {
    const stage = new Stage({ config: model.config, range, weights: model.loadStage(range), backend, text, guidance: spec.guidance });
    progress?.tick();
    return stage;
  });
  const queue = new BlockQueue(spec, plan, { channels: model.config.latentChannels, scheduler: model.scheduler, initNoise });
  const stitcher = new Stitcher(out, stitchGeometry(spec, plan, model), new VaeBlockDecoder(model.vae, model.loadVae(), { block: spec.block, latentHeight: plan.latentHeight, latentWidth: plan.latentWidth }, backend));
  const finished: Float32Array[] = [];
  progress?.start(`denoising ${id}`, plan.blockSteps, 'block-steps');
  let fingerprint;
  try {
    await runLocalPipeline(queue, stages, {
      onBlockStep: () => {
        signal?.throwIfAborted();
        progress?.tick();
      },
      onBlockFinished: async (block) => {
        if (saveLatents !== undefined) finished.push(block.latents);
        const decoded = await stitcher.add(block.index, block.latents);
        onFrames?.(block.index, decoded.values);
      },
    });
    progress?.phase('decoding the last blocks');
    fingerprint = await stitcher.finish();
    if (saveLatents !== undefined) {
      const { latentChannels } = model.config;
      const latents = assembleLatents(finished, latentChannels, spec.block, plan.latentHeight * plan.latentWidth);
      flagged('save-latents', () => writeSafetensors(path.resolve(saveLatents), [{ name: 'latents', shape: latentShape(plan, model), data: latents }], { sampler: queue.scheduler.kind, shift: String(queue.scheduler.flowShift), seed: String(spec.seed), block: String(spec.block), fps: String(spec.fps) }));
    }
  } catch (e) {
    await stitcher.abort();
    throw e;
  } finally {
    progress?.stop();
  }
  return result(spec, plan, model, id, out, ranges.map((r) => [r.l0, r.l1]), fingerprint.latentSha256, started, { mode: 'in-process', frameSha256: fingerprint.frameSha256 });
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
  extra: Partial<RenderResult> & { mode: RenderResult['mode']; frameSha256: string },
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
export async function textFor(spec: JobSpec, model: ModelSource): Promise<TextEmbeddings> {
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

/**
 * Renders through the service path: the controller at `url`, or an embedded cluster (Redis, one
 * controller, workers) started for this render. Submits over REST, shows progress from SSE,
 * downloads the MP4, and reports the same JSON as the other modes.
 */
/** How an embedded cluster serves `--model`: a built-in by its name, a local path by its entry name in its parent directory. */
function servedByName(model: string | undefined): { model: string | undefined; modelsDir?: string } {
  if (model === undefined || Object.hasOwn(MODEL_CONFIGS, model)) return { model };
  const abs = path.resolve(model);
  return { model: path.basename(abs), modelsDir: path.dirname(abs) };
}

export async function renderViaService(request: JobRequest & LayoutRequest, opts: { url?: string; out?: string; progress?: Progress; signal?: AbortSignal }): Promise<RenderResult> {
  const started = performance.now();
  let cluster: LocalCluster | null = null;
  try {
    if (!opts.url) {
      const group = (request.ulysses ?? 1) * (request.cfgParallel ? 2 : 1);
      const workers = request.stages !== undefined ? request.stages * group : Math.max(EMBEDDED_WORKERS, group);
      opts.progress?.start('starting the cluster', workers + 2, 'processes');
      // A local model directory or file is served by name: its parent is the cluster's models directory.
      const served = servedByName(request.model);
      request = { ...request, model: served.model };
      cluster = await LocalCluster.start({ workers, controllers: 1, respawn: true, name: 'render', modelsDir: served.modelsDir, onStarted: () => opts.progress?.tick() });
      opts.signal?.throwIfAborted();
    }
    const url = opts.url ?? [...cluster!.controllers.values()][0].url;
    // The embedded cluster's own operator key, or the user's for a controller of theirs.
    const client = new ControllerClient(url, cluster ? cluster.apiKey : apiKeyFromEnv());
    const job = await client.submit(request);
    let status: VideoStatus;
    try {
      status = await followWithProgress(client, job.id, opts.progress, opts.signal);
    } catch (e) {
      // Stopped with a job on a controller that stays up: cancel it rather than leave it running.
      if (opts.signal?.aborted && opts.url) await client.cancel(job.id).catch(() => undefined);
      throw e;
    }
    if (status.status !== 'succeeded' || !status.result) throw new Error(`job ${job.id} ${status.status}${status.error ? `: ${status.error.message}` : ''}`);
    const out = path.resolve(opts.out ?? path.join('out', `${job.id}.mp4`));
    checkWritable('out', out);
    await client.fetchContent(job.id, out);
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
      layout: r.layout,
      layers: [],
      seed: Number(status.spec.seed),
      latentSha256: r.latentSha256,
      frameSha256: r.frameSha256,
      output: out,
      seconds,
      blockStepsPerSecond: status.progress.blockSteps / seconds,
      workers: status.workers,
      attempts: status.attempts,
      controller: url,
    };
  } finally {
    if (cluster) {
      opts.progress?.phase('stopping the cluster');
      await cluster.stop();
      opts.progress?.stop();
    }
  }
}

/** Workers of the embedded cluster when --stages is not given (at least one group of --ulysses/--cfg-parallel): the controller chooses the layout among them. */
const EMBEDDED_WORKERS = 2;
