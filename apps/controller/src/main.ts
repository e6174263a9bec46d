import 'reflect-metadata';
import type { AddressInfo } from 'node:net';
import { NestFactory } from '@nestjs/core';
import { ExpressAdapter, type NestExpressApplication } from '@nestjs/platform-express';
import { DocumentBuilder, SwaggerModule } from '@nestjs/swagger';
import express, { type NextFunction, type Request, type Response } from 'express';
import { logger, setLogLevel } from '@longshot/telemetry';
import { appModule } from './app.module';
import { AuthService } from './auth';
import { loadConfig } from './config';
import { ErrorFilter, reject } from './http/errors';
import { QUEUE_BOARD_PATH, queueBoard } from './http/queue-board';
import { BEARER_AUTH, COOKIE_AUTH } from './http/schemas';
import { httpDuration } from './metrics';
import { RenderQueue } from './queue';

const log = logger('controller');

export async function main(argv: string[] = process.argv.slice(2)): Promise<void> {
  const config = loadConfig(argv, process.env);
  setLogLevel(config.logLevel);
  const server = express();
  server.disable('x-powered-by');
  // Request timing by route template (not raw path, which would explode the label set).
  server.use((req: Request, res: Response, next: NextFunction) => {
    const end = httpDuration.startTimer();
    res.on('finish', () => {
      const route = req.route?.path ? `${req.baseUrl}${String(req.route.path)}` : 'unmatched';
      end({ method: req.method, route, status: String(res.statusCode) });
    });
    next();
  });
  // Our own body parsers, so a malformed body gets the API's 4xx shape, not the framework's.
  // Uploads are raw bytes of any type (mounted first, so the JSON parser leaves them alone).
  server.use('/v1/embeddings', express.raw({ type: () => true, limit: config.maxUploadBytes }));
  server.use(express.json({ limit: '1mb', strict: false, verify: requireUtf8 }));
  server.use((err: Error & { type?: string; status?: number }, _req: Request, res: Response, next: NextFunction) => {
    if (!err) return next();
    if (err.type === 'entity.too.large') return reject(res, 413, { error: 'payload_too_large', field: 'body', message: 'body is larger than this endpoint accepts' });
    if (err.type === 'entity.verify.failed') return reject(res, 400, { error: 'invalid_request', field: 'body', message: err.message });
    reject(res, err.status && err.status < 500 ? err.status : 400, { error: 'invalid_request', field: 'body', message: `body is not valid JSON: ${err.message}` });
  });
  const app = await NestFactory.create<NestExpressApplication>(appModule(config), new ExpressAdapter(server), { bodyParser: false, logger: ['error', 'warn'] });
  app.enableShutdownHooks(['SIGTERM', 'SIGINT']);
  const doc = SwaggerModule.createDocument(
    app,
    new DocumentBuilder()
      .setTitle('Longshot')
      .setDescription('Long videos with DualParal on a fleet of workers')
      .setVersion('1')
      .setLicense('Apache-2.0', 'https://www.apache.org/licenses/LICENSE-2.0')
      .addServer('/', 'This controller (every replica serves the same API)')
      .addBearerAuth({ type: 'http', scheme: 'bearer', description: 'An API key, lsk_<id>_<secret> (longshot keys create)' }, BEARER_AUTH)
      .addCookieAuth('longshot_session', { type: 'apiKey', in: 'cookie', description: 'The HttpOnly session POST /v1/session sets' }, COOKIE_AUTH)
      .build(),
  );
  // The API document is for any caller with a key (the console builds its submit form from it;
  // it holds nothing secret); its interactive UI and the queue board are for operators. They sit
  // outside Nest's routes, so they are checked here.
  const auth = app.get(AuthService);
  const errors = new ErrorFilter();
  const guard = (operator: boolean) => (req: Request, res: Response, next: NextFunction) => {
    auth
      .identify(req)
      .then((caller) => operator && auth.requireOperator(caller))
      .then(() => next(), (e: unknown) => errors.catch(e, { switchToHttp: () => ({ getResponse: () => res }) } as never));
  };
  server.use('/docs-json', guard(false));
  server.use('/docs', guard(true));
  SwaggerModule.setup('docs', app, doc, { jsonDocumentUrl: 'docs-json' });
  server.use(QUEUE_BOARD_PATH, guard(true), queueBoard([app.get(RenderQueue).queue]));
  await app.listen(config.port, config.host);
  const address = app.getHttpServer().address() as AddressInfo;
  const host = config.host === '0.0.0.0' || config.host === '::' ? '127.0.0.1' : config.host;
  process.stdout.write(`${JSON.stringify({ event: 'ready', url: `http://${host}:${address.port}`, id: config.id, pid: process.pid })}\n`);
  log.info('controller ready', { id: config.id, port: address.port, redis: config.redisUrl, resultsDir: config.resultsDir, auth: config.auth });
  if (!config.auth) log.warn('--no-auth: every request acts as an operator (loopback only)', { host: config.host });
}

/** body-parser's verify hook: invalid UTF-8 is refused, never silently replaced with U+FFFD. */
function requireUtf8(_req: unknown, _res: unknown, buf: Buffer): void {
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(buf);
  } catch {
    throw new Error('body is not valid UTF-8');
  }
}

/** The process entry (bin/longshot-controller.js). */
export function start(): void {
  // A stray rejection (e.g. a Redis blip inside a library callback) is logged, not fatal: the
  // queue's locks and leases recover the jobs either way.
  process.on('unhandledRejection', (err) => log.error('unhandled rejection', { err }));
  main().catch((err: unknown) => {
    log.error('controller failed to start', { err });
    process.exit(1);
  });
}
