import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { JobRequest } from '@longshot/planner';
import type { SamplerKind } from '@longshot/sampler';
import type { Progress } from './progress';

/** A job as the controller reports it (GET /v1/videos/:id). */
export interface VideoStatus {
  id: string;
  status: 'queued' | 'running' | 'succeeded' | 'failed' | 'canceled';
  spec: Record<string, unknown> & { steps: number; frames: number; stages?: number };
  progress: { blocksDone: number; blocks: number; blockStepsDone: number; blockSteps: number; etaSeconds: number | null };
  stages: number | null;
  workers: string[];
  attempts: number;
  result: { frames: number; width: number; height: number; fps: number; latentSha256: string; sampler: SamplerKind; shift: number; contentUrl: string; seconds: number } | null;
  error: string | null;
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

/** The controller's REST + SSE API, as the `longshot` commands use it. */
export class ControllerClient {
  readonly base: string;

  constructor(url: string) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new Error(`--url: not a URL: '${url}'`);
    }
    this.base = u.toString().replace(/\/$/, '');
  }

  async submit(request: JobRequest & { priority?: number }, idempotencyKey?: string): Promise<{ id: string; status: string }> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (idempotencyKey) headers['idempotency-key'] = idempotencyKey;
    return this.json('POST', '/v1/videos', headers, JSON.stringify(dropUndefined(request)));
  }

  status(id: string): Promise<VideoStatus> {
    return this.json('GET', `/v1/videos/${encodeURIComponent(id)}`);
  }

  cancel(id: string): Promise<{ id: string; status: string }> {
    return this.json('POST', `/v1/videos/${encodeURIComponent(id)}/cancel`);
  }

  /** Downloads the MP4 to `out` (written beside it, then renamed). */
  async fetchContent(id: string, out: string): Promise<string> {
    const res = await fetch(`${this.base}/v1/videos/${encodeURIComponent(id)}/content`);
    if (!res.ok || !res.body) throw new ControllerError(res.status, await res.text());
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
        const res = await fetch(`${this.base}/v1/videos/${encodeURIComponent(id)}/events`, { headers, signal });
        if (!res.ok || !res.body) throw new ControllerError(res.status, await res.text());
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

  private async json<T>(method: string, route: string, headers: Record<string, string> = {}, body?: string): Promise<T> {
    const res = await fetch(`${this.base}${route}`, { method, headers, body });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // Not JSON: keep the text for the error.
    }
    if (!res.ok) throw new ControllerError(res.status, parsed as ControllerError['body']);
    return parsed as T;
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

/** Follows a job's events with a progress bar; returns its final status. */
export async function followWithProgress(client: ControllerClient, id: string, progress?: Progress): Promise<VideoStatus> {
  let started = false;
  await client.follow(id, (e) => {
    const d = e.data as { blockStepsDone?: number; blockSteps?: number; stages?: number };
    if (e.event === 'progress' && typeof d.blockStepsDone === 'number' && typeof d.blockSteps === 'number') {
      if (!started) {
        progress?.start(`rendering ${id}`, d.blockSteps);
        started = true;
      }
      progress?.set(d.blockStepsDone);
    }
  });
  progress?.stop();
  return client.status(id);
}

