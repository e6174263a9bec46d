/** A run ended by SIGINT or SIGTERM: exit status 128 + the signal's number (130, 143). */
export class Stopped extends Error {
  readonly exitCode: number;
  constructor(readonly signal: NodeJS.Signals) {
    super(`stopped by ${signal}`);
    this.name = 'Stopped';
    this.exitCode = signal === 'SIGINT' ? 130 : 143;
  }
}

/**
 * Runs `work` so that SIGINT or SIGTERM stop it gracefully: the signal aborts `work`'s
 * AbortSignal, `work` unwinds through its own cleanup (stopping the cluster it started), and the
 * run ends with a Stopped error (exit status 130 or 143). A second signal exits at once; the
 * children die with this process regardless (spawnTied).
 */
export async function stoppable<T>(work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (ac.signal.aborted) process.exit(new Stopped(signal).exitCode);
    process.stderr.write(`\nlongshot: ${signal}: stopping (send it again to quit at once)\n`);
    ac.abort(new Stopped(signal));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const result = await work(ac.signal);
    ac.signal.throwIfAborted();
    return result;
  } catch (e) {
    if (ac.signal.aborted) throw ac.signal.reason;
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** Resolves when `signal` aborts. */
export function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve(), { once: true })));
}
