import { configureEngine, createBackend } from '@longshot/engine';
import { logger, setLogLevel } from '@longshot/telemetry';
import { WORKER_HELP, workerConfig } from './config';
import { WorkerProcess } from './worker';

const log = logger('worker');


async function main(): Promise<void> {
  const { config, backend, engine, logLevel, help } = workerConfig(process.argv.slice(2), process.env);
  if (help) {
    process.stdout.write(WORKER_HELP);
    return;
  }
  setLogLevel(logLevel);
  configureEngine(engine);
  let engineBackend;
  try {
    engineBackend = createBackend(backend);
  } catch (e) {
    throw new Error(`--backend ${backend}: ${(e as Error).message}`);
  }
  const worker = new WorkerProcess(config, engineBackend, log);
  await worker.start();
  // One machine-readable line for whoever started this process (longshot up, tests).
  process.stdout.write(`${JSON.stringify({ event: 'ready', id: config.id, address: worker.address, metricsAddress: worker.metricsAddress, pid: process.pid })}\n`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('stopping', { signal });
    worker.stop().then(
      () => process.exit(0),
      (e: Error) => {
        log.error('stop failed', { error: e.message });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((e: unknown) => {
  process.stderr.write(`longshot-worker: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(2);
});
