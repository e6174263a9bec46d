/**
 * Render jobs: one run of a job on this replica (render-run.ts) and the units it composes, each
 * with one concern: the stitcher (stitcher.ts), the progress reporter (progress.ts) and the
 * retry/failover policy (retry-policy.ts). The job record's types are in video.ts.
 */
export * from './video';
export { RenderRun, type RenderDeps } from './render-run';
export { CANCELED_REASON, StopRun } from './retry-policy';
