import { Catch, HttpException, type ArgumentsHost, type ExceptionFilter } from '@nestjs/common';
import type { Response } from 'express';
import { SpecError } from '@longshot/planner';
import { logger } from '@longshot/telemetry';
import { rejectedRequests } from '../metrics';

const log = logger('http');

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
      reject(res, status, typeof body === 'object' && body !== null && 'error' in body ? (body as { error: string }) : { error: status === 404 ? 'not_found' : 'http_error', message: e.message });
      return;
    }
    log.error('request failed', { err: e });
    res.status(500).json({ error: 'internal', message: (e as Error)?.message ?? String(e) });
  }
}

/** Sends an error response; a 4xx is counted by its error code. */
export function reject(res: Response, status: number, body: { error: string; message?: string; field?: string }): void {
  if (status >= 400 && status < 500) rejectedRequests.inc({ reason: body.error });
  res.status(status).json(body);
}
