import { UsageError } from './args';
import { MODEL_HELP, modelCommand } from './model-command';
import { RENDER_HELP, renderCommand } from './render';

const HELP = `longshot: long-video generation with DualParal

Commands:
  render     render a video on this machine
  model      write a seeded model to a safetensors file
  bench      run the benchmarks (npm run bench -- NAME --json)

'longshot COMMAND --help' for the flags.
`;

const COMMANDS: Record<string, { run: (argv: string[]) => Promise<void>; help: string }> = {
  render: { run: renderCommand, help: RENDER_HELP },
  model: { run: modelCommand, help: MODEL_HELP },
};

async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(HELP);
    return;
  }
  const command = COMMANDS[name];
  if (!command) throw new UsageError(`unknown command '${name}'\n\n${HELP}`);
  await command.run(rest);
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (e: unknown) => {
    if (e instanceof UsageError) {
      process.stderr.write(`longshot: ${e.message}\n`);
      process.exit(2);
    }
    process.stderr.write(`longshot: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
