/**
 * Channel and server settings shared by every Longshot gRPC endpoint.
 *
 * Tensors travel as frames of at most `MAX_FRAME_BYTES`, so the message limits below are not
 * what bounds a tensor; they are raised above grpc-js's 4 MiB default receive limit so that
 * unary messages that carry bulk data in one piece fit: OpenSession carries a job's text
 * embeddings, two [512, 4096] float32 blocks (16 MiB) for Wan2.1 1.3B and 14B.
 */
import type { ChannelOptions, ServerOptions } from '@grpc/grpc-js';

const MiB = 1024 * 1024;

export const GRPC_LIMITS = Object.freeze({
  /** Largest message either end sends or accepts. */
  maxMessageBytes: 40 * MiB,
  /** Largest encoded ActivationFrame a TensorSender produces (header or chunk). */
  maxFrameBytes: 1 * MiB,
  /**
   * HTTP/2 connection receive window asked for by clients. The 64 KiB protocol default caps a
   * stream at one window per round trip, far below what a stage link must carry.
   */
  flowControlWindowBytes: 8 * MiB,
  /**
   * Stage links stay open for a whole job and can sit idle for minutes while a stage computes;
   * pings every 30 s keep NAT/conntrack state alive and detect a dead peer (killed pod, cut
   * link) within keepaliveTime + keepaliveTimeout instead of at the next TCP retransmit timeout.
   */
  keepaliveTimeMs: 30_000,
  keepaliveTimeoutMs: 10_000,
  /** Reconnects to a restarted worker should be prompt but not hammer a dead address. */
  initialReconnectBackoffMs: 250,
  maxReconnectBackoffMs: 5_000,
});

/** Options for clients (`new WorkerClient(address, credentials, channelOptions())`). */
export function channelOptions(overrides: ChannelOptions = {}): ChannelOptions {
  return {
    'grpc.max_send_message_length': GRPC_LIMITS.maxMessageBytes,
    'grpc.max_receive_message_length': GRPC_LIMITS.maxMessageBytes,
    'grpc.keepalive_time_ms': GRPC_LIMITS.keepaliveTimeMs,
    'grpc.keepalive_timeout_ms': GRPC_LIMITS.keepaliveTimeoutMs,
    // A stage keeps its channel to the next stage between jobs; without calls in flight the
    // keepalive would otherwise stop and a dead peer would surface only on the next send.
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.initial_reconnect_backoff_ms': GRPC_LIMITS.initialReconnectBackoffMs,
    'grpc.max_reconnect_backoff_ms': GRPC_LIMITS.maxReconnectBackoffMs,
    'grpc-node.flow_control_window': GRPC_LIMITS.flowControlWindowBytes,
    // Activation streams are not replayable and the job driver owns recovery (resume from a
    // checkpoint); the retry layer would only buffer (copy) outgoing frames for nothing.
    'grpc.enable_retries': 0,
    ...overrides,
  };
}

/** Options for `new grpc.Server(serverOptions())`. */
export function serverOptions(overrides: ServerOptions = {}): ServerOptions {
  return {
    'grpc.max_send_message_length': GRPC_LIMITS.maxMessageBytes,
    'grpc.max_receive_message_length': GRPC_LIMITS.maxMessageBytes,
    'grpc.keepalive_time_ms': GRPC_LIMITS.keepaliveTimeMs,
    'grpc.keepalive_timeout_ms': GRPC_LIMITS.keepaliveTimeoutMs,
    ...overrides,
  };
}
