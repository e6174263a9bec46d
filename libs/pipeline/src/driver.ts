import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { JOB_RUN_TTL_SECONDS, type BlockStore, type JobTextStore, type StoredTextRef, type WorkerGpu, type WorkerTopology } from '@longshot/cache';
import { SINGLE_LAYOUT, groupSize, resolveModel, validateLayout, type ModelConfig, type StageLayout, type TextEmbeddings } from '@longshot/model';
import {
  DEFAULT_PLANNER_PROFILE,
  getProfile,
  hopBytes,
  linkSeconds,
  partitionLayers,
  placementLinks,
  planJob,
  type HardwareProfile,
  type JobSpec,
  type LayerRange,
  type LinkKind,
} from '@longshot/planner';
import type { Logger } from '@longshot/telemetry';
import {
  ComponentKind,
  createWorkerClient,
  dataPlaneEndpoint,
  fromWireTransport,
  Role,
  runComponent,
  signGrant,
  toWireDtype,
  type DataPlaneEndpoint,
  type GrantKey,
  type HopTransport,
  type SessionGrant,
  type PayloadDtype,
  type SessionEvent,
  type WorkerClient,
} from '@longshot/transport';
import { stagePlacement } from './placement';

export interface DriverWorker {
  readonly id: string;
  readonly address: string;
  /** The worker's numerics fingerprint (see numericsFingerprint in @longshot/engine). */
  readonly numerics: string;
  /** What its data plane accepts, as registered; absent: tensor bytes reach it over gRPC only. */
  readonly dataPlane?: Omit<DataPlaneEndpoint, 'nccl'> & { readonly nccl?: boolean };
  /** Its GPU, NVLink domain and network link, as registered (placement.ts `stagePlacement`). */
  readonly topology?: WorkerTopology;
}

/** One stage-to-stage link of a job and how its tensor bytes travel (the tail's goes to the head). */
export interface Hop {
  readonly from: number;
  readonly to: number;
  readonly transport: HopTransport;
  /** The link the planner's cost model gives it from where the two stages run (docs/dataplane.md "Placement"). */
  readonly link: ModelledLink;
}

export interface ModelledLink {
  readonly kind: LinkKind;
  readonly bytesPerSecond: number;
  readonly latencySeconds: number;
  /** Modelled seconds for the hop's tensor of one block-step to cross it. */
  readonly seconds: number;
}

/** Where one stage of a job ran, as its worker registered. */
export interface StagePlace {
  readonly stage: number;
  readonly worker: string;
  /** Its data plane's host id; null for a worker on gRPC only. */
  readonly host: string | null;
  readonly nvlinkDomain: string | null;
  readonly gpu: WorkerGpu | null;
}

/** Where the driver gets workers from: leases on registered workers (LeasedWorkers). */
export interface WorkerSource {
  /** The run the workers are leased to: session grants name it, and it fences the job's writes. */
  readonly run: string;
  /**
   * Workers for `count` stages, none of them in `exclude`, all of one numerics fingerprint:
   * `numerics` when given (a job pinned to the fingerprint it started on).
   */
  pick(count: number, exclude: ReadonlySet<string>, numerics?: string | null): Promise<DriverWorker[]>;
  alive(id: string): Promise<boolean>;
  /** Called when the driver stops using workers (job ended or an attempt was abandoned). */
  release?(ids: readonly string[]): Promise<void>;
}

export interface DistributedJob {
  readonly jobId: string;
  readonly spec: JobSpec;
  /**
   * The model's config when the caller resolved spec.model itself (a name in its models
   * directory, ModelCatalog); otherwise spec.model is resolved here as a built-in name or path.
   */
  readonly model?: ModelConfig;
  /** Redis key prefix of the job: checkpoints and finished blocks live under it. */
  readonly keyPrefix: string;
  /**
   * Explicit text embeddings; null has the model's text encoder run once, on the head worker
   * of the first attempt that gets that far (RunComponent), on spec.prompt and spec.negativePrompt.
   */
  readonly text: TextEmbeddings | null;
  readonly wireDtype?: PayloadDtype;
  /**
   * Each of the K stages as a group of workers (docs/parallelism.md): Ulysses and/or CFG
   * parallel. Absent: one worker per stage. The latents do not depend on it.
   */
  readonly layout?: StageLayout;
  /** Emulated compute only: tensors on the wire are this many times smaller. */
  readonly payloadScale?: number;
  /**
   * Start from the job's last checkpoint in Redis, if it has one (a retry after the driver
   * itself was lost, e.g. another controller replica taking the job over). Failovers within
   * this call always resume.
   */
  readonly resume?: boolean;
  /**
   * The numerics fingerprint the job started on (a takeover); null or absent: the first
   * attempt's workers choose it. Every attempt runs on workers of that fingerprint only.
   */
  readonly numerics?: string | null;
}

export interface DriverOptions {
  readonly blocks: BlockStore;
  /** Where the job's text embeddings are stored once for every stage to read (not sent with each session). */
  readonly jobText: JobTextStore;
  readonly workers: WorkerSource;
  /** Signs the session grants workers require (the current key of the deployment's grant keys). */
  readonly grantKey: GrantKey;
  /** How long a grant is valid; a session outlives it, only opening one needs it. Default 5 minutes. */
  readonly grantTtlMs?: number;
  /** Credentials of the links to workers (mTLS when they require it); default plaintext. */
  readonly credentials?: grpc.ChannelCredentials;
  /** Final latents of each block, in block order, exactly once. */
  onBlock(index: number, latents: Float32Array): Promise<void> | void;
  onBlockStep?(e: { iteration: number; block: number; step: number }): void;
  /** When an attempt's sessions are open: its workers, head first, where it resumed, and how long its set-up took (Attempt.openSeconds). */
  onAttempt?(a: { attempt: number; workers: readonly DriverWorker[]; startIteration: number; openSeconds: number }): void;
  /** When an attempt was lost and another one is about to start (awaited before it starts). */
  onFailover?(f: Failover): Promise<void> | void;
  readonly log?: Logger;
  /** Failovers before the job fails. */
  readonly maxRecoveries?: number;
  /** The hardware profile of the cost model the hops' links are modelled with (default DEFAULT_PLANNER_PROFILE). */
  readonly plannerProfile?: HardwareProfile;
  readonly livenessIntervalMs?: number;
  /** No event from the head for this long counts as a lost stage. */
  readonly stallTimeoutMs?: number;
  readonly signal?: AbortSignal;
}

export interface Attempt {
  readonly workers: string[];
  readonly startIteration: number;
  readonly error: string | null;
  /**
   * Seconds from the attempt's start (leasing its workers) until its sessions were open: the
   * job's set-up (text embeddings stored, sessions opened); null when it failed before.
   */
  readonly openSeconds: number | null;
}

export interface DistributedResult {
  /** Workers of the attempt that finished, stage by stage (head first), each stage's group in rank order. */
  readonly workers: string[];
  /** K stages of groups of `ulysses` x (cfgParallel ? 2 : 1) workers. */
  readonly layout: { readonly stages: number } & StageLayout;
  readonly layers: [number, number][];
  readonly attempts: Attempt[];
  /** Block-step results the head applied, over all attempts, as reported to this driver. */
  readonly blockStepsApplied: number;
  /** Applied beyond the plan's count: work redone after failures. */
  readonly recomputedBlockSteps: number;
  /** Peak resident memory per worker (from the last attempt's session close). */
  readonly maxRssBytes: Record<string, number>;
  /** Retained memory per worker after each block, in order (workers started with --memory-probe only). */
  readonly retainedBytes: Record<string, number[]>;
  /** Where the prompt was encoded (null when the job brought its embeddings). */
  readonly textEncoder: TextEncoderRun | null;
  /** The numerics fingerprint every stage of every attempt computed with. */
  readonly numerics: string;
  /** The hops of the attempt that finished, as each sending stage chose them, with their modelled links (none for K = 1). */
  readonly hops: Hop[];
  /** Where each stage of the attempt that finished ran, head first; a stage group: one entry per member, in rank order. */
  readonly placement: StagePlace[];
}

export interface TextEncoderRun {
  readonly worker: string;
  readonly description: string;
  /** The embeddings came from the worker's Redis cache. */
  readonly cacheHit: boolean;
  /** Prompt tokens cut off at the model's text length. */
  readonly truncatedTokens: number;
}

/**
 * Why the driver gave up on an attempt and started another (the `reason` label of the
 * controller's failover counter, the `reason` of the `failover` event):
 * heartbeat: a stage's worker stopped heartbeating; stage_failed: a stage reported a failure;
 * stream: the head's event stream broke or ended early; stall: no progress past the stall
 * timeout; rpc: a call to a worker (opening sessions, the text encoder) failed.
 */
export const FAILOVER_REASONS = ['heartbeat', 'stage_failed', 'stream', 'stall', 'rpc'] as const;
export type FailoverReason = (typeof FAILOVER_REASONS)[number];

/** A failed attempt the driver recovers from: the next attempt starts without the lost workers. */
export interface Failover {
  /** The attempt starting now, counting from 1 (the first failover starts attempt 2). */
  readonly attempt: number;
  /** The workers no longer used (dead, or named by the failure). */
  readonly lost: readonly DriverWorker[];
  readonly reason: FailoverReason;
  readonly error: string;
}

/** A stage was lost (process died, stream broke, stall); the job can resume elsewhere. */
class StageLost extends Error {
  constructor(
    message: string,
    readonly address: string | null,
    readonly reason: FailoverReason,
  ) {
    super(message);
  }
}

/** gRPC codes meaning the request itself is wrong: retrying elsewhere would fail the same way. */
export const PERMANENT_GRPC_CODES: ReadonlySet<number> = new Set([grpc.status.INVALID_ARGUMENT, grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED, grpc.status.UNIMPLEMENTED]);

interface OpenedSession {
  worker: DriverWorker;
  client: WorkerClient;
  sessionId: string;
  token: string;
  /** How it sends to the next stage, once open. */
  nextTransport?: HopTransport;
}

/**
 * Runs one job across K worker processes: opens a stage session on each (head last, since it
 * starts the job), watches the head, hands finished blocks over in order, and when a stage is
 * lost replaces its worker and resumes every stage from the head's last checkpoint.
 */
export async function runDistributedJob(job: DistributedJob, o: DriverOptions): Promise<DistributedResult> {
  const config = job.model ?? resolveModel(job.spec.model).config;
  const plan = planJob(job.spec);
  const ranges = partitionLayers(config.layers, job.spec.stages);
  const layout = validateLayout(job.layout ?? SINGLE_LAYOUT, config.heads);
  const attempts: Attempt[] = [];
  const dead = new Set<string>();
  const maxRecoveries = o.maxRecoveries ?? 3;
  let nextBlock = 0;
  let applied = 0;
  let draining: Promise<void> = Promise.resolve();
  const drain = (): Promise<void> => {
    draining = draining.then(async () => {
      while (nextBlock < plan.blocks) {
        const latents = await o.blocks.get(job.keyPrefix, nextBlock);
        if (!latents) return;
        await o.onBlock(nextBlock, latents);
        nextBlock++;
      }
    });
    return draining;
  };
  // On a takeover, blocks finished before it are already in Redis: hand them over first.
  if (job.resume) void drain();

  // Session ids must not collide with a previous run of the same job (e.g. a controller replica
  // that died) whose sessions workers may still be closing.
  const run = randomBytes(4).toString('hex');
  let textEncoder: TextEncoderRun | null = null;
  /** The job's text embeddings for its stages, stored once per run (fenced by it). */
  let storedText: StoredTextRef | null = null;
  let numerics = job.numerics ?? null;
  const grant = (stage: number, layerBegin: number, layerEnd: number): string =>
    signJobGrant({ job: job.jobId, run: o.workers.run, keyPrefix: job.keyPrefix, stage, layerBegin, layerEnd }, o.grantKey, o.grantTtlMs);
  for (let attempt = 0; ; attempt++) {
    o.signal?.throwIfAborted();
    const attemptStart = performance.now();
    let openSeconds: number | null = null;
    const workers = await o.workers.pick(ranges.length * groupSize(layout), dead, numerics);
    const mixed = workers.find((w) => w.numerics !== workers[0].numerics || (numerics !== null && w.numerics !== numerics));
    if (mixed) {
      await o.workers.release?.(workers.map((w) => w.id));
      throw new Error(`worker ${mixed.id} computes with numerics ${mixed.numerics}, not ${numerics ?? workers[0].numerics}: a job never mixes fingerprints`);
    }
    numerics = workers[0].numerics;
    const sessions: OpenedSession[] = [];
    let startIteration = 0;
    try {
      // From here on only this run's writes land under the job's prefix: a superseded run's
      // sessions still running somewhere are fenced off (JobKeyspace.put).
      await o.blocks.claimRun(job.keyPrefix, o.workers.run, JOB_RUN_TTL_SECONDS);
      if (!storedText && job.text) storedText = await o.jobText.put(job.keyPrefix, job.text, o.workers.run);
      if (!storedText) {
        // The encoder stores its output for the stages itself: the embeddings never pass through here.
        const encoded = await encodeOnWorker(job, workers[0], o, grant(-1, 0, 0));
        storedText = encoded.stored;
        textEncoder = encoded.run;
      }
      const opened = await openSessions(job, storedText, workers, ranges, layout, `${run}.a${attempt}`, attempt > 0, (k) => grant(k, ranges[k].l0, ranges[k].l1), o.credentials);
      sessions.push(...opened.sessions);
      startIteration = opened.startIteration;
      openSeconds = (performance.now() - attemptStart) / 1000;
      // The hops run between the stages' rank-0 workers (each group's first).
      const links = modelledLinks(job.spec, config, workers.filter((_, i) => i % groupSize(layout) === 0), o.plannerProfile ?? getProfile(DEFAULT_PLANNER_PROFILE));
      o.log?.info('job attempt started', { job: job.jobId, attempt, workers: workers.map((w) => w.id), startIteration, links: links.map((l) => l.kind) });
      o.onAttempt?.({ attempt, workers, startIteration, openSeconds });
      await watchHead(sessions, o, {
        onEvent: (e) => {
          switch (e.event?.$case) {
            case 'blockStep':
              applied++;
              o.onBlockStep?.(e.event.value);
              break;
            case 'blockFinished':
              void drain();
              break;
          }
        },
      });
      // The head is done: every block is in Redis and the stages have nothing left to do. Close
      // them now, before waiting for deliveries (decoding, stitching) that may lag far behind:
      // a session left without its watcher closes itself after a grace period and its figures
      // (peak and retained memory) would be lost.
      const closed = await closeSessions(sessions);
      await drain();
      if (nextBlock !== plan.blocks) throw new Error(`the head finished but only ${nextBlock} of ${plan.blocks} blocks are in Redis`);
      attempts.push({ workers: workers.map((w) => w.id), startIteration, error: null, openSeconds });
      await o.workers.release?.(workers.map((w) => w.id));
      const K = ranges.length;
      return {
        workers: workers.map((w) => w.id),
        layout: { stages: K, ...layout },
        layers: ranges.map((r) => [r.l0, r.l1]),
        attempts,
        blockStepsApplied: applied,
        recomputedBlockSteps: Math.max(0, applied - plan.blockSteps),
        maxRssBytes: closed.maxRssBytes,
        retainedBytes: closed.retainedBytes,
        textEncoder,
        numerics,
        hops: K > 1 ? sessions.slice(0, K).map((x, k) => ({ from: k, to: (k + 1) % K, transport: x.nextTransport ?? 'grpc', link: links[k] })) : [],
        placement: workers.map((w, i) => ({ stage: Math.floor(i / groupSize(layout)), worker: w.id, host: w.dataPlane?.hostId || null, nvlinkDomain: w.topology?.nvlinkDomain || null, gpu: w.topology?.gpu ?? null })),
      };
    } catch (e) {
      await closeSessions(sessions).catch(() => undefined);
      await o.workers.release?.(workers.map((w) => w.id));
      const error = e instanceof Error ? e : new Error(String(e));
      attempts.push({ workers: workers.map((w) => w.id), startIteration, error: error.message, openSeconds });
      if (o.signal?.aborted) throw o.signal.reason ?? error;
      const code = (e as { code?: number }).code;
      const recoverable = e instanceof StageLost || (code !== undefined && !PERMANENT_GRPC_CODES.has(code));
      if (!recoverable || attempt >= maxRecoveries) throw error;
      const lost = await lostWorkers(workers, o, e instanceof StageLost ? e.address : null);
      for (const w of lost) dead.add(w.id);
      const reason: FailoverReason = e instanceof StageLost ? e.reason : 'rpc';
      o.log?.warn('stage lost; resuming from the last checkpoint', { job: job.jobId, attempt, reason, error: error.message, excluded: [...dead] });
      await o.onFailover?.({ attempt: attempt + 2, lost, reason, error: error.message });
    }
  }
}

/**
 * The planner's view of an attempt's hops: each hop's link from where its two stages run
 * (placementLinks), with the modelled seconds of its tensor per block-step.
 */
export function modelledLinks(spec: JobSpec, model: ModelConfig, workers: readonly DriverWorker[], profile: HardwareProfile): ModelledLink[] {
  const bytes = hopBytes(spec, model, workers.length);
  return placementLinks(workers.map(stagePlacement), profile.links).map((l, k) => ({ kind: l.kind, bytesPerSecond: l.bytesPerSecond, latencySeconds: l.latencySeconds, seconds: linkSeconds(bytes[k], l) }));
}

/**
 * Runs the model's text encoder on `worker` (the head of this attempt: a worker the job holds
 * already, whose stage is loaded only after the encoder has run and been freed). A lost or
 * failing worker is a lost stage: the attempt loop excludes it and picks another. A refused
 * request (INVALID_ARGUMENT: bad prompt or model) fails the job.
 */
/** Default lifetime of a session grant: a session outlives it, only opening one needs it. */
const GRANT_TTL_MS = 5 * 60_000;

/**
 * A session grant of the job's current run: for a stage (its layers) or, with stage -1 and no
 * layers, for a component call (the text encoder, the VAE decoder).
 */
export function signJobGrant(g: Omit<SessionGrant, 'expiresAt'>, key: GrantKey, ttlMs = GRANT_TTL_MS): string {
  return signGrant({ ...g, expiresAt: Date.now() + ttlMs }, key);
}

async function encodeOnWorker(job: DistributedJob, worker: DriverWorker, o: DriverOptions, grant: string): Promise<{ stored: StoredTextRef; run: TextEncoderRun }> {
  const client = createWorkerClient(worker.address, { credentials: o.credentials });
  try {
    const r = await runComponent(
      client,
      { kind: ComponentKind.COMPONENT_KIND_TEXT_ENCODER, model: job.spec.model, jobId: job.jobId, input: { $case: 'text', value: { prompt: job.spec.prompt, negativePrompt: job.spec.negativePrompt, storeForJob: true } }, grant },
      { signal: o.signal, deadlineMs: TEXT_ENCODER_DEADLINE_MS },
    );
    const stored = r.summary.storedText;
    if (!stored) throw new Error(`text encoder on ${worker.id} stored no text embeddings for the job`);
    const run = { worker: worker.id, description: r.summary.description, cacheHit: r.summary.cacheHit, truncatedTokens: r.summary.truncatedTokens };
    o.log?.info('prompt encoded', { job: job.jobId, ...run });
    return { stored: { byteLength: Number(stored.byteLength), crc32: stored.crc32 }, run };
  } catch (e) {
    o.signal?.throwIfAborted();
    const code = (e as { code?: number }).code;
    if (code !== undefined && PERMANENT_GRPC_CODES.has(code)) throw e;
    throw new StageLost(`text encoder on ${worker.id} failed: ${(e as Error).message}`, worker.address, 'rpc');
  } finally {
    client.close();
  }
}


/** The encoder of a 5-billion-parameter umT5 on CPU takes minutes; a hung worker must not hold a job forever. */
const TEXT_ENCODER_DEADLINE_MS = 30 * 60_000;

/**
 * Opens every stage's sessions. `workers` holds each stage's group in turn (rank 0 first); the
 * result lists the K rank-0 sessions (the stages as the pipeline sees them, head first), then
 * the other members.
 */
async function openSessions(
  job: DistributedJob,
  text: StoredTextRef,
  workers: DriverWorker[],
  ranges: LayerRange[],
  layout: StageLayout,
  attemptName: string,
  failover: boolean,
  grant: (stage: number) => string,
  credentials: grpc.ChannelCredentials | undefined,
): Promise<{ sessions: OpenedSession[]; startIteration: number }> {
  const K = ranges.length;
  const G = groupSize(layout);
  if (workers.length !== K * G) throw new Error(`need ${K * G} workers, got ${workers.length}`);
  const open1 = (worker: DriverWorker, id: string): OpenedSession => ({ worker, client: createWorkerClient(worker.address, { credentials }), sessionId: id, token: randomBytes(24).toString('hex') });
  const groups = ranges.map((_, k) => Array.from({ length: G }, (_, r) => open1(workers[k * G + r], `${job.jobId}.${attemptName}.s${k}${r === 0 ? '' : `.m${r}`}`)));
  const sessions: OpenedSession[] = [...groups.map((g) => g[0]), ...groups.flatMap((g) => g.slice(1))];
  const s = job.spec;
  // Records written before NCCL existed have no nccl flag: the wire message always carries one.
  const wireDataPlane = (w: DriverWorker): DataPlaneEndpoint | undefined => (w.dataPlane ? { ...w.dataPlane, nccl: w.dataPlane.nccl === true } : undefined);
  const groupSpec = (k: number, rank: number) =>
    G === 1 ? undefined : { ulysses: layout.ulysses, cfgParallel: layout.cfgParallel, rank, members: groups[k].map((m) => ({ address: m.worker.address, sessionId: m.sessionId, token: m.token, dataPlane: wireDataPlane(m.worker) })) };
  const request = (k: number, rank: number) => {
    const next = groups[(k + 1) % K][0];
    const prev = groups[(k + K - 1) % K][0];
    const r = ranges[k];
    const hop = K > 1 && rank === 0;
    return {
      jobId: job.jobId,
      sessionId: groups[k][rank].sessionId,
      token: groups[k][rank].token,
      spec: { prompt: s.prompt, frames: s.frames, fps: s.fps, width: s.width, height: s.height, steps: s.steps, guidance: s.guidance, shift: s.shift ?? 0, sampler: s.sampler, block: s.block, context: s.context, stages: s.stages, seed: s.seed, model: s.model },
      layerBegin: r.l0,
      layerEnd: r.l1,
      role: K === 1 ? Role.ROLE_HEAD_TAIL : k === 0 ? Role.ROLE_HEAD : k === K - 1 ? Role.ROLE_TAIL : Role.ROLE_MIDDLE,
      nextAddress: hop ? next.worker.address : '',
      nextSessionId: hop ? next.sessionId : '',
      nextToken: hop ? next.token : '',
      nextDataPlane: hop ? wireDataPlane(next.worker) : undefined,
      // The receiving end of the hop into this stage: whether its tensors land in shared memory.
      // A worker that registered no data plane (gRPC only): the endpoint of one that takes nothing.
      prevDataPlane: hop ? (wireDataPlane(prev.worker) ?? dataPlaneEndpoint('grpc', '', null, false)) : undefined,
      wireDtype: toWireDtype(job.wireDtype ?? 'f32'),
      text: undefined,
      textStored: { byteLength: text.byteLength, crc32: text.crc32 },
      resume: failover || job.resume === true,
      // Workers take the prefix from the grant; this field is ignored.
      keyPrefix: '',
      payloadScale: job.payloadScale ?? 1,
      grant: grant(k),
      group: groupSpec(k, rank),
    };
  };
  const opened: OpenedSession[] = [];
  const open = (k: number, rank: number) =>
    new Promise<number>((resolve, reject) => {
      const x = groups[k][rank];
      x.client.openSession(request(k, rank), new grpc.Metadata(), { deadline: Date.now() + 120_000 }, (err, res) => {
        if (err) return reject(err);
        x.nextTransport = fromWireTransport(res.nextTransport) ?? undefined;
        opened.push(x);
        resolve(res.startIteration);
      });
    });
  // Every group member and downstream stage first: the head starts streaming as soon as it is open.
  try {
    await Promise.all(groups.flatMap((g, k) => g.map((_, rank) => (k === 0 && rank === 0 ? null : open(k, rank)))));
    const startIteration = await open(0, 0);
    return { sessions, startIteration };
  } catch (e) {
    await closeSessions(opened).catch(() => undefined);
    for (const x of sessions) if (!opened.includes(x)) x.client.close();
    throw e;
  }
}

/** Follows the head's events until the job is done; rejects with StageLost when a stage is lost. */
function watchHead(sessions: OpenedSession[], o: DriverOptions, h: { onEvent(e: SessionEvent): void }): Promise<void> {
  const head = sessions[0];
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    let lastEvent = Date.now();
    const call = head.client.watchSession({ sessionId: head.sessionId, token: head.token });
    const finish = (err: Error | null) => {
      if (settled) return;
      settled = true;
      clearInterval(timer);
      o.signal?.removeEventListener('abort', onAbort);
      call.cancel();
      if (err) reject(err);
      else resolve();
    };
    const onAbort = () => finish(o.signal?.reason instanceof Error ? o.signal.reason : new Error('canceled'));
    o.signal?.addEventListener('abort', onAbort);
    call.on('data', (e: SessionEvent) => {
      lastEvent = Date.now();
      if (e.event?.$case === 'done') return finish(null);
      if (e.event?.$case === 'failed') return finish(new StageLost(`stage failed: ${e.event.value.message}`, e.event.value.address || null, 'stage_failed'));
      h.onEvent(e);
    });
    call.on('error', (err: grpc.ServiceError) => {
      if (err.code === grpc.status.CANCELLED && settled) return;
      finish(new StageLost(`lost the head (${head.worker.id}): ${err.details || err.message}`, head.worker.address, 'stream'));
    });
    call.on('end', () => finish(new StageLost(`the head (${head.worker.id}) ended its event stream before the job was done`, head.worker.address, 'stream')));
    const interval = o.livenessIntervalMs ?? 500;
    const stallMs = o.stallTimeoutMs ?? 120_000;
    let checking = false;
    const timer = setInterval(() => {
      if (checking || settled) return;
      if (Date.now() - lastEvent > stallMs) return finish(new StageLost(`no progress for ${stallMs} ms`, null, 'stall'));
      checking = true;
      Promise.all(sessions.map(async (s) => ((await o.workers.alive(s.worker.id)) ? null : s.worker)))
        .then((lost) => {
          const gone = lost.find((w) => w !== null);
          if (gone) finish(new StageLost(`worker ${gone.id} stopped heartbeating`, gone.address, 'heartbeat'));
        })
        .catch(() => undefined)
        .finally(() => (checking = false));
    }, interval);
  });
}

/** Closes every session (best-effort) and returns each worker's memory figures. */
async function closeSessions(sessions: OpenedSession[]): Promise<Pick<DistributedResult, 'maxRssBytes' | 'retainedBytes'>> {
  const rss: Record<string, number> = {};
  const retained: Record<string, number[]> = {};
  await Promise.all(
    sessions.map(
      (s) =>
        new Promise<void>((resolve) => {
          s.client.closeSession({ sessionId: s.sessionId, token: s.token }, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (err, res) => {
            if (!err) {
              rss[s.worker.id] = res.maxRssBytes;
              retained[s.worker.id] = res.retainedBytes;
            }
            s.client.close();
            resolve();
          });
        }),
    ),
  );
  return { maxRssBytes: rss, retainedBytes: retained };
}

/**
 * Which workers of a failed attempt to stop using: those the registry no longer sees (waiting up
 * to a heartbeat TTL for a killed process to expire), else the one the failure names.
 */
async function lostWorkers(workers: DriverWorker[], o: DriverOptions, address: string | null): Promise<DriverWorker[]> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const alive = await Promise.all(workers.map((w) => o.workers.alive(w.id)));
    const lost = workers.filter((_, i) => !alive[i]);
    if (lost.length > 0) return lost;
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  return workers.filter((w) => w.address === address);
}
