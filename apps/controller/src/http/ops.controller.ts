import { Controller, Get, Inject, Res } from '@nestjs/common';
import { ApiOperation, ApiTags } from '@nestjs/swagger';
import type { Response } from 'express';
import type { Redis } from 'ioredis';
import { registry } from '@longshot/telemetry';
import { RenderQueue } from '../queue';
import type { ResultStore } from '../repositories';
import { REDIS, RESULTS } from '../tokens';
import { VideosService } from '../videos.service';

@ApiTags('operations')
@Controller()
export class OpsController {
  constructor(
    @Inject(VideosService) private readonly videos: VideosService,
    @Inject(RenderQueue) private readonly queue: RenderQueue,
    @Inject(REDIS) private readonly redis: Redis,
    @Inject(RESULTS) private readonly results: ResultStore,
  ) {}

  @Get('v1/workers')
  @ApiOperation({ summary: 'Registered workers, their state (free | leased) and leases' })
  workers() {
    return this.videos.workers();
  }

  @Get('healthz')
  @ApiOperation({ summary: 'Liveness: the process serves HTTP' })
  healthz() {
    return { status: 'ok' };
  }

  @Get('readyz')
  @ApiOperation({ summary: 'Readiness: Redis answers, the queue is usable and the results store has room (503 otherwise, saying which)' })
  async readyz(@Res() res: Response): Promise<void> {
    const timeout = new Promise<boolean>((r) => setTimeout(() => r(false), 2000).unref());
    const check = async () => (await this.redis.ping()) === 'PONG' && (await this.queue.ready());
    const redis = await Promise.race([check().catch(() => false), timeout]);
    let results: { ok: boolean; freeBytes: number | null; minFreeBytes: number };
    try {
      results = { ...this.results.space(), minFreeBytes: this.results.minFreeBytes };
    } catch {
      results = { ok: false, freeBytes: null, minFreeBytes: this.results.minFreeBytes };
    }
    const ok = redis && results.ok;
    res.status(ok ? 200 : 503).json({
      status: ok ? 'ready' : 'unavailable',
      checks: { redis: redis ? 'ok' : 'unreachable', results: results.ok ? 'ok' : 'no space', resultsFreeBytes: results.freeBytes, resultsMinFreeBytes: results.minFreeBytes },
    });
  }

  @Get('metrics')
  @ApiOperation({ summary: 'Prometheus metrics' })
  async metrics(@Res() res: Response): Promise<void> {
    res.type(registry.contentType).send(await registry.metrics());
  }
}
