import { hostCpuSeconds, type HostCpuSeconds } from '@longshot/engine';
import { counter, gauge, histogram } from '@longshot/telemetry';
import { GRANT_ERROR_REASONS, HOP_TRANSPORTS } from '@longshot/transport';
import { SESSION_ERROR_CODES } from './session-error';

/** Why an OpenSession or RunComponent call was refused: a bad grant, or one for something else. */
export const REFUSAL_REASONS = [...GRANT_ERROR_REASONS, 'grant-scope', 'grant-job', 'grant-prefix', 'no-lease'] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];

/**
 * The parts of the host CPU time a worker reports: the three the engine measures (HostCpuSeconds,
 * libs/engine) and `other`, the rest of the process's CPU time (the checkpoint writer thread, the
 * garbage collector's and libuv's threads), so that the parts add up to the process's total.
 */
export const HOST_CPU_PARTS = ['js', 'kernels', 'dataplane', 'other'] as const;
export type HostCpuPart = (typeof HOST_CPU_PARTS)[number];

/** The process's CPU seconds by part, from the engine's clocks and the process's own. */
export function hostCpuByPart(engine: HostCpuSeconds = hostCpuSeconds(), processSeconds = processCpuSeconds()): Record<HostCpuPart, number> {
  const named = engine.jsThread + engine.kernels + engine.dataPlane;
  return { js: engine.jsThread, kernels: engine.kernels, dataplane: engine.dataPlane, other: Math.max(0, processSeconds - named) };
}

function processCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** What the counter has been told so far: each scrape adds the growth since. */
const hostCpuSeen: Record<HostCpuPart, number> = { js: 0, kernels: 0, dataplane: 0, other: 0 };

/** The worker's metrics, on the process's one registry (served at /metrics on the metrics port). */
export const workerMetrics = {
  hostCpu: counter<'part'>({
    name: 'longshot_host_cpu_seconds_total',
    help: 'Host CPU time of this worker by part: js (the JS thread, without graphs it ran itself), kernels (compute graphs, every thread), dataplane (the native data plane threads), other (the rest of the process: the checkpoint writer thread, garbage collection, libuv). Per block-step: divide its rate by that of longshot_stage_forward_seconds_count (recording rule longshot:host_cpu_seconds_per_block_step)',
    labelNames: ['part'],
    known: { part: HOST_CPU_PARTS },
    // Read at scrape time, on the JS thread (the js part is that thread's own clock).
    collect() {
      const now = hostCpuByPart();
      for (const part of HOST_CPU_PARTS) {
        const total = now[part];
        if (total > hostCpuSeen[part]) this.inc({ part }, total - hostCpuSeen[part]);
        hostCpuSeen[part] = Math.max(hostCpuSeen[part], total);
      }
    },
  }),
  forwardSeconds: histogram<'role'>({
    name: 'longshot_stage_forward_seconds',
    help: 'Time of one block-step forward on a stage of this worker',
    labelNames: ['role'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  }),
  stepLatencySeconds: histogram({
    name: 'longshot_stage_step_latency_seconds',
    help: 'From a block-step input arriving (or being issued on the head) to its output being sent on',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  }),
  waitingSeconds: counter({
    name: 'longshot_stage_input_wait_seconds_total',
    help: 'Time stages of this worker spent idle waiting for input while a session was open',
  }),
  bytesSent: counter({ name: 'longshot_activation_bytes_sent_total', help: 'Activation payload bytes sent to the next stage' }),
  dataPlaneBytes: counter<'transport'>({
    name: 'longshot_dataplane_bytes_total',
    help: 'Tensor payload bytes this worker sent to the next stage, by how they travelled (grpc chunk frames, native tcp, shared memory shm)',
    labelNames: ['transport'],
    known: { transport: HOP_TRANSPORTS },
  }),
  dataPlaneDirectBytes: counter({
    name: 'longshot_dataplane_direct_bytes_total',
    help: "Tensor payload bytes this worker received by shared memory that the sender wrote straight into the stage's buffer (one copy; the rest of shm took the ring's two)",
  }),
  sharedDestinationBytes: counter({
    name: 'longshot_dataplane_shared_destination_bytes_total',
    help: 'Shared memory this worker allocated for received tensors (only sessions whose previous stage is on this host by shm)',
  }),
  bytesReceived: counter({ name: 'longshot_activation_bytes_received_total', help: 'Activation payload bytes received from the previous stage' }),
  sessionsOpen: gauge({ name: 'longshot_sessions_open', help: 'Stage sessions open on this worker' }),
  sessionsOpened: counter({ name: 'longshot_sessions_opened_total', help: 'Stage sessions opened on this worker' }),
  sessionFailures: counter({ name: 'longshot_session_failures_total', help: 'Stage sessions that failed (stream error, peer lost)' }),
  groupFailureReports: counter<'direction'>({ name: 'longshot_group_failure_reports_total', help: "Stage group members' failure reports: sent to rank 0, or received from a member (docs/parallelism.md)", labelNames: ['direction'], known: { direction: ['sent', 'received'] } }),
  rejectedTensors: counter<'code'>({ name: 'longshot_rejected_tensors_total', help: 'Activation streams refused, by gRPC status', labelNames: ['code'], known: { code: SESSION_ERROR_CODES } }),
  modelRefusals: counter({ name: 'longshot_model_refusals_total', help: 'Sessions and component runs refused because their model is no name this worker serves (a path, a link, a FIFO, unknown)' }),
  headQueueBytes: gauge({
    name: 'longshot_head_queue_bytes',
    help: "Host memory the open head sessions' block queues hold for latents, solver histories, pieces being stored and windows (flat once a job's pipeline is full)",
  }),
  checkpointPieceBytes: counter<'outcome'>({
    name: 'longshot_checkpoint_piece_bytes_total',
    help: 'Bytes of checkpoint pieces the head computed: stored in Redis, or skipped because no committed manifest can name them (--checkpoint-every N > 1 or Ts)',
    labelNames: ['outcome'],
    known: { outcome: ['stored', 'skipped'] },
  }),
  checkpoints: counter({ name: 'longshot_checkpoints_written_total', help: 'Head checkpoints written to Redis' }),
  persistSeconds: histogram({
    name: 'longshot_checkpoint_persist_seconds',
    help: 'Head: time to persist an iteration boundary (finished block and checkpoint) to Redis',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  }),
  persistWaitSeconds: counter({
    name: 'longshot_checkpoint_wait_seconds_total',
    help: 'Head: time results waited for the previous iteration boundary to be persisted',
  }),
  textEmbeddingCache: counter<'result'>({
    name: 'longshot_text_embedding_cache_total',
    help: 'Text-encoder requests answered from the Redis cache (result="hit") or encoded (result="miss")',
    labelNames: ['result'],
    known: { result: ['hit', 'miss'] },
  }),
  componentSeconds: histogram<'kind'>({
    name: 'longshot_component_seconds',
    help: 'Time of one component computation (kind="text_encoder": prompt and negative prompt encoded, cache hits excluded; kind="vae_decoder": one block decoded, cache rebuild included)',
    labelNames: ['kind'],
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
  }),
  refusedCalls: counter<'reason'>({
    name: 'longshot_worker_refused_calls_total',
    help: 'OpenSession and RunComponent calls refused before using capacity: no or bad session grant, or its job does not hold this worker\'s lease',
    labelNames: ['reason'],
    known: { reason: REFUSAL_REASONS },
  }),
  fencedWrites: counter({
    name: 'longshot_worker_fenced_writes_total',
    help: 'Head writes (blocks, checkpoints) refused because another run of the job took it over',
  }),
  backend: gauge<'backend'>({ name: 'longshot_worker_backend_info', help: 'Compute backend of this worker (value 1)', labelNames: ['backend'] }),
};
