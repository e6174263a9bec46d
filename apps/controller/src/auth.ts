import { createParamDecorator, ForbiddenException, HttpException, Inject, Injectable, SetMetadata, UnauthorizedException, type CanActivate, type ExecutionContext } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import type { Request, Response } from 'express';
import type { ApiKeyRecord, ApiKeyStore, ApiRole, RateLimiter } from '@longshot/cache';
import type { ControllerConfig, TenantLimits } from './config';
import { authRefusals } from './metrics';
import { signedUrl, signSession, verifyPath, verifySession } from './signing';
import { API_KEYS, CONFIG, RATE_LIMITER } from './tokens';

/*
 * Who is asking (docs/api.md "Authentication"): an API key as `Authorization: Bearer`, the
 * session cookie POST /v1/session set from one, or a signed URL of the very path requested.
 * Every route needs a tenant or operator unless marked @Public; @OperatorOnly routes need an
 * operator. With --no-auth (loopback only) everyone is the operator of tenant `local`.
 */

export interface Caller {
  readonly tenant: string;
  readonly role: ApiRole;
  /** The API key behind the request; null with --no-auth. */
  readonly keyId: string | null;
}

export const SESSION_COOKIE = 'longshot_session';

/** The tenant jobs get with --no-auth. */
export const LOCAL_TENANT = 'local';

type Access = 'public' | 'operator';
const ACCESS = 'longshot:access';

/** Open to anyone: health checks, the console's files, POST /v1/session (which checks its own key). */
export const Public = () => SetMetadata(ACCESS, 'public' satisfies Access);
/** Operators only: workers, metrics, docs. */
export const OperatorOnly = () => SetMetadata(ACCESS, 'operator' satisfies Access);

/** The request's Caller (set by AuthGuard) as a handler parameter. */
export const Identity = createParamDecorator((_: unknown, ctx: ExecutionContext): Caller => callerOf(ctx.switchToHttp().getRequest<Request>()));

const CALLER = Symbol('caller');

export function callerOf(req: Request): Caller {
  const c = (req as unknown as Record<symbol, Caller | undefined>)[CALLER];
  if (!c) throw new Error('no caller on this request (a route without AuthGuard)');
  return c;
}

const unauthenticated = (message: string) => {
  authRefusals.inc({ reason: 'unauthenticated' });
  return new UnauthorizedException({ error: 'unauthorized', message });
};

const NO_CREDENTIALS = 'send an API key as Authorization: Bearer lsk_... (longshot keys create), the session cookie of POST /v1/session, or a signed URL from the job resource';

@Injectable()
export class AuthService {
  constructor(
    @Inject(CONFIG) private readonly config: ControllerConfig,
    @Inject(API_KEYS) private readonly keys: ApiKeyStore,
    @Inject(RATE_LIMITER) private readonly limiter: RateLimiter,
  ) {}

  get enabled(): boolean {
    return this.config.auth;
  }

  /** The caller of `req`, or a 401 saying what to send. */
  async identify(req: Request): Promise<Caller> {
    if (!this.config.auth) return { tenant: LOCAL_TENANT, role: 'operator', keyId: null };
    const header = req.header('authorization');
    if (header !== undefined) {
      const m = /^Bearer\s+(\S+)$/i.exec(header);
      if (!m) throw unauthenticated('Authorization must be "Bearer <API key>"');
      const rec = await this.keys.verify(m[1]);
      if (!rec) throw unauthenticated('the API key is unknown, malformed or revoked');
      return asCaller(rec);
    }
    // A signed URL is for exactly its path; it wins over a stale session cookie the browser still sends.
    if (req.query.sig !== undefined) {
      const keyId = verifyPath(req.path, req.query as Record<string, unknown>, this.config.sessionSecret, nowSeconds());
      if (keyId === null) throw unauthenticated('the signed URL expired or was made for another path');
      return this.activeKey(keyId, 'the API key that signed this URL was revoked');
    }
    const session = cookie(req, SESSION_COOKIE);
    if (session !== null) {
      const keyId = verifySession(session, this.config.sessionSecret, nowSeconds());
      if (keyId === null) throw unauthenticated('the session expired or is not valid; sign in again (POST /v1/session)');
      return this.activeKey(keyId, 'the API key of this session was revoked');
    }
    throw unauthenticated(NO_CREDENTIALS);
  }

  private async activeKey(id: string, revoked: string): Promise<Caller> {
    const rec = await this.keys.get(id);
    if (!rec || rec.revokedAt !== null) throw unauthenticated(revoked);
    return asCaller(rec);
  }

  /** A 403 unless the caller is an operator. */
  requireOperator(caller: Caller): void {
    if (caller.role === 'operator') return;
    authRefusals.inc({ reason: 'forbidden' });
    throw new ForbiddenException({ error: 'forbidden', message: 'this endpoint needs an operator key (longshot keys create --operator)' });
  }

  limitsOf(tenant: string): TenantLimits {
    return this.config.tenantLimits.get(tenant) ?? this.config.limits;
  }

  /** Takes one request from the tenant's budget; a 429 with Retry-After when it is spent. */
  async admit(caller: Caller, res: Response): Promise<void> {
    if (caller.role === 'operator') return;
    const perMinute = this.limitsOf(caller.tenant).requestsPerMinute;
    if (perMinute === 0) return;
    const r = await this.limiter.take(caller.tenant, perMinute);
    if (r.allowed) return;
    const seconds = Math.max(1, Math.ceil(r.retryAfterMs / 1000));
    authRefusals.inc({ reason: 'rate_limited' });
    res.set('Retry-After', String(seconds));
    throw new HttpException({ error: 'rate_limited', message: `tenant ${caller.tenant} is over its limit of ${perMinute} requests per minute (requestsPerMinute); retry in ${seconds} s` }, 429);
  }

  /** POST /v1/session: the cookie value for a Bearer key, and when it expires. */
  async startSession(req: Request): Promise<{ value: string; maxAgeMs: number; caller: Caller }> {
    if (req.header('authorization') === undefined) throw unauthenticated('POST /v1/session needs the API key as Authorization: Bearer lsk_...');
    const caller = await this.identify(req);
    if (caller.keyId === null) throw unauthenticated('there are no sessions with --no-auth');
    const expiresAt = nowSeconds() + this.config.sessionSeconds;
    return { value: signSession(caller.keyId, expiresAt, this.config.sessionSecret), maxAgeMs: this.config.sessionSeconds * 1000, caller };
  }

  /** Short-lived URLs of `paths` for the caller's key (null with --no-auth, where none is needed). */
  sign<K extends string>(caller: Caller, paths: Record<K, string>): (Record<K, string> & { expiresAt: string }) | null {
    if (caller.keyId === null) return null;
    const exp = nowSeconds() + this.config.signedUrlSeconds;
    const out = Object.fromEntries(Object.entries<string>(paths).map(([k, p]) => [k, signedUrl(p, caller.keyId!, exp, this.config.sessionSecret)]));
    return { ...(out as Record<K, string>), expiresAt: new Date(exp * 1000).toISOString() };
  }
}

function asCaller(rec: ApiKeyRecord): Caller {
  return { tenant: rec.tenant, role: rec.role, keyId: rec.id };
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

/** One cookie's value from the Cookie header (null when absent). */
function cookie(req: Request, name: string): string | null {
  for (const part of (req.header('cookie') ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return decodeURIComponent(part.slice(i + 1).trim());
  }
  return null;
}

/** Every route: identifies the caller, enforces @OperatorOnly, takes the tenant's rate limit. */
@Injectable()
export class AuthGuard implements CanActivate {
  constructor(
    @Inject(Reflector) private readonly reflector: Reflector,
    @Inject(AuthService) private readonly auth: AuthService,
  ) {}

  async canActivate(ctx: ExecutionContext): Promise<boolean> {
    const access = this.reflector.getAllAndOverride<Access | undefined>(ACCESS, [ctx.getHandler(), ctx.getClass()]);
    if (access === 'public') return true;
    const http = ctx.switchToHttp();
    const req = http.getRequest<Request>();
    const caller = await this.auth.identify(req);
    if (access === 'operator') this.auth.requireOperator(caller);
    await this.auth.admit(caller, http.getResponse<Response>());
    (req as unknown as Record<symbol, Caller>)[CALLER] = caller;
    return true;
  }
}
