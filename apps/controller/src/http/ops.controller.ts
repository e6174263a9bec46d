import { Controller, Get, Inject, Res } from '@nestjs/common';
import { ApiOperation, ApiTags } from '@nestjs/swagger';
import type { Response } from 'express';
import type { Redis } from 'ioredis';
import { registry } from '@longshot/telemetry';
import { RenderQueue } from '../queue';
import { REDIS } from '../tokens';
import { VideosService } from '../videos.service';

@ApiTags('operations')
@Controller()
export class OpsController {
  constructor(
    @Inject(VideosService) private readonly videos: VideosService,
    @Inject(RenderQueue) private readonly queue: RenderQueue,
    @Inject(REDIS) private readonly redis: Redis,
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
  @ApiOperation({ summary: 'Readiness: Redis answers and the queue is usable (503 otherwise)' })
  async readyz(@Res() res: Response): Promise<void> {
    const timeout = new Promise<boolean>((r) => setTimeout(() => r(false), 2000).unref());
    const check = async () => (await this.redis.ping()) === 'PONG' && (await this.queue.ready());
    const ok = await Promise.race([check().catch(() => false), timeout]);
    res.status(ok ? 200 : 503).json({ status: ok ? 'ready' : 'unavailable' });
  }

  @Get('metrics')
  @ApiOperation({ summary: 'Prometheus metrics' })
  async metrics(@Res() res: Response): Promise<void> {
    res.type(registry.contentType).send(await registry.metrics());
  }
}
