import { assembleLatents, latentSha256, previewJpeg, type SegmentDir } from '@longshot/media';
import { videoFrameSha256 } from '@longshot/model';
import { decodeBlockOnWorker, type DecodedFrames, type DriverWorker } from '@longshot/pipeline';
import type { JobPlan, JobSpec } from '@longshot/planner';
import { logger } from '@longshot/telemetry';
import { stitchedBlocks } from '../metrics';
import type { JobDataRepository, ResultStore } from '../repositories';
import { DECODE_RETRY_WAIT_MS, retriesDecode } from './retry-policy';
import { previewUrlOf, type VideoStore } from './video';

const log = logger('render');

/** Decodes one finished block to rgb24 frames (and their digest). */
export type BlockDecoder = (index: number) => Promise<DecodedFrames>;

/** The job data the stitcher reads and writes: finished blocks' latents and frame digests. */
export type StitchData = Pick<JobDataRepository, 'block' | 'frameDigest' | 'saveFrameDigest'>;

/** The video's digests once every block is stitched and the segments are joined. */
export interface StitchedVideo {
  /** SHA-256 over the blocks' frame digests, in order (docs/vae.md). */
  readonly frameSha256: string;
  /** SHA-256 of the whole video's latents, assembled from the blocks in Redis. */
  readonly latentSha256: string;
}

/**
 * Turns finished blocks, strictly in order, into one MP4 segment (and a preview) each, then joins
 * them into the video. The controller never decodes: `decode` has a worker of the job do it
 * (workerBlockDecoder). Each block's frame digest is kept in Redis for the job's frameSha256.
 */
export class BlockStitcher {
  private next = 0;
  private readonly segments: SegmentDir;

  constructor(
    private readonly id: string,
    private readonly spec: JobSpec,
    private readonly plan: JobPlan,
    private readonly data: StitchData,
    private readonly results: ResultStore,
    private readonly jobs: Pick<VideoStore, 'blockDone'>,
    private readonly decode: BlockDecoder,
  ) {
    this.segments = results.job(id);
  }

  get blocksDone(): number {
    return this.next;
  }

  /** Picks up a previous run's work: the leading blocks whose segment and frame digest both exist. */
  async prepare(): Promise<void> {
    let done = 0;
    while (done < this.plan.blocks && this.segments.hasSegment(done) && (await this.data.frameDigest(this.id, done)) !== null) done++;
    this.next = done;
    if (done > 0) log.info('continuing the stitch', { job: this.id, blocks: done });
  }

  async add(index: number): Promise<void> {
    if (index < this.next) {
      // Stitched by an earlier run; its event may not have been recorded before that run died.
      await this.jobs.blockDone(this.id, index, this.blockEvent(index));
      return;
    }
    if (index !== this.next) throw new Error(`stitching needs block ${this.next} next, got block ${index}`);
    const { width, height, fps } = this.spec;
    const decoded = await this.decode(index);
    if (decoded.width !== width || decoded.height !== height) throw new Error(`the VAE decoded ${decoded.width}x${decoded.height} frames; the job is ${width}x${height}`);
    this.results.ensureSpace();
    await this.segments.writeSegment(index, decoded.rgb, { width, height, fps });
    await this.segments.writePreview(index, await previewJpeg(decoded.rgb.subarray(0, width * height * 3), width, height));
    // Segment first, digest second: a crash in between decodes this block again, never skips it.
    await this.data.saveFrameDigest(this.id, index, decoded.sha256);
    this.next++;
    stitchedBlocks.inc();
    await this.jobs.blockDone(this.id, index, this.blockEvent(index));
  }

  /** After the last block: joins the segments into the video and computes its digests. */
  async join(latentChannels: number): Promise<StitchedVideo> {
    this.results.ensureSpace();
    await this.segments.concat(this.plan.blocks);
    const frameSha256 = videoFrameSha256(await this.digests());
    const latents: Float32Array[] = [];
    for (let i = 0; i < this.plan.blocks; i++) {
      const b = await this.data.block(this.id, i);
      if (!b) throw new Error(`block ${i} of job ${this.id} is no longer in Redis`);
      latents.push(b);
    }
    return { frameSha256, latentSha256: latentSha256(assembleLatents(latents, latentChannels, this.spec.block, this.plan.latentHeight * this.plan.latentWidth)) };
  }

  /** Once the result is recorded: the segments served their purpose (the previews stay). */
  removeSegments(): void {
    this.segments.removeSegments(this.plan.blocks);
  }

  /** Every block's frame digest, in order (after the last block). */
  private async digests(): Promise<string[]> {
    const out: string[] = [];
    for (let i = 0; i < this.plan.blocks; i++) {
      const d = await this.data.frameDigest(this.id, i);
      if (d === null) throw new Error(`the frame digest of block ${i} of job ${this.id} is no longer in Redis`);
      out.push(d);
    }
    return out;
  }

  private blockEvent(index: number) {
    return { index, previewUrl: previewUrlOf(this.id, index) };
  }
}

/**
 * Decodes blocks on the decoding worker (the tail of the driver's current attempt, docs/vae.md).
 * No decoder state lives in the controller or in Redis: a worker that is not at the block (a new
 * one after a failure, a takeover) rebuilds the VAE's cache from the blocks in Redis. When the
 * worker fails (lost, killed), waits for the driver to replace it (or a while) and asks again.
 */
export function workerBlockDecoder(o: {
  readonly id: string;
  readonly spec: JobSpec;
  readonly plan: JobPlan;
  readonly keyPrefix: string;
  /** The worker that decodes now. */
  readonly decodingWorker: () => DriverWorker;
  /** A component grant of the job's current run, fresh for each call. */
  readonly grant: () => string;
  readonly signal: AbortSignal;
}): BlockDecoder {
  const { id, spec, plan, signal } = o;
  return async (index) => {
    const request = { jobId: id, model: spec.model, keyPrefix: o.keyPrefix, index, blocks: plan.blocks, block: spec.block, latentHeight: plan.latentHeight, latentWidth: plan.latentWidth };
    for (let attempt = 1; ; attempt++) {
      const worker = o.decodingWorker();
      try {
        const d = await decodeBlockOnWorker(worker, { ...request, grant: o.grant() }, signal);
        if (d.rebuiltLatentFrames > 0) log.info('decoder cache rebuilt on the decoding worker', { job: id, block: index, worker: worker.id, latentFrames: d.rebuiltLatentFrames });
        return d;
      } catch (e) {
        signal.throwIfAborted();
        if (!retriesDecode(e, attempt)) throw e;
        log.warn('decoding a block failed; trying again', { job: id, block: index, worker: worker.id, attempt, err: e });
        const until = Date.now() + DECODE_RETRY_WAIT_MS;
        while (Date.now() < until && o.decodingWorker().id === worker.id && !signal.aborted) await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
}
