/**
 * Raises the HTTP/2 receive windows of the connection an Activations stream arrives on.
 *
 * grpc-js lets a client size its receive window ('grpc-node.flow_control_window') but has no
 * server option for it, so a server advertises the protocol's 64 KiB default. Tensor data flows
 * client -> server, and grpc-js pauses the HTTP/2 stream after every message until the next one
 * is read; with a 64 KiB window every pause drains the pipe and each ~1 MiB frame costs a dozen
 * round trips between the two event loops. Measured on loopback this alone limits a stage link
 * to a quarter of what it reaches with a window of a few frames.
 *
 * There is no public handle on the session, so this walks grpc-js's call objects (1.14: the
 * handler's call -> interceptor chain via `nextCall` -> the base call's `stream`). If a future
 * grpc-js moves them, nothing is tuned and the link is slower, never broken; the transport tests
 * assert the tuning applies so such an upgrade is noticed.
 */
import type * as http2 from 'http2';
import { GRPC_LIMITS } from './limits';

const tuned = new WeakSet<http2.Http2Session>();

function findSession(call: unknown): http2.Http2Session | null {
  let node = (call as { call?: unknown } | null)?.call;
  for (let depth = 0; node && typeof node === 'object' && depth < 16; depth++) {
    const stream = (node as { stream?: { session?: unknown } }).stream;
    const session = stream?.session as http2.Http2Session | undefined;
    if (session && typeof session.settings === 'function' && typeof session.setLocalWindowSize === 'function') return session;
    node = (node as { nextCall?: unknown }).nextCall;
  }
  return null;
}

/**
 * Sets the per-stream and connection receive windows of `call`'s HTTP/2 session to
 * `GRPC_LIMITS.flowControlWindowBytes` once per session. Returns whether the session was found.
 */
export function raiseReceiveWindow(call: unknown, windowBytes: number = GRPC_LIMITS.flowControlWindowBytes): boolean {
  const session = findSession(call);
  if (!session) return false;
  if (tuned.has(session) || session.destroyed || session.closed) return true;
  tuned.add(session);
  try {
    // The connection window bounds all streams together: room for a full window on a few
    // concurrent streams (one per upstream stage and session).
    session.setLocalWindowSize(windowBytes * 4);
    // Applies to streams already open too (RFC 9113 6.9.2), including the one that got us here.
    session.settings({ initialWindowSize: windowBytes });
  } catch {
    // A session closing under us: nothing to tune.
  }
  return true;
}

/** The receive window currently advertised on `call`'s session, or null if not reachable. */
export function receiveWindowOf(call: unknown): number | null {
  return findSession(call)?.localSettings?.initialWindowSize ?? null;
}
