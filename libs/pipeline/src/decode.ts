/**
 * The job driver's side of block decoding: asks a worker of the job (RunComponent,
 * COMPONENT_KIND_VAE_DECODER) to decode one finished block, read from Redis, and collects its
 * rgb24 frames and frame digest. Which worker, and retrying after it is lost, is the caller's.
 */
import { ComponentKind, createWorkerClient, runComponent } from '@longshot/transport';
import type { DriverWorker } from './driver';

export interface BlockDecodeRequest {
  readonly jobId: string;
  readonly model: string;
  readonly keyPrefix: string;
  readonly index: number;
  readonly blocks: number;
  /** Latent frames per block. */
  readonly block: number;
  readonly latentHeight: number;
  readonly latentWidth: number;
  /** A component grant (stage -1) of the job's current run: the worker reads the latents under its key prefix. */
  readonly grant: string;
}

export interface DecodedFrames {
  /** [frames, height, width, 3] rgb24. */
  readonly rgb: Uint8Array;
  readonly frames: number;
  readonly height: number;
  readonly width: number;
  /** SHA-256 of the block's float32 frames before quantisation. */
  readonly sha256: string;
  readonly rebuiltLatentFrames: number;
  readonly worker: string;
}

/** One block on the VAE can take minutes on CPU at 832x480 (and a cache rebuild many blocks more). */
const DECODE_DEADLINE_MS = 60 * 60_000;

/** Decodes block `r.index` on `worker`. Rejects with the call's gRPC error (`code`) when it fails. */
export async function decodeBlockOnWorker(worker: DriverWorker, r: BlockDecodeRequest, signal?: AbortSignal): Promise<DecodedFrames> {
  const client = createWorkerClient(worker.address);
  try {
    const out = await runComponent(
      client,
      {
        kind: ComponentKind.COMPONENT_KIND_VAE_DECODER,
        model: r.model,
        jobId: r.jobId,
        input: { $case: 'vae', value: { keyPrefix: r.keyPrefix, blockIndex: r.index, blocks: r.blocks, block: r.block, latentHeight: r.latentHeight, latentWidth: r.latentWidth } },
        grant: r.grant,
      },
      { signal, deadlineMs: DECODE_DEADLINE_MS },
    );
    const frames: Uint8Array[] = [];
    for (let f = 0; out.tensors.has(`frame.${f}`); f++) {
      const t = out.tensors.get(`frame.${f}`)!;
      if (!(t.values instanceof Uint8Array) || t.shape.length !== 3 || t.shape[2] !== 3) throw new Error(`VAE decoder on ${worker.id}: frame ${f} is not an rgb24 [height, width, 3] tensor`);
      frames.push(t.values);
    }
    if (frames.length === 0 || frames.length !== out.tensors.size) throw new Error(`VAE decoder on ${worker.id}: expected frames frame.0..frame.N, got ${[...out.tensors.keys()].slice(0, 4).join(', ')}`);
    const [height, width] = out.tensors.get('frame.0')!.shape;
    const rgb = new Uint8Array(frames.length * height * width * 3);
    frames.forEach((f, i) => {
      if (f.length !== height * width * 3) throw new Error(`VAE decoder on ${worker.id}: frame ${i} has another size than frame 0`);
      rgb.set(f, i * f.length);
    });
    return { rgb, frames: frames.length, height, width, sha256: out.summary.frameSha256, rebuiltLatentFrames: out.summary.rebuiltLatentFrames, worker: worker.id };
  } finally {
    client.close();
  }
}
