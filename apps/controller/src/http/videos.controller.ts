import { Body, Controller, Get, Headers, HttpCode, HttpException, Inject, NotFoundException, Param, Post, Query, Req, Res } from '@nestjs/common';
import { ApiBody, ApiHeader, ApiOperation, ApiParam, ApiQuery, ApiResponse, ApiTags } from '@nestjs/swagger';
import type { Request, Response } from 'express';
import { compareEventIds, TERMINAL_STATUSES, type JobEvent, type JobStatus } from '@longshot/cache';
import { logger } from '@longshot/telemetry';
import { EventHub } from '../event-hub';
import type { VideoStore } from '../render';
import { SUBMIT_SCHEMA } from '../request';
import { JOBS } from '../tokens';
import { VideosService } from '../videos.service';

const log = logger('http');

const ERROR_SCHEMA = { type: 'object', properties: { error: { type: 'string' }, field: { type: 'string' }, message: { type: 'string' } } };

@ApiTags('videos')
@Controller('v1/videos')
export class VideosController {
  constructor(
    @Inject(VideosService) private readonly videos: VideosService,
    @Inject(JOBS) private readonly jobs: VideoStore,
    @Inject(EventHub) private readonly hub: EventHub,
  ) {}

  @Post()
  @ApiOperation({ summary: 'Submit a video job' })
  @ApiBody({ schema: SUBMIT_SCHEMA as object })
  @ApiHeader({ name: 'Idempotency-Key', required: false, description: 'Same key and body: the same job; same key, other body: 409' })
  @ApiResponse({ status: 202, description: 'Queued: {id, status, urls}' })
  @ApiResponse({ status: 200, description: 'Idempotent repeat: the existing job' })
  @ApiResponse({ status: 400, description: 'Invalid body; `field` names the problem', schema: ERROR_SCHEMA })
  @ApiResponse({ status: 409, description: 'Idempotency-Key reused with another body' })
  async submit(@Body() body: unknown, @Headers('idempotency-key') key: string | undefined, @Res() res: Response): Promise<void> {
    const out = await this.videos.submit(body, key);
    res.status(out.created ? 202 : 200).location(out.body.urls.self).json(out.body);
  }

  @Get()
  @ApiOperation({ summary: 'List videos, newest first' })
  @ApiQuery({ name: 'status', required: false, enum: ['queued', 'running', 'succeeded', 'failed', 'canceled'] })
  @ApiQuery({ name: 'limit', required: false, type: Number })
  @ApiQuery({ name: 'cursor', required: false, type: String })
  list(@Query('status') status?: string, @Query('limit') limit?: string, @Query('cursor') cursor?: string) {
    return this.videos.list({ status, limit, cursor });
  }

  @Get(':id')
  @ApiOperation({ summary: 'A video job: status, progress, result' })
  @ApiParam({ name: 'id' })
  @ApiResponse({ status: 404, description: 'Unknown id' })
  async get(@Param('id') id: string) {
    return this.videos.view(await this.videos.get(id));
  }

  @Post(':id/cancel')
  @HttpCode(200)
  @ApiOperation({ summary: 'Cancel a queued or running job (frees its workers)' })
  @ApiParam({ name: 'id' })
  @ApiResponse({ status: 409, description: 'Already finished' })
  cancel(@Param('id') id: string) {
    return this.videos.cancel(id);
  }

  @Get(':id/content')
  @ApiOperation({ summary: 'The MP4 (supports Range requests)' })
  @ApiParam({ name: 'id' })
  @ApiResponse({ status: 206, description: 'Partial content' })
  @ApiResponse({ status: 409, description: 'Not finished' })
  async content(@Param('id') id: string, @Res() res: Response): Promise<void> {
    const file = await this.videos.contentPath(id);
    // express's send: Range, 206/416, Accept-Ranges, ETag, Last-Modified.
    await sendFile(res, file, 'video/mp4');
  }

  @Get(':id/blocks/:index/preview.jpg')
  @ApiOperation({ summary: "JPEG of a finished block's first frame" })
  async preview(@Param('id') id: string, @Param('index') index: string, @Res() res: Response): Promise<void> {
    await sendFile(res, await this.videos.previewPath(id, index), 'image/jpeg');
  }

  @Get(':id/events')
  @ApiOperation({ summary: 'Server-Sent Events: queued, started, block, progress, then succeeded | failed | canceled. Replays from the start; honours Last-Event-ID.' })
  @ApiParam({ name: 'id' })
  async events(@Param('id') id: string, @Req() req: Request, @Res() res: Response): Promise<void> {
    await this.videos.get(id);
    // Validated before the stream opens: a malformed Last-Event-ID is a 400.
    const after = this.videos.eventsAfter(req.header('last-event-id'));
    res.status(200).set({ 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
    res.flushHeaders();
    let last = after;
    let open = true;
    let live = false;
    const held: JobEvent[] = [];
    const send = (events: JobEvent[]): void => {
      for (const e of events) {
        if (!open || compareEventIds(e.id, last) <= 0) continue; // seen (catch-up and live overlap)
        last = e.id;
        res.write(`id: ${e.id}\nevent: ${e.event}\ndata: ${JSON.stringify(e.data)}\n\n`);
        if (TERMINAL_STATUSES.includes(e.event as JobStatus)) close();
      }
    };
    // Live events come from the replica's one shared reader; held until the catch-up is sent.
    const unsubscribe = this.hub.subscribe(id, last, (events) => (live ? send(events) : held.push(...events)));
    const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), 10_000);
    let closed!: () => void;
    const done = new Promise<void>((r) => (closed = r));
    function close(): void {
      open = false;
      unsubscribe();
      clearInterval(keepAlive);
      res.end();
      closed();
    }
    req.on('close', () => open && close());
    try {
      // History, without blocking, on the shared command connection.
      for (;;) {
        const events = await this.jobs.events(id, last);
        if (events.length === 0 || !open) break;
        send(events);
      }
      live = true;
      send(held.splice(0));
    } catch (err) {
      // The cause (e.g. Redis's own error text) goes to the log, never to the client.
      log.warn('event stream failed', { job: id, err });
      if (open) {
        res.write(`event: error\ndata: ${JSON.stringify({ message: 'the event stream was interrupted; reconnect with Last-Event-ID' })}\n\n`);
        close();
      }
    }
    await done;
  }
}

/** express's sendFile; its own 4xx (416 for an unsatisfiable Range, 404 for a vanished file) keep their status. */
function sendFile(res: Response, file: string, type: string): Promise<void> {
  return new Promise((resolve, reject) => {
    res.type(type);
    res.sendFile(file, { acceptRanges: true, cacheControl: false }, (err: (Error & { status?: number }) | undefined) => {
      if (!err || res.headersSent) return resolve();
      if (err.status === 416) return reject(new HttpException({ error: 'range_not_satisfiable', field: 'Range', message: 'Range: no satisfiable byte range (bytes=FIRST-LAST with FIRST <= LAST < size)' }, 416));
      if (err.status === 404) return reject(new NotFoundException({ error: 'not_found', message: 'the file is no longer in the result store' }));
      reject(err);
    });
  });
}
