import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { JobRequest } from '@longshot/planner';
import type { SamplerKind } from '@longshot/sampler';
import { UsageError } from './args';
import { unreachable } from './errors';
import type { Progress } from './progress';

/** What POST /v1/videos takes beyond the spec: each stage's group (docs/parallelism.md). */
export interface LayoutRequest {
  ulysses?: number;
  cfgParallel?: boolean;
}

/** A job as the controller reports it (GET /v1/videos/:id). */
export interface VideoStatus {
  id: string;
  status: 'queued' | 'running' | 'succeeded' | 'failed' | 'canceled';
  spec: Record<string, unknown> & { steps: number; frames: number; stages?: number };
  progress: { blocksDone: number; blocks: number; blockStepsDone: number; blockSteps: number; etaSeconds: number | null };
  stages: number | null;
  workers: string[];
  attempts: number;
  result: {
    frames: number;
    width: number;
    height: number;
    fps: number;
    latentSha256: string;
    frameSha256: string;
    sampler: SamplerKind;
    shift: number;
    contentUrl: string;
    seconds: number;
    layout: { stages: number; ulysses: number; cfgParallel: boolean };
  } | null;
  error: { message: string } | null;
}

export interface ServerEvent {
  id: string | null;
  event: string;
  data: unknown;
}

/** An HTTP error from the controller, with the field it names when it is a 400. */
export class ControllerError extends Error {
  constructor(
    readonly status: number,
    readonly body: { error?: string; field?: string; message?: string } | string,
  ) {
    super(typeof body === 'string' ? `HTTP ${status}: ${body}` : `HTTP ${status}: ${body.field ? `${body.field}: ` : ''}${body.message ?? body.error ?? ''}`);
  }
}

/** LONGSHOT_API_KEY (an lsk_... key from `longshot keys create` or `longshot up`), or null. Never a flag: flags show in `ps`. */
export function apiKeyFromEnv(): string | null {
  const k = process.env.LONGSHOT_API_KEY?.trim();
  return k ? k : null;
}

/** The controller's REST + SSE API, as the `longshot` commands use it. */
export class ControllerClient {
  readonly base: string;

  /** `apiKey`: sent as Authorization: Bearer on every request (null: none, for a --no-auth controller). */
  constructor(
    url: string,
    private readonly apiKey: string | null = null,
  ) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new UsageError(`--url: not a URL: '${url}'`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new UsageError(`--url: expected an http:// or https:// URL, got '${url}'`);
    this.base = u.toString().replace(/\/$/, '');
  }

  /**
   * Submits a job. A local `textEmbeddings` file is uploaded first (POST /v1/embeddings) and the
   * job references the upload: the controller never reads a path a client names.
   */
  async submit(request: JobRequest & LayoutRequest & { priority?: number }, idempotencyKey?: string): Promise<{ id: string; status: string }> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (idempotencyKey) headers['idempotency-key'] = idempotencyKey;
    const { textEmbeddings, ...rest } = request;
    const textEmbeddingsId = textEmbeddings === undefined ? undefined : await this.uploadEmbeddings(textEmbeddings);
    return this.json('POST', '/v1/videos', headers, JSON.stringify(dropUndefined({ ...rest, textEmbeddingsId })));
  }

  /** Uploads a safetensors file of text embeddings; returns the id jobs reference it by. */
  async uploadEmbeddings(file: string): Promise<string> {
    try {
      const r = await this.json<{ id: string }>('POST', '/v1/embeddings', { 'content-type': 'application/octet-stream' }, fs.readFileSync(file));
      return r.id;
    } catch (e) {
      // The upload's errors are about the file the user named.
      if (e instanceof ControllerError && typeof e.body === 'object') throw new ControllerError(e.status, { ...e.body, field: 'textEmbeddings' });
      throw e;
    }
  }

  status(id: string): Promise<VideoStatus> {
    return this.json('GET', `/v1/videos/${encodeURIComponent(id)}`);
  }

  cancel(id: string): Promise<{ id: string; status: string }> {
    return this.json('POST', `/v1/videos/${encodeURIComponent(id)}/cancel`);
  }

  /** Downloads the MP4 to `out` (written beside it, then renamed). */
  async fetchContent(id: string, out: string): Promise<string> {
    const res = await this.fetch(`/v1/videos/${encodeURIComponent(id)}/content`);
    if (!res.ok || !res.body) throw new ControllerError(res.status, parseBody(await res.text()) as ControllerError['body']);
    fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
    const tmp = `${out}.part-${process.pid}`;
    await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), fs.createWriteStream(tmp));
    fs.renameSync(tmp, out);
    return path.resolve(out);
  }

  /**
   * Follows the job's Server-Sent Events until a terminal event (succeeded, failed, canceled),
   * reconnecting with Last-Event-ID if the connection drops.
   */
  async follow(id: string, onEvent: (e: ServerEvent) => void, signal?: AbortSignal): Promise<ServerEvent> {
    let lastId: string | null = null;
    for (let attempt = 0; ; attempt++) {
      try {
        const headers: Record<string, string> = { accept: 'text/event-stream' };
        if (lastId) headers['last-event-id'] = lastId;
        const res = await this.fetch(`/v1/videos/${encodeURIComponent(id)}/events`, { headers, signal });
        if (!res.ok || !res.body) throw new ControllerError(res.status, parseBody(await res.text()) as ControllerError['body']);
        for await (const e of parseEventStream(res.body as unknown as AsyncIterable<Uint8Array>)) {
          if (e.id) lastId = e.id;
          onEvent(e);
          if (TERMINAL.has(e.event)) return e;
        }
      } catch (e) {
        if (e instanceof ControllerError || signal?.aborted || attempt >= 5) throw e;
      }
      await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
    }
  }

  /** GET /v1/videos: the newest jobs first. */
  list(limit = 20): Promise<{ items: VideoStatus[]; nextCursor: string | null }> {
    return this.json('GET', `/v1/videos?limit=${limit}`);
  }

  /** Every request goes through here: a controller that is not there is a one-line user error. */
  private async fetch(route: string, init?: RequestInit): Promise<Response> {
    try {
      const auth: Record<string, string> = this.apiKey === null ? {} : { authorization: `Bearer ${this.apiKey}` };
      return await fetch(`${this.base}${route}`, { ...init, headers: { ...(init?.headers as Record<string, string> | undefined), ...auth } });
    } catch (e) {
      throw unreachable(e, this.base) ?? e;
    }
  }

  private async json<T>(method: string, route: string, headers: Record<string, string> = {}, body?: string | Buffer): Promise<T> {
    const res = await this.fetch(route, { method, headers, body });
    const parsed = parseBody(await res.text());
    if (!res.ok) throw new ControllerError(res.status, parsed as ControllerError['body']);
    return parsed as T;
  }
}

/** A JSON body parsed, or the text itself when it is not JSON (kept for the error). */
function parseBody(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);

/** Parses a text/event-stream body into events (the WHATWG format: event, data, id fields). */
export async function* parseEventStream(body: AsyncIterable<Uint8Array>): AsyncGenerator<ServerEvent> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    for (let end = buffer.search(/\r?\n\r?\n/); end >= 0; end = buffer.search(/\r?\n\r?\n/)) {
      const raw = buffer.slice(0, end);
      buffer = buffer.slice(buffer.slice(end).match(/^\r?\n\r?\n/)![0].length + end);
      let event = 'message';
      let id: string | null = null;
      const data: string[] = [];
      for (const line of raw.split(/\r?\n/)) {
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') event = value;
        else if (field === 'data') data.push(value);
        else if (field === 'id') id = value;
      }
      if (data.length === 0) continue;
      const text = data.join('\n');
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // Plain-text data stays a string.
      }
      yield { id, event, data: parsed };
    }
  }
}

function dropUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * Follows a job's events on the progress line, one phase after another (queued, loading weights,
 * denoising with a bar and ETA, decoding); returns its final status.
 */
export async function followWithProgress(client: ControllerClient, id: string, progress?: Progress, signal?: AbortSignal): Promise<VideoStatus> {
  let denoising = false;
  let decoding = false;
  progress?.phase(`queued ${id}`);
  try {
    await client.follow(
      id,
      (e) => {
        const d = (e.data ?? {}) as { blockStepsDone?: number; blockSteps?: number; workers?: string[]; error?: string };
        if (e.event === 'started') {
          denoising = decoding = false;
          progress?.phase(`loading weights on ${d.workers?.length ?? '?'} worker(s)`);
        } else if (e.event === 'retrying') {
          denoising = decoding = false;
          progress?.phase(`retrying ${id}`);
        } else if (e.event === 'progress' && typeof d.blockStepsDone === 'number' && typeof d.blockSteps === 'number') {
          if (!denoising) {
            progress?.start(`denoising ${id}`, d.blockSteps, 'block-steps');
            denoising = true;
          }
          if (!decoding) progress?.set(d.blockStepsDone);
          if (d.blockStepsDone >= d.blockSteps && !decoding) {
            progress?.phase('decoding the last blocks');
            decoding = true;
          }
        }
      },
      signal,
    );
  } finally {
    progress?.stop();
  }
  return client.status(id);
}
