import type { JobLayout, JobRecord, JobStore } from '@longshot/cache';
import type { Hop, StagePlace } from '@longshot/pipeline';
import type { SamplerKind } from '@longshot/sampler';
import type { JobSpec } from '@longshot/planner';

/**
 * What a job record's spec holds: the normalised spec, whether K was left to the planner, and
 * the group shape the request set (null: the planner's; absent in records older than layouts: 1, false).
 */
export type VideoSpec = JobSpec & {
  readonly autoStages: boolean;
  readonly ulysses?: number | null;
  readonly cfgParallel?: boolean | null;
  /** The events the job's webhook gets; null (or absent, in older records) when it has none. */
  readonly webhookEvents?: readonly string[] | null;
};

export interface VideoResult {
  readonly frames: number;
  readonly width: number;
  readonly height: number;
  readonly fps: number;
  readonly latentSha256: string;
  /** SHA-256 over the blocks' decoded-frame digests (docs/vae.md): the same in every mode, resume or not. */
  readonly frameSha256: string;
  /** The solver and schedule shift the job ran with (the shift resolved from the model's scheduler). */
  readonly sampler: SamplerKind;
  readonly shift: number;
  /** The numerics fingerprint every run of the job computed with: latentSha256 is reproducible on workers of that fingerprint. */
  readonly numerics: string;
  readonly contentUrl: string;
  /** The layout the job ran on: K stages, each a group of `ulysses` x (cfgParallel ? 2 : 1) workers. */
  readonly layout: ResultLayout;
  /** Wall time from the first start to the end. */
  readonly seconds: number;
  /** How each stage-to-stage hop of the run that finished moved its tensor bytes (empty for K = 1, or when no stage ran). */
  readonly hops: readonly Hop[];
  /** Where each stage of the run that finished ran (host, NVLink domain, GPU), head first; empty when no stage ran. */
  readonly placement: readonly StagePlace[];
}

export interface ResultLayout extends JobLayout {
  readonly stages: number;
}

export type VideoStore = JobStore<VideoSpec, VideoResult>;
export type VideoRecord = JobRecord<VideoSpec, VideoResult>;

export interface RenderJobData {
  readonly id: string;
  /** When the job first found too few free workers (cleared once it leases them). */
  readonly waitingSince?: number;
}

export const urlsOf = (id: string) => ({
  self: `/v1/videos/${id}`,
  events: `/v1/videos/${id}/events`,
  content: `/v1/videos/${id}/content`,
  cancel: `/v1/videos/${id}/cancel`,
});

/** Where block `index`'s preview is served (its `block` event names it). */
export const previewUrlOf = (id: string, index: number): string => `/v1/videos/${id}/blocks/${index}/preview.jpg`;
