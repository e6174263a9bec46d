import { applyDecorators, Controller, Get, Header, HttpCode, Inject, Post, Query } from '@nestjs/common';
import { ApiOperation, ApiQuery, ApiTags } from '@nestjs/swagger';
import { Identity, type Caller } from '../auth';
import { parseWebhookSecretQuery, WEBHOOK_SECRET_QUERY } from '../request';
import { TenantSecretService } from '../webhooks/tenant-secrets';
import { ApiAuthenticated, ApiError, ApiFailures, ApiJson, WEBHOOK_SECRET_SCHEMA } from './schemas';

/** What both routes declare: the query's field table, the body and the statuses they share. */
const ApiTenantSecret = (ok: string) =>
  applyDecorators(
    ...Object.entries(WEBHOOK_SECRET_QUERY).map(([name, schema]) => ApiQuery({ name, required: false, schema })),
    ApiJson(200, ok, WEBHOOK_SECRET_SCHEMA),
    ApiError(400, 'Malformed tenant (field: tenant)'),
    ApiError(403, 'A tenant key named another tenant'),
    ApiError(404, 'Webhooks are not enabled (no LONGSHOT_WEBHOOK_SECRET), or no API key belongs to the named tenant'),
    // A secret is never cached on the way.
    Header('Cache-Control', 'no-store'),
  );

/** A tenant's webhook signing secret (docs/api.md "Webhooks"): read it, rotate it. */
@ApiTags('webhooks')
@ApiFailures()
@ApiAuthenticated()
@Controller('v1/webhooks/secret')
export class WebhooksController {
  constructor(@Inject(TenantSecretService) private readonly secrets: TenantSecretService) {}

  @Get()
  @ApiOperation({ summary: "The webhook signing secret of the key's tenant (operators: ?tenant=), and the previous one during a rotation's grace period" })
  @ApiTenantSecret('The secret receivers verify Longshot-Webhook-Signature with')
  show(@Identity() caller: Caller, @Query() query: Record<string, unknown>) {
    return this.secrets.show(caller, parseWebhookSecretQuery(query).tenant);
  }

  @Post('rotate')
  @HttpCode(200)
  @ApiOperation({ summary: 'Rotate the signing secret: a new one at once; payloads carry the old one\'s signature too for LONGSHOT_WEBHOOK_ROTATION_GRACE_S' })
  @ApiTenantSecret('The new secret, and the previous one with when it stops signing')
  rotate(@Identity() caller: Caller, @Query() query: Record<string, unknown>) {
    return this.secrets.rotate(caller, parseWebhookSecretQuery(query).tenant);
  }
}
