import { parseArgs } from 'node:util';

/**
 * How a `longshot` command declares its flags: one `CommandSpec` per command (and per
 * sub-command), the only home of its flags. Both the parser (node:util parseArgs) and the
 * `--help` text are generated from it, so they cannot drift; `main.ts` answers `--help`/`-h` for
 * every command and sub-command before the command runs.
 *
 *   export const FOO = {
 *     name: 'foo',                                  // 'model write' for a sub-command
 *     summary: 'one line for `longshot --help`',
 *     usage: 'longshot foo --bar N [--json]',
 *     flags: { bar: { value: 'N', help: 'what it does', default: '3' }, json: { help: 'print JSON' } },
 *     run: (argv) => fooCommand(argv),               // or sub: [FOO_A, FOO_B] instead of run
 *   } satisfies CommandSpec;                         // keeps the flags' types for parseCommand
 *   // in fooCommand: const { values, positionals } = parseCommand(FOO, argv);
 *
 * A flag with `value` takes a string (parse it with intFlag/numberFlag/...); one without is a
 * boolean switch. `positionals` names the positional arguments (e.g. ['ID']); without it none are
 * accepted. Commands are registered in commands.ts.
 */
export interface FlagSpec {
  /** Placeholder of the value (FILE, N, WxH); absent for a boolean switch. */
  readonly value?: string;
  readonly help: string;
  /** The default as the help shows it (the command applies it). */
  readonly default?: string;
}

export type Flags = Readonly<Record<string, FlagSpec>>;

export interface CommandSpec {
  /** 'render', or 'model write' for a sub-command. */
  readonly name: string;
  readonly summary: string;
  readonly usage: string;
  /** Paragraph(s) printed between the usage line and the flags. */
  readonly description?: string;
  readonly flags: Flags;
  /** Names of the positional arguments, in order (e.g. ['ID']). */
  readonly positionals?: readonly string[];
  readonly sub?: readonly CommandSpec[];
  readonly run?: (argv: string[]) => Promise<void> | void;
}

/**
 * A mistake of the user (a flag, a file, a job id, an unreachable --url): printed as one line
 * naming it, exit status 2, no stack trace.
 */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export type FlagValues<F extends Flags> = { [K in keyof F]?: F[K] extends { value: string } ? string : boolean };

/** Help text is wrapped to this many columns. */
export const HELP_COLUMNS = 80;

/** Two columns, the second wrapped to HELP_COLUMNS: `  head   text...`. */
export function table(rows: readonly (readonly [string, string])[], maxHead = 26): string[] {
  const width = Math.min(maxHead, Math.max(...rows.map(([head]) => head.length)));
  const indent = ''.padEnd(2 + width + 2);
  const lines: string[] = [];
  for (const [head, text] of rows) {
    const wrapped = wrap(text, HELP_COLUMNS - indent.length);
    if (head.length > width) lines.push(`  ${head}`, ...wrapped.map((l) => indent + l));
    else lines.push(`  ${head.padEnd(width)}  ${wrapped[0] ?? ''}`, ...wrapped.slice(1).map((l) => indent + l));
  }
  return lines;
}

/** Words of `text` in lines of at most `width` columns (a longer word stays whole). */
export function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

/** The `--help` text of a command: usage, description, sub-commands, every flag with its default. */
export function helpText(spec: CommandSpec): string {
  const lines = [...wrap(`usage: ${spec.usage}`, HELP_COLUMNS), '', ...wrap(spec.summary, HELP_COLUMNS - 2).map((l) => `  ${l}`)];
  if (spec.description) lines.push('', ...wrap(spec.description, HELP_COLUMNS - 2).map((l) => `  ${l}`));
  if (spec.sub?.length) {
    lines.push('', 'Sub-commands:', ...table(spec.sub.map((s) => [s.name, s.summary])));
    lines.push('', `'longshot ${spec.name} SUB-COMMAND --help' for its flags.`);
  }
  const rows: [string, string][] = Object.entries(spec.flags).map(([name, f]) => [
    `--${name}${f.value ? ` ${f.value}` : ''}`,
    `${f.help}${f.default !== undefined ? ` (default ${f.default})` : ''}`,
  ]);
  rows.push(['--help, -h', 'print this help']);
  lines.push('', 'Flags:', ...table(rows));
  return `${lines.join('\n')}\n`;
}

/** Parses argv against the command's flags; a mistake becomes a UsageError naming the flag. */
export function parseCommand<F extends Flags>(spec: Pick<CommandSpec, 'name' | 'usage' | 'positionals'> & { flags: F }, argv: string[]): { values: FlagValues<F>; positionals: string[] } {
  const options = Object.fromEntries(Object.entries(spec.flags).map(([name, f]) => [name, { type: f.value ? 'string' : 'boolean' } as const]));
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: true });
  } catch (e) {
    throw new UsageError(`${(e as Error).message.replace(/\. To specify a positional.*$/s, '').replace(/^Unknown option/, 'unknown flag')}; see 'longshot ${spec.name} --help'`);
  }
  const expected = spec.positionals ?? [];
  if (parsed.positionals.length !== expected.length) {
    const what = expected.length ? `expected ${expected.join(' ')}` : 'expected no positional arguments';
    throw new UsageError(`${spec.name}: ${what}, got ${parsed.positionals.length ? `'${parsed.positionals.join(' ')}'` : 'none'}; usage: ${spec.usage}`);
  }
  return { values: parsed.values as FlagValues<F>, positionals: parsed.positionals };
}

/** Whether argv asks for help (before any `--` terminator). */
export function wantsHelp(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false;
    if (a === '--help' || a === '-h') return true;
  }
  return false;
}

export function intFlag(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^-?\d+$/.test(v.trim())) throw new UsageError(`--${name}: expected an integer, got '${v}'`);
  return Number(v);
}

export function numberFlag(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name}: expected a number, got '${v}'`);
  return n;
}

export function sizeFlag(v: string | undefined): { width: number; height: number } | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+)x(\d+)$/.exec(v.trim());
  if (!m) throw new UsageError(`--size: expected WIDTHxHEIGHT such as 256x256, got '${v}'`);
  return { width: Number(m[1]), height: Number(m[2]) };
}
