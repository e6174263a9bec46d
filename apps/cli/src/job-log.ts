import type { VideoStatus } from './client';

type Seen = { status: VideoStatus['status']; quarter: number; attempts: number };

/**
 * Each job's life as `longshot up` logs it, one line per change: queued, running (workers,
 * attempt), every quarter of its block-steps, retried, and how it ended. `observe` takes the
 * controller's job list (GET /v1/videos) and returns the lines for what changed since the last call.
 */
export class JobLog {
  private readonly seen = new Map<string, Seen>();
  private first = true;

  observe(jobs: readonly VideoStatus[]): string[] {
    const lines: string[] = [];
    // Oldest first, so a job's lines keep their order among jobs.
    for (const j of [...jobs].reverse()) {
      const before = this.seen.get(j.id);
      const p = j.progress;
      const quarter = p.blockSteps > 0 ? Math.floor((4 * p.blockStepsDone) / p.blockSteps) : 0;
      this.seen.set(j.id, { status: j.status, quarter, attempts: j.attempts });
      if (!before && this.first && terminal(j.status)) continue; // finished before `up` looked
      if (!before || before.status !== j.status || (j.status === 'running' && before.attempts !== j.attempts)) {
        lines.push(describe(j));
      } else if (j.status === 'running' && quarter > before.quarter && quarter < 4) {
        lines.push(`job ${j.id} denoising: ${25 * quarter}% (${p.blockStepsDone}/${p.blockSteps} block-steps${p.etaSeconds !== null ? `, eta ${Math.round(p.etaSeconds)} s` : ''})`);
      }
    }
    this.first = false;
    return lines;
  }
}

function terminal(status: VideoStatus['status']): boolean {
  return status === 'succeeded' || status === 'failed' || status === 'canceled';
}

function describe(j: VideoStatus): string {
  const spec = j.spec;
  switch (j.status) {
    case 'queued':
      return `job ${j.id} queued: ${spec.frames} frames, ${spec.steps} steps, model ${String(spec.model)}${j.attempts > 0 ? ` (retrying after attempt ${j.attempts}${j.error ? `: ${j.error.message}` : ''})` : ''}`;
    case 'running':
      return `job ${j.id} running: ${j.stages ?? '?'} stage(s) on ${j.workers.join(', ') || '?'} (attempt ${Math.max(1, j.attempts)})`;
    case 'succeeded':
      return `job ${j.id} succeeded${j.result ? ` in ${j.result.seconds.toFixed(1)} s: ${j.result.frames} frames ${j.result.width}x${j.result.height}, latentSha256 ${j.result.latentSha256.slice(0, 16)}…` : ''}`;
    case 'failed':
      return `job ${j.id} failed: ${j.error?.message ?? 'unknown error'}`;
    case 'canceled':
      return `job ${j.id} canceled`;
  }
}
