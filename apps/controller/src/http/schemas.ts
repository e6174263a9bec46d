import { applyDecorators } from '@nestjs/common';
import { ApiBearerAuth, ApiCookieAuth, ApiHeader, ApiParam, ApiResponse } from '@nestjs/swagger';
import { API_ROLES, JOB_STATUSES } from '@longshot/cache';
import { SAMPLER_KINDS } from '@longshot/sampler';
import { LINK_KINDS } from '@longshot/planner';
import { HOP_TRANSPORTS } from '@longshot/transport';

/*
 * The response side of the OpenAPI document: one schema per body the API answers with, each
 * closed (additionalProperties: false), so a generated client types every field and a body that
 * grows a field the document does not declare fails the contract test (test/e2e/api-contract.test.ts).
 * The request side is request.ts's field table.
 */

type Schema = Record<string, unknown>;

const str = { type: 'string' } as const;
const int = { type: 'integer' } as const;
const num = { type: 'number' } as const;
const nullable = (s: Schema): Schema => ({ ...s, nullable: true });
const dateTime = { type: 'string', format: 'date-time' } as const;

/** A closed object whose every property is always present (null where it has no value). */
function object(properties: Record<string, Schema>, description?: string): Schema {
  return { type: 'object', ...(description ? { description } : {}), additionalProperties: false, required: Object.keys(properties), properties };
}

/** `{error, message}`, plus `field` for bad input: every 4xx and 5xx body. */
export const ERROR_SCHEMA: Schema = {
  type: 'object',
  additionalProperties: false,
  required: ['error', 'message'],
  properties: {
    error: { type: 'string', description: 'Machine-readable code: invalid_request, unauthorized, forbidden, rate_limited, not_found, not_ready, conflict, payload_too_large, range_not_satisfiable, unavailable, internal, ...' },
    message: { type: 'string', description: 'What went wrong, for people; never a server path or file bytes.' },
    field: { type: 'string', description: 'The body field, query parameter or header at fault (bad input only).' },
  },
};

const URLS = object({ self: str, events: str, content: str, cancel: str });

const PROGRESS = object({ blocksDone: int, blocks: int, blockStepsDone: int, blockSteps: int, etaSeconds: nullable(num) });

const SPEC = object({
  prompt: str,
  negativePrompt: str,
  textEmbeddingsId: nullable(str),
  frames: int,
  fps: int,
  width: int,
  height: int,
  steps: int,
  guidance: num,
  shift: nullable(num),
  sampler: { type: 'string', enum: [...SAMPLER_KINDS] },
  block: int,
  context: int,
  stages: nullable(int),
  ulysses: { ...int, nullable: true, description: 'Ulysses workers per stage the request set; null when left to the planner.' },
  cfgParallel: { type: 'boolean', nullable: true, description: 'CFG parallel as the request set it; null when left to the planner.' },
  seed: int,
  model: str,
  autoStages: { type: 'boolean', description: 'True when the planner chose stages.' },
  webhookEvents: { type: 'array', items: str, nullable: true, description: "The events the job's webhook gets (its URL is not shown); null without a webhook." },
});

const GROUP_SHAPE = {
  ulysses: { ...int, description: 'Ulysses (sequence-parallel) workers per stage.' },
  cfgParallel: { type: 'boolean', description: "Whether each stage's two guidance halves run on two workers (doubling the group)." },
} as const;

const GPU = object({ index: int, uuid: str, name: str }, 'The CUDA device: index on its host, UUID, model.');

const RESULT = object({
  frames: int,
  width: int,
  height: int,
  fps: int,
  latentSha256: str,
  frameSha256: str,
  sampler: { type: 'string', enum: [...SAMPLER_KINDS] },
  shift: num,
  numerics: str,
  contentUrl: str,
  seconds: num,
  layout: object({ stages: int, ...GROUP_SHAPE }, 'The layout the job ran on (docs/parallelism.md): K stages, each a group of ulysses x (cfgParallel ? 2 : 1) workers.'),
  hops: {
    type: 'array',
    description: "How each stage-to-stage hop (the tail's to the head included) of the run that finished moved its tensor bytes, and the link the cost model gives it from the placement; empty for one stage.",
    items: object({
      from: int,
      to: int,
      transport: { type: 'string', enum: [...HOP_TRANSPORTS] },
      link: {
        ...object(
          { kind: { type: 'string', enum: [...LINK_KINDS] }, bytesPerSecond: num, latencySeconds: num, seconds: { ...num, description: "Modelled seconds for the hop's tensor of one block-step." } },
          'The modelled link: one GPU (device), one NVLink domain, one host, or the network at the smaller registered link speed; null in results recorded before links were modelled.',
        ),
        nullable: true,
      },
    }),
  },
  placement: {
    type: 'array',
    description: 'Where each worker of the run that finished ran, as it registered: stage by stage, head first, each group in rank order.',
    items: object({ stage: int, worker: str, host: nullable(str), nvlinkDomain: nullable(str), gpu: { ...GPU, nullable: true } }),
  },
});

const STATUS = { type: 'string', enum: [...JOB_STATUSES] };

/** A video job as GET /v1/videos/{id} shows it (VideosService.view). */
export const VIDEO_SCHEMA = object({
  id: { type: 'string', format: 'uuid' },
  status: STATUS,
  spec: SPEC,
  priority: int,
  progress: PROGRESS,
  stages: nullable(int),
  layout: { ...object(GROUP_SHAPE, "How each stage is split among its group's workers; null until chosen, with stages."), nullable: true },
  workers: { type: 'array', items: str },
  attempts: int,
  owner: nullable(str),
  numerics: nullable(str),
  result: { ...RESULT, nullable: true },
  error: { ...object({ message: str }), nullable: true },
  createdAt: dateTime,
  startedAt: nullable(dateTime),
  finishedAt: nullable(dateTime),
  urls: URLS,
  tenant: { type: 'string', description: 'The tenant of the API key that submitted it (local with --no-auth).' },
  signedUrls: {
    ...object(
      { events: str, content: str, expiresAt: dateTime },
      'The event stream and the MP4 as short-lived URLs signed for this job and path (for <video src>, EventSource or a download without headers); null with --no-auth',
    ),
    nullable: true,
  },
});

export const SUBMITTED_SCHEMA = object({ id: { type: 'string', format: 'uuid' }, status: STATUS, urls: URLS });

export const VIDEO_PAGE_SCHEMA = object({ items: { type: 'array', items: VIDEO_SCHEMA }, nextCursor: nullable(str) });

export const UPLOAD_SCHEMA = object({ id: { type: 'string', format: 'uuid' }, bytes: int, tensors: { type: 'array', items: str } });

export const WORKERS_SCHEMA = object({
  items: {
    type: 'array',
    items: object({
      id: str,
      address: { type: 'string', description: 'host:port of its gRPC server' },
      metricsAddress: { type: 'string', description: 'host:port where it serves Prometheus /metrics' },
      state: { type: 'string', enum: ['free', 'leased', 'full'] },
      lease: { ...object({ job: str, run: str, expiresInMs: int }), nullable: true },
      sessions: int,
      capacity: int,
      models: { type: 'array', items: str, description: "Model names the worker serves; '*' means every name its catalog resolves." },
      backend: str,
      numerics: str,
      startedAt: dateTime,
      host: { ...nullable(str), description: "Its data plane's host id (workers with equal ones share memory); null on gRPC only." },
      nvlinkDomain: { ...nullable(str), description: 'Its NVLink domain (--nvlink-domain); null for none.' },
      gpu: { ...GPU, nullable: true },
      linkGbps: { ...nullable(num), description: 'Its network link in Gb/s (--link-gbps); null when not given.' },
    }),
  },
});

/** Prometheus HTTP service discovery: a bare array of target groups (Prometheus' format, not ours). */
export const METRICS_TARGETS_SCHEMA: Schema = {
  type: 'array',
  items: object(
    {
      targets: { type: 'array', items: str, description: "The worker's metrics address (host:port), one per group." },
      labels: object({
        worker: { type: 'string', description: 'Worker id' },
        registration: { type: 'string', enum: ['live', 'lost'], description: 'lost: its registration expired without a deregistration (a crash); listed until its retention ends' },
      }),
    },
    'One worker',
  ),
};

export const MODELS_SCHEMA = object({
  items: {
    type: 'array',
    items: object({
      name: str,
      catalog: { type: 'boolean', description: "In the controller's catalog: jobs may name it." },
      workers: { type: 'array', items: str, description: 'Ids of the registered workers that serve it.' },
    }),
  },
});

const ROLE = { type: 'string', enum: [...API_ROLES], description: "operator: every tenant's jobs, the workers, the docs UI and the queue board" };

export const SESSION_SCHEMA = object({ tenant: str, role: ROLE, expiresAt: dateTime });

/** Who the request's credentials are: GET /v1/session (never the key's secret). */
export const CALLER_SCHEMA = object({
  tenant: str,
  role: ROLE,
  keyId: { type: 'string', nullable: true, description: 'The id of the API key behind the request (the part of lsk_<id>_<secret> before the secret); null with --no-auth' },
});

/** A tenant's webhook signing secret (TenantSecretService). */
export const WEBHOOK_SECRET_SCHEMA = object({
  tenant: str,
  secret: { type: 'string', description: 'whsec_<base64url>: the HMAC-SHA256 key of Longshot-Webhook-Signature, the whole string as UTF-8 bytes.' },
  generation: { type: 'integer', minimum: 0, description: 'Rotations so far (0: never rotated).' },
  previous: {
    ...object({ secret: str, expiresAt: { ...dateTime, description: 'When payloads stop carrying its signature.' } }, 'The secret before the last rotation, while payloads are still signed with it too; null otherwise'),
    nullable: true,
  },
});

export const HEALTH_SCHEMA = object({ status: { type: 'string', enum: ['ok'] } });

export const READY_SCHEMA = object({
  status: { type: 'string', enum: ['ready', 'unavailable'] },
  checks: object({
    redis: { type: 'string', enum: ['ok', 'unreachable'] },
    results: { type: 'string', enum: ['ok', 'no space'] },
    resultsFreeBytes: nullable(int),
    resultsMinFreeBytes: int,
  }),
});

/** A JSON response of `status` with its schema. */
export const ApiJson = (status: number, description: string, schema: Schema) => ApiResponse({ status, description, content: { 'application/json': { schema } } });

/** An error response of `status`: the one error shape. */
export const ApiError = (status: number, description: string) => ApiJson(status, description, ERROR_SCHEMA);

/** What any route that reads Redis may answer besides its own statuses. */
export const ApiFailures = () =>
  applyDecorators(
    ApiError(500, 'Unexpected server error'),
    ApiError(503, 'The job store (Redis) is unreachable; retry after Retry-After seconds'),
  );

/** Security scheme names of the OpenAPI document (main.ts declares them). */
export const BEARER_AUTH = 'bearerAuth';
export const COOKIE_AUTH = 'cookie';

/** A route that needs an API key (or the session cookie), counted against the tenant's rate limit. */
export const ApiAuthenticated = () =>
  applyDecorators(
    ApiBearerAuth(BEARER_AUTH),
    ApiCookieAuth(COOKIE_AUTH),
    ApiError(401, 'No API key, session or signed URL, or a revoked or unknown one (WWW-Authenticate: Bearer)'),
    ApiError(429, "Over the tenant's requests per minute (Retry-After says when to retry)"),
  );

/** A route only operator keys may use. */
export const ApiOperator = () => applyDecorators(ApiAuthenticated(), ApiError(403, 'The key is not an operator key'));

/** The `id` path parameter of /v1/videos/{id}/... */
export const ApiVideoId = () =>
  applyDecorators(ApiParam({ name: 'id', description: 'Video id (POST /v1/videos returns it)', schema: { type: 'string', format: 'uuid' } }), ApiError(404, 'No such video'));

/** A binary body (the video or a preview) with its Range support. */
export const ApiFile = (type: string, description: string) => ApiResponse({ status: 200, description, content: { [type]: { schema: { type: 'string', format: 'binary' } } } });

export const ApiRange = () =>
  applyDecorators(
    ApiHeader({ name: 'Range', required: false, description: 'bytes=FIRST-LAST' }),
    ApiResponse({ status: 206, description: 'Partial content (Content-Range)', content: { 'video/mp4': { schema: { type: 'string', format: 'binary' } } } }),
    ApiError(416, 'No satisfiable byte range (field: Range)'),
  );
