import { UsageError } from './args';
import { ENCODE_HELP, encodeCommand } from './encode-command';
import { MODEL_HELP, modelCommand } from './model-command';
import { RENDER_HELP, renderCommand } from './render';
import { SCHEDULE_HELP, scheduleCommand } from './schedule-command';
import { cancelCommand, fetchCommand, statusCommand, SUBMIT_HELP, submitCommand, UP_HELP, upCommand } from './service-commands';

const HELP = `longshot: long-video generation with DualParal

Commands:
  render     render a video (embedded cluster on this machine, or --url a controller)
  up         run Redis, a controller and workers on this machine until Ctrl-C
  submit     submit a job to a controller (--url)
  status     show a job (--url URL ID)
  fetch      download a job's MP4 (--url URL ID --out FILE)
  cancel     cancel a job (--url URL ID)
  model      write a seeded pipeline directory, or inspect one
  schedule   print a job's sigmas and model timesteps (--model, --steps, --sampler, --shift)
  encode     a prompt's text embeddings (and token ids) as the DiT receives them

Benchmarks: npm run bench -- kernels|transport|pipeline|gpu [--json]

'longshot COMMAND --help' for the flags.
`;

const COMMANDS: Record<string, { run: (argv: string[]) => Promise<void>; help: string }> = {
  render: { run: renderCommand, help: RENDER_HELP },
  model: { run: modelCommand, help: MODEL_HELP },
  schedule: { run: scheduleCommand, help: SCHEDULE_HELP },
  encode: { run: encodeCommand, help: ENCODE_HELP },
  up: { run: upCommand, help: UP_HELP },
  submit: { run: submitCommand, help: SUBMIT_HELP },
  status: { run: statusCommand, help: SUBMIT_HELP },
  fetch: { run: fetchCommand, help: SUBMIT_HELP },
  cancel: { run: cancelCommand, help: SUBMIT_HELP },
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
