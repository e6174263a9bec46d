import { Catch, HttpException, type ArgumentsHost, type ExceptionFilter } from '@nestjs/common';
import type { Response } from 'express';
import { isRedisUnavailable } from '@longshot/cache';
import { SpecError } from '@longshot/planner';
import { logger } from '@longshot/telemetry';
import { redisUnavailable, rejectedRequests } from '../metrics';

const log = logger('http');

/** Seconds a client is told to wait before retrying while Redis is unreachable. */
export const RETRY_AFTER_SECONDS = 2;

/** One error shape for every response: {error, message} plus `field` for bad input. */
@Catch()
export class ErrorFilter implements ExceptionFilter {
  catch(e: unknown, host: ArgumentsHost): void {
    const res = host.switchToHttp().getResponse<Response>();
    if (res.headersSent) {
      res.end();
      return;
    }
    if (e instanceof SpecError) {
      reject(res, 400, { error: 'invalid_request', field: e.field, message: e.message });
      return;
    }
    if (e instanceof HttpException) {
      const body = e.getResponse();
      const status = e.getStatus();
      // Ours carry {error, message}; the framework's own (an unknown route: {statusCode, error: 'Not Found', message}) get the same shape.
      if (status === 401) res.set('WWW-Authenticate', 'Bearer realm="longshot"');
      const ours = typeof body === 'object' && body !== null && !('statusCode' in body) && 'error' in body;
      reject(res, status, ours ? (body as { error: string }) : { error: status === 404 ? 'not_found' : 'http_error', message: e.message });
      return;
    }
    if (isRedisUnavailable(e)) {
      // Redis is down or restarting: the job may well exist, so neither 404 nor 500.
      redisUnavailable.inc({ where: 'http' });
      log.warn('Redis unavailable; answering 503', { err: e });
      res.set('Retry-After', String(RETRY_AFTER_SECONDS));
      reject(res, 503, { error: 'unavailable', message: `the job store (Redis) is unreachable; retry in ${RETRY_AFTER_SECONDS} s` });
      return;
    }
    log.error('request failed', { err: e });
    reject(res, 500, { error: 'internal', message: (e as Error)?.message ?? String(e) });
  }
}

/**
 * Sends an error response (JSON even where the route had set another type, as the file routes
 * do before sending); a 4xx is counted by its error code.
 */
export function reject(res: Response, status: number, body: { error: string; message?: string; field?: string }): void {
  if (status >= 400 && status < 500) rejectedRequests.inc({ reason: body.error });
  res.status(status).type('application/json').json(body);
}
