import { Catch, HttpException, type ArgumentsHost, type ExceptionFilter } from '@nestjs/common';
import type { Response } from 'express';
import { SpecError } from '@longshot/planner';
import { logger } from '@longshot/telemetry';

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
      res.status(400).json({ error: 'invalid_request', field: e.field, message: e.message });
      return;
    }
    if (e instanceof HttpException) {
      const body = e.getResponse();
      const status = e.getStatus();
      res.status(status).json(typeof body === 'object' && body !== null && 'error' in body ? body : { error: status === 404 ? 'not_found' : 'http_error', message: e.message });
      return;
    }
    log.error('request failed', { err: e });
    res.status(500).json({ error: 'internal', message: (e as Error)?.message ?? String(e) });
  }
}
