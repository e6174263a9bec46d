import { helpText, table, UsageError, wantsHelp, type CommandSpec } from './args';
import { DECODE } from './decode-command';
import { ENCODE } from './encode-command';
import { KEYS } from './keys-command';
import { MODEL } from './model-command';
import { RENDER } from './render';
import { SCHEDULE } from './schedule-command';
import { CANCEL, FETCH, STATUS, SUBMIT, UP } from './service-commands';

/** Every `longshot` command, in the order `longshot --help` lists them. */
export const COMMANDS: readonly CommandSpec[] = [RENDER, UP, SUBMIT, STATUS, FETCH, CANCEL, KEYS, MODEL, SCHEDULE, ENCODE, DECODE];

export const ROOT_HELP = `longshot: long-video generation with DualParal

Usage: longshot COMMAND [flags]

Commands:
${table(COMMANDS.map((c) => [c.name, c.summary])).join('\n')}

Benchmarks: npm run bench -- kernels|transport|pipeline|scaling|gpu|load|vae
            [--json]

'longshot COMMAND --help' for its flags.
Exit status: 2 for a mistake in a flag, a file or a job id (one line naming
it); 1 for anything else (LONGSHOT_DEBUG=1 prints where); 130/143 after
SIGINT/SIGTERM.
`;

/** The command (or sub-command) argv names, and the arguments after its name. */
export function resolveCommand(argv: readonly string[]): { spec: CommandSpec | null; rest: string[] } {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') return { spec: null, rest };
  let spec = COMMANDS.find((c) => c.name === name);
  if (!spec) throw new UsageError(`unknown command '${name}'; commands: ${COMMANDS.map((c) => c.name).join(', ')} ('longshot --help')`);
  while (spec.sub && rest.length && !rest[0].startsWith('-')) {
    const sub: CommandSpec | undefined = spec.sub.find((s) => s.name === `${spec!.name} ${rest[0]}`);
    if (!sub) throw new UsageError(`${spec.name}: unknown sub-command '${rest[0]}'; expected ${spec.sub.map((s) => s.name.split(' ').pop()).join(' or ')}`);
    spec = sub;
    rest.shift();
  }
  return { spec, rest };
}

/** Runs `longshot ARGV`: `--help`/`-h` anywhere prints the help of the command it follows. */
export async function runCli(argv: readonly string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const { spec, rest } = resolveCommand(argv);
  if (!spec) return void out.write(ROOT_HELP);
  if (wantsHelp(rest)) return void out.write(helpText(spec));
  if (!spec.run) throw new UsageError(`${spec.name}: expected a sub-command: ${spec.sub!.map((s) => s.name.split(' ').pop()).join(' or ')} ('longshot ${spec.name} --help')`);
  await spec.run(rest);
}
