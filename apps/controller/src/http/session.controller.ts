import { Controller, Delete, Get, HttpCode, Inject, Post, Req, Res } from '@nestjs/common';
import { ApiBearerAuth, ApiOperation, ApiResponse, ApiTags } from '@nestjs/swagger';
import type { Request, Response } from 'express';
import { logger } from '@longshot/telemetry';
import { AuthService, Identity, Public, SESSION_COOKIE, type Caller } from '../auth';
import { ApiAuthenticated, ApiError, ApiFailures, ApiJson, BEARER_AUTH, CALLER_SCHEMA, SESSION_SCHEMA } from './schemas';

const log = logger('auth');

/**
 * Browsers cannot put a header on EventSource or <video src>: the console trades an API key for
 * an HttpOnly, SameSite=Strict cookie carrying a signed session (docs/api.md "Authentication").
 */
@ApiTags('session')
@ApiFailures()
@Controller('v1/session')
export class SessionController {
  constructor(@Inject(AuthService) private readonly auth: AuthService) {}

  @Post()
  @Public()
  @HttpCode(200)
  @ApiBearerAuth(BEARER_AUTH)
  @ApiOperation({ summary: 'Start a browser session: sets the HttpOnly session cookie for the Bearer API key' })
  @ApiJson(200, 'Signed in (Set-Cookie: longshot_session)', SESSION_SCHEMA)
  @ApiError(401, 'No Bearer API key, or an unknown or revoked one')
  async start(@Req() req: Request, @Res() res: Response): Promise<void> {
    const s = await this.auth.startSession(req);
    res.cookie(SESSION_COOKIE, s.value, { httpOnly: true, sameSite: 'strict', secure: isTls(req), path: '/', maxAge: s.maxAgeMs });
    log.info('session started', { tenant: s.caller.tenant, role: s.caller.role, key: s.caller.keyId });
    res.status(200).json({ tenant: s.caller.tenant, role: s.caller.role, expiresAt: new Date(Date.now() + s.maxAgeMs).toISOString() });
  }

  @Get()
  @ApiAuthenticated()
  @ApiOperation({ summary: 'Who is asking: the tenant, role and key id of the credentials sent (key, session cookie or signed URL)' })
  @ApiJson(200, 'The caller', CALLER_SCHEMA)
  whoAmI(@Identity() caller: Caller): Caller {
    return { tenant: caller.tenant, role: caller.role, keyId: caller.keyId };
  }

  @Delete()
  @Public()
  @HttpCode(204)
  @ApiOperation({ summary: 'End the browser session (clears the cookie)', security: [] })
  @ApiResponse({ status: 204, description: 'Signed out' })
  end(@Req() req: Request, @Res() res: Response): void {
    res.clearCookie(SESSION_COOKIE, { httpOnly: true, sameSite: 'strict', secure: isTls(req), path: '/' });
    res.status(204).end();
  }
}

/** TLS here or at the proxy in front: the cookie is then Secure (never sent over plain HTTP). */
function isTls(req: Request): boolean {
  return req.secure || req.header('x-forwarded-proto') === 'https';
}
