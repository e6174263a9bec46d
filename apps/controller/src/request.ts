import { TENANT_PATTERN } from '@longshot/cache';
import { MODEL_NAME_PATTERN } from '@longshot/model';
import { SpecError, type JobRequest } from '@longshot/planner';
import { MAX_WEBHOOK_URL_LENGTH, parseWebhookUrl, WEBHOOK_FIELD } from './webhooks/destination';
import { DEFAULT_WEBHOOK_EVENTS, JOB_EVENT_NAMES, type JobEventName } from './webhooks/events';
import type { WebhookRequest } from './webhooks/webhook.service';

/** A validated POST /v1/videos body, before the spec is normalised. */
export interface SubmitRequest {
  readonly job: JobRequest;
  /** True when the client left `stages` to the planner. */
  readonly autoStages: boolean;
  /**
   * Each stage's group shape (docs/parallelism.md) as the request set it. With `stages` given, an
   * omitted field is 1 or false; with `stages` left open, null: the planner's choice.
   */
  readonly layout: RequestedLayout;
  /** BullMQ priority: lower runs sooner; 0 (the default) is the lowest of all in BullMQ, so we map it. */
  readonly priority: number;
  /** The upload (POST /v1/embeddings) whose embeddings condition the job; job.textEmbeddings is it too. */
  readonly textEmbeddingsId: string | null;
  /** Where the job's events are POSTed, and which (null: no webhook). */
  readonly webhook: WebhookRequest | null;
}

export interface RequestedLayout {
  readonly ulysses: number | null;
  readonly cfgParallel: boolean | null;
}

/** Ids POST /v1/embeddings returns (UUIDs). */
export const UPLOAD_ID_PATTERN = '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';

/** BullMQ's largest priority. */
export const MAX_PRIORITY = 2_097_152;

/**
 * One field of the POST /v1/videos body: its JSON type and the constraints checked at the
 * boundary, with the words the OpenAPI document shows. This table is the one definition: the
 * schema below is it, and parseSubmit checks exactly what it declares.
 */
interface FieldSpec {
  readonly type: 'string' | 'number' | 'integer' | 'boolean' | 'array';
  readonly description?: string;
  readonly example?: string | number | readonly string[];
  readonly enum?: readonly string[];
  readonly pattern?: string;
  readonly format?: 'uri';
  readonly maxLength?: number;
  readonly minimum?: number;
  readonly maximum?: number;
  /** An array's items: strings, each one of `enum`, no repeats. */
  readonly items?: { readonly type: 'string'; readonly enum: readonly string[] };
  readonly minItems?: number;
  readonly uniqueItems?: boolean;
}

const SUBMIT_FIELDS = {
  prompt: { type: 'string', description: 'What to render (or textEmbeddings).', example: 'a paper boat drifting down a rain-soaked street at dusk' },
  negativePrompt: {
    type: 'string',
    description: 'What the video should not show: the unconditional side of classifier-free guidance. Default "" (encoded like any prompt, as diffusers\' WanPipeline does).',
    example: 'blurry, low quality, static',
  },
  textEmbeddingsId: {
    type: 'string',
    pattern: UPLOAD_ID_PATTERN,
    description: "Id returned by POST /v1/embeddings: uploaded safetensors with 'cond' (and optional 'uncond') embeddings, instead of a prompt.",
  },
  seconds: { type: 'number', description: 'Duration; rounded up to whole blocks. Give seconds or frames.' },
  frames: { type: 'integer', description: 'Exact frame count, 4n+1 and whole blocks.' },
  width: { type: 'integer', description: 'Multiple of 16.' },
  height: { type: 'integer', description: 'Multiple of 16.' },
  size: { type: 'string', pattern: '^\\d{1,5}x\\d{1,5}$', description: 'WxH, instead of width and height.' },
  fps: { type: 'integer' },
  steps: { type: 'integer' },
  guidance: { type: 'number' },
  shift: { type: 'number', description: "Schedule shift; omit for the model scheduler's flow_shift (Wan: 3.0, use 5.0 at 720p)." },
  sampler: { type: 'string', enum: ['unipc', 'euler'], description: 'Solver: unipc (default, what Wan ships) or euler.' },
  seed: { type: 'integer' },
  model: { type: 'string', pattern: MODEL_NAME_PATTERN, description: 'A model the workers serve, by name: tiny, small, wan2.1-t2v-1.3b, wan2.1-t2v-14b, or an entry of the models directory. Never a path.' },
  stages: { type: 'integer', description: 'Pipeline stages K; omit to let the planner choose K (and the fields of ulysses and cfgParallel left out).' },
  ulysses: {
    type: 'integer',
    minimum: 1,
    description:
      "Ulysses (sequence-parallel) workers per stage U, at most the model's attention heads: each stage runs on a group of U (x2 with cfgParallel) workers; the latents are the same. Default 1 with stages; the planner's choice without.",
  },
  cfgParallel: {
    type: 'boolean',
    description: "Run each stage's two guidance halves on two workers (doubles the group). Default false with stages; the planner's choice without.",
  },
  block: { type: 'integer', description: 'Latent frames per block (B).' },
  context: { type: 'integer', description: 'Context frames shared with each neighbour block (C).' },
  priority: { type: 'integer', minimum: 1, maximum: MAX_PRIORITY, description: 'Lower runs sooner (BullMQ semantics); default 1000.' },
  webhook: {
    type: 'string',
    format: 'uri',
    maxLength: MAX_WEBHOOK_URL_LENGTH,
    example: 'https://hooks.example.com/longshot',
    description:
      'http(s) URL the job\'s events are POSTed to, signed (Longshot-Webhook-Signature), retried with back-off until a 2xx. No credentials in it; loopback, private and link-local destinations are refused unless the operator allows them. Not shown back.',
  },
  webhookEvents: {
    type: 'array',
    items: { type: 'string', enum: JOB_EVENT_NAMES },
    minItems: 1,
    uniqueItems: true,
    example: ['started', 'succeeded', 'failed', 'canceled'],
    description: 'The events the webhook gets (needs webhook); default: every event but progress.',
  },
} as const satisfies Readonly<Record<string, FieldSpec>>;

/** JSON schema of the body, for the OpenAPI document: the field table itself. */
export const SUBMIT_SCHEMA = { type: 'object', additionalProperties: false, properties: SUBMIT_FIELDS } as const;

/** Throws a SpecError naming the field unless the value satisfies the field's spec. */
function checkField(name: string, spec: FieldSpec, v: unknown): void {
  if (v === null || v === undefined) throw new SpecError(name, 'must not be null');
  if (spec.type === 'array') return checkArray(name, spec, v);
  if (!hasType(spec.type, v)) throw new SpecError(name, `must be ${spec.type === 'integer' ? 'an integer' : `a ${spec.type}`}, got ${echo(v)}`);
  if (spec.maxLength !== undefined && (v as string).length > spec.maxLength) throw new SpecError(name, `must be at most ${spec.maxLength} characters`);
  if (spec.enum && !spec.enum.includes(v as string)) throw new SpecError(name, `must be one of ${spec.enum.join(', ')}, got ${echo(v)}`);
  // Not echoed: a value that fails a pattern may be a path, and the answer must not repeat it.
  if (spec.pattern && !new RegExp(spec.pattern).test(v as string)) throw new SpecError(name, `must match ${spec.pattern}`);
  if ((spec.minimum !== undefined && (v as number) < spec.minimum) || (spec.maximum !== undefined && (v as number) > spec.maximum)) {
    throw new SpecError(name, `must be in ${spec.minimum ?? '-inf'}..${spec.maximum ?? 'inf'}, got ${v as number}`);
  }
}

function hasType(type: Exclude<FieldSpec['type'], 'array'>, v: unknown): boolean {
  switch (type) {
    case 'string':
      return typeof v === 'string';
    case 'boolean':
      return typeof v === 'boolean';
    case 'number':
      return typeof v === 'number' && Number.isFinite(v);
    case 'integer':
      return typeof v === 'number' && Number.isInteger(v);
  }
}

function checkArray(name: string, spec: FieldSpec, v: unknown): void {
  if (!Array.isArray(v)) throw new SpecError(name, `must be an array, got ${echo(v)}`);
  if (spec.minItems !== undefined && v.length < spec.minItems) throw new SpecError(name, `must have at least ${spec.minItems} item(s)`);
  for (const item of v) {
    if (typeof item !== 'string' || !spec.items!.enum.includes(item)) throw new SpecError(name, `items must be among ${spec.items!.enum.join(', ')}, got ${echo(item)}`);
  }
  if (spec.uniqueItems && new Set(v).size !== v.length) throw new SpecError(name, 'must not repeat an item');
}

export const DEFAULT_PRIORITY = 1000;

/** A client's value in an error message, bounded (an oversized string is not echoed whole). */
function echo(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 80)}...` : s;
}

/**
 * Checks the shape of the body: an object with known fields of the right JSON types. Ranges and
 * the relations between fields are normalizeSpec's job; errors are SpecErrors naming the field.
 */
export function parseSubmit(body: unknown): SubmitRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new SpecError('body', 'must be a JSON object');
  const b = body as Record<string, unknown>;
  for (const [k, v] of Object.entries(b)) {
    // Own properties only: 'constructor', 'toString' or '__proto__' are not fields.
    const spec: FieldSpec | undefined = Object.hasOwn(SUBMIT_FIELDS, k) ? (SUBMIT_FIELDS as Readonly<Record<string, FieldSpec>>)[k] : undefined;
    if (!spec) throw new SpecError(k, `is not a known field (known: ${Object.keys(SUBMIT_FIELDS).join(', ')})`);
    checkField(k, spec, v);
  }
  let width = b.width as number | undefined;
  let height = b.height as number | undefined;
  if (b.size !== undefined) {
    if (width !== undefined || height !== undefined) throw new SpecError('size', 'give size or width and height, not both');
    // The field's pattern was checked above.
    [width, height] = (b.size as string).split('x').map(Number);
  }
  const priority = (b.priority as number | undefined) ?? DEFAULT_PRIORITY;
  const job: JobRequest = {
    prompt: b.prompt as string | undefined,
    negativePrompt: b.negativePrompt as string | undefined,
    textEmbeddings: b.textEmbeddingsId as string | undefined,
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
  const autoStages = b.stages === undefined;
  const layout: RequestedLayout = {
    ulysses: (b.ulysses as number | undefined) ?? (autoStages ? null : 1),
    cfgParallel: (b.cfgParallel as boolean | undefined) ?? (autoStages ? null : false),
  };
  return { job, autoStages, layout, priority, textEmbeddingsId: (b.textEmbeddingsId as string | undefined) ?? null, webhook: webhookOf(b) };
}

/** The webhook fields' meaning beyond their types: a usable URL, and events only with it. */
function webhookOf(b: Record<string, unknown>): WebhookRequest | null {
  if (b.webhook === undefined) {
    if (b.webhookEvents !== undefined) throw new SpecError('webhookEvents', `needs ${WEBHOOK_FIELD}`);
    return null;
  }
  return { url: parseWebhookUrl(b.webhook as string), events: (b.webhookEvents as JobEventName[] | undefined) ?? DEFAULT_WEBHOOK_EVENTS };
}

/**
 * The query of GET /v1/webhooks/secret and POST /v1/webhooks/secret/rotate: the field table (the
 * OpenAPI parameters are it) and its check. Other parameters are ignored, as on the other routes.
 */
export const WEBHOOK_SECRET_QUERY = {
  tenant: {
    type: 'string',
    pattern: TENANT_PATTERN.source,
    description: "Whose secret: default the API key's own tenant. Only an operator key may name another tenant (a tenant key gets 403).",
  },
} as const satisfies Readonly<Record<string, FieldSpec>>;

export function parseWebhookSecretQuery(query: Record<string, unknown>): { tenant: string | null } {
  if (query.tenant === undefined) return { tenant: null };
  checkField('tenant', WEBHOOK_SECRET_QUERY.tenant, query.tenant);
  return { tenant: query.tenant as string };
}
