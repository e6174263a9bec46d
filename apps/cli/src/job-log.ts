import { describeLayout, groupWorkers, type StageGroupShape } from '@longshot/planner';
import type { ServerEvent, VideoStatus } from './client';

/**
 * Each job's life as `longshot up` logs it: one line per event of the job's event stream (queued,
 * started with its workers, every quarter of its block-steps, retrying, and how it ended).
 */
export class JobLog {
  private readonly quarters = new Map<string, number>();

  /** The line for one of `job`'s events, or null for an event not logged (blocks, progress within a quarter). */
  line(job: Pick<VideoStatus, 'id' | 'spec'>, e: ServerEvent): string | null {
    const d = (e.data ?? {}) as Record<string, unknown>;
    const error = (d.error as { message?: string } | string | undefined) ?? undefined;
    const message = typeof error === 'string' ? error : (error?.message ?? 'unknown error');
    switch (e.event) {
      case 'queued':
        return `job ${job.id} queued: ${job.spec.frames} frames ${String(job.spec.width)}x${String(job.spec.height)}, ${job.spec.steps} steps, model ${String(job.spec.model)}`;
      case 'started': {
        this.quarters.set(job.id, 0);
        const workers = (d.workers as string[] | undefined) ?? [];
        // Stage groups (docs/parallelism.md) are named; one worker per stage (or an event before layouts) is not.
        const layout = d.layout as StageGroupShape | undefined;
        const groups = layout && groupWorkers(layout) > 1 ? ` (${describeLayout({ stages: Number(d.stages), ...layout })})` : '';
        return `job ${job.id} running: ${String(d.stages ?? workers.length)} stage(s)${groups} on ${workers.join(', ') || '?'} (attempt ${String(d.attempt ?? 1)})`;
      }
      case 'progress': {
        const done = Number(d.blockStepsDone);
        const total = Number(d.blockSteps);
        if (!(total > 0)) return null;
        const quarter = Math.floor((4 * done) / total);
        if (quarter <= (this.quarters.get(job.id) ?? 0) || quarter >= 4) return null;
        this.quarters.set(job.id, quarter);
        return `job ${job.id} denoising: ${25 * quarter}% (${done}/${total} block-steps${typeof d.etaSeconds === 'number' ? `, eta ${Math.round(d.etaSeconds)} s` : ''})`;
      }
      case 'retrying':
        return `job ${job.id} retrying: ${message}`;
      case 'succeeded': {
        this.quarters.delete(job.id);
        const r = d.result as { seconds?: number; frames?: number; latentSha256?: string } | undefined;
        return `job ${job.id} succeeded${r?.seconds !== undefined ? ` in ${r.seconds.toFixed(1)} s` : ''}${r?.frames !== undefined ? `: ${r.frames} frames` : ''}${r?.latentSha256 ? `, latentSha256 ${r.latentSha256.slice(0, 16)}…` : ''}`;
      }
      case 'failed':
        this.quarters.delete(job.id);
        return `job ${job.id} failed: ${message}`;
      case 'canceled':
        this.quarters.delete(job.id);
        return `job ${job.id} canceled`;
      default:
        return null;
    }
  }
}
