import { Inject, Injectable } from '@nestjs/common';
import type { WebhookOutbox } from '@longshot/cache';
import { SpecError } from '@longshot/planner';
import { WEBHOOK_GUARD, WEBHOOK_OUTBOX } from '../tokens';
import { DestinationRefused, DestinationUnresolved, WEBHOOK_FIELD, type DestinationGuard } from './destination';
import type { JobEventName } from './events';
import { TenantSecretService } from './tenant-secrets';

/** A job's webhook as the request asked for it (request.ts checked its form). */
export interface WebhookRequest {
  readonly url: URL;
  readonly events: readonly JobEventName[];
}

/** The submit side of webhooks: check a job's webhook, then register it in the outbox. */
@Injectable()
export class WebhookService {
  constructor(
    @Inject(WEBHOOK_OUTBOX) private readonly outbox: WebhookOutbox,
    @Inject(WEBHOOK_GUARD) private readonly guard: DestinationGuard,
    @Inject(TenantSecretService) private readonly secrets: TenantSecretService,
  ) {}

  /**
   * Before anything is written: payloads can be signed, and the destination is allowed now (it is
   * checked again at each delivery). SpecErrors name `webhook` and never echo the URL or its addresses.
   */
  async check(hook: WebhookRequest): Promise<void> {
    if (!this.secrets.enabled) throw new SpecError(WEBHOOK_FIELD, 'webhooks are not enabled on this controller (it has no master signing key, LONGSHOT_WEBHOOK_SECRET)');
    try {
      await this.guard.vet(hook.url);
    } catch (e) {
      if (e instanceof DestinationRefused || e instanceof DestinationUnresolved) throw new SpecError(WEBHOOK_FIELD, e.message);
      throw e;
    }
  }

  /** Payloads are signed with the secret of the job's tenant (its record says which). */
  subscribe(jobId: string, hook: WebhookRequest): Promise<void> {
    return this.outbox.subscribe(jobId, { url: hook.url.href, events: hook.events });
  }

  unsubscribe(jobId: string): Promise<void> {
    return this.outbox.unsubscribe(jobId);
  }
}
