import { randomUUID } from 'node:crypto';
import { DelayedError, UnrecoverableError, WaitingError, type Job } from 'bullmq';
import { isTerminal, type JobRecord, type JobStore, type WorkerLeases, type WorkerRegistry } from '@longshot/cache';
import { assembleLatents, latentSha256, previewJpeg, type SegmentDir } from '@longshot/media';
import { jobSchedulerConfig, type SamplerKind } from '@longshot/sampler';
import { ModelNameError, videoFrameSha256, type ModelCatalog, type ModelSource, type TextEmbeddings } from '@longshot/model';
import { candidates, decodeBlockOnWorker, LeasedWorkers, PERMANENT_GRPC_CODES, runDistributedJob, signJobGrant, type DecodedFrames, type DriverWorker, type Hop } from '@longshot/pipeline';
import { planJob, SpecError, type JobPlan, type JobSpec } from '@longshot/planner';
import { logger } from '@longshot/telemetry';
import { tlsCredentials } from '@longshot/transport';
import type { ControllerConfig } from './config';
import { blockSteps, failovers, jobDuration, resultsStoreFailures, stitchedBlocks, workersDeadlineFailures } from './metrics';
import { chooseStages } from './planning';
import { isNoSpace, type JobDataRepository, type ResultStore, type UploadRepository } from './repositories';

/** What a job record's spec holds: the normalised spec, and whether K was left to the planner. */
export type VideoSpec = JobSpec & {
  readonly autoStages: boolean;
  /** The events the job's webhook gets; null (or absent, in older records) when it has none. */
  readonly webhookEvents?: readonly string[] | null;
};

export interface VideoResult {
  readonly frames: number;
  readonly width: number;
  readonly height: number;
  readonly fps: number;
  readonly latentSha256: string;
  /** SHA-256 over the blocks' decoded-frame digests (docs/vae.md): the same in every mode, resume or not. */
  readonly frameSha256: string;
  /** The solver and schedule shift the job ran with (the shift resolved from the model's scheduler). */
  readonly sampler: SamplerKind;
  readonly shift: number;
  /** The numerics fingerprint every run of the job computed with: latentSha256 is reproducible on workers of that fingerprint. */
  readonly numerics: string;
  readonly contentUrl: string;
  /** Wall time from the first start to the end. */
  readonly seconds: number;
  /** How each stage-to-stage hop of the run that finished moved its tensor bytes (empty for K = 1, or when no stage ran). */
  readonly hops: readonly Hop[];
}

export type VideoStore = JobStore<VideoSpec, VideoResult>;
export type VideoRecord = JobRecord<VideoSpec, VideoResult>;

export interface RenderJobData {
  readonly id: string;
  /** When the job first found too few free workers (cleared once it leases them). */
  readonly waitingSince?: number;
}

/** BullMQ's failedReason of a canceled job. */
export const CANCELED_REASON = 'canceled';

/** Thrown from a canceled job's processor: BullMQ moves it to failed (reason `canceled`), no retry. */
const canceledInQueue = (): UnrecoverableError => new UnrecoverableError(CANCELED_REASON);

/** Why a run was stopped from outside the pipeline. */
export class StopRun extends Error {
  constructor(readonly why: 'cancel' | 'shutdown' | 'lease-lost' | 'stitch', cause?: unknown) {
    super(why === 'stitch' ? `stitching failed: ${(cause as Error)?.message ?? cause}` : `run stopped: ${why}`);
    if (cause !== undefined) this.cause = cause;
  }
}

export const urlsOf = (id: string) => ({
  self: `/v1/videos/${id}`,
  events: `/v1/videos/${id}/events`,
  content: `/v1/videos/${id}/content`,
  cancel: `/v1/videos/${id}/cancel`,
});

const log = logger('render');

/** Block-steps applied once the head applied (iteration, block): the same count on any replica, resume or not. */
export function blockStepsThrough(plan: JobPlan, steps: number, iteration: number, block: number): number {
  const oldest = Math.max(0, iteration - steps + 1);
  const newest = Math.min(iteration, plan.blocks - 1);
  let done = oldest * steps;
  for (let b = oldest; b <= newest; b++) done += iteration - b + (b >= block ? 1 : 0);
  return Math.min(done, plan.blockSteps);
}

export interface RenderDeps {
  readonly config: ControllerConfig;
  readonly jobs: VideoStore;
  readonly leases: WorkerLeases;
  readonly registry: WorkerRegistry;
  readonly data: JobDataRepository;
  readonly results: ResultStore;
  readonly models: ModelCatalog;
  readonly uploads: UploadRepository;
}

/**
 * One run of a render job on this replica: lease workers (or go back to the queue when too few
 * are free), drive the pipeline, stitch blocks into segments as they finish, join them, record
 * the result. Every way out releases the leases.
 */
export class RenderRun {
  readonly abort = new AbortController();

  constructor(
    private readonly d: RenderDeps,
    private readonly job: Job<RenderJobData>,
    private readonly token: string,
  ) {}

  get id(): string {
    return this.job.data.id;
  }

  stop(why: StopRun['why']): void {
    if (!this.abort.signal.aborted) this.abort.abort(new StopRun(why));
  }

  async execute(): Promise<void> {
    const { config, jobs } = this.d;
    const rec = await jobs.get(this.id);
    if (rec?.status === 'canceled') throw canceledInQueue(); // canceled while queued, after it was dequeued
    if (!rec || isTerminal(rec.status)) return; // retention ran out
    const spec = rec.spec;
    let modelSource: ModelSource;
    let text: TextEmbeddings | null = null;
    try {
      modelSource = this.d.models.resolve(spec.model);
      if (spec.textEmbeddings) text = await this.d.uploads.textEmbeddings(spec.textEmbeddings, rec.tenant, modelSource.config);
    } catch (e) {
      // A Redis blip is retried; anything else was checked at submit, so the model changed or the
      // upload expired since, and retrying cannot help.
      if (!(e instanceof SpecError || e instanceof ModelNameError)) throw e;
      await this.fail(rec, e);
      throw new UnrecoverableError(e.message);
    }

    const holder = { job: this.id, run: `${config.id}/${randomUUID()}` };
    const source = new LeasedWorkers({
      leases: this.d.leases,
      registry: this.d.registry,
      holder,
      model: spec.model,
      leaseMs: config.leaseMs,
      waitMs: config.replacementWaitMs,
      signal: this.abort.signal,
      onLost: () => this.stop('lease-lost'),
      log,
    });
    try {
      const K = rec.stages ?? (spec.autoStages ? await this.plan(spec, modelSource) : spec.stages);
      // A job that ran before (a retry, a takeover) is pinned to the numerics it started on.
      const reserved = await source.tryLease(K, new Set(), rec.numerics);
      if (!reserved) {
        const since = this.job.data.waitingSince ?? Date.now();
        if (Date.now() - since >= config.workersDeadlineMs) {
          // Waited long enough: a clear failure rather than `queued` forever.
          const serving = candidates(await this.d.registry.list(), spec.model).length;
          workersDeadlineFailures.inc();
          throw new UnrecoverableError(
            `no ${K} free workers for model ${spec.model} within ${Math.round(config.workersDeadlineMs / 1000)} s (LONGSHOT_WORKERS_DEADLINE_MS); ${serving} registered workers serve it`,
          );
        }
        if (this.job.data.waitingSince === undefined) await this.job.updateData({ ...this.job.data, waitingSince: since });
        // Too few free workers: back to the queue (delayed, same priority, no attempt used)
        // rather than holding a runner slot while waiting.
        await this.job.moveToDelayed(Date.now() + config.waitForWorkersMs, this.token);
        throw new DelayedError();
      }
      if (this.job.data.waitingSince !== undefined) await this.job.updateData({ id: this.id });
      source.reserve(reserved);
      await this.runPipeline(rec, { ...spec, stages: K }, modelSource, text, source, reserved);
    } catch (e) {
      await this.settleFailure(rec, e);
    } finally {
      await source.close().catch((err: unknown) => log.warn('releasing leases failed; they expire by themselves', { job: this.id, err }));
    }
  }

  /** K for a job that left it open: from the cost model and the workers free right now. */
  private async plan(spec: VideoSpec, model: ModelSource): Promise<number> {
    const live = candidates(await this.d.registry.list(), spec.model);
    const leased = new Set((await this.d.leases.leases(live)).map((l) => l.worker));
    const free = live.filter((id) => !leased.has(id)).length;
    return chooseStages(spec, model.config, model.vae, Math.max(1, free), this.d.config.plannerProfile);
  }

  /** `reserved`: the leased workers, head first; the job's numerics are theirs (the record's, when the job already had one). */
  private async runPipeline(rec: VideoRecord, spec: JobSpec, modelSource: ModelSource, text: TextEmbeddings | null, source: LeasedWorkers, reserved: DriverWorker[]): Promise<void> {
    const numerics = reserved[0].numerics;
    const { config, jobs, data } = this.d;
    const model = modelSource.config;
    const plan = planJob(spec);
    const now = Date.now();
    const attempt = rec.attempts + 1;
    const started = await jobs.update(this.id, {
      status: 'running',
      // The numerics are recorded with the start, before any block is computed: later runs pin to them.
      fields: { stages: spec.stages, workers: source.workers, attempts: attempt, owner: config.id, startedAt: rec.startedAt ?? now, error: null, numerics },
      event: { name: 'started', data: { stages: spec.stages, workers: source.workers, attempt } },
    });
    if (!started.changed) {
      if (started.previous === 'canceled') throw new StopRun('cancel'); // canceled between dequeue and start
      return; // another run finished it
    }
    const resume = await data.hasCheckpoint(this.id);
    log.info('job run started', { job: this.id, attempt, stages: spec.stages, workers: source.workers, resume });

    // Blocks are decoded on the tail worker of the current attempt (docs/vae.md, "Where it runs").
    let decoding = reserved[reserved.length - 1];
    const decodeGrant = () => signJobGrant({ job: this.id, run: source.run, keyPrefix: data.prefix(this.id), stage: -1, layerBegin: 0, layerEnd: 0 }, config.grantKey);
    const stitcher = new BlockStitcher(this.id, spec, plan, data, this.d.results, jobs, () => decoding, decodeGrant, this.abort.signal);
    await stitcher.prepare();
    const progress = new ProgressReporter(this.id, plan, spec.steps, jobs, () => stitcher.blocksDone, () => this.stop('cancel'));
    const onBlock = (index: number, latents: Float32Array): Promise<void> =>
      // Never rejects: the driver chains deliveries, and a stitch failure must stop this run
      // (through the signal), not surface as an unhandled rejection in the driver.
      stitcher.add(index, latents).then(
        () => progress.report(true),
        (e: unknown) => {
          if (!this.abort.signal.aborted) this.abort.abort(new StopRun('stitch', e));
        },
      );
    let workers = source.workers;
    let hops: Hop[] = [];
    if (resume && (await data.hasAllBlocks(this.id, plan.blocks))) {
      // The pipeline finished before the previous run died (stitching lags compute): only the
      // stitch is left, and there is nothing for workers to do.
      // The leased workers stay held until the stitch is done: the tail decodes.
      log.info('every block is in Redis; finishing the stitch only', { job: this.id });
      for (let i = 0; i < plan.blocks && !this.abort.signal.aborted; i++) await onBlock(i, (await data.block(this.id, i))!);
    } else {
      const run = await runDistributedJob(
        // Session ids derive from the driver's job id: a run-unique one keeps a takeover's
        // sessions apart from the dead run's, which workers may still be closing.
        { jobId: this.id, spec, model, keyPrefix: data.prefix(this.id), text, resume, numerics },
        {
          blocks: data.blocks,
          workers: source,
          grantKey: config.grantKey,
          credentials: tlsCredentials(config.tls).client,
          signal: this.abort.signal,
          livenessIntervalMs: config.livenessIntervalMs,
          onBlock,
          onAttempt: (a) => (decoding = a.workers[a.workers.length - 1]),
          onFailover: async (f) => {
            failovers.inc({ reason: f.reason });
            const lost = f.lost.map((w) => w.id);
            // Never rejects: a lost event must not fail a job that can go on.
            await jobs
              .update(this.id, { from: ['running'], event: { name: 'failover', data: { attempt: f.attempt, lost, reason: f.reason, error: f.error } } })
              .catch((err: unknown) => log.warn('recording a failover event failed', { job: this.id, err }));
          },
          onBlockStep: (e) => {
            blockSteps.inc();
            progress.step(e.iteration, e.block);
          },
          log,
        },
      );
      workers = run.workers;
      hops = run.hops;
    }
    this.abort.signal.throwIfAborted();
    await progress.flush();
    const segments = this.d.results.job(this.id);
    this.d.results.ensureSpace();
    await segments.concat(plan.blocks);
    const frameSha256 = videoFrameSha256(await stitcher.digests());
    const latents: Float32Array[] = [];
    for (let i = 0; i < plan.blocks; i++) {
      const b = await data.block(this.id, i);
      if (!b) throw new Error(`block ${i} of job ${this.id} is no longer in Redis`);
      latents.push(b);
    }
    const finishedAt = Date.now();
    const first = (await jobs.get(this.id))?.startedAt ?? now;
    const scheduler = jobSchedulerConfig(modelSource.scheduler, spec);
    const result: VideoResult = {
      frames: spec.frames,
      width: spec.width,
      height: spec.height,
      fps: spec.fps,
      latentSha256: latentSha256(assembleLatents(latents, model.latentChannels, spec.block, plan.latentHeight * plan.latentWidth)),
      frameSha256,
      sampler: scheduler.kind,
      shift: scheduler.flowShift,
      numerics,
      contentUrl: urlsOf(this.id).content,
      seconds: (finishedAt - first) / 1000,
      hops,
    };
    const done = await jobs.update(this.id, {
      status: 'succeeded',
      fields: { result, finishedAt, owner: null, workers, progress: { blocksDone: plan.blocks, blockStepsDone: plan.blockSteps, etaSeconds: 0 } },
      event: { name: 'succeeded', data: { result } },
    });
    if (!done.changed) {
      // Canceled while the last steps ran; otherwise another run finished it first.
      if (done.previous === 'canceled') throw new StopRun('cancel');
      return;
    }
    segments.removeSegments(plan.blocks);
    jobDuration.observe({ status: 'succeeded' }, (finishedAt - rec.createdAt) / 1000);
    await data.expire(this.id, config.retentionSeconds);
    log.info('job succeeded', { job: this.id, latentSha256: result.latentSha256, frameSha256, seconds: result.seconds });
  }

  /** Decides what an ended-early run means for the BullMQ job and the record. */
  private async settleFailure(rec: VideoRecord, e: unknown): Promise<void> {
    if (e instanceof DelayedError || e instanceof WaitingError) throw e;
    const reason = this.abort.signal.reason as unknown;
    const stop = reason instanceof StopRun ? reason : e instanceof StopRun ? e : null;
    if (stop?.why === 'cancel') {
      // The record says canceled already (and its duration was observed by the cancel). Its
      // partial files go, and BullMQ records the job as failed, reason `canceled`, never completed.
      this.d.results.remove(this.id);
      throw canceledInQueue();
    }
    if (stop?.why === 'shutdown') {
      // Hand the job back: straight to the queue, no attempt used; the next run resumes from the checkpoint.
      log.info('handing the job back on shutdown', { job: this.id });
      await this.job.moveToWait(this.token);
      throw new WaitingError();
    }
    const error = stop?.why === 'stitch' ? stop : e instanceof Error ? e : new Error(String(e));
    if (stop?.why === 'lease-lost') {
      // Another run holds the job's workers now (this one stalled past its lease): let it be.
      throw error;
    }
    // A full results store fails the job now, with a clear error: a retry would fill it again.
    const noSpace = isNoSpace(stop?.cause ?? e);
    if (noSpace) resultsStoreFailures.inc({ code: 'ENOSPC' });
    const final = noSpace || error instanceof UnrecoverableError || this.job.attemptsMade + 1 >= (this.job.opts.attempts ?? 1);
    if (final) {
      await this.fail(rec, error);
    } else {
      log.warn('job run failed; BullMQ retries it with backoff', { job: this.id, attempt: this.job.attemptsMade + 1, err: error });
      await this.d.jobs.update(this.id, { from: ['running'], status: 'queued', fields: { owner: null, error: { message: error.message } }, event: { name: 'retrying', data: { error: error.message } } });
    }
    throw error;
  }

  private async fail(rec: VideoRecord, error: Error): Promise<void> {
    const finishedAt = Date.now();
    const r = await this.d.jobs.update(this.id, { status: 'failed', fields: { error: { message: error.message }, finishedAt, owner: null }, event: { name: 'failed', data: { error: { message: error.message } } } });
    if (r.changed) {
      // A failed job's partial segments and previews would only fill the store.
      try {
        this.d.results.remove(this.id);
      } catch (err) {
        log.warn('removing a failed job\'s files failed', { job: this.id, err });
      }
      jobDuration.observe({ status: 'failed' }, (finishedAt - rec.createdAt) / 1000);
      await this.d.data.expire(this.id, this.d.config.retentionSeconds);
      log.error('job failed', { job: this.id, err: error });
    }
  }
}

/** Tries of one block's decode before the stitch fails (each after the decoding worker failed). */
const DECODE_TRIES = 5;
/** How long a failed decode waits for the driver to replace the decoding worker before trying again. */
const DECODE_RETRY_WAIT_MS = 10_000;

/**
 * Turns finished blocks, strictly in order, into one MP4 segment each. The controller never
 * decodes: a worker of the job does (decodeBlockOnWorker) and streams the rgb24 frames back, and
 * this encodes them. No decoder state lives here or in Redis: a worker that is not at the block
 * (a new one after a failure, a takeover) rebuilds the VAE's cache from the blocks in Redis.
 * Each block's frame digest is kept in Redis for the job's frameSha256.
 */
export class BlockStitcher {
  private next = 0;
  private readonly segments: SegmentDir;

  constructor(
    private readonly id: string,
    private readonly spec: JobSpec,
    private readonly plan: JobPlan,
    private readonly data: JobDataRepository,
    private readonly results: ResultStore,
    private readonly jobs: VideoStore,
    /** The worker that decodes now (the tail of the driver's current attempt). */
    private readonly decodingWorker: () => DriverWorker,
    /** A component grant of the job's current run, fresh for each call. */
    private readonly grant: () => string,
    private readonly signal: AbortSignal,
  ) {
    this.segments = results.job(id);
  }

  get blocksDone(): number {
    return this.next;
  }

  /** Picks up a previous run's work: the leading blocks whose segment and frame digest both exist. */
  async prepare(): Promise<void> {
    let done = 0;
    while (done < this.plan.blocks && this.segments.hasSegment(done) && (await this.data.frameDigest(this.id, done)) !== null) done++;
    this.next = done;
    if (done > 0) log.info('continuing the stitch', { job: this.id, blocks: done });
  }

  /** Every block's frame digest, in order (after the last block). */
  async digests(): Promise<string[]> {
    const out: string[] = [];
    for (let i = 0; i < this.plan.blocks; i++) {
      const d = await this.data.frameDigest(this.id, i);
      if (d === null) throw new Error(`the frame digest of block ${i} of job ${this.id} is no longer in Redis`);
      out.push(d);
    }
    return out;
  }

  async add(index: number, _latents: Float32Array): Promise<void> {
    if (index < this.next) {
      // Stitched by an earlier run; its event may not have been recorded before that run died.
      await this.jobs.blockDone(this.id, index, this.blockEvent(index));
      return;
    }
    if (index !== this.next) throw new Error(`stitching needs block ${this.next} next, got block ${index}`);
    const { width, height, fps } = this.spec;
    const decoded = await this.decode(index);
    if (decoded.width !== width || decoded.height !== height) throw new Error(`the VAE decoded ${decoded.width}x${decoded.height} frames; the job is ${width}x${height}`);
    this.results.ensureSpace();
    await this.segments.writeSegment(index, decoded.rgb, { width, height, fps });
    await this.segments.writePreview(index, await previewJpeg(decoded.rgb.subarray(0, width * height * 3), width, height));
    // Segment first, digest second: a crash in between decodes this block again, never skips it.
    await this.data.saveFrameDigest(this.id, index, decoded.sha256);
    this.next++;
    stitchedBlocks.inc();
    await this.jobs.blockDone(this.id, index, this.blockEvent(index));
  }

  /**
   * Decodes block `index` on the decoding worker; when that worker fails (lost, killed), waits
   * for the driver to replace it (or a while) and asks again: the new worker rebuilds the cache.
   */
  private async decode(index: number): Promise<DecodedFrames> {
    const { block, model } = this.spec;
    const request = { jobId: this.id, model, keyPrefix: this.data.prefix(this.id), index, blocks: this.plan.blocks, block, latentHeight: this.plan.latentHeight, latentWidth: this.plan.latentWidth };
    for (let attempt = 1; ; attempt++) {
      const worker = this.decodingWorker();
      try {
        const d = await decodeBlockOnWorker(worker, { ...request, grant: this.grant() }, this.signal);
        if (d.rebuiltLatentFrames > 0) log.info('decoder cache rebuilt on the decoding worker', { job: this.id, block: index, worker: worker.id, latentFrames: d.rebuiltLatentFrames });
        return d;
      } catch (e) {
        this.signal.throwIfAborted();
        const code = (e as { code?: number }).code;
        if ((code !== undefined && PERMANENT_GRPC_CODES.has(code)) || attempt >= DECODE_TRIES) throw e;
        log.warn('decoding a block failed; trying again', { job: this.id, block: index, worker: worker.id, attempt, err: e });
        const until = Date.now() + DECODE_RETRY_WAIT_MS;
        while (Date.now() < until && this.decodingWorker().id === worker.id && !this.signal.aborted) await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  private blockEvent(index: number) {
    return { index, previewUrl: `/v1/videos/${this.id}/blocks/${index}/preview.jpg` };
  }
}

/** Throttled progress: the record and a `progress` event at most every 250 ms, and at each block. */
class ProgressReporter {
  private done = 0;
  private readonly startedAt = Date.now();
  private startDone: number | null = null;
  private last = 0;
  private pending: Promise<void> = Promise.resolve();

  constructor(
    private readonly id: string,
    private readonly plan: JobPlan,
    private readonly steps: number,
    private readonly jobs: VideoStore,
    private readonly blocksDone: () => number,
    private readonly onInactive: () => void,
  ) {}

  step(iteration: number, block: number): void {
    this.done = Math.max(this.done, blockStepsThrough(this.plan, this.steps, iteration, block));
    this.startDone ??= this.done - 1;
    this.report(false);
  }

  report(force: boolean): void {
    const now = Date.now();
    if (!force && now - this.last < 250) return;
    this.last = now;
    this.pending = this.pending.then(() => this.write()).catch((err: unknown) => log.warn('progress update failed', { job: this.id, err }));
  }

  flush(): Promise<void> {
    return this.pending;
  }

  private async write(): Promise<void> {
    const elapsed = (Date.now() - this.startedAt) / 1000;
    const rate = elapsed > 0 && this.startDone !== null ? (this.done - this.startDone) / elapsed : 0;
    const etaSeconds = rate > 0 ? Math.round(((this.plan.blockSteps - this.done) / rate) * 10) / 10 : null;
    const progress = { blocksDone: this.blocksDone(), blocks: this.plan.blocks, blockStepsDone: this.done, blockSteps: this.plan.blockSteps, etaSeconds };
    const r = await this.jobs.update(this.id, { from: ['running'], fields: { progress: { blockStepsDone: this.done, etaSeconds } }, event: { name: 'progress', data: progress } });
    // The record left `running` (canceled from another replica whose message we missed): stop.
    if (!r.changed) this.onInactive();
  }
}
