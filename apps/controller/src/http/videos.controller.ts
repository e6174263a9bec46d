import { Body, Controller, Delete, Get, Headers, HttpCode, HttpException, Inject, NotFoundException, Param, Post, Query, Req, Res } from '@nestjs/common';
import { ApiBody, ApiHeader, ApiOperation, ApiParam, ApiQuery, ApiResponse, ApiTags } from '@nestjs/swagger';
import { ApiAuthenticated, ApiError, ApiFailures, ApiFile, ApiJson, ApiRange, ApiVideoId, SUBMITTED_SCHEMA, VIDEO_PAGE_SCHEMA, VIDEO_SCHEMA } from './schemas';
import type { Request, Response } from 'express';
import { compareEventIds, JOB_STATUSES, TERMINAL_STATUSES, type JobEvent, type JobStatus } from '@longshot/cache';
import { logger } from '@longshot/telemetry';
import { Identity, type Caller } from '../auth';
import { EventHub } from '../event-hub';
import type { VideoStore } from '../render';
import { SUBMIT_SCHEMA } from '../request';
import { JOBS } from '../tokens';
import { VideosService } from '../videos.service';

const log = logger('http');

@ApiTags('videos')
@ApiFailures()
@ApiAuthenticated()
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
  @ApiJson(202, 'Queued (Location: the job)', SUBMITTED_SCHEMA)
  @ApiJson(200, 'Idempotent repeat: the existing job', SUBMITTED_SCHEMA)
  @ApiError(400, 'Invalid body or Idempotency-Key; `field` names the problem')
  @ApiError(409, 'Idempotency-Key reused with another body')
  @ApiError(413, 'Body larger than 1 MiB')
  async submit(@Body() body: unknown, @Headers('idempotency-key') key: string | undefined, @Identity() caller: Caller, @Res() res: Response): Promise<void> {
    const out = await this.videos.submit(body, key, caller);
    res.status(out.created ? 202 : 200).location(out.body.urls.self).json(out.body);
  }

  @Get()
  @ApiOperation({ summary: 'List videos, newest first' })
  @ApiQuery({ name: 'status', required: false, enum: [...JOB_STATUSES] })
  @ApiQuery({ name: 'limit', required: false, schema: { type: 'integer', minimum: 1, maximum: 100, default: 20 } })
  @ApiQuery({ name: 'cursor', required: false, schema: { type: 'string', pattern: '^\\d{1,12}$' }, description: 'nextCursor of the previous page' })
  @ApiJson(200, 'A page of videos', VIDEO_PAGE_SCHEMA)
  @ApiError(400, 'Bad query parameter (field: status, limit or cursor)')
  list(@Identity() caller: Caller, @Query('status') status?: string, @Query('limit') limit?: string, @Query('cursor') cursor?: string) {
    return this.videos.list({ status, limit, cursor }, caller);
  }

  @Get(':id')
  @ApiOperation({ summary: 'A video job: status, progress, result' })
  @ApiVideoId()
  @ApiJson(200, 'The video job', VIDEO_SCHEMA)
  async get(@Param('id') id: string, @Identity() caller: Caller) {
    return this.videos.view(await this.videos.get(id, caller), caller);
  }

  @Post(':id/cancel')
  @HttpCode(200)
  @ApiOperation({ summary: 'Cancel a queued or running job (frees its workers)' })
  @ApiVideoId()
  @ApiJson(200, 'The canceled job', VIDEO_SCHEMA)
  @ApiError(409, 'Already finished')
  cancel(@Param('id') id: string, @Identity() caller: Caller) {
    return this.videos.cancel(id, caller);
  }

  @Delete(':id')
  @HttpCode(204)
  @ApiOperation({ summary: "Delete a finished (succeeded, failed or canceled) job: its files, record, events and Redis data" })
  @ApiVideoId()
  @ApiResponse({ status: 204, description: 'Deleted' })
  @ApiError(409, 'Queued or running: cancel it first')
  async remove(@Param('id') id: string, @Identity() caller: Caller): Promise<void> {
    await this.videos.remove(id, caller);
  }

  @Get(':id/content')
  @ApiOperation({ summary: 'The MP4 (supports Range requests)' })
  @ApiVideoId()
  @ApiFile('video/mp4', 'The whole video')
  @ApiRange()
  @ApiError(409, 'Not finished (error: not_ready)')
  async content(@Param('id') id: string, @Identity() caller: Caller, @Res() res: Response): Promise<void> {
    const file = await this.videos.contentPath(id, caller);
    // express's send: Range, 206/416, Accept-Ranges, ETag, Last-Modified.
    await sendFile(res, file, 'video/mp4');
  }

  @Get(':id/blocks/:index/preview.jpg')
  @ApiOperation({ summary: "JPEG of a finished block's first frame" })
  @ApiVideoId()
  @ApiParam({ name: 'index', description: 'Block index, from 0', schema: { type: 'integer', minimum: 0 } })
  @ApiFile('image/jpeg', "The block's first frame")
  async preview(@Param('id') id: string, @Param('index') index: string, @Identity() caller: Caller, @Res() res: Response): Promise<void> {
    await sendFile(res, await this.videos.previewPath(id, index, caller), 'image/jpeg');
  }

  @Get(':id/events')
  @ApiOperation({ summary: 'Server-Sent Events: queued, started, block, progress, then succeeded | failed | canceled. Replays from the start; honours Last-Event-ID.' })
  @ApiVideoId()
  @ApiHeader({ name: 'Last-Event-ID', required: false, description: 'Resume after this event id (MS-SEQ)' })
  @ApiResponse({ status: 200, description: 'The event stream', content: { 'text/event-stream': { schema: { type: 'string' } } } })
  @ApiError(400, 'Malformed Last-Event-ID (field: Last-Event-ID)')
  async events(@Param('id') id: string, @Identity() caller: Caller, @Req() req: Request, @Res() res: Response): Promise<void> {
    await this.videos.get(id, caller);
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
