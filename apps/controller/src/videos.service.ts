import { createHash, randomUUID } from 'node:crypto';
import { ConflictException, Inject, Injectable, NotFoundException } from '@nestjs/common';
import { isTerminal, JOB_STATUSES, type JobLayout, type JobStatus, type WorkerInfo, type WorkerLeases, type WorkerRegistry } from '@longshot/cache';
import { ModelNameError, parameterCount, SafetensorsFile, validateLayout, type ModelCatalog, type ModelConfig } from '@longshot/model';
import { DEFAULT_LIMITS, describeLayout, groupWorkers, layoutWorkers, normalizeSpec, planJob, SpecError, type JobSpec } from '@longshot/planner';
import { AuthService, type Caller } from './auth';
import type { ControllerConfig } from './config';
import { candidates, workerState } from '@longshot/pipeline';
import { jobDuration } from './metrics';
import { RenderQueue } from './queue';
import { urlsOf, type VideoRecord, type VideoSpec, type VideoStore } from './render';
import { parseSubmit, type RequestedLayout, type SubmitRequest } from './request';
import type { JobDataRepository, ResultStore, UploadRepository } from './repositories';
import { CONFIG, JOB_DATA, JOBS, LEASES, MODELS, REGISTRY, RESULTS, UPLOADS } from './tokens';
import { WebhookService } from './webhooks/webhook.service';

export interface SubmitOutcome {
  readonly created: boolean;
  readonly body: { id: string; status: JobStatus; urls: ReturnType<typeof urlsOf> };
}

/** The API's use cases: submit, look up, list, cancel, show workers. */
@Injectable()
export class VideosService {
  constructor(
    @Inject(CONFIG) private readonly config: ControllerConfig,
    @Inject(JOBS) private readonly jobs: VideoStore,
    @Inject(RenderQueue) private readonly queue: RenderQueue,
    @Inject(REGISTRY) private readonly registry: WorkerRegistry,
    @Inject(LEASES) private readonly leases: WorkerLeases,
    @Inject(RESULTS) private readonly results: ResultStore,
    @Inject(MODELS) private readonly catalog: ModelCatalog,
    @Inject(UPLOADS) private readonly uploads: UploadRepository,
    @Inject(JOB_DATA) private readonly jobData: JobDataRepository,
    @Inject(WebhookService) private readonly webhooks: WebhookService,
    @Inject(AuthService) private readonly auth: AuthService,
  ) {}

  /** Validates everything before writing anything: a rejected request leaves no trace. */
  async submit(body: unknown, idempotencyKey: string | undefined, caller: Caller): Promise<SubmitOutcome> {
    if (idempotencyKey !== undefined && !IDEMPOTENCY_KEY.test(idempotencyKey)) {
      throw new SpecError('Idempotency-Key', 'must be 1..255 visible ASCII characters (an empty key would be one every client shares)');
    }
    const req = parseSubmit(body);
    const spec = normalizeSpec(req.job, { ...DEFAULT_LIMITS, maxFrames: this.config.maxFrames });
    let model: ModelConfig;
    try {
      model = this.catalog.resolve(spec.model).config;
    } catch (e) {
      if (e instanceof ModelNameError) throw new SpecError('model', e.message);
      throw e;
    }
    if (req.textEmbeddingsId !== null) await this.uploads.textEmbeddings(req.textEmbeddingsId, caller.tenant, model);
    await this.checkLayout(req, spec, model);
    const plan = planJob(spec);
    this.checkCost(req.job, plan.blockSteps, spec.model, model, caller);
    if (req.webhook) await this.webhooks.check(req.webhook);
    // The webhook's URL is kept in the outbox only: the record (GET, SSE) names its events.
    const stored: VideoSpec = { ...spec, autoStages: req.autoStages, ...req.layout, webhookEvents: req.webhook?.events ?? null };
    const id = randomUUID();
    // Keys are per tenant: another tenant's identical key is another job, and never names this one.
    const idem = idempotencyKey === undefined ? null : { key: sha256(`${caller.tenant}\n${idempotencyKey}`), bodyHash: sha256(canonicalJson(body)) };
    // Subscribed before the record exists, so no event is missed; a record that never comes
    // (a crash in between) leaves an orphan the delivery loop drops.
    if (req.webhook) await this.webhooks.subscribe(id, req.webhook);
    const outcome = await this.jobs.create({ id, tenant: caller.tenant, spec: stored, priority: req.priority, stages: req.autoStages ? null : spec.stages, layout: req.autoStages ? null : fixedLayout(req.layout), blocks: plan.blocks, blockSteps: plan.blockSteps }, idem);
    if (!outcome.created) {
      if (req.webhook) await this.webhooks.unsubscribe(id);
      if (!outcome.sameBody) throw new ConflictException({ error: 'conflict', message: 'this Idempotency-Key was used with a different body' });
      const existing = await this.jobs.get(outcome.existingId);
      if (!existing) throw new ConflictException({ error: 'conflict', message: `the job this Idempotency-Key created (${outcome.existingId}) was deleted; use another key` });
      // The first submit may have died before enqueueing: a retry puts it in the queue (a no-op
      // when it is there already: the job id is BullMQ's id).
      if (existing.status === 'queued') await this.queue.enqueue('render', outcome.existingId, existing.priority);
      return { created: false, body: { id: outcome.existingId, status: existing.status, urls: urlsOf(outcome.existingId) } };
    }
    try {
      await this.queue.enqueue('render', id, req.priority);
    } catch (e) {
      await this.jobs.update(id, { status: 'failed', fields: { error: { message: `could not enqueue: ${(e as Error).message}` }, finishedAt: Date.now() }, event: { name: 'failed', data: { error: { message: 'could not enqueue' } } } });
      throw e;
    }
    return { created: true, body: { id, status: 'queued', urls: urlsOf(id) } };
  }

  /**
   * The layout against the model and the fleet (docs/parallelism.md): U within the model's heads
   * (libs/model validateLayout), K within its layers, and no more workers than serve the model
   * (with stages left open: one stage of the group shape the request fixed, if it fixed one).
   */
  private async checkLayout(req: SubmitRequest, spec: JobSpec, model: ModelConfig): Promise<void> {
    const shape = fixedLayout(req.layout);
    try {
      validateLayout(shape, model.heads);
    } catch (e) {
      throw new SpecError('ulysses', (e as Error).message);
    }
    if (!req.autoStages && spec.stages > model.layers) throw new SpecError('stages', `${spec.stages} stages for a model of ${model.layers} layers; at most one stage per layer`);
    const layout = { stages: req.autoStages ? 1 : spec.stages, ...shape };
    const needed = layoutWorkers(layout);
    if (req.autoStages && needed === 1) return; // the planner fits the job to the workers it finds
    const serving = candidates(await this.registry.list(), spec.model).length;
    if (needed <= serving) return;
    if (groupWorkers(shape) === 1) throw new SpecError('stages', `${spec.stages} stages but only ${serving} registered workers serve model ${spec.model}`);
    throw new SpecError(shape.ulysses > 1 ? 'ulysses' : 'cfgParallel', `${describeLayout(layout)} needs ${needed} workers but only ${serving} registered workers serve model ${spec.model}`);
  }

  /**
   * The admission cost cap: block-steps x model parameters, against the tenant's maxJobCost
   * (operators are not capped). A 400 names the fields that set the cost and the cap.
   */
  private checkCost(job: { seconds?: number }, blockSteps: number, modelName: string, model: ModelConfig, caller: Caller): void {
    if (caller.role === 'operator') return;
    const cap = this.auth.limitsOf(caller.tenant).maxJobCost;
    const params = parameterCount(model);
    const cost = blockSteps * params;
    if (cap === 0 || cost <= cap) return;
    const field = job.seconds !== undefined ? 'seconds' : 'frames';
    throw new SpecError(
      field,
      `job cost ${cost.toExponential(3)} (${blockSteps} block-steps x ${params.toExponential(3)} parameters of ${modelName}) is over tenant ${caller.tenant}'s cap of ${cap.toExponential(3)} (maxJobCost); ask for fewer ${field}, fewer steps or a smaller model`,
    );
  }

  /**
   * Stores an upload of text embeddings (a safetensors file with 'cond' and optional 'uncond')
   * for jobs to reference as textEmbeddingsId; its shapes are checked against the model at submit.
   */
  async uploadEmbeddings(body: unknown, caller: Caller): Promise<{ id: string; bytes: number; tensors: string[] }> {
    if (!Buffer.isBuffer(body) || body.length === 0) throw new SpecError('body', 'send the safetensors file as the request body (Content-Type: application/octet-stream)');
    let tensors: string[];
    try {
      const st = SafetensorsFile.fromBytes(body, 'body');
      tensors = st.tensorNames();
      st.close();
    } catch (e) {
      throw new SpecError('body', (e as Error).message);
    }
    if (!tensors.includes('cond')) throw new SpecError('body', `tensor 'cond' not found (text embeddings need 'cond' [n, textDim] and optionally 'uncond')`);
    const id = await this.uploads.put(body, caller.tenant);
    return { id, bytes: body.length, tensors };
  }

  /** The job when the caller may see it: another tenant's job is not found (its id says nothing). */
  async get(id: string, caller: Caller): Promise<VideoRecord> {
    const notFound = () => new NotFoundException({ error: 'not_found', message: `no video ${id}` });
    try {
      this.jobData.prefix(id); // an id that cannot name a job is not found, without asking Redis
    } catch {
      throw notFound();
    }
    // A Redis error is not "no such job": it propagates (503 with Retry-After when unreachable).
    const rec = await this.jobs.get(id);
    if (!rec || (caller.role !== 'operator' && rec.tenant !== caller.tenant)) throw notFound();
    return rec;
  }

  view(rec: VideoRecord, caller: Caller) {
    const { autoStages, textEmbeddings, webhookEvents, ulysses, cfgParallel, ...spec } = rec.spec;
    return {
      id: rec.id,
      status: rec.status,
      spec: { ...spec, textEmbeddingsId: textEmbeddings, stages: rec.stages, ulysses: ulysses ?? (autoStages ? null : 1), cfgParallel: cfgParallel ?? (autoStages ? null : false), autoStages, webhookEvents: webhookEvents ?? null },
      tenant: rec.tenant,
      priority: rec.priority,
      progress: rec.progress,
      stages: rec.stages,
      layout: rec.layout ?? null,
      workers: rec.workers,
      attempts: rec.attempts,
      owner: rec.owner,
      numerics: rec.numerics,
      // Records written before hops, their links, the placement or the layout were reported lack them (those ran one worker per stage).
      result: rec.result
        ? {
            ...rec.result,
            hops: (rec.result.hops ?? []).map((h) => ({ ...h, link: h.link ?? null })),
            placement: rec.result.placement ?? [],
            layout: rec.result.layout ?? { stages: rec.stages ?? 1, ulysses: 1, cfgParallel: false },
          }
        : null,
      error: rec.error,
      createdAt: iso(rec.createdAt),
      startedAt: iso(rec.startedAt),
      finishedAt: iso(rec.finishedAt),
      urls: urlsOf(rec.id),
      signedUrls: this.auth.sign(caller, { events: urlsOf(rec.id).events, content: urlsOf(rec.id).content }),
    };
  }

  /**
   * Where an SSE stream starts: after the client's Last-Event-ID (an id this stream sent,
   * MS-SEQ), or from the start. Anything else is a 400 before the stream opens.
   */
  eventsAfter(lastEventId: string | undefined): string {
    if (lastEventId === undefined) return '0';
    if (!/^\d{1,15}-\d{1,15}$/.test(lastEventId)) throw new SpecError('Last-Event-ID', 'must be the id of an event this stream sent (MS-SEQ)');
    return lastEventId;
  }

  async list(query: { status?: string; limit?: string; cursor?: string }, caller: Caller) {
    if (query.status !== undefined && !JOB_STATUSES.includes(query.status as JobStatus)) throw new SpecError('status', `must be one of ${JOB_STATUSES.join(', ')}`);
    const limit = query.limit === undefined ? 20 : Number(query.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw new SpecError('limit', `must be an integer in 1..100, got ${JSON.stringify(query.limit)}`);
    if (query.cursor !== undefined && !/^\d{1,12}$/.test(query.cursor)) throw new SpecError('cursor', 'must be a cursor returned by a previous page');
    const tenant = caller.role === 'operator' ? undefined : caller.tenant;
    const page = await this.jobs.list({ status: query.status as JobStatus | undefined, tenant, limit, cursor: query.cursor });
    return { items: page.items.map((r) => this.view(r, caller)), nextCursor: page.cursor };
  }

  /** Marks the job canceled (wherever it is) and tells the replica running it to stop. */
  async cancel(id: string, caller: Caller) {
    const rec = await this.get(id, caller);
    if (isTerminal(rec.status)) throw new ConflictException({ error: 'conflict', message: `video ${id} is already ${rec.status}` });
    const finishedAt = Date.now();
    const r = await this.jobs.update(id, { status: 'canceled', fields: { finishedAt, owner: null }, event: { name: 'canceled', data: {} } });
    if (!r.changed) throw new ConflictException({ error: 'conflict', message: `video ${id} is already ${r.previous}` });
    jobDuration.observe({ status: 'canceled' }, (finishedAt - rec.createdAt) / 1000);
    await this.queue.remove(id);
    await this.jobs.publishCancel(id);
    return this.view((await this.jobs.get(id)) ?? rec, caller);
  }

  /**
   * Deletes a finished job: its result files, pipeline data, queue entry, then its record and
   * events (last, so a DELETE that fails half-way can be repeated). Queued or running: 409.
   */
  async remove(id: string, caller: Caller): Promise<void> {
    const rec = await this.get(id, caller);
    const active = () => new ConflictException({ error: 'conflict', message: `video ${id} is ${rec.status}; cancel it first` });
    if (!isTerminal(rec.status)) throw active();
    this.results.remove(id);
    await this.jobData.remove(id);
    await this.queue.remove(id);
    // Events not delivered yet are gone with the record: so is the job's webhook.
    await this.webhooks.unsubscribe(id);
    // A finished record never changes again, so this deletes it; a vanished one was deleted by a concurrent DELETE.
    const status = await this.jobs.remove(id);
    if (status === null) throw new NotFoundException({ error: 'not_found', message: `no video ${id}` });
  }

  async contentPath(id: string, caller: Caller): Promise<string> {
    const rec = await this.get(id, caller);
    if (rec.status !== 'succeeded') throw new ConflictException({ error: 'not_ready', message: `video ${id} is ${rec.status}` });
    const dir = this.results.job(id);
    if (!dir.hasVideo()) throw new NotFoundException({ error: 'not_found', message: `the video file of ${id} is no longer in the result store` });
    return dir.videoPath;
  }

  async previewPath(id: string, index: string, caller: Caller): Promise<string> {
    const rec = await this.get(id, caller);
    const i = Number(index);
    if (!/^\d{1,9}$/.test(index) || i >= rec.progress.blocks) throw new NotFoundException({ error: 'not_found', message: `no block ${index} in video ${id}` });
    const p = this.results.job(id).previewPath(i);
    if (i >= rec.progress.blocksDone) throw new NotFoundException({ error: 'not_ready', message: `block ${i} of ${id} is not finished` });
    return p;
  }

  /**
   * Every model a job may name or a worker advertises: the controller's catalog names, then names
   * only workers know; each with the live workers serving it ('*' serves every catalog name).
   */
  async models() {
    const live = await this.registry.list();
    const catalog = this.catalog.names();
    const advertised = live.flatMap((w) => w.models).filter((m) => m !== '*' && !catalog.includes(m));
    const names = [...catalog, ...[...new Set(advertised)].sort()];
    return {
      items: names.map((name) => ({
        name,
        catalog: catalog.includes(name),
        workers: live.filter((w) => w.models.includes(name) || (w.models.includes('*') && catalog.includes(name))).map((w) => w.id),
      })),
    };
  }

  async workers() {
    const live = await this.registry.list();
    const leases = new Map((await this.leases.leases(live.map((w) => w.id))).map((l) => [l.worker, l]));
    return {
      items: live.map((w) => {
        const l = leases.get(w.id);
        return {
          id: w.id,
          address: w.address,
          metricsAddress: w.metricsAddress,
          state: workerState(w, l !== undefined),
          lease: l ? { job: l.holder.job, run: l.holder.run, expiresInMs: l.ttlMs } : null,
          sessions: w.sessions,
          capacity: w.capacity,
          models: w.models,
          backend: w.backend,
          numerics: w.numerics,
          startedAt: iso(w.startedAt),
          host: w.dataPlane?.hostId || null,
          nvlinkDomain: w.topology?.nvlinkDomain || null,
          gpu: w.topology?.gpu ?? null,
          linkGbps: w.topology?.linkGbps || null,
        };
      }),
    };
  }

  /**
   * Prometheus HTTP service discovery (http_sd_configs): one target group per worker, its /metrics
   * address with its id as a label. Lost workers (gone without deregistering, within
   * their retention) stay listed with registration="lost", so their failing scrapes raise
   * LongshotWorkerDown; a worker that stopped on purpose is dropped at once.
   */
  async metricsTargets(): Promise<MetricsTargetGroup[]> {
    const { live, lost } = await this.registry.listWithLost();
    const group = (w: WorkerInfo, registration: 'live' | 'lost'): MetricsTargetGroup => ({ targets: [w.metricsAddress], labels: { worker: w.id, registration } });
    return [...live.map((w) => group(w, 'live')), ...lost.map((w) => group(w, 'lost'))];
  }
}

/** A target group of Prometheus' HTTP service discovery format. */
export interface MetricsTargetGroup {
  readonly targets: string[];
  readonly labels: { worker: string; registration: 'live' | 'lost' };
}

/** Idempotency-Key: visible ASCII (and inner spaces), 1..255 characters, never empty. */
const IDEMPOTENCY_KEY = /^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$/;

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());
/** The group shape a request fixed, its open fields taken as one worker per stage. */
function fixedLayout(l: RequestedLayout): JobLayout {
  return { ulysses: l.ulysses ?? 1, cfgParallel: l.cfgParallel ?? false };
}

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

/** JSON with sorted keys: the same body in any key order hashes the same. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v as object)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}
