import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { Queue } from 'bullmq';
import { Router, type NextFunction, type Request, type Response } from 'express';
import { reject } from './errors';

/*
 * Bull Board (docs/operations.md "Queue board"): BullMQ's own view of the controller's queues,
 * for operators, read-only. Its page, scripts and styles come from the @bull-board/ui package in
 * node_modules; its JSON API sits under the same path. Not part of our API, so not in the OpenAPI
 * document. The caller mounts it behind the operator check.
 */

/** Where every controller replica serves the board. */
export const QUEUE_BOARD_PATH = '/admin/queues';

/** Methods that only read; every other one would change a queue (retry, clean, promote, pause...). */
const READ_METHODS = new Set(['GET', 'HEAD']);

/**
 * The board's page, scripts, styles, images and API calls from this origin only. Its page has
 * inline styles (allowed) and links a web font from Google (refused: nothing at run time comes
 * from the network; the system font is used). No framing.
 */
export const QUEUE_BOARD_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "font-src 'self'",
  "connect-src 'self'",
  "base-uri 'self'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/**
 * The board over `queues`, every one read-only: the adapters hide the UI's actions and answer
 * 405 to them, and this router refuses any method but GET and HEAD before the board sees it.
 */
export function queueBoard(queues: readonly Queue[]): Router {
  const adapter = new ExpressAdapter().setBasePath(QUEUE_BOARD_PATH);
  createBullBoard({
    queues: queues.map((q) => new BullMQAdapter(q, { readOnlyMode: true })),
    serverAdapter: adapter,
    options: { uiConfig: { boardTitle: 'Longshot queues', hideDocsLink: true } },
  });
  const router = Router();
  router.use((req: Request, res: Response, next: NextFunction) => {
    res.set({ 'Content-Security-Policy': QUEUE_BOARD_CSP, 'X-Content-Type-Options': 'nosniff', 'Referrer-Policy': 'no-referrer' });
    if (READ_METHODS.has(req.method)) return next();
    res.set('Allow', 'GET, HEAD');
    reject(res, 405, { error: 'read_only', message: `the queue board is read-only: ${req.method} is refused; retry, cancel or delete jobs through the API (docs/api.md)` });
  });
  router.use(adapter.getRouter() as Router);
  return router;
}
