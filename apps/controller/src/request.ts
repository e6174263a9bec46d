import * as fs from 'node:fs';
import { SpecError, type JobRequest } from '@longshot/planner';

/** A validated POST /v1/videos body, before the spec is normalised. */
export interface SubmitRequest {
  readonly job: JobRequest;
  /** True when the client left `stages` to the planner. */
  readonly autoStages: boolean;
  /** BullMQ priority: lower runs sooner; 0 (the default) is the lowest of all in BullMQ, so we map it. */
  readonly priority: number;
}

/** BullMQ's largest priority. */
export const MAX_PRIORITY = 2_097_152;

type Kind = 'string' | 'number' | 'integer';
const FIELDS: Readonly<Record<string, Kind>> = {
  prompt: 'string',
  negativePrompt: 'string',
  textEmbeddings: 'string',
  seconds: 'number',
  frames: 'integer',
  width: 'integer',
  height: 'integer',
  size: 'string',
  fps: 'integer',
  steps: 'integer',
  guidance: 'number',
  shift: 'number',
  sampler: 'string',
  seed: 'integer',
  model: 'string',
  stages: 'integer',
  block: 'integer',
  context: 'integer',
  priority: 'integer',
};

/** JSON schema of the body, for the OpenAPI document (the checks below are the authority). */
export const SUBMIT_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    prompt: { type: 'string', description: 'What to render (or textEmbeddings).', example: 'a paper boat drifting down a rain-soaked street at dusk' },
    negativePrompt: {
      type: 'string',
      description: 'What the video should not show: the unconditional side of classifier-free guidance. Default "" (encoded like any prompt, as diffusers\' WanPipeline does).',
      example: 'blurry, low quality, static',
    },
    textEmbeddings: { type: 'string', description: "Path, readable by the controller, of a safetensors file with 'cond' (and optional 'uncond') embeddings." },
    seconds: { type: 'number', description: 'Duration; rounded up to whole blocks. Give seconds or frames.' },
    frames: { type: 'integer', description: 'Exact frame count, 4n+1 and whole blocks.' },
    width: { type: 'integer', description: 'Multiple of 16.' },
    height: { type: 'integer', description: 'Multiple of 16.' },
    size: { type: 'string', pattern: '^\\d+x\\d+$', description: 'WxH, instead of width and height.' },
    fps: { type: 'integer' },
    steps: { type: 'integer' },
    guidance: { type: 'number' },
    shift: { type: 'number', description: "Schedule shift; omit for the model scheduler's flow_shift (Wan: 3.0, use 5.0 at 720p)." },
    sampler: { type: 'string', enum: ['unipc', 'euler'], description: 'Solver: unipc (default, what Wan ships) or euler.' },
    seed: { type: 'integer' },
    model: { type: 'string', description: 'Model config name (tiny, small, ...) or a safetensors path.' },
    stages: { type: 'integer', description: 'Pipeline stages K; omit to let the planner choose.' },
    block: { type: 'integer', description: 'Latent frames per block (B).' },
    context: { type: 'integer', description: 'Context frames shared with each neighbour block (C).' },
    priority: { type: 'integer', minimum: 1, maximum: MAX_PRIORITY, description: 'Lower runs sooner (BullMQ semantics); default 1000.' },
  },
} as const;

export const DEFAULT_PRIORITY = 1000;

/**
 * Checks the shape of the body: an object with known fields of the right JSON types. Ranges and
 * the relations between fields are normalizeSpec's job; errors are SpecErrors naming the field.
 */
export function parseSubmit(body: unknown): SubmitRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new SpecError('body', 'must be a JSON object');
  const b = body as Record<string, unknown>;
  for (const [k, v] of Object.entries(b)) {
    const kind = FIELDS[k];
    if (!kind) throw new SpecError(k, `is not a known field (known: ${Object.keys(FIELDS).join(', ')})`);
    if (v === null || v === undefined) throw new SpecError(k, 'must not be null');
    const ok = kind === 'string' ? typeof v === 'string' : kind === 'number' ? typeof v === 'number' && Number.isFinite(v) : typeof v === 'number' && Number.isInteger(v);
    if (!ok) throw new SpecError(k, `must be ${kind === 'integer' ? 'an integer' : `a ${kind}`}, got ${JSON.stringify(v)}`);
  }
  let width = b.width as number | undefined;
  let height = b.height as number | undefined;
  if (b.size !== undefined) {
    if (width !== undefined || height !== undefined) throw new SpecError('size', 'give size or width and height, not both');
    const m = /^(\d{1,5})x(\d{1,5})$/.exec(b.size as string);
    if (!m) throw new SpecError('size', `must be WxH, e.g. 256x256, got ${JSON.stringify(b.size)}`);
    width = Number(m[1]);
    height = Number(m[2]);
  }
  if (b.textEmbeddings !== undefined) {
    const p = b.textEmbeddings as string;
    try {
      if (!fs.statSync(p).isFile()) throw new Error('not a file');
      fs.accessSync(p, fs.constants.R_OK);
    } catch {
      throw new SpecError('textEmbeddings', `${JSON.stringify(p)} is not a readable file on the controller`);
    }
  }
  const priority = (b.priority as number | undefined) ?? DEFAULT_PRIORITY;
  if (priority < 1 || priority > MAX_PRIORITY) throw new SpecError('priority', `must be in 1..${MAX_PRIORITY}, got ${priority}`);
  const job: JobRequest = {
    prompt: b.prompt as string | undefined,
    negativePrompt: b.negativePrompt as string | undefined,
    textEmbeddings: b.textEmbeddings as string | undefined,
    seconds: b.seconds as number | undefined,
    frames: b.frames as number | undefined,
    fps: b.fps as number | undefined,
    width,
    height,
    steps: b.steps as number | undefined,
    guidance: b.guidance as number | undefined,
    shift: b.shift as number | undefined,
    sampler: b.sampler as string | undefined,
    block: b.block as number | undefined,
    context: b.context as number | undefined,
    stages: b.stages as number | undefined,
    seed: b.seed as number | undefined,
    model: b.model as string | undefined,
  };
  return { job, autoStages: b.stages === undefined, priority };
}
