import { setTimeout as sleep } from 'node:timers/promises';
import type * as grpc from '@grpc/grpc-js';
import { FencedWriteError, JobCheckpoint, type CheckpointStore, type CheckpointWrites } from '@longshot/cache';
import type { Backend } from '@longshot/engine';
import { Stage, validateLayout, type ModelCatalog, type BlockStep, type ForwardOptions, type ModelConfig, type StageInput, type TextEmbeddings } from '@longshot/model';
import { BlockQueue, CommitSchedule, EmulatedLink, EmulatedStage, formatCommitCadence, type CommitCadence, type EmulationOptions, type FinishedBlock, type StageRunner } from '@longshot/pipeline';
import { normalizeSpec, planJob, SpecError, type CheckpointManifest, type JobPlan, type JobSpec } from '@longshot/planner';
import { buildSchedule, jobSchedulerConfig, type Schedule, type SchedulerConfig } from '@longshot/sampler';
import type { Logger } from '@longshot/telemetry';
import {
  chooseHopTransport,
  createWorkerClient,
  DataPlaneSender,
  decodePayload,
  encodePayload,
  fromWireDtype,
  PayloadKind,
  Role,
  sameHostShm,
  toWireDtype,
  toWireTransport,
  TensorSender,
  type DataPlaneEndpoint,
  type DataPlaneMode,
  type DataPlaneTransport,
  type HopTransport,
  type OpenSessionRequest,
  type TensorBytesSender,
  type PayloadDtype,
  type SessionEvent,
  type TensorHeader,
  type WorkerClient,
} from '@longshot/transport';
import { workerMetrics } from './metrics';
import { TensorBuffers } from './tensor-buffers';
import type { RetainedMemorySampler } from './retained-memory';
import { SessionError } from './session-error';
import { FAILURE_REPORT_BYTES, GroupFront, GroupLink, decodeFailureReport, emulatedShapes, groupMessageBound, groupPlace, serveGroupMember, tensorShapes, type GroupShapes } from './stage-group';

export { SessionError };


export interface SessionContext {
  readonly workerId: string;
  readonly backend: Backend;
  readonly checkpoints: CheckpointStore;
  /** Where the head stores checkpoint pieces and finished blocks (a thread of their own in a worker). */
  readonly writes: CheckpointWrites;
  /** The run whose grant opened this session: its Redis writes are fenced by it (see JobKeyspace.put). */
  readonly run: string;
  /** Credentials of the link to the next stage (mTLS when the worker is configured for it). */
  readonly credentials?: grpc.ChannelCredentials;
  /** Seconds a job's keys live after each write; the driver shortens it once the job ends. */
  readonly keyTtlSeconds: number;
  /** Resolves spec.model: a model name, never a path. */
  readonly catalog: ModelCatalog;
  /** How often the head commits a checkpoint: every N iterations or T seconds of work (the last iteration always commits). */
  readonly checkpointEvery: CommitCadence;
  /** Samples retained memory after each block's last step on this stage (null: not sampled). */
  readonly retainedMemory: RetainedMemorySampler | null;
  readonly emulation: Omit<EmulationOptions, 'payloadScale'> | null;
  /**
   * This worker's data-plane mode, host and NCCL device (null: no NCCL): with the next stage's
   * endpoint, they choose the hop's transport.
   */
  readonly dataPlane: { readonly mode: DataPlaneMode; readonly hostId: string; readonly ncclDevice: number | null };
  /**
   * Memory for the session's tensor buffers, zeroed: shared memory that a sender on this host
   * writes a received tensor straight into (the data-plane listener's allocateShared), or
   * ordinary memory (absent: Buffer.alloc).
   */
  readonly allocateTensor?: (bytes: number) => Buffer;
  readonly log: Logger;
  /** Called when the session has lost its driver or upstream for longer than the grace period. */
  readonly onOrphaned: (s: StageSession) => void;
}

/**
 * How long a session may have no driver (head) or upstream (others) before it closes itself. A
 * job whose driver died (e.g. a controller replica killed) is resumed elsewhere from its
 * checkpoint; its old sessions must stop well before that, or two heads would write one job.
 */
const ORPHAN_GRACE_MS = 2000;
/** A new session that never gets a watcher (head) or input (others) within this closes too. */
const UNCLAIMED_GRACE_MS = 120_000;

/** How long closing a head waits for the boundary it is persisting (Redis normally takes milliseconds). */
const PERSIST_ON_CLOSE_MS = 10_000;

/**
 * Block-steps the head keeps issued ahead of the results, per stage of the ring (plus a few): one
 * block-step in each stage and one in each hop keeps every stage busy, twice that absorbs jitter.
 * The ordering rule allows up to the queue's length (min(blocks, steps), 50 at Wan's 50 steps),
 * but each issued block-step holds a window and an output until its result is applied, and
 * issuing all of them only churned memory: at 50 steps (K = 1, 2500 block-steps, time scale 0.05)
 * the head's other threads took 12.9 ms per block-step with 64 in flight, 5.6 ms with 4.
 */
const headInFlight = (stages: number): number => 2 * stages + 2;
/** Forwards a middle stage queues before it stops reading its input stream (backpressure). */
const STAGE_MAX_QUEUED = 2;

/**
 * One stage of one job on this worker: its layer range, its K/V cache (inside the Stage), the
 * link to the next stage, and on the head the block queue, sampler and checkpoints.
 */
export class StageSession {
  readonly id: string;
  readonly token: string;
  readonly jobId: string;
  readonly role: Role;
  readonly spec: JobSpec;
  readonly plan: JobPlan;
  readonly config: ModelConfig;
  private readonly scheduler: SchedulerConfig;
  readonly keyPrefix: string;
  blockSteps = 0;
  /** Retained bytes after each block's last step, in order (with a memory probe only). */
  readonly retainedSamples: number[] = [];
  /** The head's schedule: every stage checks the timesteps it is sent against it. */
  private readonly schedule: Schedule;
  private readonly runner: StageRunner;
  private readonly dtype: PayloadDtype;
  private readonly payloadScale: number;
  private readonly nextAddress: string;
  private readonly nextSessionId: string;
  private readonly nextToken: string;
  private readonly nextDataPlane: DataPlaneEndpoint | undefined;
  /** How tensor bytes travel to the next stage (chosen at open; 'grpc' for K = 1). */
  readonly hop: HopTransport;
  private client: WorkerClient | null = null;
  private sender: TensorSender | null = null;
  private link: EmulatedLink | null = null;
  private sendChain: Promise<void> = Promise.resolve();
  private queued = 0;
  private queueWaiters: (() => void)[] = [];
  private queue: BlockQueue | null = null;
  /** The queue's allocated bytes this session has added to longshot_head_queue_bytes. */
  private queueBytesReported = 0;
  /** Head: the job's checkpoints (pieces stored as they are computed, a manifest per boundary). */
  private checkpoint: JobCheckpoint | null = null;
  /** Persistence of the last completed iteration boundary, while it is in flight. */
  private persisting: Promise<void> | null = null;
  /** The head's committed boundaries (which pieces it stores follows from them). */
  private commits: CommitSchedule | null = null;
  private readonly resume: boolean;
  private closed = false;
  private failure: Error | null = null;
  private events: SessionEvent[] = [];
  private watcher: ((e: SessionEvent) => void) | null = null;
  private endWatch: (() => void) | null = null;
  private ended = false;
  private busy = 0;
  private idleSince = performance.now();
  private lastFinish = 0;
  private orphanTimer: NodeJS.Timeout | null = null;
  private zeroVelocity: Float32Array | null = null;
  /**
   * The memory of this stage's received tensors and forward outputs, reused block-step after
   * block-step (null for a stage group member: its shards are exchanged and read in several runs).
   */
  /** Buffers the forwards write their outputs into. */
  private readonly buffers: TensorBuffers | null;
  /**
   * Buffers received tensors land in: from ctx.allocateTensor (shared memory a sender on this
   * host writes straight into), a pool of their own so that only they cost a shared segment,
   * bounded by the tensors a stage queues (the head's many forward outputs in flight are not).
   * A consumed input, which becomes its forward's output, goes back here.
   */
  private readonly received: TensorBuffers | null;
  private readonly log: Logger;
  /** The channels to the other members when this stage is a group (docs/parallelism.md). */
  private readonly group: GroupLink | null = null;
  /** A group member of rank > 0: takes group tensors only, never talks to other stages. */
  private readonly member: boolean = false;

  /** `storedText`: the job's text embeddings read from Redis (req.text_stored), null when inline. */
  constructor(
    req: OpenSessionRequest,
    storedText: TextEmbeddings | null,
    private readonly ctx: SessionContext,
  ) {
    if (!req.sessionId) throw new SessionError('INVALID_ARGUMENT', 'session_id is required');
    if (req.token.length < 16) throw new SessionError('INVALID_ARGUMENT', 'token must be at least 16 characters');
    if (!req.jobId) throw new SessionError('INVALID_ARGUMENT', 'job_id is required');
    if (!req.spec) throw new SessionError('INVALID_ARGUMENT', 'spec is required');
    if (![Role.ROLE_HEAD, Role.ROLE_MIDDLE, Role.ROLE_TAIL, Role.ROLE_HEAD_TAIL].includes(req.role)) throw new SessionError('INVALID_ARGUMENT', `role ${req.role} is not a stage role`);
    const dtype = fromWireDtype(req.wireDtype === 0 ? toWireDtype('f32') : req.wireDtype);
    if (!dtype) throw new SessionError('INVALID_ARGUMENT', `wire_dtype ${req.wireDtype} is not supported`);
    const s = req.spec;
    try {
      this.spec = normalizeSpec({
        prompt: s.prompt,
        frames: s.frames,
        fps: s.fps,
        width: s.width,
        height: s.height,
        steps: s.steps,
        guidance: s.guidance,
        shift: s.shift === 0 ? undefined : s.shift,
        sampler: s.sampler === '' ? undefined : s.sampler,
        block: s.block,
        context: s.context,
        stages: s.stages,
        seed: s.seed,
        model: s.model,
        textEmbeddings: req.text ? 'inline' : req.textStored ? 'stored' : undefined,
      });
    } catch (e) {
      if (e instanceof SpecError) throw new SessionError('INVALID_ARGUMENT', `spec.${e.message}`);
      throw e;
    }
    this.plan = planJob(this.spec);
    const head = req.role === Role.ROLE_HEAD || req.role === Role.ROLE_HEAD_TAIL;
    const tail = req.role === Role.ROLE_TAIL || req.role === Role.ROLE_HEAD_TAIL;
    let model;
    try {
      model = ctx.catalog.resolve(this.spec.model);
    } catch (e) {
      workerMetrics.modelRefusals.inc();
      throw new SessionError('INVALID_ARGUMENT', `spec.model: ${(e as Error).message}`);
    }
    this.config = model.config;
    this.scheduler = model.scheduler;
    try {
      this.schedule = buildSchedule(jobSchedulerConfig(model.scheduler, { sampler: this.spec.sampler, shift: this.spec.shift }), this.spec.steps);
    } catch (e) {
      throw new SessionError('INVALID_ARGUMENT', `spec: ${(e as Error).message}`);
    }
    const range = { l0: req.layerBegin, l1: req.layerEnd, head, tail };
    if (range.l0 >= range.l1 || range.l1 > this.config.layers) throw new SessionError('INVALID_ARGUMENT', `layer range [${range.l0}, ${range.l1}) is not inside the model's ${this.config.layers} layers`);
    if (head !== (range.l0 === 0)) throw new SessionError('INVALID_ARGUMENT', 'the head holds layer 0 and only the head does');
    if (tail !== (range.l1 === this.config.layers)) throw new SessionError('INVALID_ARGUMENT', 'the tail holds the last layer and only the tail does');
    const place = req.group ? groupPlace(req.group, req.sessionId, req.token) : null;
    if (place) {
      try {
        validateLayout(place.layout, this.config.heads);
      } catch (e) {
        throw new SessionError('INVALID_ARGUMENT', `group: ${(e as Error).message}`);
      }
      this.member = place.rank > 0;
    }
    if (req.role !== Role.ROLE_HEAD_TAIL && !this.member && !req.nextAddress) throw new SessionError('INVALID_ARGUMENT', 'next_address is required for a stage with a successor');
    if (head && !req.keyPrefix) throw new SessionError('INVALID_ARGUMENT', 'key_prefix is required on the head');
    const payloadScale = req.payloadScale || 1;
    if (payloadScale !== 1 && !ctx.emulation) throw new SessionError('INVALID_ARGUMENT', 'payload_scale needs a worker in emulated-compute mode');

    this.id = req.sessionId;
    this.token = req.token;
    this.jobId = req.jobId;
    this.role = req.role;
    this.keyPrefix = req.keyPrefix;
    this.dtype = dtype;
    this.payloadScale = payloadScale;
    this.nextAddress = req.nextAddress;
    this.nextSessionId = req.nextSessionId;
    this.nextToken = req.nextToken;
    this.nextDataPlane = req.nextDataPlane;
    this.hop = req.role === Role.ROLE_HEAD_TAIL ? 'grpc' : chooseHopTransport(ctx.dataPlane.mode, ctx.dataPlane.hostId, req.nextDataPlane, ctx.dataPlane.ncclDevice !== null);
    this.resume = req.resume;
    const fields = { job: this.jobId, session: this.id };
    this.log = {
      debug: (m, f) => ctx.log.debug(m, { ...fields, ...f }),
      info: (m, f) => ctx.log.info(m, { ...fields, ...f }),
      warn: (m, f) => ctx.log.warn(m, { ...fields, ...f }),
      error: (m, f) => ctx.log.error(m, { ...fields, ...f }),
    };

    const link = place && new GroupLink(place, { credentials: ctx.credentials, dataPlane: ctx.dataPlane, onFailure: (e) => this.fail(e) });
    this.group = link;
    // Spares beyond the buffers in use: enough for the steady state (one tensor landing, the
    // queued forwards, one output being sent), a bounded amount of memory held between steps.
    this.buffers = link ? null : new TensorBuffers(STAGE_MAX_QUEUED + 1);
    // Shared memory only where the previous stage will write into it: a sender on another host
    // comes by TCP, and its tensors need not cost shared segments (nor a pod's small /dev/shm).
    const sharedInput = ctx.allocateTensor && (req.prevDataPlane === undefined || sameHostShm(ctx.dataPlane.mode, ctx.dataPlane.hostId, req.prevDataPlane));
    this.received = link ? null : sharedInput ? new TensorBuffers(STAGE_MAX_QUEUED + 1, ctx.allocateTensor) : this.buffers;
    let stage: StageRunner;
    let shapes: GroupShapes | null = null;
    if (ctx.emulation) {
      const emulation = { ...ctx.emulation, payloadScale };
      const member = (rank: number) => new EmulatedStage(this.config, range, emulation, link ? { layout: link.place.layout, rank } : null);
      stage = member(link?.rank ?? 0);
      if (link) shapes = emulatedShapes(link.place.members.map((_, r) => member(r)), payloadScale, this.config);
      this.link = new EmulatedLink(emulation);
    } else {
      const text = this.textOf(req, storedText);
      const group = link ? { layout: link.place.layout, rank: link.rank, collective: link.collective() } : undefined;
      stage = new Stage({ config: this.config, range, weights: model.loadStage(range), backend: ctx.backend, text, guidance: this.spec.guidance, group });
      if (link) shapes = tensorShapes(this.config, link.place.layout, range.head);
    }
    this.runner = link && !this.member ? new GroupFront(stage, link, shapes!) : stage;
  }

  /** Session ids this session also takes tensors on: one per other member of its stage group. */
  get inboxes(): string[] {
    return this.group?.inboxes() ?? [];
  }

  /** The hop's transport as OpenSessionResponse reports it. */
  get nextTransport(): DataPlaneTransport {
    return toWireTransport(this.hop);
  }

  get isHead(): boolean {
    return this.runner.range.head && !this.member;
  }

  get failed(): Error | null {
    return this.failure;
  }

  /** Head: loads the checkpoint when resuming and starts issuing block-steps. */
  async start(): Promise<number> {
    // Until the driver watches (head) or the upstream sends (others), nothing claims this session.
    this.orphan('never claimed by a driver or an upstream stage', UNCLAIMED_GRACE_MS);
    if (this.member) {
      void serveGroupMember(this.runner, this.group!, () => this.blockSteps++).catch((e) => this.fail(e));
      return 0;
    }
    if (!this.isHead) return 0;
    this.checkpoint = new JobCheckpoint(this.ctx.checkpoints, this.ctx.writes, this.keyPrefix, this.ctx.run, this.ctx.keyTtlSeconds);
    const state = this.resume ? await this.checkpoint.load() : null;
    // The checkpoint writer thread reads the pieces the queue hands out in place (storesPieces).
    this.queue = new BlockQueue(this.spec, this.plan, { channels: this.config.latentChannels, scheduler: this.scheduler, state: state ?? undefined, storesPieces: true });
    const startIteration = this.queue.nextIteration;
    this.commits = new CommitSchedule(this.ctx.checkpointEvery, this.plan.iterations, startIteration, performance.now() / 1000);
    this.log.info('head started', { startIteration, resumed: state !== null, checkpointEvery: formatCommitCadence(this.ctx.checkpointEvery) });
    if (this.queue.done) {
      // Resumed from the final checkpoint: everything is in Redis already.
      this.emit({ event: { $case: 'done', value: { iterations: this.plan.iterations, blockStepsApplied: this.queue.appliedCount } } });
      this.finishEvents();
    } else {
      setImmediate(() => this.pump());
    }
    return startIteration;
  }

  /** Checks a tensor header against this session before its bytes are accepted. */
  admit(h: TensorHeader): SessionError | null {
    if (h.token !== this.token) return new SessionError('UNAUTHENTICATED', `session ${this.id}: wrong token`);
    if (this.closed) return new SessionError('FAILED_PRECONDITION', `session ${this.id} is closed`);
    if (h.sessionId !== this.id || this.member) return this.admitGroup(h);
    const expectKind = this.isHead ? PayloadKind.PAYLOAD_KIND_VELOCITY : PayloadKind.PAYLOAD_KIND_HIDDEN;
    if (h.kind !== expectKind) return new SessionError('INVALID_ARGUMENT', `session ${this.id} takes ${PayloadKind[expectKind]} tensors, got ${PayloadKind[h.kind] ?? h.kind}`);
    if (!h.step) return new SessionError('INVALID_ARGUMENT', 'tensor header has no block-step');
    const dtype = fromWireDtype(h.dtype);
    if (dtype !== this.dtype) return new SessionError('INVALID_ARGUMENT', `session ${this.id} uses ${this.dtype} on the wire, got ${dtype ?? h.dtype}`);
    const s = h.step;
    const expected = this.expectedStep(s.block, s.iteration);
    if (typeof expected === 'string') return new SessionError('INVALID_ARGUMENT', expected);
    for (const k of ['step', 'timestep', 'prefixFrames', 'ownFrames', 'contextFrames', 'height', 'width'] as const) {
      if (s[k] !== expected[k]) return new SessionError('INVALID_ARGUMENT', `block ${s.block} iteration ${s.iteration}: ${k} is ${s[k]}, this job has ${expected[k]}`);
    }
    const want = this.wireShape(expected, this.isHead ? 'velocity' : 'hidden');
    if (h.shape.length !== want.length || h.shape.some((d, i) => d !== want[i])) {
      return new SessionError('INVALID_ARGUMENT', `block ${s.block} iteration ${s.iteration}: shape [${h.shape.join(', ')}], expected [${want.join(', ')}]`);
    }
    return null;
  }

  /** A group tensor (on one of this member's inboxes): the peer, and why it is refused if it is. */
  private admitGroup(h: TensorHeader): SessionError | null {
    const peer = this.group?.peerOf(h.sessionId) ?? null;
    if (peer === null) return new SessionError('INVALID_ARGUMENT', `session ${this.id} is a stage group member: it takes tensors from its group only`);
    if (h.kind === PayloadKind.PAYLOAD_KIND_GROUP_FAILURE) {
      if (this.group!.rank !== 0 || peer.channel !== 'stage') return new SessionError('INVALID_ARGUMENT', `session ${this.id}: only rank 0 takes failure reports, on a stage channel`);
      if (fromWireDtype(h.dtype) !== 'f32' || h.shape.length !== 1 || h.shape[0] > FAILURE_REPORT_BYTES / 4) return new SessionError('INVALID_ARGUMENT', `group failure report shape [${h.shape.join(', ')}]: expected f32 [n] with n <= ${FAILURE_REPORT_BYTES / 4}`);
      return null;
    }
    if (h.kind !== PayloadKind.PAYLOAD_KIND_GROUP) return new SessionError('INVALID_ARGUMENT', `session ${this.id} takes PAYLOAD_KIND_GROUP tensors from its group, got ${PayloadKind[h.kind] ?? h.kind}`);
    if (!h.step) return new SessionError('INVALID_ARGUMENT', 'tensor header has no block-step');
    const expected = this.expectedStep(h.step.block, h.step.iteration);
    if (typeof expected === 'string') return new SessionError('INVALID_ARGUMENT', expected);
    if (fromWireDtype(h.dtype) !== 'f32') return new SessionError('INVALID_ARGUMENT', `group tensors are f32, got ${fromWireDtype(h.dtype) ?? h.dtype}`);
    const bound = groupMessageBound(expected, this.group!.place.layout, this.config.heads, this.config.dim, this.config.latentChannels);
    if (h.shape.length !== 1 || h.shape[0] > bound) return new SessionError('INVALID_ARGUMENT', `group tensor shape [${h.shape.join(', ')}]: expected [n] with n <= ${bound}`);
    return null;
  }

  /** A whole tensor for this stage, in arrival order. Resolves when the next one may be read. */
  async receive(h: TensorHeader, payload: Buffer): Promise<void> {
    this.adopt();
    if (h.kind === PayloadKind.PAYLOAD_KIND_GROUP_FAILURE) {
      this.group!.deliverFailure(this.group!.peerOf(h.sessionId)!.peer, decodeFailureReport(payload));
      return;
    }
    const s = h.step!;
    const step = this.expectedStep(s.block, s.iteration) as BlockStep;
    const count = h.shape.reduce((a, b) => a * b, 1);
    const from = this.group?.peerOf(h.sessionId) ?? null;
    if (from !== null) {
      this.group!.deliver(from.peer, from.channel, step, decodePayload(payload, 'f32', count));
      return;
    }
    const received = performance.now();
    const x = this.expand(decodePayload(payload, this.dtype, count), step);
    // The payload's memory goes back to the pool once nothing reads it: now if x does not view it.
    const held = this.received && x.buffer === payload.buffer ? [payload] : [];
    if (this.received && held.length === 0) this.received.give(payload);
    if (this.isHead) {
      await this.applyVelocity(step, x);
      this.giveBack(held);
      return;
    }
    // Keep reading while a couple of forwards are queued; beyond that, stop (backpressure).
    while (this.queued >= STAGE_MAX_QUEUED) await new Promise<void>((r) => this.queueWaiters.push(r));
    this.queued++;
    // x is ours to hand over: the stage computes in it rather than in a copy.
    const out = this.timedForward(step, x, this.forwardOptions(held, true)).finally(() => {
      this.queued--;
      this.queueWaiters.shift()?.();
    });
    this.forwardOut(step, out, received, held);
  }

  /**
   * The buffer a tensor of this session lands in (TensorReceiverOptions.destination): a reused
   * one for the stage's own input, none (a new one) for a group member's.
   */
  receiveBuffer(h: TensorHeader): Buffer | undefined {
    return this.received && !this.closed && h.sessionId === this.id ? this.received.take(h.byteLength) : undefined;
  }

  /**
   * How a forward uses this session's buffers: its outputs go into pooled memory, recorded in
   * `held` (with the input, when it is consumed) to be handed back once the output is sent.
   */
  private forwardOptions(held: Buffer[], consumeInput: boolean): ForwardOptions {
    const pool = this.buffers;
    if (!pool) return {};
    return {
      consumeInput,
      allocateOutput: (elements) => {
        const b = pool.take(elements * 4);
        held.push(b);
        return new Float32Array(b.buffer, b.byteOffset, elements);
      },
    };
  }

  /** Hands buffers back to the pool (each once: an output may be its consumed input). */
  private giveBack(held: readonly Buffer[]): void {
    if (!this.buffers || this.closed) return;
    for (const b of new Set(held)) (this.received?.owns(b) ? this.received : this.buffers).give(b);
  }

  /** Starts streaming events to one watcher; earlier events are replayed first. */
  watch(onEvent: (e: SessionEvent) => void, onEnd: () => void): () => void {
    if (!this.isHead) throw new SessionError('FAILED_PRECONDITION', `session ${this.id} is not a head: only the head reports progress`);
    if (this.watcher) throw new SessionError('ALREADY_EXISTS', `session ${this.id} already has a watcher`);
    this.adopt();
    for (const e of this.events) onEvent(e);
    this.events = [];
    this.watcher = onEvent;
    this.endWatch = onEnd;
    if (this.ended) onEnd();
    return () => {
      this.watcher = null;
      this.endWatch = null;
    };
  }

  /** Lost its driver or upstream: closes itself unless adopted again within the grace period. */
  orphan(why: string, graceMs = ORPHAN_GRACE_MS): void {
    if (this.closed) return;
    this.adopt();
    this.orphanTimer = setTimeout(() => {
      this.log.warn('closing an orphaned session', { why });
      this.ctx.onOrphaned(this);
    }, graceMs);
    this.orphanTimer.unref();
  }

  private adopt(): void {
    if (this.orphanTimer) clearTimeout(this.orphanTimer);
    this.orphanTimer = null;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.adopt();
    this.finishEvents();
    // A boundary still persisting is finished first (its writes are fenced, so a superseded run
    // changes nothing): a lost stage then costs the job only the iteration in progress.
    if (this.persisting) await Promise.race([this.persisting.catch(() => undefined), sleep(PERSIST_ON_CLOSE_MS, undefined, { ref: false })]);
    this.reportQueueBytes(0);
    this.buffers?.clear();
    this.received?.clear();
    await this.group?.close();
    await this.runner.release?.();
    try {
      await this.sender?.close();
    } catch {
      // The peer may already be gone; closing is best-effort.
    }
    this.client?.close();
  }

  // --- head ---------------------------------------------------------------------------------------

  private pump(): void {
    const q = this.queue!;
    while (!this.closed && !this.failure && q.outstanding < headInFlight(this.spec.stages)) {
      const issued = q.issue();
      if (!issued) break;
      const { step, window } = issued;
      const held: Buffer[] = [];
      const out = this.timedForward(step, window, this.forwardOptions(held, false));
      if (this.runner.range.tail) {
        // K = 1: the velocity is ours; apply in order through the same path as a remote tail's.
        this.sendChain = this.sendChain
          .then(async () => {
            await this.applyVelocity(step, this.expand(await out, step));
            this.giveBack(held);
          })
          .catch((e) => this.fail(e));
      } else {
        this.forwardOut(step, out, performance.now(), held);
      }
    }
    this.reportQueueBytes(q.allocatedBytes);
  }

  /** Moves longshot_head_queue_bytes by what this session's queue holds now (0 once closed). */
  private reportQueueBytes(bytes: number): void {
    if (bytes === this.queueBytesReported) return;
    workerMetrics.headQueueBytes.inc(bytes - this.queueBytesReported);
    this.queueBytesReported = bytes;
  }

  /**
   * Applies one result. The tensors it computed are stored as checkpoint pieces right away, in
   * the background (the queue reuses none of their memory before they are stored). A completed
   * iteration's boundary (its pieces and finished block stored, then the checkpoint manifest
   * naming them) is persisted in the background while the head goes on applying and issuing
   * the next iteration; only the boundary after it waits, should this one still be persisting
   * then. A lost stage thus costs at most the iteration in progress (closing the head finishes
   * the boundary), a lost head the one being persisted as well.
   */
  private async applyVelocity(step: BlockStep, velocity: Float32Array): Promise<void> {
    const q = this.queue!;
    const checkpoint = this.checkpoint!;
    const r = q.apply(step.iteration, step.block, velocity);
    const store = step.iteration >= this.commitAfter(step.iteration) - q.pieceLifetime;
    if (store) checkpoint.put(r.pieces);
    workerMetrics.checkpointPieceBytes.inc({ outcome: store ? 'stored' : 'skipped' }, r.pieces.reduce((n, p) => n + p.values.byteLength, 0));
    this.emit({ event: { $case: 'blockStep', value: { iteration: step.iteration, block: step.block, step: step.step } } });
    if (r.completedIteration !== null) {
      this.commits!.completed(r.completedIteration, performance.now() / 1000);
      const sealed = checkpoint.seal();
      const manifest = q.manifest();
      if (this.persisting) {
        // One boundary persists at a time: Redis and the writer thread set the pace if they fall behind.
        const waitStart = performance.now();
        await this.persisting;
        workerMetrics.persistWaitSeconds.inc((performance.now() - waitStart) / 1000);
      }
      this.persisting = this.persist(r.completedIteration, r.finished, sealed, manifest);
      this.persisting.catch((e) => {
        if (e instanceof FencedWriteError) workerMetrics.fencedWrites.inc();
        this.fail(e);
      });
    }
    if (q.done) {
      await this.persisting;
      this.emit({ event: { $case: 'done', value: { iterations: this.plan.iterations, blockStepsApplied: q.appliedCount } } });
      this.finishEvents();
      return;
    }
    this.pump();
  }

  /**
   * Persists the boundary after `iteration`: the pieces put for it (checkpoint boundary `sealed`)
   * and its finished block stored, then its manifest committed (at the boundaries of the commit
   * schedule, the last included) or, in between, the pieces it no longer names pruned.
   */
  private async persist(iteration: number, finished: FinishedBlock | null, sealed: number, manifest: CheckpointManifest): Promise<void> {
    const q = this.queue!;
    const checkpoint = this.checkpoint!;
    const boundary = iteration + 1;
    const commit = this.commitAfter(iteration) === boundary;
    const end = workerMetrics.persistSeconds.startTimer();
    await Promise.all([
      checkpoint.flush(sealed),
      finished && checkpoint.putBlock(finished.index, finished.latents).then(() => this.emit({ event: { $case: 'blockFinished', value: { block: finished.index } } })),
    ]);
    q.piecesStored(iteration);
    if (commit) {
      await checkpoint.commit(manifest, sealed);
      workerMetrics.checkpoints.inc();
    } else {
      await checkpoint.prune(manifest, sealed);
    }
    end();
    if (commit) this.emit({ event: { $case: 'checkpointed', value: { iteration: boundary } } });
  }

  /**
   * The first boundary after `iteration` whose manifest is committed (CommitSchedule). Pieces
   * computed earlier than pieceLifetime iterations before it are named by no committed manifest,
   * so they are not stored at all: between commits Redis (and its append-only file) receives
   * only what the next commit names.
   */
  private commitAfter(iteration: number): number {
    return this.commits!.commitAfter(iteration);
  }

  // --- all stages ---------------------------------------------------------------------------------

  /** Runs a forward; time with no forward queued on this stage counts as waiting for input. */
  private async timedForward(step: BlockStep, x: StageInput, options?: ForwardOptions): Promise<Float32Array> {
    const calledAt = performance.now();
    if (this.busy++ === 0) workerMetrics.waitingSeconds.inc((calledAt - this.idleSince) / 1000);
    try {
      const out = await this.runner.forward(step, x, options);
      // Forwards run one at a time in call order: this one started when the previous ended.
      const now = performance.now();
      workerMetrics.forwardSeconds.observe({ role: Role[this.role] }, (now - Math.max(calledAt, this.lastFinish)) / 1000);
      this.lastFinish = now;
      this.blockSteps++;
      if (this.ctx.retainedMemory && step.step === this.spec.steps - 1) this.retainedSamples.push(this.ctx.retainedMemory());
      return out;
    } finally {
      if (--this.busy === 0) this.idleSince = performance.now();
    }
  }

  /**
   * Sends a forward's output to the next stage, in order, once it is computed. `held`: pooled
   * buffers the forward read or wrote, handed back once the output is sent (not on failure).
   */
  private forwardOut(step: BlockStep, out: Promise<Float32Array>, since: number, held: readonly Buffer[] = []): void {
    const kind = this.runner.range.tail ? PayloadKind.PAYLOAD_KIND_VELOCITY : PayloadKind.PAYLOAD_KIND_HIDDEN;
    this.sendChain = this.sendChain
      .then(async () => {
        const data = await out;
        if (this.closed || this.failure) return;
        const payload = encodePayload(data, this.dtype);
        if (this.link) await this.link.transfer(data.length * 4 * this.payloadScale);
        const sender = this.openSender();
        await sender.send(
          {
            sessionId: this.nextSessionId,
            token: this.nextToken,
            kind,
            step: { iteration: step.iteration, block: step.block, step: step.step, timestep: step.timestep, prefixFrames: step.prefixFrames, ownFrames: step.ownFrames, contextFrames: step.contextFrames, height: step.height, width: step.width },
            shape: this.wireShape(step, kind === PayloadKind.PAYLOAD_KIND_VELOCITY ? 'velocity' : 'hidden'),
            dtype: toWireDtype(this.dtype),
          },
          payload,
        );
        // Sent: the receiver has every byte (data plane) or the stream took a copy (gRPC frames).
        this.giveBack(held);
        workerMetrics.bytesSent.inc(payload.length);
        workerMetrics.dataPlaneBytes.inc({ transport: this.hop }, payload.length);
        workerMetrics.stepLatencySeconds.observe((performance.now() - since) / 1000);
      })
      .catch((e) => this.fail(e));
  }

  private openSender(): TensorSender {
    if (!this.sender) {
      this.client = createWorkerClient(this.nextAddress, { credentials: this.ctx.credentials });
      this.sender = TensorSender.open(this.client, { peer: this.nextAddress, bytes: this.bytesSender() });
    }
    return this.sender;
  }

  /** The data-plane path of the hop; none when its bytes go in gRPC chunk frames. */
  private bytesSender(): TensorBytesSender | undefined {
    if (this.hop === 'grpc') return undefined;
    const nccl = this.hop === 'nccl' ? { device: this.ctx.dataPlane.ncclDevice ?? 0 } : undefined;
    return new DataPlaneSender(this.nextDataPlane!.tcpAddress, { shm: this.hop === 'shm', nccl });
  }

  private fail(e: unknown): void {
    if (this.failure || this.closed) return;
    this.failure = e instanceof Error ? e : new Error(String(e));
    workerMetrics.sessionFailures.inc();
    this.log.error('stage failed', { error: this.failure.message, next: this.nextAddress });
    if (this.member) {
      this.group!.reportFailure(this.failure).catch((e: Error) => this.log.warn('could not report the failure to rank 0', { error: e.message }));
    }
    this.emit({ event: { $case: 'failed', value: { message: this.failure.message, address: this.nextAddress } } });
    this.finishEvents();
  }

  private emit(e: SessionEvent): void {
    if (!this.isHead || this.ended) return;
    if (this.watcher) this.watcher(e);
    else this.events.push(e);
  }

  private finishEvents(): void {
    if (this.ended) return;
    this.ended = true;
    this.endWatch?.();
  }

  /** The block-step descriptor this job has for (block, iteration), or why it has none. */
  private expectedStep(block: number, iteration: number): BlockStep | string {
    const step = iteration - block;
    if (!Number.isInteger(block) || block < 0 || block >= this.plan.blocks) return `block ${block} is outside this job's ${this.plan.blocks} blocks`;
    if (step < 0 || step >= this.spec.steps) return `block ${block} takes no step in iteration ${iteration}`;
    const prefixFrames = block > 0 && this.spec.context > 0 ? this.spec.context : 0;
    return {
      iteration,
      block,
      step,
      timestep: this.schedule.timesteps[step],
      prefixFrames,
      ownFrames: this.spec.block,
      contextFrames: this.spec.context,
      height: this.plan.latentHeight,
      width: this.plan.latentWidth,
    };
  }

  private wireShape(step: BlockStep, what: 'hidden' | 'velocity'): number[] {
    const full =
      what === 'velocity'
        ? [this.config.latentChannels, step.ownFrames, step.height, step.width]
        : [2, (step.prefixFrames + step.ownFrames) * (step.height / 2) * (step.width / 2), this.config.dim];
    if (this.payloadScale === 1) return full;
    return [Math.max(1, Math.ceil(full.reduce((a, b) => a * b, 1) / this.payloadScale))];
  }

  /** Emulation sends scaled-down tensors; the head still applies a full-size (zero) velocity. */
  private expand(x: Float32Array, step: BlockStep): Float32Array {
    if (this.payloadScale === 1) return x;
    if (!this.isHead) return x;
    // Read-only (the sampler step reads it), so one zero buffer serves every block-step.
    const size = this.config.latentChannels * step.ownFrames * step.height * step.width;
    if (this.zeroVelocity?.length !== size) this.zeroVelocity = new Float32Array(size);
    return this.zeroVelocity;
  }

  /**
   * The job's text embeddings, which the driver stores for (or sends with) every stage: a stage
   * never encodes (the driver has the text encoder run once per job, on a worker, through
   * RunComponent). `stored`: read from Redis (text_stored).
   */
  private textOf(req: OpenSessionRequest, stored: TextEmbeddings | null): TextEmbeddings {
    const size = this.config.textLen * this.config.textDim;
    if (stored) {
      for (const [name, t] of [['cond', stored.cond], ['uncond', stored.uncond]] as const) {
        if (t.length !== size) throw new SessionError('INVALID_ARGUMENT', `text_stored: ${name} has ${t.length} values, expected [${this.config.textLen}, ${this.config.textDim}] = ${size}`);
      }
      return stored;
    }
    if (!req.text) throw new SessionError('INVALID_ARGUMENT', 'text or text_stored is required: the driver sends or stores the embeddings of the prompt and negative prompt (RunComponent computes them)');
    const decode = (name: string, b: Buffer): Float32Array => {
      if (b.length !== size * 4) throw new SessionError('INVALID_ARGUMENT', `text.${name} has ${b.length} bytes, expected [${this.config.textLen}, ${this.config.textDim}] float32 = ${size * 4}`);
      return decodePayload(b, 'f32', size);
    };
    return { cond: decode('cond', req.text.cond), uncond: decode('uncond', req.text.uncond) };
  }
}

/** Waits until `fn` is true or the timeout passes. */
export async function waitFor(fn: () => boolean, timeoutMs: number, stepMs = 20): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > end) return false;
    await sleep(stepMs);
  }
  return true;
}
