/**
 * When the head commits a checkpoint manifest: every N iterations, or every T seconds of work.
 *
 * The head stores a checkpoint piece only if the next committed boundary can name it
 * (BlockQueue.pieceLifetime), so the boundary that follows an iteration must be known as soon as
 * that iteration's first piece is applied, and must never change afterwards: a piece skipped
 * because no commit could name it would otherwise be missing from a manifest. The schedule
 * therefore only ever extends itself forward. By iterations its boundaries are the multiples of N
 * (and the last iteration); by seconds each new boundary lies as many iterations past the last
 * one as take about T seconds at the pace of the iterations completed so far (one iteration
 * until the first has completed), so the cadence follows the job's real speed, which the latents
 * do not depend on.
 */
export type CommitCadence = { readonly iterations: number } | { readonly seconds: number };

/** Parses `N` (iterations) or `Ns` (seconds of work, fractions allowed), as the flag takes them. */
export function parseCommitCadence(text: string, flag: string): CommitCadence {
  const seconds = /^(\d+(?:\.\d+)?)s$/.exec(text.trim());
  if (seconds) {
    const value = Number(seconds[1]);
    if (!(value > 0 && value <= 86_400)) throw new Error(`${flag}: seconds must be above 0 and at most 86400, got '${text}'`);
    return { seconds: value };
  }
  if (!/^\d+$/.test(text.trim())) throw new Error(`${flag}: expected a count of iterations (N) or of seconds (Ns, e.g. 30s), got '${text}'`);
  const iterations = Number(text.trim());
  if (iterations < 1 || iterations > 1_000_000) throw new Error(`${flag}: iterations must be 1 to 1000000, got ${iterations}`);
  return { iterations };
}

export function formatCommitCadence(cadence: CommitCadence): string {
  return 'seconds' in cadence ? `${cadence.seconds}s` : String(cadence.iterations);
}

export class CommitSchedule {
  /** Boundaries scheduled so far, ascending; the last is the furthest the schedule has reached. */
  private readonly boundaries: number[] = [];
  /** Seconds per iteration, from the iterations completed so far (null before the first). */
  private secondsPerIteration: number | null = null;

  /**
   * @param iterations the job's iteration count (the last boundary is always committed)
   * @param start the boundary the session starts from (0, or the committed one it resumes at)
   * @param startedAtSeconds when the session started, on the clock `completed` is given
   */
  constructor(
    private readonly cadence: CommitCadence,
    private readonly iterations: number,
    private readonly start: number,
    private readonly startedAtSeconds: number,
  ) {
    if (!(Number.isInteger(start) && start >= 0 && start <= iterations)) throw new Error(`commit schedule: start ${start} outside 0..${iterations}`);
  }

  /** The first committed boundary after `iteration` (iteration + 1 .. iterations). */
  commitAfter(iteration: number): number {
    if (!(Number.isInteger(iteration) && iteration >= this.start && iteration < this.iterations)) {
      throw new Error(`commit schedule: iteration ${iteration} outside ${this.start}..${this.iterations - 1}`);
    }
    if ('iterations' in this.cadence) {
      const every = this.cadence.iterations;
      return Math.min(Math.ceil((iteration + 1) / every) * every, this.iterations);
    }
    for (;;) {
      const found = this.boundaries.find((b) => b > iteration);
      if (found !== undefined) return found;
      const last = this.boundaries.at(-1) ?? this.start;
      this.boundaries.push(Math.min(last + this.stride(), this.iterations));
    }
  }

  /** Iterations between two boundaries at the pace measured so far (by seconds; 1 before any). */
  stride(): number {
    if ('iterations' in this.cadence) return this.cadence.iterations;
    if (this.secondsPerIteration === null || this.secondsPerIteration <= 0) return 1;
    return Math.max(1, Math.round(this.cadence.seconds / this.secondsPerIteration));
  }

  /**
   * Reports that `iteration` completed at `atSeconds` (the constructor's clock). The pace is the
   * mean over the iterations completed since the session started, so a pipeline's ramp at the
   * start weighs less as the job goes on.
   */
  completed(iteration: number, atSeconds: number): void {
    const count = iteration - (this.start - 1);
    if (count > 0 && atSeconds >= this.startedAtSeconds) this.secondsPerIteration = (atSeconds - this.startedAtSeconds) / count;
  }
}
