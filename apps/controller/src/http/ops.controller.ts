import { Controller, Get, Inject, Res } from '@nestjs/common';
import { ApiOperation, ApiResponse, ApiTags } from '@nestjs/swagger';
import type { Response } from 'express';
import type { Redis } from 'ioredis';
import { registry } from '@longshot/telemetry';
import { RenderQueue } from '../queue';
import type { ResultStore } from '../repositories';
import { REDIS, RESULTS } from '../tokens';
import { VideosService } from '../videos.service';
import { OperatorOnly, Public } from '../auth';
import { ApiAuthenticated, ApiError, ApiFailures, ApiJson, ApiOperator, HEALTH_SCHEMA, METRICS_TARGETS_SCHEMA, MODELS_SCHEMA, READY_SCHEMA, WORKERS_SCHEMA } from './schemas';

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
  @OperatorOnly()
  @ApiOperator()
  @ApiOperation({ summary: 'Registered workers, their state (free | leased | full) and leases' })
  @ApiJson(200, 'The live workers', WORKERS_SCHEMA)
  @ApiFailures()
  workers() {
    return this.videos.workers();
  }

  @Get('v1/workers/prometheus-sd')
  @OperatorOnly()
  @ApiOperator()
  @ApiOperation({ summary: "Prometheus HTTP service discovery: every worker's /metrics address (for http_sd_configs), lost workers included" })
  @ApiJson(200, 'Target groups, one per worker', METRICS_TARGETS_SCHEMA)
  @ApiFailures()
  metricsTargets() {
    return this.videos.metricsTargets();
  }

  @Get('v1/models')
  @ApiAuthenticated()
  @ApiOperation({ summary: "Models by name: the controller's catalog and what the registered workers advertise, with the workers serving each" })
  @ApiJson(200, 'The models', MODELS_SCHEMA)
  @ApiFailures()
  models() {
    return this.videos.models();
  }

  @Get('healthz')
  @Public()
  @ApiOperation({ summary: 'Liveness: the process serves HTTP', security: [] })
  @ApiJson(200, 'Up', HEALTH_SCHEMA)
  @ApiError(500, 'Unexpected server error')
  healthz() {
    return { status: 'ok' };
  }

  @Get('readyz')
  @Public()
  @ApiOperation({ summary: 'Readiness: Redis answers, the queue is usable and the results store has room (503 otherwise, saying which)', security: [] })
  @ApiJson(200, 'Ready', READY_SCHEMA)
  @ApiJson(503, 'Not ready: checks says which', READY_SCHEMA)
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
  @OperatorOnly()
  @ApiOperator()
  @ApiOperation({ summary: 'Prometheus metrics' })
  @ApiResponse({ status: 200, description: 'Prometheus text exposition format', content: { 'text/plain': { schema: { type: 'string' } } } })
  @ApiError(500, 'Unexpected server error')
  async metrics(@Res() res: Response): Promise<void> {
    res.type(registry.contentType).send(await registry.metrics());
  }
}
