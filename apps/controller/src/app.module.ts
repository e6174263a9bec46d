import { Inject, Module, type OnApplicationShutdown } from '@nestjs/common';
import { Redis } from 'ioredis';
import { ApiKeyStore, JobStore, RateLimiter, WebhookOutbox, WebhookSecretGenerations, WorkerLeases, WorkerRegistry } from '@longshot/cache';
import { AuthGuard, AuthService } from './auth';
import { SessionController } from './http/session.controller';
import type { ControllerConfig } from './config';
import { EventHub } from './event-hub';
import { ConsoleController } from './http/console.controller';
import { ErrorFilter } from './http/errors';
import { OpsController } from './http/ops.controller';
import { VideosController } from './http/videos.controller';
import { registerClusterGauges } from './metrics';
import { RenderQueue } from './queue';
import { ModelCatalog } from '@longshot/model';
import { EmbeddingsController } from './http/embeddings.controller';
import { diskFiles, JobDataRepository, quotaFiles, ResultStore, UploadRepository } from './repositories';
import { ReconcilerService } from './reconciler';
import { RunnerService } from './runner';
import { API_KEYS, CONFIG, JOB_DATA, RATE_LIMITER, JOBS, LEASES, MODELS, REDIS, REDIS_EVENTS, REDIS_SUBSCRIBER, REGISTRY, RESULTS, UPLOADS, WEBHOOK_GUARD, WEBHOOK_OUTBOX, WEBHOOK_SECRET_GENERATIONS, WEBHOOK_SENDER } from './tokens';
import { AddressPolicy } from './webhooks/addresses';
import { DestinationGuard } from './webhooks/destination';
import { WebhookDispatcher } from './webhooks/dispatcher';
import { WebhookSender } from './webhooks/sender';
import { TenantSecretService } from './webhooks/tenant-secrets';
import { WebhookService } from './webhooks/webhook.service';
import { WebhooksController } from './http/webhooks.controller';
import { VideosService } from './videos.service';
import { APP_FILTER, APP_GUARD } from '@nestjs/core';

/** Closes the Redis connections last, after the runner and queue have let go of them. */
class Connections implements OnApplicationShutdown {
  constructor(@Inject(REDIS) private readonly redis: Redis) {}
  onApplicationShutdown(): void {
    this.redis.disconnect();
  }
}

/** Gauges that read Redis on scrape. */
class Gauges {
  constructor(@Inject(RenderQueue) queue: RenderQueue, @Inject(REGISTRY) registry: WorkerRegistry, @Inject(LEASES) leases: WorkerLeases, @Inject(WEBHOOK_OUTBOX) outbox: WebhookOutbox, @Inject(API_KEYS) apiKeys: ApiKeyStore) {
    registerClusterGauges({
      webhookJobs: () => outbox.pending(),
      apiKeys: async () => (await apiKeys.list()).map((k) => ({ role: k.role, revoked: k.revokedAt !== null })),
      queueCounts: () => queue.counts(),
      async workers() {
        const live = await registry.list();
        return { registered: live.length, leased: (await leases.leases(live.map((w) => w.id))).length };
      },
    });
  }
}

export function appModule(config: ControllerConfig) {
  @Module({
    controllers: [VideosController, EmbeddingsController, OpsController, SessionController, ConsoleController, WebhooksController],
    providers: [
      { provide: CONFIG, useValue: config },
      { provide: REDIS, useFactory: () => new Redis(config.redisUrl, { maxRetriesPerRequest: 3 }) },
      { provide: REDIS_SUBSCRIBER, useFactory: () => new Redis(config.redisUrl, { maxRetriesPerRequest: null }) },
      { provide: REDIS_EVENTS, useFactory: () => new Redis(config.redisUrl, { maxRetriesPerRequest: null }) },
      { provide: JOBS, useFactory: (r: Redis) => new JobStore(r, { retentionMs: config.retentionSeconds * 1000, keys: config.keys }), inject: [REDIS] },
      { provide: LEASES, useFactory: (r: Redis) => new WorkerLeases(r, { keys: config.keys }), inject: [REDIS] },
      { provide: REGISTRY, useFactory: (r: Redis) => new WorkerRegistry(r, { keys: config.keys }), inject: [REDIS] },
      { provide: JOB_DATA, useFactory: (r: Redis) => new JobDataRepository(r, config.keys, config.retentionSeconds), inject: [REDIS] },
      {
        provide: RESULTS,
        useValue: new ResultStore(config.resultsDir, config.resultsMaxBytes > 0 ? quotaFiles(config.resultsMaxBytes) : diskFiles, config.resultsMinFreeBytes),
      },
      { provide: MODELS, useValue: new ModelCatalog(config.modelsDir) },
      { provide: UPLOADS, useFactory: (r: Redis) => new UploadRepository(r, config.keys, config.retentionSeconds), inject: [REDIS] },
      { provide: WEBHOOK_OUTBOX, useFactory: (r: Redis) => new WebhookOutbox(r, config.keys), inject: [REDIS] },
      { provide: WEBHOOK_GUARD, useValue: new DestinationGuard(new AddressPolicy(config.webhooks.allowCidrs), config.webhooks.timeoutMs) },
      { provide: WEBHOOK_SENDER, useFactory: (guard: DestinationGuard) => new WebhookSender(guard), inject: [WEBHOOK_GUARD] },
      { provide: WEBHOOK_SECRET_GENERATIONS, useFactory: (r: Redis) => new WebhookSecretGenerations(r, config.keys), inject: [REDIS] },
      { provide: API_KEYS, useFactory: (r: Redis) => new ApiKeyStore(r, config.keys), inject: [REDIS] },
      { provide: RATE_LIMITER, useFactory: (r: Redis) => new RateLimiter(r, config.keys), inject: [REDIS] },
      { provide: APP_FILTER, useClass: ErrorFilter },
      { provide: APP_GUARD, useClass: AuthGuard },
      AuthService,
      Connections,
      RenderQueue,
      RunnerService,
      EventHub,
      ReconcilerService,
      TenantSecretService,
      WebhookService,
      WebhookDispatcher,
      VideosService,
      Gauges,
    ],
  })
  class AppModule {}
  return AppModule;
}
