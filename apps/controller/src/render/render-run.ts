import { randomUUID } from 'node:crypto';
import { DelayedError, UnrecoverableError, WaitingError, type Job } from 'bullmq';
import { isTerminal, type WorkerLeases, type WorkerRegistry } from '@longshot/cache';
import { jobSchedulerConfig } from '@longshot/sampler';
import type { ModelCatalog, ModelSource, TextEmbeddings } from '@longshot/model';
import { candidates, LeasedWorkers, placeByTopology, runDistributedJob, signJobGrant, stagePlacement, type DriverWorker, type Hop, type StagePlace } from '@longshot/pipeline';
import { describeLayout, getProfile, groupWorkers, layoutWorkers, placementLinks, planJob, SINGLE_STAGE_GROUP, type JobSpec, type PipelineLayout } from '@longshot/planner';
import { logger } from '@longshot/telemetry';
import { tlsCredentials } from '@longshot/transport';
import type { ControllerConfig } from '../config';
import { jobDuration, jobSetup, resultsStoreFailures, workersDeadlineFailures } from '../metrics';
import { chooseLayout } from '../planning';
import type { JobDataRepository, ResultStore, UploadRepository } from '../repositories';
import { ProgressReporter } from './progress';
import { canceledInQueue, isPermanentSpecFailure, settle, StopRun, waitForWorkers } from './retry-policy';
import { BlockStitcher, workerBlockDecoder } from './stitcher';
import { urlsOf, type RenderJobData, type ResultLayout, type VideoRecord, type VideoResult, type VideoSpec, type VideoStore } from './video';

const log = logger('render');

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
      if (!isPermanentSpecFailure(e)) throw e;
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
      // A job that ran before (a retry, a takeover) keeps the layout it started on.
      const layout: PipelineLayout = rec.stages !== null ? { stages: rec.stages, ...(rec.layout ?? SINGLE_STAGE_GROUP) } : await this.plan(spec, modelSource);
      const count = layoutWorkers(layout);
      // ... and is pinned to the numerics it started on.
      const reserved = await source.tryLease(count, new Set(), rec.numerics);
      if (!reserved) {
        const wait = waitForWorkers(this.job.data.waitingSince, Date.now(), { deadlineMs: config.workersDeadlineMs, retryMs: config.waitForWorkersMs });
        if (wait.kind === 'deadline') {
          // Waited long enough: a clear failure rather than `queued` forever.
          const serving = candidates(await this.d.registry.list(), spec.model).length;
          workersDeadlineFailures.inc();
          throw new UnrecoverableError(
            `no ${count} free workers (${describeLayout(layout)}) for model ${spec.model} within ${Math.round(config.workersDeadlineMs / 1000)} s (LONGSHOT_WORKERS_DEADLINE_MS); ${serving} registered workers serve it`,
          );
        }
        if (this.job.data.waitingSince === undefined) await this.job.updateData({ ...this.job.data, waitingSince: wait.since });
        await this.job.moveToDelayed(wait.retryAt, this.token);
        throw new DelayedError();
      }
      if (this.job.data.waitingSince !== undefined) await this.job.updateData({ id: this.id });
      source.reserve(reserved);
      await this.runPipeline(rec, { ...spec, stages: layout.stages }, layout, modelSource, text, source, reserved);
    } catch (e) {
      await this.settleFailure(rec, e);
    } finally {
      await source.close().catch((err: unknown) => log.warn('releasing leases failed; they expire by themselves', { job: this.id, err }));
    }
  }

  /**
   * The layout of a job that has none yet: the request's, or where it left stages open the cost
   * model's for the workers free right now (chooseLayout), each candidate priced on the links
   * between the stages' rank-0 workers leasing would give it (placeByTopology: stage k takes the
   * consecutive workers k*G .. k*G+G-1, as the driver assigns them).
   */
  private async plan(spec: VideoSpec, model: ModelSource): Promise<PipelineLayout> {
    const requested = { ulysses: spec.ulysses ?? null, cfgParallel: spec.cfgParallel ?? null };
    if (!spec.autoStages) return { stages: spec.stages, ulysses: requested.ulysses ?? 1, cfgParallel: requested.cfgParallel ?? false };
    const workers = await this.d.registry.list();
    const info = new Map(workers.map((w) => [w.id, w]));
    const live = candidates(workers, spec.model);
    const leased = new Set((await this.d.leases.leases(live)).map((l) => l.worker));
    const free = live.filter((id) => !leased.has(id));
    const profile = getProfile(this.d.config.plannerProfile);
    const linksFor = (l: PipelineLayout) => {
      const G = groupWorkers(l);
      const placed = placeByTopology(free, info, layoutWorkers(l)).slice(0, layoutWorkers(l));
      return placementLinks(placed.filter((_, i) => i % G === 0).map((id) => stagePlacement(info.get(id)!)), profile.links);
    };
    const fixed = { ...(requested.ulysses !== null ? { ulysses: requested.ulysses } : {}), ...(requested.cfgParallel !== null ? { cfgParallel: requested.cfgParallel } : {}) };
    const layout = chooseLayout(spec, model.config, model.vae, free.length, this.d.config.plannerProfile, { fixed, linksFor });
    log.info('layout chosen', { job: this.id, layout: describeLayout(layout), free: free.length });
    return layout;
  }

  /** `reserved`: the leased workers, head first; the job's numerics are theirs (the record's, when the job already had one). */
  private async runPipeline(rec: VideoRecord, spec: JobSpec, layout: PipelineLayout, modelSource: ModelSource, text: TextEmbeddings | null, source: LeasedWorkers, reserved: DriverWorker[]): Promise<void> {
    const numerics = reserved[0].numerics;
    const { config, jobs, data } = this.d;
    const model = modelSource.config;
    const plan = planJob(spec);
    const now = Date.now();
    const attempt = rec.attempts + 1;
    const group = { ulysses: layout.ulysses, cfgParallel: layout.cfgParallel };
    const started = await jobs.update(this.id, {
      status: 'running',
      // The numerics and the layout are recorded with the start, before any block is computed: later runs pin to them.
      fields: { stages: spec.stages, layout: group, workers: source.workers, attempts: attempt, owner: config.id, startedAt: rec.startedAt ?? now, error: null, numerics },
      event: { name: 'started', data: { stages: spec.stages, layout: group, workers: source.workers, attempt } },
    });
    if (!started.changed) {
      if (started.previous === 'canceled') throw new StopRun('cancel'); // canceled between dequeue and start
      return; // another run finished it
    }
    const resume = await data.hasCheckpoint(this.id);
    log.info('job run started', { job: this.id, attempt, layout: describeLayout(layout), workers: source.workers, resume });

    // Blocks are decoded on the tail worker of the current attempt (docs/vae.md, "Where it runs").
    let decoding = reserved[reserved.length - 1];
    const decode = workerBlockDecoder({
      id: this.id,
      spec,
      plan,
      keyPrefix: data.prefix(this.id),
      decodingWorker: () => decoding,
      grant: () => signJobGrant({ job: this.id, run: source.run, keyPrefix: data.prefix(this.id), stage: -1, layerBegin: 0, layerEnd: 0 }, config.grantKey),
      signal: this.abort.signal,
    });
    const stitcher = new BlockStitcher(this.id, spec, plan, data, this.d.results, jobs, decode);
    await stitcher.prepare();
    const progress = new ProgressReporter(this.id, plan, spec.steps, jobs, () => stitcher.blocksDone, () => this.stop('cancel'));
    const onBlock = (index: number): Promise<void> =>
      // Never rejects: the driver chains deliveries, and a stitch failure must stop this run
      // (through the signal), not surface as an unhandled rejection in the driver.
      stitcher.add(index).then(
        () => progress.blockStitched(),
        (e: unknown) => {
          if (!this.abort.signal.aborted) this.abort.abort(new StopRun('stitch', e));
        },
      );
    let workers = source.workers;
    let hops: Hop[] = [];
    let placement: StagePlace[] = [];
    let ran: ResultLayout = { stages: spec.stages, ...group };
    if (resume && (await data.hasAllBlocks(this.id, plan.blocks))) {
      // The pipeline finished before the previous run died (stitching lags compute): only the
      // stitch is left, and there is nothing for workers to do.
      // The leased workers stay held until the stitch is done: the tail decodes.
      log.info('every block is in Redis; finishing the stitch only', { job: this.id });
      for (let i = 0; i < plan.blocks && !this.abort.signal.aborted; i++) await onBlock(i);
    } else {
      const run = await runDistributedJob(
        // Session ids derive from the driver's job id: a run-unique one keeps a takeover's
        // sessions apart from the dead run's, which workers may still be closing.
        { jobId: this.id, spec, model, layout: group, keyPrefix: data.prefix(this.id), text, resume, numerics },
        {
          blocks: data.blocks,
          jobText: data.text,
          workers: source,
          grantKey: config.grantKey,
          credentials: tlsCredentials(config.tls).client,
          signal: this.abort.signal,
          livenessIntervalMs: config.livenessIntervalMs,
          plannerProfile: getProfile(config.plannerProfile),
          onBlock,
          onAttempt: (a) => {
            decoding = a.workers[a.workers.length - 1];
            jobSetup.observe(a.openSeconds);
          },
          onFailover: (f) => progress.failover(f),
          onBlockStep: (e) => progress.step(e.iteration, e.block),
          log,
        },
      );
      workers = run.workers;
      hops = run.hops;
      placement = run.placement;
      ran = { stages: run.layout.stages, ulysses: run.layout.ulysses, cfgParallel: run.layout.cfgParallel };
    }
    this.abort.signal.throwIfAborted();
    await progress.flush();
    const { frameSha256, latentSha256 } = await stitcher.join(model.latentChannels);
    const finishedAt = Date.now();
    const first = (await jobs.get(this.id))?.startedAt ?? now;
    const scheduler = jobSchedulerConfig(modelSource.scheduler, spec);
    const result: VideoResult = {
      frames: spec.frames,
      width: spec.width,
      height: spec.height,
      fps: spec.fps,
      latentSha256,
      frameSha256,
      sampler: scheduler.kind,
      shift: scheduler.flowShift,
      numerics,
      contentUrl: urlsOf(this.id).content,
      seconds: (finishedAt - first) / 1000,
      layout: ran,
      hops,
      placement,
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
    stitcher.removeSegments();
    jobDuration.observe({ status: 'succeeded' }, (finishedAt - rec.createdAt) / 1000);
    await data.expire(this.id, config.retentionSeconds);
    log.info('job succeeded', { job: this.id, latentSha256, frameSha256, seconds: result.seconds });
  }

  /** Carries out what the retry policy decides an ended-early run means for the BullMQ job and the record. */
  private async settleFailure(rec: VideoRecord, e: unknown): Promise<void> {
    const s = settle(e, this.abort.signal.reason, { made: this.job.attemptsMade, allowed: this.job.opts.attempts ?? 1 });
    switch (s.kind) {
      case 'requeued':
        throw e;
      case 'cancel':
        // The record says canceled already (and its duration was observed by the cancel). Its
        // partial files go, and BullMQ records the job as failed, reason `canceled`, never completed.
        this.d.results.remove(this.id);
        throw canceledInQueue();
      case 'hand-back':
        log.info('handing the job back on shutdown', { job: this.id });
        await this.job.moveToWait(this.token);
        throw new WaitingError();
      case 'takeover':
        throw s.error;
      case 'fail':
        if (s.noSpace) resultsStoreFailures.inc({ code: 'ENOSPC' });
        await this.fail(rec, s.error);
        throw s.error;
      case 'retry':
        log.warn('job run failed; BullMQ retries it with backoff', { job: this.id, attempt: this.job.attemptsMade + 1, err: s.error });
        await this.d.jobs.update(this.id, { from: ['running'], status: 'queued', fields: { owner: null, error: { message: s.error.message } }, event: { name: 'retrying', data: { error: s.error.message } } });
        throw s.error;
    }
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
