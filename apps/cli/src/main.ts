import { configureEngine } from '@longshot/engine';
import { setLogLevel } from '@longshot/telemetry';
import { runCli } from './commands';
import { loadCliConfig } from './config';
import { reportError } from './errors';
import { Stopped } from './signals';

async function main(argv: string[]): Promise<void> {
  const config = loadCliConfig(process.env);
  setLogLevel(config.logLevel);
  configureEngine(config.engine);
  await runCli(argv);
}

main(process.argv.slice(2)).then(
  () => process.exit(process.exitCode ?? 0),
  (e: unknown) => {
    if (e instanceof Stopped) process.exit(e.exitCode);
    const { message, exitCode } = reportError(e);
    process.stderr.write(`${message}\n`);
    process.exit(exitCode);
  },
);
