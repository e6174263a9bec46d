import { BlockStore, DEFAULT_TEXT_EMBEDDING_MAX_BYTES, DEFAULT_TEXT_EMBEDDING_TTL_SECONDS, JobTextStore, TextEmbeddingCache, type CachedTextEmbeddings, type KeySchema, type StoredTextRef } from '@longshot/cache';
import type { Redis } from 'ioredis';
import { backendNumerics, type Backend } from '@longshot/engine';
import { rgb24, VaeBlockDecoder, type ModelCatalog } from '@longshot/model';
import type { Logger } from '@longshot/telemetry';
import { ComponentKind, componentTensor, type ComponentOutput, type ComponentRequest } from '@longshot/transport';
import { workerMetrics } from './metrics';
import { SessionError } from './session';

/** Longest prompt or negative prompt accepted, as the job spec allows. */
const MAX_PROMPT_CHARS = 10_000;
/** Jobs whose VAE decoder (and its feature cache) a worker keeps between blocks; the oldest goes first. */
const MAX_DECODERS = 2;
/** Latent grid limits, as the job spec allows (1280 x 720 pixels at most, 8x spatial). */
const MAX_LATENT_PIXELS = (1280 * 720) / 64;
const MAX_BLOCK = 64;
const MAX_BLOCKS = 4096;

/** A job's decoder kept between its blocks; calls for one job run one at a time. */
interface DecodeSession {
  readonly model: string;
  readonly key: string;
  readonly decoder: VaeBlockDecoder;
  chain: Promise<unknown>;
}

export interface ComponentContext {
  readonly workerId: string;
  readonly backend: Backend;
  /** Models this worker serves ('*': any). */
  readonly models: readonly string[];
  /** Resolves req.model: a model name, never a path. */
  readonly catalog: ModelCatalog;
  readonly redis: Redis;
  readonly keys: KeySchema;
  readonly log: Logger;
}

/** What the call's grant names: the job's keyspace and the run that fences writes to it. */
export interface ComponentGrant {
  readonly keyPrefix: string;
  readonly run: string;
}

/**
 * Runs model components other than DiT stages (RunComponent): today the text encoder, tomorrow
 * the VAE decoder. Each run is one request in, output tensors and a summary out; nothing stays
 * loaded afterwards.
 */
export class ComponentRunner {
  private readonly textCache: TextEmbeddingCache;
  private readonly blocks: BlockStore;
  private readonly jobText: JobTextStore;
  /** By key prefix, oldest first. */
  private readonly decoders = new Map<string, DecodeSession>();

  constructor(private readonly ctx: ComponentContext) {
    this.textCache = new TextEmbeddingCache(ctx.redis, { ttlSeconds: DEFAULT_TEXT_EMBEDDING_TTL_SECONDS, maxEntryBytes: DEFAULT_TEXT_EMBEDDING_MAX_BYTES, keys: ctx.keys });
    this.blocks = new BlockStore(ctx.redis, { keys: ctx.keys });
    this.jobText = new JobTextStore(ctx.redis, { keys: ctx.keys });
  }

  async run(req: ComponentRequest, grant: ComponentGrant, send: (o: ComponentOutput) => void): Promise<void> {
    if (!req.model) throw new SessionError('INVALID_ARGUMENT', 'model is required');
    if (!this.ctx.models.includes('*') && !this.ctx.models.includes(req.model)) throw new SessionError('FAILED_PRECONDITION', `worker ${this.ctx.workerId} does not serve model ${req.model}`);
    switch (req.kind) {
      case ComponentKind.COMPONENT_KIND_TEXT_ENCODER:
        return this.encodeText(req, grant, send);
      case ComponentKind.COMPONENT_KIND_VAE_DECODER:
        return this.decodeBlock(req, send);
      default:
        throw new SessionError('INVALID_ARGUMENT', `kind ${req.kind} is not a component this worker runs (COMPONENT_KIND_TEXT_ENCODER, COMPONENT_KIND_VAE_DECODER)`);
    }
  }

  /**
   * Prompt and negative prompt -> embeddings (and ids), from the Redis cache when it has them;
   * streamed back, or with store_for_job stored for the job's stages and answered by reference.
   */
  private async encodeText(req: ComponentRequest, grant: ComponentGrant, send: (o: ComponentOutput) => void): Promise<void> {
    if (req.input?.$case !== 'text') throw new SessionError('INVALID_ARGUMENT', 'text is required for COMPONENT_KIND_TEXT_ENCODER');
    const { prompt, negativePrompt } = req.input.value;
    if (prompt.length > MAX_PROMPT_CHARS) throw new SessionError('INVALID_ARGUMENT', `text.prompt is ${prompt.length} characters; at most ${MAX_PROMPT_CHARS}`);
    if (negativePrompt.length > MAX_PROMPT_CHARS) throw new SessionError('INVALID_ARGUMENT', `text.negative_prompt is ${negativePrompt.length} characters; at most ${MAX_PROMPT_CHARS}`);
    let model;
    try {
      model = this.ctx.catalog.resolve(req.model);
    } catch (e) {
      workerMetrics.modelRefusals.inc();
      throw new SessionError('INVALID_ARGUMENT', `model: ${(e as Error).message}`);
    }
    const encoder = model.textEncoder;
    const numerics = backendNumerics(this.ctx.backend);
    const parts = { encoder: await encoder.fingerprint(), numerics, prompt, negativePrompt };
    let out: CachedTextEmbeddings | null = await this.textCache.get(parts).catch((e: Error) => {
      // A corrupt or unreachable entry costs an encode, never the job.
      this.ctx.log.warn('text embedding cache read failed; encoding', { job: req.jobId, error: e.message });
      return null;
    });
    const hit = out !== null;
    workerMetrics.textEmbeddingCache.inc({ result: hit ? 'hit' : 'miss' });
    if (!out) {
      const stop = workerMetrics.componentSeconds.startTimer({ kind: 'text_encoder' });
      const e = await encoder.encode(prompt, negativePrompt, this.ctx.backend);
      stop();
      out = { cond: e.cond, uncond: e.uncond, condIds: e.condIds ?? new Int32Array(0), uncondIds: e.uncondIds ?? new Int32Array(0), truncated: e.truncated };
      const stored = await this.textCache.put(parts, out).catch((err: Error) => {
        this.ctx.log.warn('text embedding cache write failed', { job: req.jobId, error: err.message });
        return false;
      });
      this.ctx.log.info('text encoded', { job: req.jobId, model: req.model, encoder: encoder.description, cached: stored });
    }
    let storedText: StoredTextRef | undefined;
    if (req.input.value.storeForJob) {
      // Fenced by the grant's run: a superseded driver run writes nothing (FencedWriteError).
      storedText = await this.jobText.put(grant.keyPrefix, { cond: out.cond, uncond: out.uncond }, grant.run);
    } else {
      const { textLen, textDim } = model.config;
      send({ output: { $case: 'tensor', value: componentTensor('cond', [textLen, textDim], out.cond) } });
      send({ output: { $case: 'tensor', value: componentTensor('uncond', [textLen, textDim], out.uncond) } });
      if (out.condIds.length > 0) send({ output: { $case: 'tensor', value: componentTensor('cond_ids', [out.condIds.length], out.condIds) } });
      if (out.uncondIds.length > 0) send({ output: { $case: 'tensor', value: componentTensor('uncond_ids', [out.uncondIds.length], out.uncondIds) } });
    }
    send({ output: { $case: 'summary', value: { workerId: this.ctx.workerId, description: encoder.description, numerics, cacheHit: hit, truncatedTokens: out.truncated, frameSha256: '', rebuiltLatentFrames: 0, storedText } } });
  }

  /**
   * One finished block of a job -> its frames (rgb24, one tensor per frame: 1.2 MB at 832x480)
   * and its frame digest. The job's decoder stays loaded for its next block; a decoder elsewhere
   * (a new worker, after a failure) rebuilds its cache from the preceding blocks in Redis.
   */
  private async decodeBlock(req: ComponentRequest, send: (o: ComponentOutput) => void): Promise<void> {
    if (req.input?.$case !== 'vae') throw new SessionError('INVALID_ARGUMENT', 'vae is required for COMPONENT_KIND_VAE_DECODER');
    const v = req.input.value;
    try {
      this.ctx.keys.jobIdOf(v.keyPrefix);
    } catch {
      throw new SessionError('INVALID_ARGUMENT', 'vae.key_prefix is not a job prefix');
    }
    const bad = (field: string, why: string) => new SessionError('INVALID_ARGUMENT', `vae.${field} ${why}`);
    if (v.block < 1 || v.block > MAX_BLOCK) throw bad('block', `must be 1..${MAX_BLOCK}, got ${v.block}`);
    if (v.blocks < 1 || v.blocks > MAX_BLOCKS) throw bad('blocks', `must be 1..${MAX_BLOCKS}, got ${v.blocks}`);
    if (v.blockIndex >= v.blocks) throw bad('block_index', `must be below blocks (${v.blocks}), got ${v.blockIndex}`);
    if (v.latentHeight < 1 || v.latentWidth < 1 || v.latentHeight * v.latentWidth > MAX_LATENT_PIXELS) throw bad('latent_height', `x latent_width must be positive and at most ${MAX_LATENT_PIXELS} latent pixels, got ${v.latentHeight}x${v.latentWidth}`);
    const session = this.decodeSession(req.model, v.keyPrefix, { block: v.block, latentHeight: v.latentHeight, latentWidth: v.latentWidth });
    const run = session.chain.then(async () => {
      const read = async (i: number): Promise<Float32Array> => {
        const b = await this.blocks.get(v.keyPrefix, i);
        if (!b) throw new SessionError('FAILED_PRECONDITION', `block ${i} of the job is not in Redis`);
        return b;
      };
      const latents = await read(v.blockIndex);
      const stop = workerMetrics.componentSeconds.startTimer({ kind: 'vae_decoder' });
      const d = await session.decoder.decodeBlock(v.blockIndex, latents, read);
      stop();
      const rgb = rgb24(d.frames);
      const frameBytes = d.height * d.width * 3;
      for (let f = 0; f < d.count; f++) send({ output: { $case: 'tensor', value: componentTensor(`frame.${f}`, [d.height, d.width, 3], rgb.subarray(f * frameBytes, (f + 1) * frameBytes)) } });
      send({ output: { $case: 'summary', value: { workerId: this.ctx.workerId, description: `vae ${session.model}`, numerics: backendNumerics(this.ctx.backend), cacheHit: d.rebuiltLatentFrames === 0, truncatedTokens: 0, frameSha256: d.sha256, rebuiltLatentFrames: d.rebuiltLatentFrames, storedText: undefined } } });
      if (d.rebuiltLatentFrames > 0) this.ctx.log.info('VAE feature cache rebuilt', { job: req.jobId, block: v.blockIndex, latentFrames: d.rebuiltLatentFrames });
      // The job's last block: its cache (3.5 GiB at 832x480) is not needed any more.
      if (v.blockIndex + 1 === v.blocks) this.decoders.delete(session.key);
    });
    session.chain = run.catch(() => undefined);
    return run;
  }

  private decodeSession(model: string, key: string, geometry: { block: number; latentHeight: number; latentWidth: number }): DecodeSession {
    const have = this.decoders.get(key);
    const g = have?.decoder.geometry;
    if (have && have.model === model && g?.block === geometry.block && g.latentHeight === geometry.latentHeight && g.latentWidth === geometry.latentWidth) return have;
    let source;
    try {
      source = this.ctx.catalog.resolve(model);
    } catch (e) {
      workerMetrics.modelRefusals.inc();
      throw new SessionError('INVALID_ARGUMENT', `model: ${(e as Error).message}`);
    }
    const session: DecodeSession = { model, key, decoder: new VaeBlockDecoder(source.vae, source.loadVae(), geometry, this.ctx.backend), chain: have?.chain ?? Promise.resolve() };
    this.decoders.delete(key);
    this.decoders.set(key, session);
    while (this.decoders.size > MAX_DECODERS) this.decoders.delete(this.decoders.keys().next().value!);
    return session;
  }
}
