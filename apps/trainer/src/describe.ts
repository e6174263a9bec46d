/**
 * `node --import tsx apps/trainer/src/describe.ts VIDEO.mp4 --prompt TEXT`: what a rendered
 * shapes video shows, measured from its decoded frames (apps/trainer/src/analysis.ts), next to
 * what the prompt asked for. With --strict, exits 1 when the colour, shape or motion differ; 2 on
 * a usage error.
 */
import { helpText, parseCommand, UsageError, wantsHelp, type CommandSpec } from '@longshot/cli/src/args';
import { reportError } from '@longshot/cli/src/errors';
import { readRgbFrames } from '@longshot/media';
import { analyseVideo } from './analysis';
import { applyTrainerEnvironment, trainerEnvironment } from './config';
import { loadGrammar, requireParts, type CaptionParts } from './grammar';

export interface Description {
  readonly asked: CaptionParts;
  readonly drawn: { colour: string | null; shape: string | null; motion: string | null; background: readonly number[] };
  readonly adheres: boolean;
}

export async function describeVideo(file: string, prompt: string): Promise<Description> {
  const g = loadGrammar();
  const { parts } = requireParts(g, prompt);
  const frames = await readRgbFrames(file);
  const a = analyseVideo(g, frames);
  const adheres = a.colour === parts.colour && a.shape === parts.shape && a.motion === parts.motion;
  return { asked: parts, drawn: { colour: a.colour, shape: a.shape, motion: a.motion, background: a.background }, adheres };
}

export const DESCRIBE = {
  name: 'describe',
  summary: 'what a rendered shapes video shows, next to what the prompt asked for',
  usage: 'node --import tsx apps/trainer/src/describe.ts VIDEO.mp4 --prompt TEXT [--strict]',
  flags: {
    prompt: { value: 'TEXT', help: 'the prompt the video was rendered from (required)' },
    strict: { help: 'exit 1 when the colour, shape or motion differ' },
  },
  positionals: ['VIDEO'],
} satisfies CommandSpec;

async function main(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) {
    process.stdout.write(helpText(DESCRIBE));
    return 0;
  }
  applyTrainerEnvironment(trainerEnvironment(process.env));
  const { values: f, positionals } = parseCommand(DESCRIBE, argv);
  if (f.prompt === undefined) throw new UsageError('--prompt: required');
  const d = await describeVideo(positionals[0], f.prompt);
  const mark = (ok: boolean) => (ok ? 'yes' : 'NO');
  const w = (v: string | null) => v ?? 'nothing';
  process.stdout.write(
    `drawn: a ${w(d.drawn.colour)} ${w(d.drawn.shape)} ${w(d.drawn.motion)} (background rgb ${d.drawn.background.map((v) => Math.round(v)).join(',')})\n` +
      `asked: a ${d.asked.colour} ${d.asked.shape} ${d.asked.motion} on a ${d.asked.background} background\n` +
      `adherence: colour ${mark(d.drawn.colour === d.asked.colour)}, shape ${mark(d.drawn.shape === d.asked.shape)}, motion ${mark(d.drawn.motion === d.asked.motion)}\n`,
  );
  return d.adheres || !f.strict ? 0 : 1;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      const { message, exitCode } = reportError(e);
      process.stderr.write(`${message.replace(/^longshot: (describe: )?/, 'describe: ')}\n`);
      process.exit(exitCode);
    },
  );
}
