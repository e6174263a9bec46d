import * as grpc from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import { CheckpointStore, CorruptValueError, FencedWriteError, JobTextStore, type JobText, ThreadCheckpointWrites, WorkerLeases, WorkerRegistry, type KeySchema, type WorkerTopology } from '@longshot/cache';
import { backendDevice, configuredCudaDevice, numericsFingerprint, type Backend } from '@longshot/engine';
import { ModelCatalog } from '@longshot/model';
import type { CommitCadence, EmulationOptions } from '@longshot/pipeline';
import { startMetricsServer, type Logger, type MetricsServer } from '@longshot/telemetry';
import {
  addHealthService,
  DataPlaneListener,
  DataPlaneTransport,
  dataPlaneEndpoint,
  ncclAvailability,
  GrantError,
  type DataPlaneEndpoint,
  type DataPlaneMode,
  type TensorHeader,
  TensorReceiver,
  TransportError,
  verifyGrant,
  tlsCredentials,
  type GrantKey,
  type TlsFiles,
  type SessionGrant,
  serverOptions,
  workerServiceDefinition,
  type CloseSessionRequest,
  type CloseSessionResponse,
  type OpenSessionRequest,
  type OpenSessionResponse,
  type SessionEvent,
  type WatchSessionRequest,
  type WorkerServer,
} from '@longshot/transport';
import { ComponentRunner } from './components';
import { workerMetrics, type RefusalReason } from './metrics';
import { SessionError, StageSession, waitFor } from './session';
import { retainedMemorySampler, type RetainedMemorySampler } from './retained-memory';

export interface WorkerConfig {
  readonly id: string;
  /** Address to bind, e.g. 0.0.0.0 in a pod, 127.0.0.1 on a laptop. */
  readonly host: string;
  /** Address other pods reach this one at (defaults to host). */
  readonly advertiseHost: string;
  readonly port: number;
  readonly metricsPort: number;
  readonly redisUrl: string;
  /** The Redis keys' root (LONGSHOT_KEY_ROOT): the same as the controllers'. */
  readonly keys: KeySchema;
  readonly capacity: number;
  readonly models: readonly string[];
  /** Where models named by jobs live besides the built-ins (ModelCatalog); null: built-ins only. */
  readonly modelsDir: string | null;
  readonly emulation: Omit<EmulationOptions, 'payloadScale'> | null;
  /** How long a job's Redis keys live after each write. */
  readonly keyTtlSeconds: number;
  /** On SIGTERM, how long open sessions may run before the worker stops anyway. */
  readonly drainSeconds: number;
  /** Head: commit a checkpoint every N iterations or T seconds of work ({ iterations: 1 } = every boundary). */
  readonly checkpointEvery: CommitCadence;
  /** Sample retained memory at every finished block (leak tests; forces a GC each time). */
  readonly memoryProbe: boolean;
  /** Keys whose session grants this worker accepts (the current one and, during a rotation, the previous one). */
  readonly grantKeys: readonly GrantKey[];
  /** mTLS: serve with this certificate and require client certificates signed by `ca`; null = plaintext. */
  readonly tls: TlsFiles | null;
  /** How tensor bytes travel to and from this worker's stages (docs/dataplane.md). */
  readonly dataPlane: {
    readonly mode: DataPlaneMode;
    /** Port of the native TCP listener (0: any free one). */
    readonly port: number;
    /** This host's identity: shared memory only between workers with equal ones. */
    readonly hostId: string;
  };
  /** What it registers of its interconnect (docs/dataplane.md "Placement"); its GPU comes from the backend. */
  readonly topology: {
    /** '' for none. */
    readonly nvlinkDomain: string;
    /** Gb/s of its network link; 0 when not given. */
    readonly linkGbps: number;
  };
}

/**
 * A worker process: a gRPC server hosting stage sessions, registered in Redis with a heartbeat,
 * exporting metrics. Requests are checked at the boundary; a bad request or a failing stream
 * ends that call only, never the worker or its other sessions.
 */
export class WorkerProcess {
  readonly sessions = new Map<string, StageSession>();
  /** Stage group members' inbox ids (one per peer member) to their sessions. */
  private readonly inboxes = new Map<string, StageSession>();
  private server: grpc.Server | null = null;
  private metrics: MetricsServer | null = null;
  private readonly redis: Redis;
  private readonly registry: WorkerRegistry;
  private readonly checkpoints: CheckpointStore;
  /** Jobs' text embeddings, which each stage reads from Redis as its session opens. */
  private readonly jobText: JobTextStore;
  /** The heads' checkpoint pieces and finished blocks, written on a thread of their own. */
  private readonly checkpointWrites: ThreadCheckpointWrites;
  private readonly leases: WorkerLeases;
  private readonly credentials: ReturnType<typeof tlsCredentials>;
  /** This worker's numerics fingerprint (registered; drivers pin a job to one). */
  readonly numerics: string;
  /** Its GPU, NVLink domain and network link (registered; leasing and the planner place stages by them). */
  readonly topology: WorkerTopology;
  private health: ReturnType<typeof addHealthService> | null = null;
  private draining = false;
  private readonly retainedMemory: RetainedMemorySampler | null;
  private readonly components: ComponentRunner;
  private readonly catalog: ModelCatalog;
  /** The native data plane's listener: TCP payloads and shared-memory doorbells (null in grpc mode). */
  private dataPlaneListener: DataPlaneListener | null = null;
  /** Memory for sessions' tensor buffers (SessionContext.allocateTensor). */
  private allocateTensor: ((bytes: number) => Buffer) | undefined;
  private sharedFallbackLogged = false;
  /** The CUDA device of this worker's NCCL data plane; null without one. */
  private ncclDevice: number | null = null;
  /** What this worker's data plane accepts, as registered. */
  private endpoint: DataPlaneEndpoint | null = null;
  address = '';
  metricsAddress = '';

  constructor(
    readonly config: WorkerConfig,
    private readonly backend: Backend,
    private readonly log: Logger,
  ) {
    this.redis = new Redis(config.redisUrl, { maxRetriesPerRequest: 3, lazyConnect: false });
    this.redis.on('error', (e) => log.warn('redis error', { error: e.message }));
    const keys = config.keys;
    this.registry = new WorkerRegistry(this.redis, { keys });
    this.checkpoints = new CheckpointStore(this.redis, { keys });
    this.jobText = new JobTextStore(this.redis, { keys });
    this.checkpointWrites = new ThreadCheckpointWrites({ redisUrl: config.redisUrl, keyRoot: keys.root });
    this.leases = new WorkerLeases(this.redis, { keys });
    this.credentials = tlsCredentials(config.tls);
    this.numerics = numericsFingerprint(backend);
    this.topology = { gpu: backendDevice(backend), ...config.topology };
    this.retainedMemory = config.memoryProbe ? retainedMemorySampler() : null;
    this.catalog = new ModelCatalog(config.modelsDir);
    this.components = new ComponentRunner({ workerId: config.id, backend, models: config.models, catalog: this.catalog, redis: this.redis, keys, log });
  }

  async start(): Promise<void> {
    const server = new grpc.Server(serverOptions());
    const impl: WorkerServer = {
      openSession: (call, cb) => {
        this.openSession(call.request).then(
          (r) => cb(null, r),
          (e) => cb(this.toStatus(e)),
        );
      },
      activations: (call) => {
        const fed = new Set<string>();
        const receiver = new TensorReceiver(call, {
          authorize: (h) => {
            const s = this.sessionFor(h.sessionId);
            const err = s ? s.admit(h) : new SessionError('NOT_FOUND', `no session ${h.sessionId} on worker ${this.config.id}`);
            if (!err) return null;
            workerMetrics.rejectedTensors.inc({ code: err.code });
            return { code: grpc.status[err.code], message: err.message };
          },
          dataPlane: (header, transport, destination) => this.receiveBytes(header, transport, destination),
          destination: (header) => this.sessionFor(header.sessionId)?.receiveBuffer(header),
          handler: async ({ header, payload }) => {
            workerMetrics.bytesReceived.inc(payload.length);
            const s = this.sessionFor(header.sessionId);
            if (!s) return;
            fed.add(s.id);
            await s.receive(header, payload);
          },
        });
        // An upstream that goes away leaves its downstream sessions without work for good.
        void receiver.finished.then(() => fed.forEach((id) => this.sessions.get(id)?.orphan('its upstream stream ended')));
      },
      watchSession: (call) => this.watchSession(call),
      runComponent: (call) => {
        if (this.draining) {
          call.emit('error', { code: grpc.status.FAILED_PRECONDITION, details: `worker ${this.config.id} is shutting down` });
          return;
        }
        this.authorize(call.request.grant, call.request.jobId)
          .then((g) => {
            if (g.stage !== -1) throw this.refuse('PERMISSION_DENIED', 'grant-scope', 'the session grant is not for a component call');
            // The job's keys come from the grant, never from the client.
            const req = call.request;
            const scoped = req.input?.$case === 'vae' ? { ...req, input: { $case: 'vae' as const, value: { ...req.input.value, keyPrefix: g.keyPrefix } } } : req;
            return this.components.run(scoped, g, (o) => call.write(o));
          })
          .then(
            () => call.end(),
            (e) => call.emit('error', this.toStatus(e)),
          );
      },
      closeSession: (call, cb) => {
        this.closeSession(call.request).then(
          (r) => cb(null, r),
          (e) => cb(this.toStatus(e)),
        );
      },
    };
    server.addService(workerServiceDefinition, impl);
    this.health = addHealthService(server, { '': 'SERVING', 'longshot.v1.Worker': 'SERVING' });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${this.config.host}:${this.config.port}`, this.credentials.server, (err, p) => (err ? reject(err) : resolve(p))),
    );
    this.server = server;
    this.address = `${this.config.advertiseHost}:${port}`;
    const dp = this.config.dataPlane;
    // NCCL between CUDA workers in 'auto' mode, when this machine has it; otherwise (a missing
    // libnccl.so.2, no device) the hops fall back to shared memory or TCP, and the log says why.
    const nccl = dp.mode === 'auto' && this.backend.name.startsWith('cuda') ? ncclAvailability(configuredCudaDevice()) : null;
    if (nccl && !nccl.available) this.log.info('no NCCL data plane', { reason: nccl.reason });
    this.ncclDevice = nccl?.available ? configuredCudaDevice() : null;
    if (dp.mode !== 'grpc')
      this.dataPlaneListener = new DataPlaneListener({ host: this.config.host, port: dp.port, shm: dp.mode === 'shm' || dp.mode === 'auto', nccl: this.ncclDevice !== null, device: this.ncclDevice ?? 0 });
    const listener = this.dataPlaneListener;
    if (listener?.sweptSegments) this.log.info('unlinked shared memory that killed processes left behind', { segments: listener.sweptSegments });
    // Received tensors in the listener's shared memory when it takes shm: a sender on this host
    // then copies each straight into the buffer the forward reads (one copy, not the ring's two).
    // Where shared memory is unusable the listener falls back to ordinary memory for good; said once.
    this.allocateTensor = listener?.shm
      ? (bytes) => {
          const b = listener.allocateShared(bytes);
          if (listener.sharedUnavailable === null) workerMetrics.sharedDestinationBytes.inc(bytes);
          else if (!this.sharedFallbackLogged) {
            this.sharedFallbackLogged = true;
            this.log.warn('received tensors take the shared-memory ring: no shared destinations', { reason: listener.sharedUnavailable });
          }
          return b;
        }
      : undefined;
    this.endpoint = dataPlaneEndpoint(dp.mode, dp.hostId, this.dataPlaneListener ? `${this.config.advertiseHost}:${this.dataPlaneListener.port}` : null, true, this.ncclDevice !== null);
    this.metrics = await startMetricsServer({ port: this.config.metricsPort, host: this.config.host });
    this.metricsAddress = `${this.config.advertiseHost}:${this.metrics.port}`;
    workerMetrics.backend.set({ backend: this.backend.name }, 1);
    await this.registry.register(
      {
        id: this.config.id,
        address: this.address,
        metricsAddress: this.metricsAddress,
        capacity: this.config.capacity,
        sessions: 0,
        models: [...this.config.models],
        backend: this.backend.name,
        numerics: this.numerics,
        pid: process.pid,
        startedAt: Date.now(),
        ...(dp.mode === 'grpc' ? {} : { dataPlane: this.endpoint }),
        topology: this.topology,
      },
      { sessions: () => this.sessions.size },
    );
    this.log.info('worker ready', { id: this.config.id, address: this.address, metrics: this.metricsAddress, dataPlane: this.endpoint, topology: this.topology, backend: this.backend.name, numerics: this.numerics, tls: this.config.tls !== null, emulation: this.config.emulation?.profile.name ?? null });
  }

  /**
   * Graceful stop (SIGTERM): leave the registry and refuse new sessions at once, let open
   * sessions finish for up to drainSeconds, then stop serving.
   */
  async stop(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    this.health?.setStatus('', 'NOT_SERVING');
    this.health?.setStatus('longshot.v1.Worker', 'NOT_SERVING');
    await this.registry.deregister().catch((e: Error) => this.log.warn('deregister failed', { error: e.message }));
    const drained = await waitFor(() => this.sessions.size === 0, this.config.drainSeconds * 1000, 100);
    if (!drained) this.log.warn('stopping with sessions still open', { sessions: [...this.sessions.keys()] });
    for (const s of this.sessions.values()) await s.close();
    this.sessions.clear();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server?.forceShutdown();
        resolve();
      }, 5000);
      this.server?.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    this.dataPlaneListener?.close();
    await this.metrics?.close();
    await this.checkpointWrites.close();
    this.redis.disconnect();
  }

  private async openSession(req: OpenSessionRequest): Promise<OpenSessionResponse> {
    if (this.draining) throw new SessionError('FAILED_PRECONDITION', `worker ${this.config.id} is shutting down`);
    // The grant first: a call without one never learns anything about this worker or uses capacity.
    const grant = await this.authorize(req.grant, req.jobId);
    if (grant.stage < 0 || grant.layerBegin !== req.layerBegin || grant.layerEnd !== req.layerEnd) {
      throw this.refuse('PERMISSION_DENIED', 'grant-scope', `the session grant is for layers [${grant.layerBegin}, ${grant.layerEnd}), not [${req.layerBegin}, ${req.layerEnd})`);
    }
    if (this.sessions.has(req.sessionId)) throw new SessionError('ALREADY_EXISTS', `session ${req.sessionId} already exists`);
    if (this.sessions.size >= this.config.capacity) throw new SessionError('RESOURCE_EXHAUSTED', `worker ${this.config.id} runs ${this.sessions.size} of ${this.config.capacity} sessions`);
    if (req.spec && !this.config.models.includes('*') && !this.config.models.includes(req.spec.model)) {
      throw new SessionError('FAILED_PRECONDITION', `worker ${this.config.id} does not serve model ${req.spec.model}`);
    }
    const text = req.textStored ? await this.storedText(grant.keyPrefix, req) : null;
    // The key prefix and the run that fences its writes come from the grant, never from the client.
    const session = new StageSession({ ...req, keyPrefix: grant.keyPrefix }, text, {
      workerId: this.config.id,
      run: grant.run,
      credentials: this.credentials.client,
      backend: this.backend,
      checkpoints: this.checkpoints,
      writes: this.checkpointWrites,
      keyTtlSeconds: this.config.keyTtlSeconds,
      catalog: this.catalog,
      checkpointEvery: this.config.checkpointEvery,
      retainedMemory: this.retainedMemory,
      emulation: this.config.emulation,
      dataPlane: { mode: this.config.dataPlane.mode, hostId: this.config.dataPlane.hostId, ncclDevice: this.ncclDevice },
      allocateTensor: this.allocateTensor,
      log: this.log,
      onOrphaned: (s) => this.drop(s, 'orphaned'),
    });
    this.sessions.set(session.id, session);
    // Its upstream's data-plane frames must carry keys derived from this session's token.
    this.dataPlaneListener?.addSession(session.id, session.token);
    for (const id of session.inboxes) {
      this.inboxes.set(id, session);
      this.dataPlaneListener?.addSession(id, session.token);
    }
    workerMetrics.sessionsOpened.inc();
    workerMetrics.sessionsOpen.set(this.sessions.size);
    this.publishSessions();
    try {
      const startIteration = await session.start();
      this.log.info('session opened', { job: session.jobId, session: session.id, role: req.role, layers: [req.layerBegin, req.layerEnd] });
      return { workerId: this.config.id, backend: this.backend.name, startIteration, nextTransport: session.nextTransport };
    } catch (e) {
      this.forget(session);
      await session.close();
      throw e;
    }
  }

  /**
   * The bytes of a tensor whose header (already admitted by its session) says they travel on a
   * data plane, into `destination`. A transport this worker does not accept is refused.
   */
  private receiveBytes(header: TensorHeader, transport: DataPlaneTransport, destination: Buffer): Promise<unknown> {
    const accepted =
      (transport === DataPlaneTransport.DATA_PLANE_TRANSPORT_TCP && this.endpoint?.tcp) ||
      (transport === DataPlaneTransport.DATA_PLANE_TRANSPORT_SHM && this.endpoint?.shm) ||
      (transport === DataPlaneTransport.DATA_PLANE_TRANSPORT_NCCL && this.endpoint?.nccl);
    if (accepted && this.dataPlaneListener)
      return this.dataPlaneListener.receive(header.sessionId, header.seq, destination, undefined, header.ncclId).then((t) => {
        if (t.direct) workerMetrics.dataPlaneDirectBytes.inc(t.bytes);
        return t;
      });
    return Promise.reject(new TransportError(grpc.status.FAILED_PRECONDITION, `worker ${this.config.id} does not take tensor bytes over ${DataPlaneTransport[transport]} (--data-plane ${this.config.dataPlane.mode})`, 'data plane'));
  }

  /**
   * A call's session grant: signed with a key this worker trusts, unexpired, for the job the
   * request names, with a key prefix of that job, and issued by the run that holds this worker's
   * lease in Redis right now. Anything else is refused (and counted) before it touches capacity.
   */
  private async authorize(token: string, jobId: string): Promise<SessionGrant> {
    let grant: SessionGrant;
    try {
      grant = verifyGrant(token, this.config.grantKeys);
    } catch (e) {
      if (e instanceof GrantError) throw this.refuse('UNAUTHENTICATED', e.reason, e.message);
      throw e;
    }
    if (grant.job !== jobId) throw this.refuse('PERMISSION_DENIED', 'grant-job', 'the session grant is for another job');
    let prefixJob: string | null = null;
    try {
      prefixJob = this.config.keys.jobIdOf(grant.keyPrefix);
    } catch {
      prefixJob = null;
    }
    if (prefixJob !== grant.job) throw this.refuse('PERMISSION_DENIED', 'grant-prefix', "the session grant's key prefix is not its job's");
    const [lease] = await this.leases.leases([this.config.id]);
    if (!lease || lease.holder.job !== grant.job || lease.holder.run !== grant.run) {
      throw this.refuse('PERMISSION_DENIED', 'no-lease', `job ${grant.job} (this run) does not hold worker ${this.config.id}'s lease`);
    }
    return grant;
  }

  private refuse(code: 'UNAUTHENTICATED' | 'PERMISSION_DENIED', reason: RefusalReason, message: string): SessionError {
    workerMetrics.refusedCalls.inc({ reason });
    return new SessionError(code, message);
  }

  private watchSession(call: grpc.ServerWritableStream<WatchSessionRequest, SessionEvent>): void {
    const s = this.sessions.get(call.request.sessionId);
    if (!s) {
      call.emit('error', { code: grpc.status.NOT_FOUND, details: `no session ${call.request.sessionId} on worker ${this.config.id}` });
      return;
    }
    if (call.request.token !== s.token) {
      call.emit('error', { code: grpc.status.UNAUTHENTICATED, details: `session ${s.id}: wrong token` });
      return;
    }
    try {
      const stop = s.watch(
        (e) => call.write(e),
        () => call.end(),
      );
      call.on('cancelled', () => {
        stop();
        s.orphan('its driver stopped watching');
      });
    } catch (e) {
      call.emit('error', this.toStatus(e));
    }
  }

  private async closeSession(req: CloseSessionRequest): Promise<CloseSessionResponse> {
    const s = this.sessions.get(req.sessionId);
    if (!s) throw new SessionError('NOT_FOUND', `no session ${req.sessionId} on worker ${this.config.id}`);
    if (req.token !== s.token) throw new SessionError('UNAUTHENTICATED', `session ${s.id}: wrong token`);
    await this.drop(s, 'closed by the driver');
    return { maxRssBytes: process.resourceUsage().maxRSS * 1024, blockSteps: s.blockSteps, retainedBytes: s.retainedSamples };
  }

  private async drop(s: StageSession, why: string): Promise<void> {
    if (this.sessions.get(s.id) !== s) return;
    this.forget(s);
    await s.close();
    this.log.info('session closed', { job: s.jobId, session: s.id, blockSteps: s.blockSteps, why });
  }

  /**
   * The job's text embeddings as its driver stored them (the grant's key prefix names the job),
   * checked against the reference the request carries.
   */
  private async storedText(prefix: string, req: OpenSessionRequest): Promise<JobText> {
    if (req.text) throw new SessionError('INVALID_ARGUMENT', 'text and text_stored are both set: a session takes its text embeddings one way');
    const want = req.textStored!;
    let stored;
    try {
      stored = await this.jobText.get(prefix);
    } catch (e) {
      if (e instanceof CorruptValueError) throw new SessionError('FAILED_PRECONDITION', `text_stored: job ${req.jobId}'s stored text embeddings are corrupt`);
      throw e;
    }
    if (!stored) throw new SessionError('FAILED_PRECONDITION', `text_stored: job ${req.jobId} has no text embeddings stored`);
    const { byteLength, crc32 } = stored.ref;
    if (byteLength !== Number(want.byteLength) || crc32 !== want.crc32) {
      const hex = (n: number) => n.toString(16).padStart(8, '0');
      throw new SessionError('INVALID_ARGUMENT', `text_stored: the job's text embeddings are ${byteLength} bytes with CRC-32 ${hex(crc32)}, the request names ${want.byteLength} bytes with CRC-32 ${hex(want.crc32)}`);
    }
    return stored.text;
  }

  /** The session a tensor header's session id names: a session, or a group member's inbox. */
  private sessionFor(id: string): StageSession | undefined {
    return this.sessions.get(id) ?? this.inboxes.get(id);
  }

  private forget(s: StageSession): void {
    this.sessions.delete(s.id);
    this.dataPlaneListener?.removeSession(s.id);
    for (const id of s.inboxes) {
      this.inboxes.delete(id);
      this.dataPlaneListener?.removeSession(id);
    }
    workerMetrics.sessionsOpen.set(this.sessions.size);
    this.publishSessions();
  }

  /** The registry learns of a session opened or closed now, not at the next heartbeat (drivers lease free workers by it). */
  private publishSessions(): void {
    void this.registry.refresh();
  }

  private toStatus(e: unknown): Partial<grpc.StatusObject> {
    if (e instanceof SessionError) return { code: grpc.status[e.code], details: e.message };
    // A superseded driver run (a takeover): its writes are refused, and it learns why.
    if (e instanceof FencedWriteError) return { code: grpc.status.ABORTED, details: e.message };
    const message = e instanceof Error ? e.message : String(e);
    this.log.error('request failed', { error: message });
    return { code: grpc.status.INTERNAL, details: message };
  }
}
