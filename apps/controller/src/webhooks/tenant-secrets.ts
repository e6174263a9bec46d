import { createHmac } from 'node:crypto';
import { Inject, Injectable, NotFoundException } from '@nestjs/common';
import type { ApiKeyStore, WebhookSecretGeneration, WebhookSecretGenerations } from '@longshot/cache';
import { logger } from '@longshot/telemetry';
import { AuthService, type Caller } from '../auth';
import type { ControllerConfig } from '../config';
import { webhookSecretRotations } from '../metrics';
import { API_KEYS, CONFIG, WEBHOOK_SECRET_GENERATIONS } from '../tokens';

/*
 * Per-tenant webhook signing secrets (docs/api.md "Webhooks", "Signing secret"). Nothing secret is
 * stored: a tenant's secret is derived from the controller's master key (LONGSHOT_WEBHOOK_SECRET),
 * the tenant and its generation, which Redis keeps (WebhookSecretGenerations). Rotating bumps the
 * generation; for a grace period the previous generation's secret signs too.
 */

const log = logger('webhooks');

/** Keeps these HMACs apart from any other use the master key might get. */
const DERIVATION_LABEL = 'longshot.webhook.tenant';

/** How secrets are shown (the HMAC key is the whole string, prefix included). */
export const TENANT_SECRET_PREFIX = 'whsec_';

/** HMAC-SHA256(master, "longshot.webhook.tenant\0<tenant>\0<generation>"), as whsec_<base64url>. */
export function deriveTenantSecret(masterSecret: string, tenant: string, generation: number): string {
  const mac = createHmac('sha256', masterSecret).update(`${DERIVATION_LABEL}\0${tenant}\0${generation}`).digest('base64url');
  return `${TENANT_SECRET_PREFIX}${mac}`;
}

/** What GET /v1/webhooks/secret answers (WEBHOOK_SECRET_SCHEMA). */
export interface TenantSecret {
  readonly tenant: string;
  readonly secret: string;
  readonly generation: number;
  /** The secret before the last rotation while payloads are still signed with it too; null otherwise. */
  readonly previous: { readonly secret: string; readonly expiresAt: string } | null;
}

/**
 * A tenant's secrets at `nowMs`: the current generation's, and the previous generation's until
 * `graceMs` after the last rotation (only the one before: a second rotation within the grace
 * period drops the oldest at once).
 */
export function tenantSecret(masterSecret: string, tenant: string, state: WebhookSecretGeneration, graceMs: number, nowMs: number): TenantSecret {
  const graceEnds = state.generation > 0 && state.rotatedAt !== null ? state.rotatedAt + graceMs : null;
  return {
    tenant,
    secret: deriveTenantSecret(masterSecret, tenant, state.generation),
    generation: state.generation,
    previous: graceEnds !== null && nowMs < graceEnds ? { secret: deriveTenantSecret(masterSecret, tenant, state.generation - 1), expiresAt: new Date(graceEnds).toISOString() } : null,
  };
}

/** The secrets a payload is signed with: the current one first, then the previous one in its grace period. */
export const signingSecretsOf = (s: TenantSecret): string[] => (s.previous ? [s.secret, s.previous.secret] : [s.secret]);

/** Reads and rotates tenants' webhook secrets; decides whose secret a caller may see. */
@Injectable()
export class TenantSecretService {
  constructor(
    @Inject(CONFIG) private readonly config: ControllerConfig,
    @Inject(WEBHOOK_SECRET_GENERATIONS) private readonly generations: WebhookSecretGenerations,
    @Inject(API_KEYS) private readonly keys: ApiKeyStore,
    @Inject(AuthService) private readonly auth: AuthService,
  ) {}

  /** Webhooks are on: the controller has a master key. */
  get enabled(): boolean {
    return this.config.webhooks.masterSecret !== null;
  }

  /** The secrets payloads of `tenant`'s jobs are signed with now; null when webhooks are off. */
  async signingSecrets(tenant: string): Promise<string[] | null> {
    if (!this.enabled) return null;
    return signingSecretsOf(this.secretOf(tenant, await this.generations.get(tenant)));
  }

  /** GET /v1/webhooks/secret: the caller's tenant's secret, or (operators) the named tenant's. */
  async show(caller: Caller, requested: string | null): Promise<TenantSecret> {
    const tenant = await this.tenantFor(caller, requested);
    return this.secretOf(tenant, await this.generations.get(tenant));
  }

  /** POST /v1/webhooks/secret/rotate: a new secret; the old one keeps signing through the grace period. */
  async rotate(caller: Caller, requested: string | null): Promise<TenantSecret> {
    const tenant = await this.tenantFor(caller, requested);
    const state = await this.generations.rotate(tenant, Date.now());
    webhookSecretRotations.inc();
    log.info('webhook signing secret rotated', { tenant, generation: state.generation, key: caller.keyId });
    return this.secretOf(tenant, state);
  }

  private secretOf(tenant: string, state: WebhookSecretGeneration): TenantSecret {
    return tenantSecret(this.config.webhooks.masterSecret!, tenant, state, this.config.webhooks.rotationGraceSeconds * 1000, Date.now());
  }

  /**
   * Whose secret: the caller's own tenant unless `requested` names another, which only operators
   * may (403 for a tenant key), and only a tenant some API key belongs to (404). 404 too when
   * webhooks are off: there is no secret at all.
   */
  private async tenantFor(caller: Caller, requested: string | null): Promise<string> {
    if (!this.enabled) throw new NotFoundException({ error: 'not_found', message: 'webhooks are not enabled on this controller (it has no LONGSHOT_WEBHOOK_SECRET), so there is no signing secret' });
    if (requested === null || requested === caller.tenant) return caller.tenant;
    this.auth.requireOperator(caller);
    if (!(await this.keys.list()).some((k) => k.tenant === requested)) throw new NotFoundException({ error: 'not_found', message: `no API key belongs to tenant ${requested}` });
    return requested;
  }
}
