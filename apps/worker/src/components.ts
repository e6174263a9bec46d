import { DEFAULT_TEXT_EMBEDDING_MAX_BYTES, DEFAULT_TEXT_EMBEDDING_TTL_SECONDS, TextEmbeddingCache, type CachedTextEmbeddings } from '@longshot/cache';
import type { Redis } from 'ioredis';
import { backendNumerics, type Backend } from '@longshot/engine';
import type { ModelCatalog } from '@longshot/model';
import type { Logger } from '@longshot/telemetry';
import { ComponentKind, componentTensor, type ComponentOutput, type ComponentRequest } from '@longshot/transport';
import { workerMetrics } from './metrics';
import { SessionError } from './session';

/** Longest prompt or negative prompt accepted, as the job spec allows. */
const MAX_PROMPT_CHARS = 10_000;

export interface ComponentContext {
  readonly workerId: string;
  readonly backend: Backend;
  /** Models this worker serves ('*': any). */
  readonly models: readonly string[];
  /** Resolves req.model: a model name, never a path. */
  readonly catalog: ModelCatalog;
  readonly redis: Redis;
  readonly log: Logger;
}

/**
 * Runs model components other than DiT stages (RunComponent): today the text encoder, tomorrow
 * the VAE decoder. Each run is one request in, output tensors and a summary out; nothing stays
 * loaded afterwards.
 */
export class ComponentRunner {
  private readonly textCache: TextEmbeddingCache;

  constructor(private readonly ctx: ComponentContext) {
    this.textCache = new TextEmbeddingCache(ctx.redis, { ttlSeconds: DEFAULT_TEXT_EMBEDDING_TTL_SECONDS, maxEntryBytes: DEFAULT_TEXT_EMBEDDING_MAX_BYTES });
  }

  async run(req: ComponentRequest, send: (o: ComponentOutput) => void): Promise<void> {
    if (!req.model) throw new SessionError('INVALID_ARGUMENT', 'model is required');
    if (!this.ctx.models.includes('*') && !this.ctx.models.includes(req.model)) throw new SessionError('FAILED_PRECONDITION', `worker ${this.ctx.workerId} does not serve model ${req.model}`);
    switch (req.kind) {
      case ComponentKind.COMPONENT_KIND_TEXT_ENCODER:
        return this.encodeText(req, send);
      default:
        throw new SessionError('INVALID_ARGUMENT', `kind ${req.kind} is not a component this worker runs (COMPONENT_KIND_TEXT_ENCODER)`);
    }
  }

  /** Prompt and negative prompt -> embeddings (and ids), from the Redis cache when it has them. */
  private async encodeText(req: ComponentRequest, send: (o: ComponentOutput) => void): Promise<void> {
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
    const { textLen, textDim } = model.config;
    send({ output: { $case: 'tensor', value: componentTensor('cond', [textLen, textDim], out.cond) } });
    send({ output: { $case: 'tensor', value: componentTensor('uncond', [textLen, textDim], out.uncond) } });
    if (out.condIds.length > 0) send({ output: { $case: 'tensor', value: componentTensor('cond_ids', [out.condIds.length], out.condIds) } });
    if (out.uncondIds.length > 0) send({ output: { $case: 'tensor', value: componentTensor('uncond_ids', [out.uncondIds.length], out.uncondIds) } });
    send({ output: { $case: 'summary', value: { workerId: this.ctx.workerId, description: encoder.description, numerics, cacheHit: hit, truncatedTokens: out.truncated } } });
  }
}
