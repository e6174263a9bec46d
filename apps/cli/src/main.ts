import { runCli } from './commands';
import { reportError } from './errors';
import { Stopped } from './signals';

runCli(process.argv.slice(2)).then(
  () => process.exit(process.exitCode ?? 0),
  (e: unknown) => {
    if (e instanceof Stopped) process.exit(e.exitCode);
    const { message, exitCode } = reportError(e);
    process.stderr.write(`${message}\n`);
    process.exit(exitCode);
  },
);
