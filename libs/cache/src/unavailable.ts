/**
 * Whether `err` means Redis cannot be reached right now (down, restarting, still loading its
 * AOF), as opposed to a bug or a bad reply: the API answers such errors with 503 and
 * Retry-After, never 404 or 500.
 */
export function isRedisUnavailable(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = (e as Error).cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (e.name === 'MaxRetriesPerRequestError' || e.name === 'ClusterAllFailedError') return true;
    if (code && NETWORK_CODES.has(code)) return true;
    // Command failed on a closed connection, or the server answers while it replays its AOF.
    if (/^Connection is closed|^Stream isn't writeable|^LOADING |^MASTERDOWN |^TRYAGAIN /.test(e.message)) return true;
  }
  return false;
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);
